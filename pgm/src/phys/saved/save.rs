//! Saving: the range table and page records, with consecutive addresses
//! elided and non-zero pages gathered into runs.

use ssm::UnitWriter;

use super::{
    MIN_RUN_PAGES, REC_BALLOONED, REC_END, REC_NEXT, REC_RAW, REC_ROM_PROT, REC_RUN, REC_SHADOW,
    REC_ZERO, REC_ZERO_RUN, RUN_CHUNK_PAGES, kind_code, prot_code,
};
use crate::phys::map::PhysMap;
use crate::phys::page::{PAGE_SIZE, PageState};
use crate::phys::range::{Backing, Memory, PhysRange};
use crate::phys::rom_patch::RomPatches;

/// Which pages a pass writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Selection {
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

    /// Writes one page of `mem`; a ROM shadow page without the debugger's
    /// patches (`unpatch`).
    fn content(
        &mut self,
        tag: u8,
        gpa: u64,
        mem: &Memory,
        offset: u64,
        unpatch: Option<&RomPatches>,
    ) -> ssm::Result<()> {
        self.tag(tag, gpa)?;
        mem.read(offset, &mut self.page[..]);
        if let Some(patches) = unpatch {
            patches.unpatch_page(gpa, true, &mut self.page[..]);
        }
        self.pages += 1;
        self.w.put_page(&self.page)
    }

    /// Adds a zero-state page to the pending zero run (writing that first
    /// if the page does not continue it).
    fn zero_page(&mut self, gpa: u64) -> ssm::Result<()> {
        if let Some((first, count)) = &mut self.zeros
            && *first + *count * PAGE_SIZE == gpa
            && *count < u64::from(u32::MAX)
        {
            *count += 1;
            return Ok(());
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
                    None,
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
    pub(super) fn saved_ranges(&self) -> impl Iterator<Item = &PhysRange> {
        self.ranges
            .iter()
            .filter(|r| !matches!(r.backing, Backing::Mmio))
    }

    /// Writes the range table and the selected pages; clears the dirty bit
    /// of every page written. Returns the pages written.
    pub(super) fn save_pages(&self, w: &mut UnitWriter<'_>, sel: Selection) -> ssm::Result<u64> {
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
                    _ if shadow => {
                        rw.content(REC_SHADOW, gpa, mem, off, Some(&self.rom_patches))?
                    }
                    PageState::Ballooned => rw.tag(REC_BALLOONED, gpa)?,
                    _ => rw.content(REC_RAW, gpa, mem, off, None)?,
                }
            }
            rw.flush_pending(mem)?;
        }
        rw.w.put_u8(REC_END)?;
        Ok(rw.pages)
    }
}
