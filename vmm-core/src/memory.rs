//! Guest memory: RAM in the PC layout and the firmware ROM, as KVM slots.

use hm_vmx::{MemorySlot, Vm as BackendVm};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::error::{Error, Result};

/// End of conventional memory (640 KiB): the legacy VGA/ROM hole follows.
const LOW_RAM_END: u64 = 0xa_0000;
/// Start of extended memory.
const HIGH_RAM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole (firmware, APICs, PCI).
pub const MMIO_HOLE_START: u64 = 0xe000_0000;
/// RAM that does not fit below the hole continues here.
const ABOVE_4G: u64 = 1 << 32;
/// The most firmware a PC mirrors just below 1 MiB.
const LOW_MIRROR_MAX: u64 = 128 * 1024;

/// The smallest guest RAM the VMM accepts.
pub const MIN_RAM: u64 = 1 << 20;

/// The guest-physical ranges RAM of `size` bytes occupies in the PC layout.
///
/// ```
/// use vmm_core::memory::ram_ranges;
/// assert_eq!(ram_ranges(2 << 20), vec![(0, 0xa_0000), (0x10_0000, 0x10_0000)]);
/// ```
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    let mut ranges = vec![(0, size.min(LOW_RAM_END))];
    if size > HIGH_RAM_START {
        let below_hole = size.min(MMIO_HOLE_START) - HIGH_RAM_START;
        ranges.push((HIGH_RAM_START, below_hole));
    }
    if size > MMIO_HOLE_START {
        ranges.push((ABOVE_4G, size - MMIO_HOLE_START));
    }
    ranges
}

/// A VM's memory: RAM and the firmware ROM, registered as KVM slots.
pub struct GuestMemoryMap {
    ram: GuestMemoryMmap,
    rom: GuestMemoryMmap,
}

impl GuestMemoryMap {
    /// Allocates `ram_size` bytes of RAM and a ROM holding `firmware`, which
    /// ends at 4 GiB and is mirrored below 1 MiB (its last 128 KiB at most).
    pub fn new(ram_size: u64, firmware: &[u8]) -> Result<Self> {
        if ram_size < MIN_RAM || ram_size % 4096 != 0 {
            return Err(Error::Config(format!(
                "memory size {ram_size:#x} must be a multiple of 4 KiB and at least 1 MiB"
            )));
        }
        let rom_size = firmware.len() as u64;
        if rom_size == 0 || rom_size % 4096 != 0 || rom_size > ABOVE_4G - MMIO_HOLE_START {
            return Err(Error::Config(format!(
                "firmware of {rom_size} bytes: must be a non-empty multiple of 4 KiB, at most 512 MiB"
            )));
        }
        let ranges: Vec<_> = ram_ranges(ram_size)
            .into_iter()
            .map(|(start, len)| (GuestAddress(start), len as usize))
            .collect();
        let ram = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| {
            Error::Memory(format!("cannot allocate {ram_size:#x} bytes of RAM: {e}"))
        })?;
        let rom_base = GuestAddress(ABOVE_4G - rom_size);
        let rom = GuestMemoryMmap::from_ranges(&[(rom_base, rom_size as usize)])
            .map_err(|e| Error::Memory(format!("cannot allocate the ROM: {e}")))?;
        rom.write_slice(firmware, rom_base)
            .map_err(|e| Error::Memory(format!("cannot load the firmware: {e}")))?;
        Ok(GuestMemoryMap { ram, rom })
    }

    /// Guest RAM, for loaders and devices.
    pub fn ram(&self) -> &GuestMemoryMmap {
        &self.ram
    }

    /// The KVM slots: RAM read-write, the ROM and its low mirror read-only.
    pub fn slots(&self) -> Vec<MemorySlot> {
        let mut slots = Vec::new();
        let mut add = |guest_addr: u64, size: u64, host_addr: u64, read_only: bool| {
            let slot = slots.len() as u32;
            slots.push(MemorySlot {
                slot,
                guest_addr,
                size,
                host_addr,
                read_only,
                log_dirty: false,
            });
        };
        for r in self.ram.iter() {
            add(r.start_addr().0, r.len(), r.as_ptr() as u64, false);
        }
        for r in self.rom.iter() {
            let (base, size, host) = (r.start_addr().0, r.len(), r.as_ptr() as u64);
            let mirror = size.min(LOW_MIRROR_MAX);
            add(base, size, host, true);
            add(HIGH_RAM_START - mirror, mirror, host + size - mirror, true);
        }
        slots
    }

    /// Registers every slot with the backend VM.
    pub fn map_into(&self, vm: &BackendVm) -> Result<()> {
        for slot in self.slots() {
            // SAFETY: the host ranges belong to `self.ram` / `self.rom`, which
            // the VM keeps alive for as long as the backend VM exists (the
            // `Vm` drops its backend before its memory).
            unsafe { vm.set_memory_slot(&slot) }?;
        }
        Ok(())
    }
}
