//! The PCI root bridge in the DSDT (`\_SB.PCI0`) and the MCFG that points
//! at its ECAM; addresses from [`crate::devices::pci::layout`].

use acpi_tables::Aml;
use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, IO, Name, Package, PackageBuilder, Path,
    ResourceTemplate,
};
use acpi_tables::mcfg::MCFG;

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::devices::pci::layout::{ECAM_BASE, IO_WINDOWS, MMIO32_WINDOW, intx_gsi};
use crate::devices::pci::{PCI_CONFIG_PORT, PCI_CONFIG_PORTS};

/// Devices on bus 0.
const SLOTS: u8 = 32;
/// INTA# to INTD#.
const PINS: u8 = 4;

/// The MCFG: one ECAM, segment 0, bus 0 only.
pub(super) fn mcfg() -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(ECAM_BASE, 0, 0, 0);
    let mut bytes = Vec::new();
    mcfg.to_aml_bytes(&mut bytes);
    bytes
}

/// `Device (PCI0)`: a PCI Express root bridge (`PNP0A08`, compatible with
/// `PNP0A03`) of segment 0, bus 0, whose `_CRS` has the bus number, the
/// configuration ports it consumes, the port windows, the 32-bit memory
/// window and the 64-bit window `mmio64` (`(start, size)`), and whose
/// `_PRT` routes every slot's INTx to an IOAPIC GSI
/// ([`intx_gsi`](crate::devices::pci::layout::intx_gsi); a GSI in `_PRT`
/// is level-triggered, active low).
pub(super) fn root_bridge(mmio64: (u64, u64), sink: &mut Vec<u8>) {
    let bus = AddressSpace::<u16>::new_bus_number(0, 0);
    let conf1 = IO::new(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, PCI_CONFIG_PORTS as u8);
    let io: Vec<AddressSpace<u16>> = IO_WINDOWS
        .iter()
        .map(|&(first, last)| AddressSpace::new_io(first, last, None))
        .collect();
    let (start32, size32) = MMIO32_WINDOW;
    let mem32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        start32 as u32,
        (start32 + size32 - 1) as u32,
        None,
    );
    let mem64 = AddressSpace::<u64>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        mmio64.0,
        mmio64.0 + mmio64.1 - 1,
        None,
    );
    let mut resources: Vec<&dyn Aml> = vec![&bus, &conf1];
    resources.extend(io.iter().map(|w| w as &dyn Aml));
    resources.push(&mem32);
    resources.push(&mem64);
    let crs = ResourceTemplate::new(resources);
    let mut prt = PackageBuilder::new();
    for slot in 0..SLOTS {
        for pin in 0..PINS {
            let address = u32::from(slot) << 16 | 0xffff;
            let gsi = intx_gsi(slot, pin);
            let zero = 0u8;
            prt.add_element(&Package::new(vec![&address, &pin, &zero, &gsi]));
        }
    }
    let zero = 0u8;
    Device::new(
        Path::new("PCI0"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0A08")),
            &Name::new(Path::new("_CID"), &EISAName::new("PNP0A03")),
            &Name::new(Path::new("_SEG"), &zero),
            &Name::new(Path::new("_BBN"), &zero),
            &Name::new(Path::new("_UID"), &zero),
            &Name::new(Path::new("_CRS"), &crs),
            &Name::new(Path::new("_PRT"), &prt),
        ],
    )
    .to_aml_bytes(sink);
}
