//! Writes past ROM write protection, as a debugger makes them (VirtualBox's
//! debugger writes through PGM past access handlers): the byte lands in the
//! memory the guest reads, and the ROM's own byte is remembered so that
//! dumps show the ROM as it is without the debugger's patches.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use super::error::PhysError;
use super::map::PhysMap;
use super::page::{PAGE_OFFSET_MASK, PAGE_SIZE};
use super::range::Backing;

/// A byte the debugger changed in ROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Patch {
    /// The byte before the first patch.
    original: u8,
    /// Whether the patch went to the shadow RAM (the guest read the shadow).
    in_shadow: bool,
}

/// The ROM bytes patched past write protection, by guest-physical address.
#[derive(Debug, Default)]
pub(crate) struct RomPatches(Mutex<BTreeMap<u64, Patch>>);

impl RomPatches {
    /// Restores the original bytes of the patches in `page` (the page at
    /// `gpa`, read from the shadow RAM if `shadow`).
    pub(crate) fn unpatch_page(&self, gpa: u64, shadow: bool, page: &mut [u8]) {
        let patches = self.0.lock();
        for (&at, p) in patches.range(gpa..gpa + page.len() as u64) {
            if p.in_shadow == shadow {
                page[(at - gpa) as usize] = p.original;
            }
        }
    }
}

impl PhysMap {
    /// Writes `data` at `gpa` the way a debugger does: ROM bytes land in the
    /// memory the guest currently reads, whatever the ROM protection (so an
    /// `int3` in ROM is executed), and their original bytes are remembered
    /// until written back ([`dump`](PhysMap::dump) shows the originals);
    /// everything else is written as by [`write`](PhysMap::write).
    ///
    /// ```
    /// use pgm::phys::{PhysMap, RomProtection};
    /// let mut map = PhysMap::with_defaults();
    /// map.add_rom(0x10000, 0x1000, &[0x90; 16], RomProtection::ReadRomWriteIgnore, "rom").unwrap();
    /// map.write(0x10000, &[0xcc]).unwrap(); // dropped by write protection
    /// map.write_past_rom_protection(0x10000, &[0xcc]).unwrap();
    /// let mut b = [0u8; 1];
    /// map.read(0x10000, &mut b).unwrap();
    /// assert_eq!(b, [0xcc]);
    /// assert_eq!(map.rom_patches(), vec![(0x10000, 0x90)]);
    /// map.write_past_rom_protection(0x10000, &[0x90]).unwrap(); // restored
    /// assert!(map.rom_patches().is_empty());
    /// ```
    pub fn write_past_rom_protection(&self, gpa: u64, data: &[u8]) -> Result<(), PhysError> {
        let mask = self.a20_mask();
        let mut done = 0usize;
        while done < data.len() {
            let addr = gpa.wrapping_add(done as u64) & mask;
            let in_page = (PAGE_SIZE - (addr & PAGE_OFFSET_MASK)) as usize;
            let chunk = &data[done..done + in_page.min(data.len() - done)];
            match self.range_at(addr).map(|r| (r.start, &r.backing)) {
                Some((
                    start,
                    Backing::Rom {
                        rom, shadow, prot, ..
                    },
                )) => {
                    let (mem, in_shadow) = if prot.reads_rom() {
                        (rom, false)
                    } else {
                        (shadow, true)
                    };
                    let mut patches = self.rom_patches.0.lock();
                    for (i, &byte) in chunk.iter().enumerate() {
                        let at = addr + i as u64;
                        let mut old = [0u8];
                        mem.read(at - start, &mut old);
                        let patch = *patches.entry(at).or_insert(Patch {
                            original: old[0],
                            in_shadow,
                        });
                        mem.write(at - start, &[byte]);
                        if patch.in_shadow == in_shadow && patch.original == byte {
                            patches.remove(&at);
                        }
                    }
                }
                _ => self.write(addr, chunk)?,
            }
            done += chunk.len();
        }
        Ok(())
    }

    /// The ROM bytes patched by
    /// [`write_past_rom_protection`](PhysMap::write_past_rom_protection) and
    /// not written back: (guest-physical address, original byte).
    pub fn rom_patches(&self) -> Vec<(u64, u8)> {
        self.rom_patches
            .0
            .lock()
            .iter()
            .map(|(&at, p)| (at, p.original))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phys::RomProtection;

    fn map() -> PhysMap {
        let mut map = PhysMap::with_defaults();
        map.add_ram(0, 0x10000, "ram").unwrap();
        map.add_rom(
            0x10000,
            0x2000,
            &[0x90; 0x2000],
            RomProtection::ReadRomWriteIgnore,
            "rom",
        )
        .unwrap();
        map
    }

    #[test]
    fn patches_cross_into_ram_and_dumps_show_the_originals() {
        let map = map();
        // The last RAM byte and the first two ROM bytes, in one write.
        map.write_past_rom_protection(0xffff, &[1, 0xcc, 0xcc])
            .unwrap();
        let mut b = [0u8; 3];
        map.read(0xffff, &mut b).unwrap();
        assert_eq!(b, [1, 0xcc, 0xcc]);
        assert_eq!(map.rom_patches(), vec![(0x10000, 0x90), (0x10001, 0x90)]);
        let mut out = std::io::Cursor::new(Vec::new());
        map.dump(&mut out, true).unwrap();
        assert_eq!(&out.get_ref()[0xffff..0x10002], &[1, 0x90, 0x90]);
        // A second patch of the same byte keeps the first original.
        map.write_past_rom_protection(0x10000, &[0xf4]).unwrap();
        map.write_past_rom_protection(0x10000, &[0x90]).unwrap();
        assert_eq!(map.rom_patches(), vec![(0x10001, 0x90)]);
    }

    #[test]
    fn patches_follow_the_memory_the_guest_reads() {
        let mut map = map();
        map.set_rom_protection(0x10000, RomProtection::ReadRamWriteIgnore)
            .unwrap();
        map.write_past_rom_protection(0x10000, &[0xcc]).unwrap();
        let mut b = [0u8; 1];
        map.read(0x10000, &mut b).unwrap();
        assert_eq!(b, [0xcc]);
        // The guest reads the ROM again: the shadow's patch is not in its view.
        map.set_rom_protection(0x10000, RomProtection::ReadRomWriteIgnore)
            .unwrap();
        map.read(0x10000, &mut b).unwrap();
        assert_eq!(b, [0x90]);
        let mut out = std::io::Cursor::new(Vec::new());
        map.dump(&mut out, true).unwrap();
        assert_eq!(out.get_ref()[0x10000], 0x90);
    }
}
