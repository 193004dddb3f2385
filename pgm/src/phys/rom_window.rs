//! Write windows on ROM: ROM pages that KVM maps writable for a moment (one
//! guest instruction), after which their bytes are put back.
//!
//! Some KVMs cannot complete an instruction whose implicit write (the
//! accessed bit of a segment descriptor the CPU loads) hits a read-only
//! slot: the vCPU faults on the same write forever. A PC drops such a
//! write and runs on. A window lets the instruction complete against the
//! memory the guest reads, then restores that memory: the write is
//! dropped, as on a PC, and the ROM reads as before.

use super::error::PhysError;
use super::map::PhysMap;
use super::page::{PAGE_OFFSET_MASK, PAGE_SIZE};
use super::range::{Backing, RomProtection};

/// ROM pages opened for writes by [`PhysMap::open_rom_window`], with the
/// bytes to put back when [`PhysMap::close_rom_window`] closes them.
#[derive(Debug)]
#[must_use = "a ROM window stays open until closed"]
pub struct RomWindow {
    pages: Vec<(u64, Vec<u8>)>,
}

impl RomWindow {
    /// The guest-physical addresses of the opened pages.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.pages.iter().map(|(gpa, _)| *gpa)
    }

    /// Whether no page was opened (none of the addresses was read-only ROM).
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }
}

impl PhysMap {
    /// Maps the read-only ROM pages among the pages holding `addrs` (any
    /// address in a page) writable in the KVM slots, remembering their
    /// bytes. Addresses outside read-only ROM are skipped. Apply the slot
    /// changes, let the guest run one instruction, then close the window.
    ///
    /// ```
    /// use pgm::phys::{PhysMap, RomProtection};
    /// let mut map = PhysMap::with_defaults();
    /// map.add_rom(0x10000, 0x2000, &[0x90; 0x2000], RomProtection::ReadRomWriteIgnore, "rom").unwrap();
    /// let window = map.open_rom_window(&[0x11008]).unwrap();
    /// let slot = map.kvm_slots().slots.iter().find(|s| s.guest_addr == 0x11000).unwrap();
    /// assert!(!slot.read_only);
    /// // what KVM's writable mapping lets the guest do
    /// map.write_past_rom_protection(0x11008, &[0x91]).unwrap();
    /// assert_eq!(map.close_rom_window(window).unwrap(), 1);
    /// assert!(map.kvm_slots().slots.iter().all(|s| s.read_only));
    /// let mut b = [0u8; 1];
    /// map.read(0x11008, &mut b).unwrap();
    /// assert_eq!(b, [0x90]);
    /// ```
    pub fn open_rom_window(&mut self, addrs: &[u64]) -> Result<RomWindow, PhysError> {
        let mut pages: Vec<u64> = addrs.iter().map(|a| a & !PAGE_OFFSET_MASK).collect();
        pages.sort_unstable();
        pages.dedup();
        let mut window = RomWindow { pages: Vec::new() };
        for page in pages {
            if self.slots.open_rom.contains(&page) {
                continue;
            }
            let Some(r) = self.range_at(page) else {
                continue;
            };
            let Backing::Rom { prot, .. } = &r.backing else {
                continue;
            };
            if *prot == RomProtection::ReadRamWriteRam {
                continue; // writable in KVM already
            }
            let Some(m) = r.readable_memory() else {
                continue;
            };
            let mut bytes = vec![0u8; PAGE_SIZE as usize];
            m.read(page - r.start, &mut bytes);
            window.pages.push((page, bytes));
        }
        self.slots
            .open_rom
            .extend(window.pages.iter().map(|(p, _)| *p));
        self.refresh_slots();
        Ok(window)
    }

    /// Closes `window`: its pages are read-only again and hold the bytes
    /// they had when it opened. Returns how many bytes the guest had
    /// changed (and were put back).
    pub fn close_rom_window(&mut self, window: RomWindow) -> Result<usize, PhysError> {
        let mut changed = 0;
        for (page, saved) in &window.pages {
            self.slots.open_rom.remove(page);
            let memory = self
                .range_at(*page)
                .and_then(|r| Some((r.start, r.readable_memory()?)));
            let Some((start, m)) = memory else {
                return Err(PhysError::NoSuchRange(format!("ROM window page {page:#x}")));
            };
            let mut now = vec![0u8; PAGE_SIZE as usize];
            m.read(page - start, &mut now);
            changed += now.iter().zip(saved).filter(|(a, b)| a != b).count();
            m.write(page - start, saved);
        }
        self.refresh_slots();
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use crate::phys::{PhysMap, RomProtection};

    fn map() -> PhysMap {
        let mut map = PhysMap::with_defaults();
        map.add_ram(0, 0x10000, "ram").unwrap();
        map.add_rom(
            0x10000,
            0x4000,
            &[0x90; 0x4000],
            RomProtection::ReadRomWriteIgnore,
            "rom",
        )
        .unwrap();
        map
    }

    fn writable(map: &PhysMap) -> Vec<(u64, u64)> {
        let slots = &map.kvm_slots().slots;
        slots
            .iter()
            .filter(|s| !s.read_only)
            .map(|s| (s.guest_addr, s.size))
            .collect()
    }

    #[test]
    fn a_window_opens_only_rom_pages_and_closes_back_to_the_same_slots() {
        let mut map = map();
        let before = map.kvm_slots().slots.clone();
        // RAM (skipped), two addresses in one ROM page, the last ROM page,
        // unassigned space (skipped).
        let window = map
            .open_rom_window(&[0x8000, 0x10010, 0x10ff8, 0x13000, 0x20000])
            .unwrap();
        assert_eq!(window.pages().collect::<Vec<_>>(), vec![0x10000, 0x13000]);
        assert_eq!(
            writable(&map),
            vec![(0, 0x10000), (0x10000, 0x1000), (0x13000, 0x1000)]
        );
        // the pages between stay read-only
        let ro: Vec<_> = map
            .kvm_slots()
            .slots
            .iter()
            .filter(|s| s.read_only)
            .collect();
        assert_eq!((ro[0].guest_addr, ro[0].size), (0x11000, 0x2000));
        map.write_past_rom_protection(0x10010, &[1, 2]).unwrap();
        assert_eq!(map.close_rom_window(window).unwrap(), 2);
        assert_eq!(map.kvm_slots().slots, before);
        let mut b = [0u8; 2];
        map.read(0x10010, &mut b).unwrap();
        assert_eq!(b, [0x90, 0x90]);
    }

    #[test]
    fn a_window_keeps_the_shadow_the_guest_reads() {
        let mut map = map();
        map.set_rom_protection(0x10000, RomProtection::ReadRamWriteIgnore)
            .unwrap();
        map.write_past_rom_protection(0x10000, &[0x42]).unwrap();
        let window = map.open_rom_window(&[0x10000]).unwrap();
        assert!(!window.is_empty());
        map.write_past_rom_protection(0x10000, &[0x43]).unwrap();
        assert_eq!(map.close_rom_window(window).unwrap(), 1);
        let mut b = [0u8; 1];
        map.read(0x10000, &mut b).unwrap();
        assert_eq!(b, [0x42]);
        // read-RAM/write-RAM pages are writable already: nothing to open
        map.set_rom_protection(0x10000, RomProtection::ReadRamWriteRam)
            .unwrap();
        assert!(map.open_rom_window(&[0x10000]).unwrap().is_empty());
    }
}
