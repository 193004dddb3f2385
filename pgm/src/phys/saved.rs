//! The `pgm` saved-state unit: RAM (zero pages as zero records, written
//! pages raw, ballooned pages), ROM shadow pages and protection, and MMIO2,
//! saved in one go or in live passes that re-send dirty pages.
//!
//! Unit data (version 2): a table of the memory-backed ranges (`u32`
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
//! the zero state. Version 1 (no runs) still loads.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;
use ssm::{Page, Unit, UnitReader, UnitWriter, Vote};
use vm_memory::MmapRegion;

use super::dirty::DirtyLog;
use super::error::PhysError;
use super::live::{LiveVote, LiveVoter};
use super::map::PhysMap;
use super::page::{PAGE_SIZE, PageState};
use super::range::{Backing, Memory, RangeKind, RomProtection};

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

const VERSION: u32 = 2;

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

/// Which pages a pass writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Selection {
    All,
    Dirty,
}

/// Consecutive non-zero pages waiting to be written.
#[derive(Debug, Clone, Copy)]
struct PendingRun {
    gpa: u64,
    off: u64,
    count: u64,
}

/// Writes page records, eliding consecutive addresses and gathering
/// non-zero pages into runs.
struct RecordWriter<'w, 'a> {
    w: &'w mut UnitWriter<'a>,
    next: Option<u64>,
    page: Box<[u8; PAGE_SIZE as usize]>,
    pages: u64,
    run: Option<PendingRun>,
    run_buf: Vec<u8>,
    /// Consecutive zero-state pages waiting: first address and count.
    zeros: Option<(u64, u64)>,
}

impl RecordWriter<'_, '_> {
    fn tag(&mut self, tag: u8, gpa: u64) -> ssm::Result<()> {
        if self.next == Some(gpa) {
            self.w.put_u8(tag | REC_NEXT)?;
        } else {
            self.w.put_u8(tag)?;
            self.w.put_u64(gpa)?;
        }
        self.next = Some(gpa + PAGE_SIZE);
        Ok(())
    }

    fn content(&mut self, tag: u8, gpa: u64, mem: &Memory, offset: u64) -> ssm::Result<()> {
        self.tag(tag, gpa)?;
        mem.read(offset, &mut self.page[..]);
        self.pages += 1;
        self.w.put_page(&self.page)
    }

    /// Adds a zero-state page to the pending zero run (writing that first
    /// if the page does not continue it).
    fn zero_page(&mut self, gpa: u64) -> ssm::Result<()> {
        if let Some((first, count)) = &mut self.zeros {
            if *first + *count * PAGE_SIZE == gpa && *count < u64::from(u32::MAX) {
                *count += 1;
                return Ok(());
            }
        }
        self.flush_zeros()?;
        self.zeros = Some((gpa, 1));
        Ok(())
    }

    fn flush_zeros(&mut self) -> ssm::Result<()> {
        match self.zeros.take() {
            None => Ok(()),
            Some((gpa, 1)) => self.tag(REC_ZERO, gpa),
            Some((gpa, count)) => {
                self.tag(REC_ZERO_RUN, gpa)?;
                self.w.put_u32(count as u32)?;
                self.next = Some(gpa + count * PAGE_SIZE);
                Ok(())
            }
        }
    }

    /// Writes whatever is pending (a page run of `mem` or a zero run).
    fn flush_pending(&mut self, mem: &Memory) -> ssm::Result<()> {
        self.flush_zeros()?;
        self.flush_run(mem)
    }

    /// Adds a non-zero page of `mem` to the pending run (writing the run
    /// first if the page does not continue it).
    fn run_page(&mut self, gpa: u64, mem: &Memory, off: u64) -> ssm::Result<()> {
        if let Some(run) = &mut self.run {
            let end = run.count * PAGE_SIZE;
            if run.gpa + end == gpa && run.off + end == off && run.count < u64::from(u32::MAX) {
                run.count += 1;
                return Ok(());
            }
        }
        self.flush_run(mem)?;
        self.run = Some(PendingRun { gpa, off, count: 1 });
        Ok(())
    }

    /// Writes the pending run of pages of `mem`: as a [`REC_RUN`] when it
    /// is long enough, else page by page.
    fn flush_run(&mut self, mem: &Memory) -> ssm::Result<()> {
        let Some(run) = self.run.take() else {
            return Ok(());
        };
        if run.count < MIN_RUN_PAGES {
            for i in 0..run.count {
                self.content(
                    REC_RAW,
                    run.gpa + i * PAGE_SIZE,
                    mem,
                    run.off + i * PAGE_SIZE,
                )?;
            }
            return Ok(());
        }
        self.tag(REC_RUN, run.gpa)?;
        self.w.put_u32(run.count as u32)?;
        let mut done = 0;
        while done < run.count {
            let n = (run.count - done).min(RUN_CHUNK_PAGES);
            self.run_buf.resize((n * PAGE_SIZE) as usize, 0);
            // A copy, so that a guest writing during a live pass cannot
            // change the pages between their CRC and their bytes.
            mem.read(run.off + done * PAGE_SIZE, &mut self.run_buf);
            self.w.put_page_run(&self.run_buf)?;
            done += n;
        }
        self.pages += run.count;
        self.next = Some(run.gpa + run.count * PAGE_SIZE);
        Ok(())
    }
}

impl PhysMap {
    fn saved_ranges(&self) -> impl Iterator<Item = &super::range::PhysRange> {
        self.ranges
            .iter()
            .filter(|r| !matches!(r.backing, Backing::Mmio))
    }

    /// Writes the range table and the selected pages; clears the dirty bit
    /// of every page written. Returns the pages written.
    fn save_pages(&self, w: &mut UnitWriter<'_>, sel: Selection) -> ssm::Result<u64> {
        w.put_u32(self.saved_ranges().count() as u32)?;
        for r in self.saved_ranges() {
            w.put_u8(kind_code(r.kind()))?;
            w.put_u64(r.start)?;
            w.put_u64(r.size)?;
        }
        let mut rw = RecordWriter {
            w,
            next: None,
            page: Box::new([0; PAGE_SIZE as usize]),
            pages: 0,
            run: None,
            run_buf: Vec::new(),
            zeros: None,
        };
        for r in self.saved_ranges() {
            if let Backing::Rom { prot, .. } = &r.backing {
                rw.w.put_u8(REC_ROM_PROT)?;
                rw.w.put_u64(r.start)?;
                rw.w.put_u8(prot_code(*prot))?;
                rw.next = None;
            }
            let Some(mem) = r.writable_memory() else {
                continue;
            };
            let shadow = matches!(r.backing, Backing::Rom { .. });
            for (i, slot) in mem.pages.iter().enumerate() {
                let before = slot.get();
                if sel == Selection::Dirty && !before.dirty {
                    continue;
                }
                let info = slot.update(|mut p| {
                    p.dirty = false;
                    if self.monitoring && p.state == PageState::Allocated {
                        p.state = PageState::WriteMonitored;
                    }
                    p
                });
                let off = i as u64 * PAGE_SIZE;
                let gpa = r.start + off;
                let content = !matches!(info.state, PageState::Zero | PageState::Ballooned);
                if !shadow && content && !mem.page_is_zero(off) {
                    rw.flush_zeros()?;
                    rw.run_page(gpa, mem, off)?;
                    continue;
                }
                if !shadow && info.state == PageState::Zero {
                    rw.flush_run(mem)?;
                    rw.zero_page(gpa)?;
                    continue;
                }
                rw.flush_pending(mem)?;
                match info.state {
                    _ if shadow => rw.content(REC_SHADOW, gpa, mem, off)?,
                    PageState::Ballooned => rw.tag(REC_BALLOONED, gpa)?,
                    _ => rw.content(REC_RAW, gpa, mem, off)?,
                }
            }
            rw.flush_pending(mem)?;
        }
        rw.w.put_u8(REC_END)?;
        Ok(rw.pages)
    }

    /// Reads what [`save_pages`](Self::save_pages) wrote into this map,
    /// which must have the same memory-backed ranges.
    fn load_pages(&mut self, r: &mut UnitReader<'_>) -> ssm::Result<()> {
        let mut mapped = 0;
        let r = self.load_records(r, &mut mapped);
        self.pages_mapped_from_file += mapped;
        r
    }

    fn load_records(&mut self, r: &mut UnitReader<'_>, mapped: &mut u64) -> ssm::Result<()> {
        let count = r.get_u32()? as usize;
        let mine: Vec<(u8, u64, u64)> = self
            .saved_ranges()
            .map(|x| (kind_code(x.kind()), x.start, x.size))
            .collect();
        if count != mine.len() {
            return Err(ssm::Error::callback(format!(
                "saved state has {count} memory ranges, this VM {}",
                mine.len()
            )));
        }
        for want in &mine {
            let got = (r.get_u8()?, r.get_u64()?, r.get_u64()?);
            if got != *want {
                return Err(ssm::Error::callback(format!(
                    "saved range (kind {}, {:#x}+{:#x}) differs from this VM's (kind {}, {:#x}+{:#x})",
                    got.0, got.1, got.2, want.0, want.1, want.2
                )));
            }
        }
        let mut next: Option<u64> = None;
        let mut discards = DiscardRun::default();
        loop {
            let tag = r.get_u8()?;
            if tag == REC_END {
                break;
            }
            if tag == REC_ROM_PROT {
                let gpa = r.get_u64()?;
                let prot = prot_from(r.get_u8()?)
                    .ok_or_else(|| ssm::Error::callback("bad ROM protection code"))?;
                self.set_rom_protection(gpa, prot).map_err(err)?;
                next = None;
                continue;
            }
            let gpa = if tag & REC_NEXT != 0 {
                next.ok_or_else(|| ssm::Error::callback("page record without address"))?
            } else {
                r.get_u64()?
            };
            if tag & !REC_NEXT == REC_RUN {
                let count = u64::from(r.get_u32()?);
                *mapped += self.load_run(r, gpa, count, &mut discards)?;
                next = gpa.checked_add(count * PAGE_SIZE);
                continue;
            }
            if tag & !REC_NEXT == REC_ZERO_RUN {
                let count = u64::from(r.get_u32()?);
                self.load_zero_run(gpa, count, &mut discards)?;
                next = gpa.checked_add(count * PAGE_SIZE);
                continue;
            }
            next = gpa.checked_add(PAGE_SIZE);
            self.load_record(r, tag & !REC_NEXT, gpa, &mut discards)?;
        }
        discards.flush(self)
    }

    /// The writable memory (RAM or MMIO2, not a ROM shadow) holding the
    /// `count` pages at `gpa`, and the offset of the first.
    fn run_memory(&self, what: &str, gpa: u64, count: u64) -> ssm::Result<(&Memory, u64)> {
        let bad = || {
            ssm::Error::callback(format!(
                "{what} of {count} pages at {gpa:#x} fits no RAM range"
            ))
        };
        let range = self.range_at(gpa).ok_or_else(bad)?;
        if count == 0 || gpa % PAGE_SIZE != 0 || matches!(range.backing, Backing::Rom { .. }) {
            return Err(bad());
        }
        let mem = range.writable_memory().ok_or_else(bad)?;
        let off = gpa - range.start;
        count
            .checked_mul(PAGE_SIZE)
            .and_then(|len| off.checked_add(len))
            .filter(|&end| end <= mem.size())
            .ok_or_else(bad)?;
        Ok((mem, off))
    }

    /// Sets the states of `count` pages of `mem` from `off`.
    fn set_states(mem: &Memory, off: u64, count: u64, state: PageState) {
        for i in 0..count {
            if let Some(slot) = mem.page(off + i * PAGE_SIZE) {
                slot.update(|mut p| {
                    p.state = state;
                    p.dirty = false;
                    p
                });
            }
        }
    }

    /// Brings the host's balloon in line with a record for `count` pages of
    /// `mem` from `off`: pages the record says are ballooned are inflated,
    /// ballooned pages it fills are deflated first (a live save may send a
    /// page again after the guest took it back), so that the provider's
    /// balloon accounts (GMM's) survive a restore.
    fn match_balloon(
        &self,
        mem: &Memory,
        off: u64,
        count: u64,
        ballooned: bool,
        discards: &mut DiscardRun,
    ) -> ssm::Result<()> {
        let differs = |i: u64| {
            mem.page(off + i * PAGE_SIZE)
                .is_some_and(|p| (p.get().state == PageState::Ballooned) != ballooned)
        };
        let mut i = 0;
        while i < count {
            if !differs(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < count && differs(i) {
                i += 1;
            }
            // A pending discard must not reach pages ballooned from now on.
            discards.flush(self)?;
            self.host
                .balloon(
                    &mem.region,
                    (off + start * PAGE_SIZE) as usize,
                    ((i - start) * PAGE_SIZE) as usize,
                    ballooned,
                )
                .map_err(|e| err(e.into()))?;
        }
        Ok(())
    }

    /// Loads a run of `count` zero-state pages at `gpa`.
    fn load_zero_run(&self, gpa: u64, count: u64, discards: &mut DiscardRun) -> ssm::Result<()> {
        let (mem, off) = self.run_memory("zero run", gpa, count)?;
        self.match_balloon(mem, off, count, false, discards)?;
        discards.add(self, &mem.region, off, count * PAGE_SIZE)?;
        Self::set_states(mem, off, count, PageState::Zero);
        Ok(())
    }

    /// Loads a run of `count` pages at `gpa`: page runs of a file are
    /// mapped, other data copied. Returns the pages mapped.
    fn load_run(
        &self,
        r: &mut UnitReader<'_>,
        gpa: u64,
        count: u64,
        discards: &mut DiscardRun,
    ) -> ssm::Result<u64> {
        let (mem, off) = self.run_memory("page run", gpa, count)?;
        self.match_balloon(mem, off, count, false, discards)?;
        let end = off + count * PAGE_SIZE;
        // Pending discards must not land after (and on top of) the run.
        discards.flush(self)?;
        let mut at = off;
        let mut mapped = 0;
        while at < end {
            let left = (end - at) / PAGE_SIZE;
            if let Some(fp) = r.get_file_pages(left)? {
                let len = fp.pages * PAGE_SIZE;
                self.host
                    .map_file(&mem.region, at as usize, len as usize, fp.file, fp.offset)
                    .map_err(|e| err(e.into()))?;
                mapped += fp.pages;
                at += len;
                continue;
            }
            match r.get_page()? {
                Page::Zero => mem.write(at, &[0; PAGE_SIZE as usize]),
                Page::Data(d) => mem.write(at, &d[..]),
            };
            at += PAGE_SIZE;
        }
        Self::set_states(mem, off, count, PageState::Allocated);
        Ok(mapped)
    }

    fn load_record(
        &self,
        r: &mut UnitReader<'_>,
        tag: u8,
        gpa: u64,
        discards: &mut DiscardRun,
    ) -> ssm::Result<()> {
        let bad = || ssm::Error::callback(format!("page record {tag} at {gpa:#x} fits no range"));
        let range = self.range_at(gpa).ok_or_else(bad)?;
        let is_shadow = matches!(range.backing, Backing::Rom { .. });
        if is_shadow != (tag == REC_SHADOW) {
            return Err(bad());
        }
        let mem = range.writable_memory().ok_or_else(bad)?;
        let off = (gpa - range.start) & !(PAGE_SIZE - 1);
        let slot = mem.page(off).ok_or_else(bad)?;
        self.match_balloon(mem, off, 1, tag == REC_BALLOONED, discards)?;
        let state = match tag {
            REC_ZERO => PageState::Zero,
            REC_BALLOONED => PageState::Ballooned,
            REC_RAW | REC_SHADOW => match r.get_page()? {
                Page::Zero if !is_shadow => PageState::Zero,
                Page::Zero => {
                    mem.write(off, &[0; PAGE_SIZE as usize]);
                    PageState::Allocated
                }
                Page::Data(d) => {
                    mem.write(off, &d[..]);
                    PageState::Allocated
                }
            },
            _ => return Err(ssm::Error::callback(format!("unknown page record {tag}"))),
        };
        if state == PageState::Zero {
            discards.add(self, &mem.region, off, PAGE_SIZE)?;
        }
        slot.update(|mut p| {
            p.state = state;
            p.dirty = false;
            p
        });
        Ok(())
    }
}

/// Pages a load gives back to the host, gathered into runs so that a mostly
/// zero guest costs a few system calls rather than one per page.
#[derive(Default)]
struct DiscardRun {
    /// Region, first offset and length of the run being gathered.
    run: Option<(Arc<MmapRegion>, u64, u64)>,
}

impl DiscardRun {
    fn add(
        &mut self,
        map: &PhysMap,
        region: &Arc<MmapRegion>,
        off: u64,
        len: u64,
    ) -> ssm::Result<()> {
        if let Some((r, first, run_len)) = &mut self.run {
            if Arc::ptr_eq(r, region) && *first + *run_len == off {
                *run_len += len;
                return Ok(());
            }
        }
        self.flush(map)?;
        self.run = Some((Arc::clone(region), off, len));
        Ok(())
    }

    fn flush(&mut self, map: &PhysMap) -> ssm::Result<()> {
        if let Some((region, first, len)) = self.run.take() {
            map.host
                .discard(&region, first as usize, len as usize)
                .map_err(|e| err(e.into()))?;
        }
        Ok(())
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

    fn sync(&mut self) -> ssm::Result<()> {
        if let Some(log) = self.dirty_log.as_deref_mut() {
            self.map.read().sync_dirty_log(log).map_err(err)?;
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
        let sel = if self.live_since.is_some() {
            self.sync()?;
            Selection::Dirty
        } else {
            Selection::All
        };
        self.map.read().save_pages(w, sel)?;
        Ok(())
    }

    fn save_done(&mut self) -> ssm::Result<()> {
        if self.live_since.take().is_some() {
            self.set_monitoring(false)?;
        }
        Ok(())
    }

    fn load_exec(&mut self, r: &mut UnitReader<'_>, _version: u32, _pass: u32) -> ssm::Result<()> {
        self.map.write().load_pages(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phys::testing::ScriptedHost;
    use crate::phys::{KvmSlot, PhysMap, RomProtection};
    use ssm::{Manager, SaveOptions, StreamReader};

    fn layout(map: &mut PhysMap) {
        map.add_ram(0, 0x40000, "ram").unwrap();
        map.add_rom(
            0xf0000,
            0x2000,
            &[0x5a; 0x2000],
            RomProtection::ReadRomWriteIgnore,
            "rom",
        )
        .unwrap();
        let id = map.register_mmio2(0x2000, "vram").unwrap();
        map.map_mmio2(id, 0x1000_0000).unwrap();
    }

    fn shared() -> Arc<RwLock<PhysMap>> {
        let mut map = PhysMap::with_defaults();
        layout(&mut map);
        Arc::new(RwLock::new(map))
    }

    fn load_into(bytes: &[u8]) -> Arc<RwLock<PhysMap>> {
        let map = shared();
        let mut m = Manager::new();
        m.register(Box::new(PgmUnit::new(map.clone(), None)))
            .unwrap();
        m.load(StreamReader::from_slice(bytes).unwrap()).unwrap();
        map
    }

    fn byte(map: &Arc<RwLock<PhysMap>>, gpa: u64) -> u8 {
        let mut b = [0u8];
        map.read().read(gpa, &mut b).unwrap();
        b[0]
    }

    #[test]
    fn full_save_restores_ram_rom_mmio2_and_states() {
        let src = shared();
        {
            let mut m = src.write();
            m.write(0x1000, &[1]).unwrap();
            m.write(0x3000, &[0]).unwrap();
            m.balloon(&[0x5000], true).unwrap();
            m.set_rom_protection(0xf0000, RomProtection::ReadRamWriteRam)
                .unwrap();
            m.write(0xf1000, &[0x77]).unwrap();
            m.set_rom_protection(0xf0000, RomProtection::ReadRomWriteRam)
                .unwrap();
            m.write(0x1000_1000, &[9]).unwrap();
        }
        let mut m = Manager::new();
        m.register(Box::new(PgmUnit::new(src.clone(), None)))
            .unwrap();
        let mut bytes = Vec::new();
        m.save(&mut bytes, &SaveOptions::default()).unwrap();
        assert!(bytes.len() < 5 * 4096, "{}", bytes.len());

        let dst = load_into(&bytes);
        assert_eq!(byte(&dst, 0x1000), 1);
        assert_eq!(byte(&dst, 0x1000_1000), 9);
        let d = dst.read();
        assert_eq!(d.page_info(0x5000).state, PageState::Ballooned);
        assert_eq!(d.page_info(0x3000).state, PageState::Zero);
        assert_eq!(d.page_info(0x1000).state, PageState::Allocated);
        assert_eq!(
            d.ranges()[1].rom_protection,
            Some(RomProtection::ReadRomWriteRam)
        );
        drop(d);
        assert_eq!(byte(&dst, 0xf1000), 0x5a);
        dst.write()
            .set_rom_protection(0xf0000, RomProtection::ReadRamWriteIgnore)
            .unwrap();
        assert_eq!(byte(&dst, 0xf1000), 0x77);
        assert_eq!(byte(&dst, 0xf0000), 0x5a);
    }

    #[test]
    fn ballooned_pages_are_ballooned_again_with_the_host() {
        let save = |map: &Arc<RwLock<PhysMap>>| {
            let mut m = Manager::new();
            m.register(Box::new(PgmUnit::new(map.clone(), None)))
                .unwrap();
            let mut bytes = Vec::new();
            m.save(&mut bytes, &SaveOptions::default()).unwrap();
            bytes
        };
        let load = |map: &Arc<RwLock<PhysMap>>, bytes: &[u8]| {
            let mut m = Manager::new();
            m.register(Box::new(PgmUnit::new(map.clone(), None)))
                .unwrap();
            m.load(StreamReader::from_slice(bytes).unwrap()).unwrap();
        };
        let src = shared();
        src.read().write(0x2000, &[4; 0x2000]).unwrap();
        src.read().balloon(&[0x5000, 0x6000, 0x9000], true).unwrap();
        let ballooned = save(&src);
        let (host, dst) = recording_map();
        load(&dst, &ballooned);
        // GMM-like providers count what the guest gave: the load tells them.
        assert_eq!(host.ballooned(), [5, 6, 9]);
        assert_eq!(dst.read().page_info(0x6000).state, PageState::Ballooned);
        // A later state where the guest took the pages back and wrote one.
        src.read()
            .balloon(&[0x5000, 0x6000, 0x9000], false)
            .unwrap();
        src.read().write(0x6000, &[8; 0x1000]).unwrap();
        load(&dst, &save(&src));
        assert!(host.ballooned().is_empty());
        assert_eq!(byte(&dst, 0x6000), 8);
        assert_eq!(dst.read().page_info(0x5000).state, PageState::Zero);
    }

    #[test]
    fn load_rejects_a_different_layout_and_garbage() {
        let src = shared();
        let mut m = Manager::new();
        m.register(Box::new(PgmUnit::new(src, None))).unwrap();
        let mut bytes = Vec::new();
        m.save(&mut bytes, &SaveOptions::default()).unwrap();
        let other = Arc::new(RwLock::new(PhysMap::with_defaults()));
        other.write().add_ram(0, 0x1000, "ram").unwrap();
        let mut m2 = Manager::new();
        m2.register(Box::new(PgmUnit::new(other, None))).unwrap();
        assert!(m2.load(StreamReader::from_slice(&bytes).unwrap()).is_err());
    }

    fn recording_map() -> (Arc<ScriptedHost>, Arc<RwLock<PhysMap>>) {
        let host = Arc::new(ScriptedHost::default());
        let mut map = PhysMap::new(host.clone(), crate::phys::PhysConfig::default()).unwrap();
        layout(&mut map);
        (host, Arc::new(RwLock::new(map)))
    }

    /// RAM with a 20-page run at 0x10000, a short run at 0x30000 and a
    /// written zero page at 0x3a000.
    fn runs_source() -> Arc<RwLock<PhysMap>> {
        let src = shared();
        let m = src.read();
        for i in 0..20u64 {
            m.write(0x10000 + i * PAGE_SIZE, &[i as u8 + 1; 64])
                .unwrap();
        }
        m.write(0x30000, &[0xee; 8192]).unwrap();
        m.write(0x3a000, &[0]).unwrap();
        drop(m);
        src
    }

    fn check_runs_loaded(dst: &Arc<RwLock<PhysMap>>) {
        for i in 0..20u64 {
            assert_eq!(byte(dst, 0x10000 + i * PAGE_SIZE + 63), i as u8 + 1);
            assert_eq!(
                dst.read().page_info(0x10000 + i * PAGE_SIZE).state,
                PageState::Allocated
            );
        }
        assert_eq!(byte(dst, 0x31fff), 0xee);
        assert_eq!(byte(dst, 0xf1000), 0x5a);
        assert_eq!(dst.read().page_info(0x3a000).state, PageState::Zero);
    }

    #[test]
    fn runs_are_mapped_from_a_file_and_copied_from_other_sources() {
        let src = runs_source();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgm.sav");
        let mut m = Manager::new();
        m.register(Box::new(PgmUnit::new(src.clone(), None)))
            .unwrap();
        m.save_to_file(&path, &SaveOptions::default()).unwrap();
        let report = ssm::inspect(&path).unwrap();
        assert_eq!(report.units[0].records.run_pages, 20);

        let (host, dst) = recording_map();
        let mut m = Manager::new();
        m.register(Box::new(PgmUnit::new(dst.clone(), None)))
            .unwrap();
        m.load_from_file(&path).unwrap();
        let calls = host.mapped();
        assert_eq!(calls.len(), 1);
        assert_eq!((calls[0].0, calls[0].1), (0x10000, 20 * 4096));
        assert_eq!(calls[0].2 % 4096, 0);
        assert_eq!(dst.read().pages_mapped_from_file(), 20);
        check_runs_loaded(&dst);

        // A guest write to a mapped page is private; the file is unchanged.
        dst.read().write(0x10000, &[0x99]).unwrap();
        assert_eq!(byte(&dst, 0x10000), 0x99);
        let again = load_into(&std::fs::read(&path).unwrap());
        assert_eq!(byte(&again, 0x10000), 1);

        // The same stream from memory is copied.
        let (host, dst) = recording_map();
        let mut m = Manager::new();
        m.register(Box::new(PgmUnit::new(dst.clone(), None)))
            .unwrap();
        m.load(StreamReader::from_slice(&std::fs::read(&path).unwrap()).unwrap())
            .unwrap();
        assert!(host.mapped().is_empty());
        assert_eq!(dst.read().pages_mapped_from_file(), 0);
        check_runs_loaded(&dst);
    }

    #[test]
    fn a_compressed_save_keeps_runs_loadable_page_by_page() {
        let src = runs_source();
        let mut m = Manager::new();
        m.register(Box::new(PgmUnit::new(src, None))).unwrap();
        let mut bytes = Vec::new();
        let opts = SaveOptions {
            compress: true,
            ..SaveOptions::default()
        };
        m.save(&mut bytes, &opts).unwrap();
        check_runs_loaded(&load_into(&bytes));
    }

    #[test]
    fn a_run_outside_the_ram_is_an_error() {
        let src = runs_source();
        let mut m = Manager::new();
        m.register(Box::new(PgmUnit::new(src, None))).unwrap();
        let mut bytes = Vec::new();
        m.save(&mut bytes, &SaveOptions::default()).unwrap();
        // Make the run (its address follows from the zero pages before
        // it) longer than the RAM.
        let at = bytes
            .windows(5)
            .position(|w| w[0] == REC_RUN | REC_NEXT && w[1..] == 20u32.to_le_bytes())
            .unwrap();
        let mut bad = bytes.clone();
        bad[at + 1..at + 5].copy_from_slice(&60u32.to_le_bytes());
        let map = shared();
        let mut m = Manager::new();
        m.register(Box::new(PgmUnit::new(map, None))).unwrap();
        // pgm checks the run before the unit's CRC is checked at its end.
        let e = m.load(StreamReader::from_slice(&bad).unwrap()).unwrap_err();
        assert!(e.to_string().contains("fits no RAM range"), "{e}");
        // The same for the zero run before it (pages 0..0x10000).
        let at = bytes
            .windows(13)
            .position(|w| {
                w[0] == REC_ZERO_RUN && w[1..9] == [0; 8] && w[9..] == 16u32.to_le_bytes()
            })
            .unwrap();
        let mut bad = bytes.clone();
        bad[at + 9..at + 13].copy_from_slice(&1000u32.to_le_bytes());
        let mut m = Manager::new();
        m.register(Box::new(PgmUnit::new(shared(), None))).unwrap();
        let e = m.load(StreamReader::from_slice(&bad).unwrap()).unwrap_err();
        assert!(e.to_string().contains("zero run of 1000 pages"), "{e}");
    }

    /// Writes into the guest between passes, reporting them as a dirty log.
    struct FakeGuest {
        map: Arc<RwLock<PhysMap>>,
        passes: u32,
        slots_changed: u32,
    }

    impl DirtyLog for FakeGuest {
        fn dirty_bitmap(&mut self, slot: &KvmSlot) -> Result<Vec<u64>, String> {
            let words = (slot.size / PAGE_SIZE).div_ceil(64) as usize;
            let mut bm = vec![0u64; words];
            if slot.guest_addr == 0 && self.passes < 3 {
                self.passes += 1;
                // the "guest" wrote page 2 through KVM: bypass pgm
                let mem = self.map.read().guest_memory().unwrap();
                use vm_memory::Bytes;
                mem.write_obj(self.passes as u8, vm_memory::GuestAddress(0x2000))
                    .unwrap();
                bm[0] = 1 << 2;
            }
            Ok(bm)
        }

        fn slots_changed(&mut self, _slots: &crate::phys::SlotSet) -> Result<(), String> {
            self.slots_changed += 1;
            Ok(())
        }
    }

    #[test]
    fn live_save_resends_dirty_pages_and_finishes() {
        let src = shared();
        src.read().write(0x1000, &[1]).unwrap();
        let guest = FakeGuest {
            map: src.clone(),
            passes: 0,
            slots_changed: 0,
        };
        let mut m = Manager::new();
        m.register(Box::new(PgmUnit::new(src.clone(), Some(Box::new(guest)))))
            .unwrap();
        let mut bytes = Vec::new();
        let mut stopped = false;
        m.save_live(&mut bytes, &SaveOptions::default(), || {
            stopped = true;
            Ok(())
        })
        .unwrap();
        assert!(stopped);
        assert!(!src.read().write_monitoring());
        let report = ssm::inspect_stream(StreamReader::from_slice(&bytes).unwrap()).unwrap();
        assert!(report.units.len() >= 2, "{report:?}");
        let dst = load_into(&bytes);
        assert_eq!(byte(&dst, 0x1000), 1);
        assert_eq!(byte(&dst, 0x2000), byte(&src, 0x2000));
        assert_ne!(byte(&dst, 0x2000), 0);
    }
}
