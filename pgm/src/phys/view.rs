//! A `vm-memory` view of guest RAM for loaders and devices.

use vm_memory::GuestAddress;

use super::error::PhysError;
use super::map::PhysMap;
use super::range::{Backing, Memory};
use super::write_bitmap::{TrackedGuestRegion, TrackedMemory};

impl PhysMap {
    /// Builds a [`TrackedMemory`] over the RAM and mapped MMIO2 ranges,
    /// sharing the host mappings (nothing is copied; clones keep the
    /// mappings alive). Accesses through it bypass handlers, like the
    /// guest's own accesses through KVM; its writes mark the regions'
    /// [`WriteBitmap`](super::WriteBitmap)s, which
    /// [`PhysMap::sync_vm_memory_writes`] (and the dirty-log sync of a live
    /// save) turn into written pages. Rebuild it after the map changes.
    ///
    /// ```
    /// use pgm::phys::PhysMap;
    /// use vm_memory::{Bytes, GuestAddress};
    /// let mut map = PhysMap::with_defaults();
    /// map.add_ram(0, 0x10000, "ram").unwrap();
    /// let mem = map.guest_memory().unwrap();
    /// mem.write_obj(0x1234_u32, GuestAddress(0x100)).unwrap();
    /// let mut b = [0u8; 4];
    /// map.read(0x100, &mut b).unwrap();
    /// assert_eq!(u32::from_le_bytes(b), 0x1234);
    /// assert_eq!(map.sync_vm_memory_writes(), 1);
    /// ```
    pub fn guest_memory(&self) -> Result<TrackedMemory, PhysError> {
        let regions = self
            .vm_memory_ranges()
            .map(|(start, mem)| {
                TrackedGuestRegion::with_arc(mem.region.clone(), GuestAddress(start))
                    .ok_or_else(|| PhysError::GuestMemory(format!("region at {start:#x} wraps")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        TrackedMemory::from_regions(regions).map_err(|e| PhysError::GuestMemory(e.to_string()))
    }

    /// The ranges [`PhysMap::guest_memory`] exposes: start and memory of
    /// every RAM and mapped MMIO2 range.
    pub(super) fn vm_memory_ranges(&self) -> impl Iterator<Item = (u64, &Memory)> {
        self.ranges.iter().filter_map(|r| match &r.backing {
            Backing::Ram(m) => Some((r.start, m)),
            Backing::Mmio2 { mem, .. } => Some((r.start, mem)),
            _ => None,
        })
    }
}
