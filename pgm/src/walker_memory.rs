//! The guest-physical map as the memory the page walker reads: walks see
//! what the guest's CPU would see (RAM, ROM per its protection, MMIO
//! handlers, 0xff from unassigned space).

use crate::paging::{PhysAccess, PhysAccessError};
use crate::phys::PhysMap;

impl PhysAccess for PhysMap {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), PhysAccessError> {
        PhysMap::read(self, gpa, buf).map_err(|_| PhysAccessError::Unmapped {
            gpa,
            len: buf.len(),
        })
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), PhysAccessError> {
        PhysMap::write(self, gpa, data).map_err(|_| PhysAccessError::Unmapped {
            gpa,
            len: data.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::paging::{
        Access, AccessKind, CpuFeatures, PagingState, Privilege, WalkOptions, translate,
    };
    use crate::phys::PhysMap;

    #[test]
    fn walks_long_mode_tables_in_guest_ram() {
        let mut map = PhysMap::with_defaults();
        map.add_ram(0, 0x10_0000, "ram").unwrap();
        // PML4[0] -> PDPT at 0x2000 -> PD at 0x3000 -> 2 MiB page at 0.
        for (gpa, entry) in [(0x1000u64, 0x2003u64), (0x2000, 0x3003), (0x3000, 0x83)] {
            map.write(gpa, &entry.to_le_bytes()).unwrap();
        }
        let state = PagingState::new(CpuFeatures::new(48).unwrap())
            .with_cr0(0x8000_0011)
            .with_cr4(0x20)
            .with_efer(0x500)
            .with_cr3(0x1000);
        let t = translate(
            &state,
            &map,
            0x1_2345,
            Access::new(AccessKind::Read, Privilege::Implicit),
            WalkOptions::default(),
        )
        .unwrap();
        assert_eq!(t.gpa, 0x1_2345);
    }
}
