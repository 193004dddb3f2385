//! A `vm-memory` view of guest RAM for loaders and devices.

use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::error::PhysError;
use super::map::PhysMap;
use super::range::Backing;

impl PhysMap {
    /// Builds a [`GuestMemoryMmap`] over the RAM and mapped MMIO2 ranges,
    /// sharing the host mappings (nothing is copied; clones keep the
    /// mappings alive). Accesses through it bypass handlers and page
    /// tracking, like the guest's own accesses through KVM; rebuild it
    /// after the map changes.
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
    /// ```
    pub fn guest_memory(&self) -> Result<GuestMemoryMmap, PhysError> {
        let regions = self
            .ranges
            .iter()
            .filter_map(|r| match &r.backing {
                Backing::Ram(m) => Some((r.start, m.region.clone())),
                Backing::Mmio2 { mem, .. } => Some((r.start, mem.region.clone())),
                _ => None,
            })
            .map(|(start, region)| {
                GuestRegionMmap::with_arc(region, GuestAddress(start))
                    .ok_or_else(|| PhysError::GuestMemory(format!("region at {start:#x} wraps")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        GuestMemoryMmap::from_regions(regions).map_err(|e| PhysError::GuestMemory(e.to_string()))
    }
}
