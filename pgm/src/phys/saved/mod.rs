//! The `pgm` saved-state unit: RAM (zero pages as zero records, written
//! pages raw, ballooned pages), ROM shadow pages and protection, and MMIO2,
//! saved in one go or in live passes that re-send dirty pages.
//!
//! Unit data (version 3): a table of the memory-backed ranges (`u32`
//! count, then `u8` kind, `u64` start, `u64` size each), then page records
//! until [`REC_END`]. A record is a `u8` tag, the page's `u64` guest
//! address unless the tag has [`REC_NEXT`] set (then it is the previous
//! record's address plus 4 KiB), and for raw and shadow records the page.
//! A [`REC_RUN`] record covers [`MIN_RUN_PAGES`] or more consecutive
//! non-zero RAM or MMIO2 pages: a `u32` page count follows the address,
//! then the pages as `ssm` page runs, which a load from a file maps
//! ([`HostMemory::map_file`](super::HostMemory::map_file)) instead of
//! reading; the address after it is the run's end. A [`REC_ZERO_RUN`]
//! record (`u32` count after the address) stands for that many pages in
//! the zero state. The final pass then holds each vCPU's A20 gate (a
//! `u32` vCPU count, then a `u8` per vCPU, 1 for open; version 3). Version
//! 2 (no A20 gates: they load open) and version 1 (no runs either) still
//! load.

mod load;
mod save;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;
use ssm::{Unit, UnitReader, UnitWriter, Vote};

use super::dirty::DirtyLog;
use super::error::PhysError;
use super::live::{LiveVote, LiveVoter};
use super::map::PhysMap;
use super::range::{RangeKind, RomProtection};
use save::Selection;

/// End of the page records.
pub const REC_END: u8 = 0;
/// A page in the zero state.
pub const REC_ZERO: u8 = 1;
/// A page's content (written with `put_page`: zero content costs a few
/// bytes).
pub const REC_RAW: u8 = 2;
/// A ballooned page.
pub const REC_BALLOONED: u8 = 3;
/// ROM protection of the range starting at the address (one `u8` follows).
pub const REC_ROM_PROT: u8 = 4;
/// A ROM shadow page's content.
pub const REC_SHADOW: u8 = 5;
/// A run of non-zero RAM or MMIO2 pages (`u32` count, then the pages as
/// `ssm` page runs).
pub const REC_RUN: u8 = 6;
/// Two or more consecutive pages in the zero state (`u32` count).
pub const REC_ZERO_RUN: u8 = 7;
/// Flag: the address is the previous one plus 4 KiB and is not stored.
pub const REC_NEXT: u8 = 0x80;

/// Shortest run of consecutive non-zero pages saved as a [`REC_RUN`]
/// (shorter ones are saved page by page). Each run costs up to 4 KiB of
/// alignment padding in the stream and one mapping when loaded from a
/// file, so short runs are not worth it: with 16, padding adds at most
/// 1/16 to the pages saved, and a guest with 1 GiB of scattered runs maps
/// at most 16384 of them (the kernel's default limit is 65530 mappings).
pub const MIN_RUN_PAGES: u64 = 16;
/// Pages copied out of guest memory per page-run record while saving.
const RUN_CHUNK_PAGES: u64 = 1024;

const VERSION: u32 = 3;
/// The first version with the A20 gates.
const A20_VERSION: u32 = 3;

fn err(e: PhysError) -> ssm::Error {
    ssm::Error::callback(e)
}

fn prot_code(p: RomProtection) -> u8 {
    match p {
        RomProtection::ReadRomWriteIgnore => 0,
        RomProtection::ReadRomWriteRam => 1,
        RomProtection::ReadRamWriteIgnore => 2,
        RomProtection::ReadRamWriteRam => 3,
    }
}

fn prot_from(code: u8) -> Option<RomProtection> {
    Some(match code {
        0 => RomProtection::ReadRomWriteIgnore,
        1 => RomProtection::ReadRomWriteRam,
        2 => RomProtection::ReadRamWriteIgnore,
        3 => RomProtection::ReadRamWriteRam,
        _ => return None,
    })
}

fn kind_code(k: RangeKind) -> u8 {
    match k {
        RangeKind::Ram => 1,
        RangeKind::Rom => 2,
        RangeKind::Mmio2 => 3,
        RangeKind::Mmio => 4,
    }
}

/// The `pgm` unit for [`ssm::Manager`], over a shared map.
///
/// For live saves give it a [`DirtyLog`] (KVM's dirty log): live passes
/// turn write monitoring on, send every page in pass 0 and then the pages
/// dirtied since, and vote with [`LiveVoter`].
///
/// ```
/// use std::sync::Arc;
/// use parking_lot::RwLock;
/// use pgm::phys::{PgmUnit, PhysMap};
/// use ssm::{Manager, SaveOptions, StreamReader};
///
/// let map = Arc::new(RwLock::new(PhysMap::with_defaults()));
/// map.write().add_ram(0, 0x10000, "ram").unwrap();
/// map.read().write(0x2000, b"saved").unwrap();
/// let mut m = Manager::new();
/// m.register(Box::new(PgmUnit::new(map.clone(), None))).unwrap();
/// let mut bytes = Vec::new();
/// m.save(&mut bytes, &SaveOptions::default()).unwrap();
///
/// let other = Arc::new(RwLock::new(PhysMap::with_defaults()));
/// other.write().add_ram(0, 0x10000, "ram").unwrap();
/// let mut m2 = Manager::new();
/// m2.register(Box::new(PgmUnit::new(other.clone(), None))).unwrap();
/// m2.load(StreamReader::from_slice(&bytes).unwrap()).unwrap();
/// let mut b = [0u8; 5];
/// other.read().read(0x2000, &mut b).unwrap();
/// assert_eq!(&b, b"saved");
/// ```
pub struct PgmUnit {
    map: Arc<RwLock<PhysMap>>,
    dirty_log: Option<Box<dyn DirtyLog + Send>>,
    max_downtime_ms: u32,
    voter: LiveVoter,
    live_since: Option<Instant>,
    live_pages: u64,
}

impl PgmUnit {
    /// A unit saving `map`; `dirty_log` feeds guest writes into live saves.
    pub fn new(map: Arc<RwLock<PhysMap>>, dirty_log: Option<Box<dyn DirtyLog + Send>>) -> Self {
        Self {
            map,
            dirty_log,
            max_downtime_ms: 250,
            voter: LiveVoter::new(),
            live_since: None,
            live_pages: 0,
        }
    }

    /// Sets the downtime (ms) the live vote aims for (default 250).
    pub fn with_max_downtime_ms(mut self, ms: u32) -> Self {
        self.max_downtime_ms = ms;
        self
    }

    /// Brings the page states up to date with the writes KVM logged and
    /// the writes made through the `vm-memory` view.
    fn sync(&mut self) -> ssm::Result<()> {
        let map = self.map.read();
        match self.dirty_log.as_deref_mut() {
            Some(log) => {
                map.sync_dirty_log(log).map_err(err)?;
            }
            None => {
                map.sync_vm_memory_writes();
            }
        }
        Ok(())
    }

    fn set_monitoring(&mut self, on: bool) -> ssm::Result<()> {
        let mut map = self.map.write();
        map.set_write_monitoring(on);
        if let Some(log) = self.dirty_log.as_deref_mut() {
            log.slots_changed(map.kvm_slots())
                .map_err(|message| err(PhysError::DirtyLog { slot: 0, message }))?;
        }
        Ok(())
    }
}

impl Unit for PgmUnit {
    fn name(&self) -> &str {
        "pgm"
    }

    fn version(&self) -> u32 {
        VERSION
    }

    fn oldest_loadable_version(&self) -> u32 {
        1
    }

    fn is_live(&self) -> bool {
        true
    }

    fn live_prep(&mut self) -> ssm::Result<()> {
        self.set_monitoring(true)?;
        self.voter = LiveVoter::new();
        self.live_since = Some(Instant::now());
        self.live_pages = 0;
        Ok(())
    }

    fn live_exec(&mut self, w: &mut UnitWriter<'_>, pass: u32) -> ssm::Result<()> {
        self.sync()?;
        let sel = if pass == 0 {
            Selection::All
        } else {
            Selection::Dirty
        };
        self.live_pages += self.map.read().save_pages(w, sel)?;
        Ok(())
    }

    fn live_vote(&mut self, pass: u32) -> ssm::Result<Vote> {
        self.sync()?;
        let dirty = self.map.read().dirty_page_count();
        let secs = self
            .live_since
            .map_or(0.0, |t| t.elapsed().as_secs_f64())
            .max(1e-6);
        let rate = self.live_pages as f64 / secs;
        Ok(
            match self.voter.vote(pass, dirty, rate, self.max_downtime_ms) {
                LiveVote::Done => Vote::Ready,
                LiveVote::AnotherPass => Vote::AnotherPass,
            },
        )
    }

    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        // Also for a plain save: a zero-state page written through the
        // `vm-memory` view must not be saved as zero.
        self.sync()?;
        let sel = if self.live_since.is_some() {
            Selection::Dirty
        } else {
            Selection::All
        };
        let map = self.map.read();
        map.save_pages(w, sel)?;
        let gates = map.a20_states();
        w.put_u32(gates.len() as u32)?;
        for gate in gates {
            w.put_u8(u8::from(gate.enabled))?;
        }
        Ok(())
    }

    fn save_done(&mut self) -> ssm::Result<()> {
        if self.live_since.take().is_some() {
            self.set_monitoring(false)?;
        }
        Ok(())
    }

    fn load_exec(&mut self, r: &mut UnitReader<'_>, version: u32, pass: u32) -> ssm::Result<()> {
        let mut map = self.map.write();
        map.load_pages(r)?;
        if pass != ssm::PASS_FINAL {
            return Ok(());
        }
        let mut gates = vec![true; map.a20_states().len()];
        if version >= A20_VERSION {
            let count = r.get_u32()? as usize;
            if count != gates.len() {
                return Err(ssm::Error::callback(format!(
                    "saved state has A20 gates for {count} vCPUs, this VM {}",
                    gates.len()
                )));
            }
            for gate in &mut gates {
                *gate = r.get_u8()? != 0;
            }
        }
        map.load_a20(&gates);
        Ok(())
    }
}
