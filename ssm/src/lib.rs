//! Saved-state format and manager, after VirtualBox's SSM.
//!
//! A saved state is a stream of named, versioned *units* (one per device or
//! VMM component, per pass of a live save), each a sequence of records (raw
//! bytes, runs of zero pages, LZ4-compressed pages) closed by a terminator
//! carrying the unit's length and a running CRC32C. A directory and a footer
//! at the end allow random access. `FORMAT.md` beside this crate describes
//! every byte.
//!
//! Layers, from the top:
//! - [`Manager`] + [`Unit`]: register units, then [`Manager::save`],
//!   [`Manager::save_live`] (live passes, a stop-the-VM hook, final pass) or
//!   [`Manager::load`].
//! - [`StreamWriter`] / [`StreamReader`] with [`UnitWriter`] / [`UnitReader`]:
//!   typed put/get on one unit.
//! - [`inspect`] / [`verify`]: describe a file and check all its CRCs.
//!
//! Streams are any `Write` / `BufRead`: a `Vec<u8>` or slice, an
//! [`AtomicFile`] (temporary name, fsync, rename; written and made durable
//! in two steps through [`WrittenFile`] where the writer stops a guest only
//! for the writing), a `TcpStream` for teleporting. Reading never trusts the input: any damaged or hostile
//! stream gives an [`Error`], never a panic or a hang.
//!
//! # How data flows
//!
//! Saving: the [`Manager`] writes the header, then for each registered unit
//! (in registration order; live units once per live pass, every unit in
//! the final pass) opens it in the [`StreamWriter`] and calls the unit's
//! callback with a [`UnitWriter`]; the writer turns puts into records (zero
//! pages into zero records, other pages into LZ4 records when compression is
//! on and it shrinks them), and closing the unit writes its terminator; the
//! directory and footer end the stream.
//! Loading runs the same way backwards: the [`StreamReader`] checks every
//! header and CRC, the [`Manager`] finds the registered unit by name and
//! instance, checks the version and hands it a [`UnitReader`]; a unit that
//! leaves data unread or reads past its end fails the load.
//!
//! # Using it alone
//!
//! `ssm` depends on no other workspace crate. A unit saving some pages of
//! RAM, saved into memory and loaded into another unit:
//!
//! ```
//! use ssm::{Manager, SaveOptions, StreamReader, Unit, UnitReader, UnitWriter};
//!
//! struct Ram(Vec<[u8; 4096]>);
//!
//! impl Unit for Ram {
//!     fn name(&self) -> &str { "ram" }
//!     fn version(&self) -> u32 { 1 }
//!     fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
//!         w.put_u32(self.0.len() as u32)?;
//!         self.0.iter().try_for_each(|p| w.put_page(p))
//!     }
//!     fn load_exec(&mut self, r: &mut UnitReader<'_>, _v: u32, _pass: u32) -> ssm::Result<()> {
//!         let n = r.get_u32()? as usize;
//!         if n != self.0.len() {
//!             return Err(ssm::Error::callback("RAM size differs"));
//!         }
//!         for page in &mut self.0 {
//!             r.get_page()?.copy_to(page);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> ssm::Result<()> {
//! let mut pages = vec![[0u8; 4096]; 8];
//! pages[3][17] = 0xaa;
//! let mut m = Manager::new();
//! m.register(Box::new(Ram(pages.clone())))?;
//! let mut bytes = Vec::new();
//! m.save(&mut bytes, &SaveOptions::default())?;
//! assert!(bytes.len() < 4096 + 512); // seven zero pages cost a few bytes
//!
//! let mut m2 = Manager::new();
//! m2.register(Box::new(Ram(vec![[1u8; 4096]; 8])))?;
//! m2.load(StreamReader::from_slice(&bytes)?)?;
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! None: LZ4 compression (`lz4_flex`) and CRC32C are always built in.

mod error;
mod file;
mod format;
mod inspect;
mod manager;
mod reader;
mod stream_io;
mod unit;
mod writer;
mod zero;

pub use error::{Error, Result, UnitId};
pub use file::{AtomicFile, WrittenFile};
pub use format::{
    DirEntry, FLAG_COMPRESSED, FLAG_LIVE, FORMAT_VERSION, Header, MAX_NAME_LEN, MAX_RUN_PAGES,
    OLDEST_FORMAT_VERSION, PAGE_SIZE, PASS_FINAL,
};
pub use inspect::{Report, UnitReport, VerifySummary, inspect, inspect_stream, verify};
pub use manager::{LoadStats, Manager, SaveOptions};
pub use reader::{FilePages, Page, RecordStats, StreamReader, UnitInfo, UnitReader};
pub use unit::{Unit, Vote};
pub use writer::{StreamWriter, UnitWriter, WriteStats};
pub use zero::is_zero;

// The README's example runs as a doctest, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
