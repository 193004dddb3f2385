//! The manager: registered units, and the save, live-save and load drivers.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::Path;

use crate::error::{Error, Result, UnitId};
use crate::file::AtomicFile;
use crate::format::{FLAG_COMPRESSED, FLAG_LIVE, Header, PASS_FINAL, valid_name};
use crate::reader::{StreamReader, UnitReader};
use crate::unit::{Unit, Vote};
use crate::writer::{StreamWriter, UnitWriter, WriteStats};

/// Options of one save.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SaveOptions {
    /// Try LZ4 on pages (kept only when it shrinks them). Default off.
    pub compress: bool,
    /// Creator string recorded in the header (at most 44 bytes kept).
    pub creator: String,
    /// Live passes allowed before the save fails with [`Error::TooManyPasses`].
    pub max_passes: u32,
    /// Bytes the live passes may write before the save fails with
    /// [`Error::LiveSaveTooLarge`] (`None`: no limit). A VMM typically sets a
    /// small multiple of guest RAM.
    pub max_live_bytes: Option<u64>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            compress: false,
            creator: concat!("ssm ", env!("CARGO_PKG_VERSION")).to_string(),
            max_passes: 32,
            max_live_bytes: None,
        }
    }
}

/// What a load went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Unit records loaded (all passes).
    pub units: u32,
    /// Stream bytes read.
    pub bytes: u64,
}

/// Holds the registered units and drives save, live save and load.
///
/// A live save of a RAM unit that resends dirty pages until few are left
/// (see [`Unit`] for the protocol and a plain save/load):
///
/// ```
/// use ssm::{Manager, PASS_FINAL, SaveOptions, StreamReader, Unit, UnitReader, UnitWriter, Vote};
///
/// struct Ram { pages: Vec<[u8; 4096]>, dirty: Vec<usize> }
///
/// impl Unit for Ram {
///     fn name(&self) -> &str { "ram" }
///     fn version(&self) -> u32 { 1 }
///     fn is_live(&self) -> bool { true }
///     fn live_prep(&mut self) -> ssm::Result<()> {
///         self.dirty = (0..self.pages.len()).collect(); // everything, first time
///         Ok(())
///     }
///     fn live_exec(&mut self, w: &mut UnitWriter<'_>, _pass: u32) -> ssm::Result<()> {
///         w.put_u32(self.dirty.len() as u32)?;
///         for &i in &self.dirty {
///             w.put_u32(i as u32)?;
///             w.put_page(&self.pages[i])?;
///         }
///         self.dirty.clear(); // a real VMM would now collect the guest's writes
///         Ok(())
///     }
///     fn live_vote(&mut self, _pass: u32) -> ssm::Result<Vote> {
///         Ok(if self.dirty.len() < 16 { Vote::Ready } else { Vote::AnotherPass })
///     }
///     fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
///         self.live_exec(w, PASS_FINAL) // what is still dirty, VM stopped
///     }
///     fn load_exec(&mut self, r: &mut UnitReader<'_>, _v: u32, _pass: u32) -> ssm::Result<()> {
///         for _ in 0..r.get_u32()? {
///             let i = r.get_u32()? as usize;
///             let page = self.pages.get_mut(i).ok_or_else(|| ssm::Error::callback("bad page"))?;
///             r.get_page()?.copy_to(page);
///         }
///         Ok(())
///     }
/// }
///
/// # fn main() -> ssm::Result<()> {
/// let mut m = Manager::new();
/// m.register(Box::new(Ram { pages: vec![[7; 4096]; 32], dirty: vec![] }))?;
/// let mut stream = Vec::new();
/// let mut stopped = false;
/// m.save_live(&mut stream, &SaveOptions::default(), || {
///     stopped = true; // pause the vCPUs here
///     Ok(())
/// })?;
/// assert!(stopped);
///
/// let mut target = Manager::new();
/// target.register(Box::new(Ram { pages: vec![[0; 4096]; 32], dirty: vec![] }))?;
/// target.load(StreamReader::from_slice(&stream)?)?;
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct Manager {
    units: Vec<Box<dyn Unit>>,
    index: HashMap<UnitId, usize>,
}

impl Manager {
    /// A manager with no units.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a unit; names must be valid and (name, instance) unique.
    /// Units are saved in registration order.
    pub fn register(&mut self, unit: Box<dyn Unit>) -> Result<()> {
        let id = UnitId::new(unit.name(), unit.instance());
        if !valid_name(&id.name) {
            return Err(Error::InvalidUnitName(id.name));
        }
        if self.index.contains_key(&id) {
            return Err(Error::DuplicateUnit(id));
        }
        self.index.insert(id, self.units.len());
        self.units.push(unit);
        Ok(())
    }

    /// Ids of the registered units, in registration order.
    pub fn unit_ids(&self) -> Vec<UnitId> {
        self.units
            .iter()
            .map(|u| UnitId::new(u.name(), u.instance()))
            .collect()
    }

    /// Saves every unit's state (no live passes) to `sink`.
    pub fn save<W: Write>(&mut self, sink: W, opts: &SaveOptions) -> Result<WriteStats> {
        self.run_save(sink, opts, None::<fn() -> Result<()>>)
    }

    /// Saves atomically to `path`: written under a temporary name, synced,
    /// then renamed over `path`, so a failed save leaves any previous file.
    pub fn save_to_file(&mut self, path: &Path, opts: &SaveOptions) -> Result<WriteStats> {
        let mut f = AtomicFile::create(path)?;
        let stats = self.save(&mut f, opts)?;
        f.commit()?;
        Ok(stats)
    }

    /// Live save: passes of `live_exec`/`live_vote` while the VM runs, then
    /// `stop_vm`, then the final pass. See [`Unit`] for the protocol.
    pub fn save_live<W: Write>(
        &mut self,
        sink: W,
        opts: &SaveOptions,
        stop_vm: impl FnOnce() -> Result<()>,
    ) -> Result<WriteStats> {
        self.run_save(sink, opts, Some(stop_vm))
    }

    fn run_save<W: Write, F: FnOnce() -> Result<()>>(
        &mut self,
        sink: W,
        opts: &SaveOptions,
        live: Option<F>,
    ) -> Result<WriteStats> {
        let flags = if live.is_some() { FLAG_LIVE } else { 0 };
        let mut w = StreamWriter::new(sink, &header(opts, flags))?;
        let mut r = Ok(());
        if let Some(stop_vm) = live {
            r = self.live_passes(&mut w, opts).and_then(|()| stop_vm());
        }
        let r = r
            .and_then(|()| self.final_pass(&mut w))
            .and_then(|()| w.finish_in_place());
        let mut r = r;
        for u in &mut self.units {
            let d = u.save_done();
            if r.is_ok() {
                r = d;
            }
        }
        r?;
        Ok(w.stats())
    }

    fn live_passes<W: Write>(&mut self, w: &mut StreamWriter<W>, opts: &SaveOptions) -> Result<()> {
        let live: Vec<usize> = (0..self.units.len())
            .filter(|&i| self.units[i].is_live())
            .collect();
        for &i in &live {
            self.units[i].live_prep()?;
        }
        let mut active = live;
        let start = w.position();
        let mut pass = 0u32;
        while !active.is_empty() {
            if pass >= opts.max_passes {
                return Err(Error::TooManyPasses { passes: pass });
            }
            for &i in &active {
                let u = &mut self.units[i];
                w.open_unit(u.name(), u.instance(), u.version(), pass)?;
                u.live_exec(&mut UnitWriter::new(w), pass)?;
                w.close_unit()?;
            }
            let written = w.position() - start;
            if let Some(limit) = opts.max_live_bytes.filter(|&l| written > l) {
                return Err(Error::LiveSaveTooLarge { written, limit });
            }
            let mut all_ready = true;
            let mut still_active = Vec::with_capacity(active.len());
            for &i in &active {
                let u = &mut self.units[i];
                match u.live_vote(pass)? {
                    Vote::Ready => still_active.push(i),
                    Vote::AnotherPass => {
                        all_ready = false;
                        still_active.push(i);
                    }
                    Vote::Done => {}
                    Vote::GiveUp => {
                        return Err(Error::UnitGaveUp {
                            unit: UnitId::new(u.name(), u.instance()),
                            pass,
                        });
                    }
                }
            }
            active = still_active;
            pass += 1;
            if all_ready {
                break;
            }
        }
        Ok(())
    }

    fn final_pass<W: Write>(&mut self, w: &mut StreamWriter<W>) -> Result<()> {
        for u in &mut self.units {
            u.save_prep()?;
        }
        for u in &mut self.units {
            w.open_unit(u.name(), u.instance(), u.version(), PASS_FINAL)?;
            u.save_exec(&mut UnitWriter::new(w))?;
            w.close_unit()?;
        }
        Ok(())
    }

    /// Loads a saved state: every unit record in the stream goes to the
    /// registered unit of that name and instance. Unknown units, missing
    /// units and unsupported versions are errors naming the unit.
    pub fn load<R: BufRead>(&mut self, mut reader: StreamReader<R>) -> Result<LoadStats> {
        let mut prepped = 0;
        let mut r = Ok(());
        for u in &mut self.units {
            r = u.load_prep();
            if r.is_err() {
                break;
            }
            prepped += 1;
        }
        let mut stats = LoadStats::default();
        let r = r.and_then(|()| self.load_units(&mut reader, &mut stats));
        let mut r = r;
        for u in self.units.iter_mut().take(prepped) {
            let d = u.load_done();
            if r.is_ok() {
                r = d;
            }
        }
        r.map(|()| LoadStats {
            bytes: reader.position(),
            ..stats
        })
    }

    /// Loads from a file written by [`Manager::save_to_file`], through
    /// [`StreamReader::from_file`]: units may map page runs from the file
    /// instead of reading them, so [`crate::verify`] the file first.
    pub fn load_from_file(&mut self, path: &Path) -> Result<LoadStats> {
        let f = std::fs::File::open(path)?;
        self.load(StreamReader::from_file(f)?)
    }

    fn load_units<R: BufRead>(
        &mut self,
        reader: &mut StreamReader<R>,
        stats: &mut LoadStats,
    ) -> Result<()> {
        let mut finals = vec![false; self.units.len()];
        while let Some(info) = reader.next_unit()? {
            let Some(&i) = self.index.get(&info.id) else {
                return Err(Error::UnknownUnit(info.id));
            };
            let u = &mut self.units[i];
            let (oldest, newest) = (u.oldest_loadable_version(), u.version());
            if !(oldest..=newest).contains(&info.version) {
                return Err(Error::UnsupportedVersion {
                    unit: info.id,
                    version: info.version,
                    oldest,
                    newest,
                });
            }
            u.load_exec(&mut UnitReader::new(reader), info.version, info.pass)
                .and_then(|()| reader.finish_unit())
                .map_err(|e| e.in_unit(&info))?;
            stats.units += 1;
            if info.pass == PASS_FINAL {
                finals[i] = true;
            }
        }
        match finals.iter().position(|&seen| !seen) {
            Some(i) => Err(Error::MissingUnit(UnitId::new(
                self.units[i].name(),
                self.units[i].instance(),
            ))),
            None => Ok(()),
        }
    }
}

fn header(opts: &SaveOptions, flags: u32) -> Header {
    let flags = flags | if opts.compress { FLAG_COMPRESSED } else { 0 };
    Header::for_this_host(&opts.creator, flags)
}
