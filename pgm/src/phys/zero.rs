//! Zero pages: the scan that gives all-zero pages back to the host, reset,
//! and ballooning.

use super::error::PhysError;
use super::map::PhysMap;
use super::page::{PAGE_SHIFT, PAGE_SIZE, PageState};
use super::range::{Backing, Memory};

/// Outcome of [`PhysMap::scan_zero_pages`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZeroScanReport {
    /// RAM pages examined.
    pub scanned: u64,
    /// Resident all-zero pages given back to the host.
    pub freed: u64,
    /// Zero-state pages found written (now allocated).
    pub newly_allocated: u64,
}

fn discard_run(map: &PhysMap, mem: &Memory, run: &mut Option<(u64, u64)>) -> Result<(), PhysError> {
    if let Some((first, count)) = run.take() {
        map.host.discard(
            &mem.region,
            (first * PAGE_SIZE) as usize,
            (count * PAGE_SIZE) as usize,
        )?;
    }
    Ok(())
}

impl PhysMap {
    /// The backing of every RAM range, in address order.
    pub(super) fn ram(&self) -> impl Iterator<Item = &Memory> {
        self.ranges.iter().filter_map(|r| match &r.backing {
            Backing::Ram(mem) => Some(mem),
            _ => None,
        })
    }

    /// Scans RAM: resident pages that hold only zeros are given back to the
    /// host (`madvise(DONTNEED)`) and return to the zero state; resident
    /// non-zero pages still in the zero state (written by the guest through
    /// KVM) become allocated. Ballooned and shared pages are left alone.
    ///
    /// Call it with nothing else writing guest RAM, the vCPUs stopped and
    /// the devices quiesced: a page written between the check and the
    /// discard would lose the write. A save, which leaves the devices
    /// running, wants [`allocate_written_zero_pages`](Self::allocate_written_zero_pages).
    pub fn scan_zero_pages(&self) -> Result<ZeroScanReport, PhysError> {
        let mut report = ZeroScanReport::default();
        let mut resident = Vec::new();
        for mem in self.ram() {
            self.host
                .residency(&mem.region, 0, mem.region.size(), &mut resident)?;
            let mut run: Option<(u64, u64)> = None;
            for (i, slot) in mem.pages.iter().enumerate() {
                report.scanned += 1;
                let idx = i as u64;
                let info = slot.get();
                let skip = matches!(info.state, PageState::Ballooned | PageState::Shared);
                if skip || !resident.get(i).copied().unwrap_or(false) {
                    discard_run(self, mem, &mut run)?;
                    continue;
                }
                if mem.page_is_zero(idx << PAGE_SHIFT) {
                    run = match run {
                        Some((f, n)) if f + n == idx => Some((f, n + 1)),
                        other => {
                            let mut o = other;
                            discard_run(self, mem, &mut o)?;
                            Some((idx, 1))
                        }
                    };
                    slot.update(|mut p| {
                        p.state = PageState::Zero;
                        p
                    });
                    report.freed += 1;
                } else {
                    discard_run(self, mem, &mut run)?;
                    if info.state == PageState::Zero {
                        slot.update(|mut p| {
                            p.state = PageState::Allocated;
                            p
                        });
                        report.newly_allocated += 1;
                    }
                }
            }
            discard_run(self, mem, &mut run)?;
        }
        Ok(report)
    }

    /// Brings the page states up to date with writes `pgm` did not see:
    /// resident zero-state pages that hold data (written by the guest
    /// through KVM) become allocated. Returns how many did.
    ///
    /// Unlike [`scan_zero_pages`](Self::scan_zero_pages) it only reads guest
    /// memory and never moves a page back to the zero state, so it is safe
    /// while devices go on writing guest RAM (what they write through
    /// [`guest_memory`](Self::guest_memory) is tracked on its own): a save
    /// calls it with the vCPUs stopped so that no page the guest wrote is
    /// saved as a zero page.
    ///
    /// ```
    /// use pgm::phys::{PageState, PhysMap};
    /// let mut map = PhysMap::with_defaults();
    /// map.add_ram(0, 0x10000, "ram").unwrap();
    /// assert_eq!(map.allocate_written_zero_pages().unwrap(), 0);
    /// assert_eq!(map.page_info(0x3000).state, PageState::Zero);
    /// ```
    pub fn allocate_written_zero_pages(&self) -> Result<u64, PhysError> {
        let mut allocated = 0;
        let mut resident = Vec::new();
        for mem in self.ram() {
            self.host
                .residency(&mem.region, 0, mem.region.size(), &mut resident)?;
            for (i, slot) in mem.pages.iter().enumerate() {
                let written = slot.get().state == PageState::Zero
                    && resident.get(i).copied().unwrap_or(false)
                    && !mem.page_is_zero((i as u64) << PAGE_SHIFT);
                if written {
                    slot.update(|mut p| {
                        if p.state == PageState::Zero {
                            p.state = PageState::Allocated;
                        }
                        p
                    });
                    allocated += 1;
                }
            }
        }
        Ok(allocated)
    }

    /// Number of RAM pages currently occupying host memory.
    pub fn resident_ram_pages(&self) -> Result<u64, PhysError> {
        let mut resident = Vec::new();
        let mut count = 0;
        for mem in self.ram() {
            self.host
                .residency(&mem.region, 0, mem.region.size(), &mut resident)?;
            count += resident.iter().filter(|&&r| r).count() as u64;
        }
        Ok(count)
    }

    /// Resets the map as a machine reset does: the balloon's pages return
    /// to the guest ([`deflate_balloon`](Self::deflate_balloon)), RAM is
    /// zeroed and given back to the host (unless
    /// [`PhysConfig::zero_ram_on_reset`] is off), ROM protection returns to
    /// its initial mode and the shadow to the ROM image, the A20 gate is
    /// enabled. MMIO2 belongs to devices and is kept. When the host refuses
    /// the balloon's pages, nothing changed.
    ///
    /// [`PhysConfig::zero_ram_on_reset`]: super::PhysConfig::zero_ram_on_reset
    pub fn reset(&mut self) -> Result<(), PhysError> {
        self.deflate_balloon()?;
        self.set_a20(true);
        let zero = self.config.zero_ram_on_reset;
        for range in &mut self.ranges {
            match &mut range.backing {
                Backing::Ram(mem) if zero => {
                    self.host.discard(&mem.region, 0, mem.region.size())?;
                    for p in mem.pages.iter() {
                        p.update(|mut i| {
                            i.state = PageState::Zero;
                            i.dirty = true;
                            i
                        });
                    }
                }
                Backing::Rom {
                    rom,
                    shadow,
                    prot,
                    initial,
                } => {
                    *prot = *initial;
                    let mut page = vec![0u8; PAGE_SIZE as usize];
                    for (i, (src, dst)) in rom.pages.iter().zip(shadow.pages.iter()).enumerate() {
                        let off = i as u64 * PAGE_SIZE;
                        rom.read(off, &mut page);
                        shadow.write(off, &page);
                        dst.set(src.get().with_type(dst.get().page_type));
                    }
                }
                _ => {}
            }
        }
        self.refresh_slots();
        Ok(())
    }

    /// Gives every ballooned RAM page back to the guest as a zero page, as
    /// a machine reset does (the guest's balloon driver starts over; so does
    /// VirtualBox's PGM, whose reset turns ballooned pages into zero pages
    /// and resets GMM's balloon). All or nothing: when the host refuses a
    /// run of pages, the runs it took back before are ballooned again and
    /// no page state changed. Returns how many pages the guest got back.
    ///
    /// ```
    /// use pgm::phys::{PageState, PhysMap};
    /// let mut map = PhysMap::with_defaults();
    /// map.add_ram(0, 0x10000, "ram").unwrap();
    /// map.balloon(&[0x1000, 0x2000, 0x8000], true).unwrap();
    /// assert_eq!(map.deflate_balloon().unwrap(), 3);
    /// assert_eq!(map.page_info(0x2000).state, PageState::Zero);
    /// assert_eq!(map.deflate_balloon().unwrap(), 0);
    /// ```
    pub fn deflate_balloon(&self) -> Result<u64, PhysError> {
        let mut given: Vec<(&Memory, usize, usize)> = Vec::new();
        for mem in self.ram() {
            for (first, count) in ballooned_runs(mem) {
                let (offset, len) = (first * PAGE_SIZE as usize, count * PAGE_SIZE as usize);
                if let Err(e) = self.host.balloon(&mem.region, offset, len, false) {
                    for &(mem, offset, len) in given.iter().rev() {
                        // The pages were the guest's a moment ago: taking
                        // them back cannot be refused for room.
                        self.host.balloon(&mem.region, offset, len, true)?;
                    }
                    return Err(e.into());
                }
                given.push((mem, offset, len));
            }
        }
        let mut pages = 0;
        for &(mem, offset, len) in &given {
            let first = offset / PAGE_SIZE as usize;
            for slot in &mem.pages[first..first + len / PAGE_SIZE as usize] {
                slot.update(|mut p| {
                    p.state = PageState::Zero;
                    p
                });
                pages += 1;
            }
        }
        Ok(pages)
    }

    /// Inflates (`true`) or deflates the balloon over the RAM pages at
    /// `gpas`: inflated pages are given back to the host and marked
    /// ballooned; deflated pages (which must be ballooned) return to the
    /// zero state. All addresses are checked before any page changes.
    pub fn balloon(&self, gpas: &[u64], inflate: bool) -> Result<(), PhysError> {
        let mut pages = Vec::with_capacity(gpas.len());
        for &gpa in gpas {
            let range = self.range_at(gpa);
            let Some((range, Backing::Ram(mem))) = range.map(|r| (r, &r.backing)) else {
                return Err(PhysError::NoSuchRange(format!("no RAM at {gpa:#x}")));
            };
            let off = (gpa - range.start) & !(PAGE_SIZE - 1);
            let slot = mem
                .page(off)
                .ok_or_else(|| PhysError::NoSuchRange(format!("no RAM page at {gpa:#x}")))?;
            let state = slot.get().state;
            if !inflate && state != PageState::Ballooned {
                return Err(PhysError::PageState {
                    gpa,
                    state: state.name(),
                });
            }
            pages.push((mem, off, slot));
        }
        for (mem, off, slot) in pages {
            self.host
                .balloon(&mem.region, off as usize, PAGE_SIZE as usize, inflate)?;
            slot.update(|mut i| {
                i.state = if inflate {
                    PageState::Ballooned
                } else {
                    PageState::Zero
                };
                i
            });
        }
        Ok(())
    }
}

/// The runs of ballooned pages of `mem`: first page and count.
fn ballooned_runs(mem: &Memory) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, slot) in mem.pages.iter().enumerate() {
        if slot.get().state != PageState::Ballooned {
            continue;
        }
        match runs.last_mut() {
            Some((first, count)) if *first + *count == i => *count += 1,
            _ => runs.push((i, 1)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use crate::phys::{PageState, PhysConfig, PhysMap, RomProtection};

    #[test]
    fn scan_frees_zero_pages_and_finds_written_ones() {
        let mut map = PhysMap::with_defaults();
        map.add_ram(0, 0x10000, "ram").unwrap();
        map.write(0x1000, &[1]).unwrap();
        map.write(0x2000, &[0]).unwrap();
        map.write(0x3000, &[0]).unwrap();
        map.write(0x5000, &[0]).unwrap();
        let r = map.scan_zero_pages().unwrap();
        assert_eq!(r.scanned, 16);
        assert_eq!(r.freed, 3);
        assert_eq!(map.page_info(0x1000).state, PageState::Allocated);
        assert_eq!(map.page_info(0x2000).state, PageState::Zero);
        let again = map.scan_zero_pages().unwrap();
        assert_eq!(again.freed, 0);
    }

    #[test]
    fn pages_written_behind_pgm_become_allocated_and_nothing_is_discarded() {
        let mut map = PhysMap::with_defaults();
        map.add_ram(0, 0x10000, "ram").unwrap();
        map.write(0x2000, &[0]).unwrap();
        // A vCPU (through KVM) writes page 3, which pgm still takes for zero.
        let host = map.ram().next().unwrap().region.as_ptr();
        // SAFETY: 0x3000 lies inside the 64 KiB mapping of the RAM range.
        unsafe { host.add(0x3000).write(9) };
        assert_eq!(map.page_info(0x3000).state, PageState::Zero);
        assert_eq!(map.allocate_written_zero_pages().unwrap(), 1);
        assert_eq!(map.page_info(0x3000).state, PageState::Allocated);
        // An allocated page of zeros stays allocated: a device may be
        // writing it right now.
        assert_eq!(map.page_info(0x2000).state, PageState::Allocated);
        assert_eq!(map.page_info(0x5000).state, PageState::Zero);
        let mut b = [0u8];
        map.read(0x3000, &mut b).unwrap();
        assert_eq!(b, [9]);
        assert_eq!(map.allocate_written_zero_pages().unwrap(), 0);
    }

    #[test]
    fn reset_zeroes_ram_and_restores_rom() {
        let mut map = PhysMap::with_defaults();
        map.add_ram(0, 0x10000, "ram").unwrap();
        map.add_rom(
            0xf_0000,
            0x1000,
            &[0x11; 16],
            RomProtection::ReadRomWriteRam,
            "rom",
        )
        .unwrap();
        map.write(0x10, &[5]).unwrap();
        map.write(0xf_0000, &[0x22]).unwrap();
        map.set_rom_protection(0xf_0000, RomProtection::ReadRamWriteRam)
            .unwrap();
        map.set_a20(false);
        let mut b = [0u8];
        map.read(0xf_0000, &mut b).unwrap();
        assert_eq!(b[0], 0x22);
        map.reset().unwrap();
        assert!(map.a20_enabled());
        map.read(0x10, &mut b).unwrap();
        assert_eq!(b[0], 0);
        map.read(0xf_0000, &mut b).unwrap();
        assert_eq!(b[0], 0x11);
        map.set_rom_protection(0xf_0000, RomProtection::ReadRamWriteRam)
            .unwrap();
        map.read(0xf_0000, &mut b).unwrap();
        assert_eq!(b[0], 0x11);
        assert_eq!(
            map.ranges()[1].rom_protection,
            Some(RomProtection::ReadRamWriteRam)
        );

        let mut keep = PhysMap::new(
            std::sync::Arc::new(crate::phys::MmapHostMemory::new()),
            PhysConfig {
                zero_ram_on_reset: false,
                ..PhysConfig::default()
            },
        )
        .unwrap();
        keep.add_ram(0, 0x1000, "ram").unwrap();
        keep.write(0, &[9]).unwrap();
        keep.reset().unwrap();
        keep.read(0, &mut b).unwrap();
        assert_eq!(b[0], 9);
    }

    #[test]
    fn balloon_inflate_and_deflate() {
        let mut map = PhysMap::with_defaults();
        map.add_ram(0, 0x4000, "ram").unwrap();
        map.write(0x1000, &[7]).unwrap();
        map.balloon(&[0x1000], true).unwrap();
        assert_eq!(map.page_info(0x1000).state, PageState::Ballooned);
        let mut b = [1u8];
        map.read(0x1000, &mut b).unwrap();
        assert_eq!(b[0], 0);
        map.balloon(&[0x1000], false).unwrap();
        assert_eq!(map.page_info(0x1000).state, PageState::Zero);
        assert!(map.balloon(&[0x10_0000], true).is_err());
        // deflating a page that is not ballooned changes nothing
        map.balloon(&[0x2000], true).unwrap();
        assert!(matches!(
            map.balloon(&[0x2000, 0x3000], false),
            Err(crate::phys::PhysError::PageState { gpa: 0x3000, .. })
        ));
        assert_eq!(map.page_info(0x2000).state, PageState::Ballooned);
        map.write(0x3000, &[1]).unwrap();
        assert!(map.balloon(&[0x3000], false).is_err());
        assert_eq!(map.page_info(0x3000).state, PageState::Allocated);
    }
}

#[cfg(test)]
mod deferred_balloon_tests {
    use std::sync::Arc;

    use crate::phys::HostMemory;
    use crate::phys::testing::ScriptedHost;
    use crate::phys::{PageState, PhysConfig, PhysMap};

    #[test]
    fn ballooned_pages_read_zero_before_the_host_took_them() {
        let host = Arc::new(ScriptedHost::default());
        let mut map = PhysMap::new(host, PhysConfig::default()).unwrap();
        map.add_ram(0, 0x3000, "ram").unwrap();
        map.write(0x1000, &[7; 0x2000]).unwrap();
        map.balloon(&[0x1000], true).unwrap();
        assert_eq!(map.page_info(0x1000).state, PageState::Ballooned);
        let mut buf = [1u8; 0x2000];
        map.read(0x1000, &mut buf).unwrap();
        assert!(buf[..0x1000].iter().all(|&b| b == 0));
        assert!(buf[0x1000..].iter().all(|&b| b == 7));
    }

    #[test]
    fn a_reset_the_host_refuses_a_ballooned_page_changes_nothing() {
        let host = Arc::new(ScriptedHost::default());
        let mut map = PhysMap::new(host.clone(), PhysConfig::default()).unwrap();
        map.add_ram(0, 0x8000, "ram").unwrap();
        map.write(0x5000, &[9]).unwrap();
        map.balloon(&[0x1000, 0x3000], true).unwrap();
        map.set_a20(false);
        // The host no longer holds page 3 as ballooned (taken back behind
        // pgm's back): it refuses to give it back again.
        let region = std::sync::Arc::clone(&map.ram().next().unwrap().region);
        host.balloon(&region, 0x3000, 0x1000, false).unwrap();
        assert!(map.reset().is_err());
        // Both pages are still ballooned, RAM and A20 untouched.
        for gpa in [0x1000, 0x3000] {
            assert_eq!(map.page_info(gpa).state, PageState::Ballooned);
        }
        let mut b = [0u8];
        map.read(0x5000, &mut b).unwrap();
        assert_eq!(b, [9]);
        assert!(!map.a20_enabled());
        // With page 3 in the host's balloon again, the reset goes through:
        // the host holds page 1 too (given back before page 3 was refused,
        // then ballooned again), or it would refuse that one.
        host.balloon(&region, 0x3000, 0x1000, true).unwrap();
        map.reset().unwrap();
        for gpa in [0x1000, 0x3000, 0x5000] {
            assert_eq!(map.page_info(gpa).state, PageState::Zero);
        }
        assert!(map.a20_enabled());
    }
}
