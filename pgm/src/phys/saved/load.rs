//! Loading: page records back into a map with the same memory-backed
//! ranges, mapping page runs from files and discarding zero pages in runs.

use std::sync::Arc;

use crate::phys::write_bitmap::TrackedRegion;
use ssm::{Page, UnitReader};

use super::{
    REC_BALLOONED, REC_END, REC_NEXT, REC_RAW, REC_ROM_PROT, REC_RUN, REC_SHADOW, REC_ZERO,
    REC_ZERO_RUN, err, kind_code, prot_from,
};
use crate::phys::map::PhysMap;
use crate::phys::page::{PAGE_SIZE, PageState};
use crate::phys::range::{Backing, Memory};

impl PhysMap {
    /// Reads what [`save_pages`](Self::save_pages) wrote into this map,
    /// which must have the same memory-backed ranges.
    pub(super) fn load_pages(&mut self, r: &mut UnitReader<'_>) -> ssm::Result<()> {
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
        if count == 0
            || !gpa.is_multiple_of(PAGE_SIZE)
            || matches!(range.backing, Backing::Rom { .. })
        {
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
    run: Option<(Arc<TrackedRegion>, u64, u64)>,
}

impl DiscardRun {
    fn add(
        &mut self,
        map: &PhysMap,
        region: &Arc<TrackedRegion>,
        off: u64,
        len: u64,
    ) -> ssm::Result<()> {
        if let Some((r, first, run_len)) = &mut self.run
            && Arc::ptr_eq(r, region)
            && *first + *run_len == off
        {
            *run_len += len;
            return Ok(());
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
