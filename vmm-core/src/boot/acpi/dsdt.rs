//! The DSDT: the legacy devices the machine has (so that Linux's PNP
//! probing finds them without poking at ports), one processor device per
//! vCPU, and the one sleep state the machine has: soft-off (`\_S5`).

use acpi_tables::Aml;
use acpi_tables::aml::{
    Device, EISAName, IO, Interrupt, Name, Package, Path, ResourceTemplate, Scope,
};
use acpi_tables::sdt::Sdt;

use super::{HEADER_LEN, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::devices::{COM1_PORT, I8042_PORT, S5_SLP_TYP};

/// Revision 2: integers are 64 bits wide.
const REVISION: u8 = 2;

/// An ISA device: its ACPI name, PNP id, port ranges and IRQ.
struct IsaDevice {
    name: &'static str,
    hid: &'static str,
    ports: &'static [(u16, u8)],
    irq: u32,
}

/// The CMOS real-time clock's index and data ports.
const RTC_PORT: u16 = 0x70;

const ISA_DEVICES: [IsaDevice; 4] = [
    IsaDevice {
        name: "COM1",
        hid: "PNP0501",
        ports: &[(COM1_PORT, 8)],
        irq: 4,
    },
    IsaDevice {
        name: "KBD_",
        hid: "PNP0303",
        ports: &[(I8042_PORT, 1), (I8042_PORT + 4, 1)],
        irq: 1,
    },
    IsaDevice {
        name: "MOU_",
        hid: "PNP0F13",
        ports: &[],
        irq: 12,
    },
    IsaDevice {
        name: "RTC_",
        hid: "PNP0B00",
        ports: &[(RTC_PORT, 2)],
        irq: 8,
    },
];

/// Builds the DSDT for `cpus` vCPUs: under `\_SB`, the ISA devices (COM1,
/// PS/2 keyboard and mouse, CMOS RTC) with their ports and edge-triggered,
/// active-high IRQs, and processor devices `C000`.. with `_UID` equal to
/// the MADT's processor UID, the PCI root bridge `PCI0`; then `\_S5` with the `SLP_TYP` the PM1
/// control register powers off with. `cpus` is at most 4096 (device names
/// are three hex digits).
pub(super) fn build(cpus: u32, mmio64: (u64, u64)) -> Vec<u8> {
    let mut body = Vec::new();
    for device in &ISA_DEVICES {
        isa_device(device, &mut body);
    }
    for uid in 0..cpus {
        processor(uid, &mut body);
    }
    super::pci::root_bridge(mmio64, &mut body);
    let mut dsdt = Sdt::new(
        *b"DSDT",
        HEADER_LEN,
        REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&Scope::raw(Path::new("\\_SB_"), body));
    let mut s5 = Vec::new();
    soft_off(&mut s5);
    dsdt.append_slice(&s5);
    dsdt.as_slice().to_vec()
}

/// `Name (\_S5, Package { SLP_TYPa, SLP_TYPb, 0, 0 })`: the values Linux
/// writes to the PM1a (and, if there were one, PM1b) control register's
/// `SLP_TYP` to power off.
fn soft_off(sink: &mut Vec<u8>) {
    let zero = 0u8;
    Name::new(
        Path::new("\\_S5_"),
        &Package::new(vec![&S5_SLP_TYP, &S5_SLP_TYP, &zero, &zero]),
    )
    .to_aml_bytes(sink);
}

fn isa_device(device: &IsaDevice, sink: &mut Vec<u8>) {
    let ports: Vec<IO> = device
        .ports
        .iter()
        .map(|&(base, len)| IO::new(base, base, 1, len))
        .collect();
    let irq = Interrupt::new(true, true, false, false, device.irq);
    let mut resources: Vec<&dyn Aml> = ports.iter().map(|p| p as &dyn Aml).collect();
    resources.push(&irq);
    let crs = ResourceTemplate::new(resources);
    let hid = EISAName::new(device.hid);
    Device::new(
        Path::new(device.name),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )
    .to_aml_bytes(sink);
}

fn processor(uid: u32, sink: &mut Vec<u8>) {
    let hid = "ACPI0007";
    Device::new(
        Path::new(&format!("C{uid:03X}")),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &uid),
        ],
    )
    .to_aml_bytes(sink);
}
