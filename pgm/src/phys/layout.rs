//! The PC guest-physical layout.

use super::error::PhysError;
use super::map::PhysMap;
use super::range::RangeId;

/// Size of conventional low memory (640 KiB).
pub const LOW_RAM_END: u64 = 0xa_0000;
/// Start of RAM above the legacy hole.
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// 4 GiB.
pub const FOUR_GIB: u64 = 1 << 32;

/// A PC memory layout: low RAM (below 640 KiB), the legacy hole (VGA,
/// option ROMs, BIOS; left to devices), RAM from 1 MiB up to the 32-bit
/// MMIO hole, and the rest of RAM above 4 GiB.
///
/// ```
/// use pgm::phys::{PcLayout, PhysMap};
/// let mut map = PhysMap::with_defaults();
/// let layout = PcLayout::new(5 << 30); // 5 GiB, default 1 GiB MMIO hole
/// let ids = layout.apply(&mut map).unwrap();
/// assert_eq!(ids.len(), 3);
/// let r = map.ranges();
/// assert_eq!((r[1].start, r[1].size), (0x10_0000, 0xc000_0000 - 0x10_0000));
/// assert_eq!((r[2].start, r[2].size), (1 << 32, (5u64 << 30) - 0xc000_0000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcLayout {
    /// Total guest RAM in bytes (a multiple of 4 KiB).
    pub ram_size: u64,
    /// Size of the 32-bit MMIO hole below 4 GiB (a multiple of 4 KiB).
    pub mmio_hole_size: u64,
}

impl PcLayout {
    /// A layout for `ram_size` bytes with a 1 GiB MMIO hole.
    pub fn new(ram_size: u64) -> Self {
        Self {
            ram_size,
            mmio_hole_size: 1 << 30,
        }
    }

    /// Start of the 32-bit MMIO hole.
    pub fn mmio_hole_start(&self) -> u64 {
        FOUR_GIB.saturating_sub(self.mmio_hole_size)
    }

    /// Adds the RAM ranges to `map`; returns their ids.
    pub fn apply(&self, map: &mut PhysMap) -> Result<Vec<RangeId>, PhysError> {
        let hole = self.mmio_hole_start();
        if hole <= HIGH_RAM_START {
            return Err(PhysError::InvalidConfig(format!(
                "MMIO hole of {:#x} bytes leaves no RAM above 1 MiB",
                self.mmio_hole_size
            )));
        }
        let mut ids = Vec::new();
        let low = self.ram_size.min(LOW_RAM_END);
        if low > 0 {
            ids.push(map.add_ram(0, low, "Low RAM")?);
        }
        let mut left = self.ram_size.saturating_sub(HIGH_RAM_START);
        let below = left.min(hole - HIGH_RAM_START);
        if below > 0 {
            ids.push(map.add_ram(HIGH_RAM_START, below, "RAM below 4 GiB")?);
        }
        left -= below;
        if left > 0 {
            ids.push(map.add_ram(FOUR_GIB, left, "RAM above 4 GiB")?);
        }
        Ok(ids)
    }
}
