//! The tables read back: by the `acpi` crate (a parser written elsewhere)
//! for the RSDP, FADT and MADT, and by a small AML walker for the DSDT.

use std::ptr::NonNull;
use std::sync::Arc;

use ::acpi::address::AddressSpace;
use ::acpi::fadt::Fadt;
use ::acpi::madt::{Madt, MadtEntry};
use ::acpi::{AcpiHandler, AcpiTables, PhysicalMapping};

use super::*;
use crate::boot::layout::{IOAPIC_ADDR, LAPIC_ADDR};
use crate::devices::ACPI_PM_PORT;

/// Maps "physical" addresses inside the table image.
#[derive(Clone)]
struct Image(Arc<Vec<u8>>);

impl AcpiHandler for Image {
    unsafe fn map_physical_region<T>(
        &self,
        address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let offset = address
            .checked_sub(ACPI_ADDR as usize)
            .filter(|o| o + size <= self.0.len())
            .unwrap_or_else(|| panic!("{address:#x}+{size:#x} lies outside the tables"));
        let start = NonNull::from(&self.0[offset]).cast::<T>();
        // SAFETY: the range lies inside the image, which the mapping keeps
        // alive through its clone of the handler; the tables' types are
        // packed (alignment 1).
        unsafe { PhysicalMapping::new(address, start, size, size, self.clone()) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

fn parse(image: &[u8]) -> AcpiTables<Image> {
    let handler = Image(Arc::new(image.to_vec()));
    // SAFETY: the handler maps nothing but the image.
    unsafe { AcpiTables::from_rsdp(handler, RSDP_ADDR as usize) }.expect("a valid RSDP and XSDT")
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The table at guest-physical `addr` in `image`, by its header's length.
fn table(image: &[u8], addr: u64) -> &[u8] {
    let at = (addr - ACPI_ADDR) as usize;
    let len = u32_at(image, at + 4) as usize;
    &image[at..at + len]
}

/// The 64-bit PCI window of the tables under test.
const WINDOW: (u64, u64) = (5 << 30, 32 << 30);

/// Every vCPU count the tables describe.
const COUNTS: std::ops::RangeInclusive<u32> = 1..=MAX_CPUS;

#[test]
fn every_table_is_reachable_from_the_rsdp_with_good_checksums() {
    for cpus in COUNTS.clone() {
        let image = build(cpus, WINDOW).unwrap();
        assert!(image.len() as u64 <= ACPI_SIZE);
        assert_eq!(&image[..8], b"RSD PTR ");
        assert_eq!(sum(&image[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(&image[..36]), 0, "extended checksum");
        assert_eq!(image[15], 2, "revision 2: an XSDT");
        let xsdt = table(&image, u64_at(&image, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        let listed: Vec<&[u8]> = xsdt[36..]
            .chunks(8)
            .map(|e| table(&image, u64::from_le_bytes(e.try_into().unwrap())))
            .collect();
        let signatures: Vec<&[u8]> = listed.iter().map(|t| &t[..4]).collect();
        assert_eq!(signatures, [b"FACP", b"APIC", b"MCFG"]);
        let fadt = listed[0];
        let dsdt = table(&image, u64_at(fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        for t in [xsdt, fadt, listed[1], listed[2], dsdt] {
            assert_eq!(sum(t), 0, "{} checksum", String::from_utf8_lossy(&t[..4]));
        }
        let facs = u64_at(fadt, 132);
        assert_eq!(facs % 64, 0, "the FACS is 64-byte aligned");
        assert_eq!(&table(&image, facs)[..4], b"FACS");
        assert_eq!(table(&image, facs).len(), 64);
        assert_eq!(parse(&image).headers().count(), 3);
    }
}

#[test]
fn madt_lists_every_vcpu_the_ioapic_the_sci_override_and_the_nmi() {
    for cpus in COUNTS.clone() {
        let image = build(cpus, WINDOW).unwrap();
        let tables = parse(&image);
        let madt = tables.find_table::<Madt>().unwrap();
        // Header and LAPIC address and flags, a local APIC entry per vCPU,
        // the I/O APIC, the SCI override, the NMI.
        let expected_len = 44 + 8 * cpus + 12 + 10 + 6;
        assert_eq!(
            table(&image, madt.physical_start() as u64).len() as u32,
            expected_len
        );
        assert_eq!({ madt.get().local_apic_address }, LAPIC_ADDR);
        assert!(madt.get().supports_8259());
        let (mut lapics, mut ioapics, mut overrides, mut nmis) = (vec![], vec![], vec![], vec![]);
        for entry in madt.get().entries() {
            match entry {
                MadtEntry::LocalApic(e) => lapics.push((e.processor_id, e.apic_id, { e.flags })),
                MadtEntry::IoApic(e) => ioapics.push((e.io_apic_id, { e.io_apic_address }, {
                    e.global_system_interrupt_base
                })),
                MadtEntry::InterruptSourceOverride(e) => {
                    overrides.push((e.bus, e.irq, { e.global_system_interrupt }, { e.flags }))
                }
                MadtEntry::LocalApicNmi(e) => nmis.push((e.processor_id, { e.flags }, e.nmi_line)),
                other => panic!("unexpected MADT entry {other:?}"),
            }
        }
        let expected: Vec<_> = (0..cpus as u8).map(|id| (id, id, 1)).collect();
        assert_eq!(lapics, expected, "{cpus} enabled local APICs, ids = UIDs");
        assert_eq!(ioapics, [(cpus as u8, IOAPIC_ADDR, 0)]);
        assert_eq!(overrides, [(0, 9, 9, 0b1101)], "SCI: level, active high");
        assert_eq!(nmis, [(0xff, 0, 1)], "NMI on LINT1 of every CPU");
    }
}

#[test]
fn fadt_describes_a_pc_with_legacy_devices_and_the_pm1_block() {
    let image = build(2, WINDOW).unwrap();
    let tables = parse(&image);
    let fadt = tables.find_table::<Fadt>().unwrap();
    let raw = table(&image, fadt.physical_start() as u64);
    let flags = { fadt.flags };
    assert!(!flags.system_is_hw_reduced_acpi());
    assert_eq!({ fadt.sci_interrupt }, 9);
    assert_eq!({ fadt.smi_cmd_port }, 0, "always in ACPI mode");
    let evt = fadt.pm1a_event_block().unwrap();
    assert_eq!(evt.address_space, AddressSpace::SystemIo);
    assert_eq!((evt.address, evt.bit_width), (u64::from(ACPI_PM_PORT), 32));
    let cnt = fadt.pm1a_control_block().unwrap();
    assert_eq!(
        (cnt.address, cnt.bit_width),
        (u64::from(ACPI_PM_PORT) + 4, 16)
    );
    assert!(fadt.pm_timer_block().unwrap().is_none(), "no PM timer");
    assert!(fadt.gpe0_block().unwrap().is_none());
    let boot_arch = fadt.iapc_boot_arch;
    assert!(boot_arch.legacy_devices_are_accessible());
    assert!(boot_arch.motherboard_implements_8042());
    assert!(boot_arch.dont_probe_vga());
    assert_eq!(raw[109] & (1 << 5), 0, "the CMOS RTC is present");
    assert_eq!(raw[108], crate::devices::CMOS_CENTURY, "its century byte");
    assert!(flags.power_button_is_control_method());
    assert!(flags.sleep_button_is_control_method());
    assert!(!flags.supports_system_reset_via_fadt());
    let dsdt = tables.dsdt().unwrap();
    assert_eq!(
        dsdt.address as u64,
        fadt.dsdt_address().unwrap() as u64 + 36
    );
}

/// One `Device` of the DSDT as the walker saw it.
#[derive(Debug, Default, PartialEq)]
struct Dev {
    name: String,
    hid: String,
    uid: Option<u64>,
    /// `_CID`, `_SEG` and `_BBN` (the root bridge's).
    cid: Option<String>,
    seg_bbn: Vec<u64>,
    /// Address space descriptors of `_CRS`: `(type, min, max)` (type 0
    /// memory, 1 I/O, 2 bus number).
    windows: Vec<(u8, u64, u64)>,
    /// `_PRT` entries: address, pin, source, GSI.
    prt: Vec<Vec<u64>>,
    /// I/O ranges `(base, length)` and IRQs of `_CRS`.
    ports: Vec<(u16, u8)>,
    irqs: Vec<(u32, u8)>,
}

/// Decodes a PkgLength at `b[0..]`: (package length, bytes of the encoding).
fn pkg_length(b: &[u8]) -> (usize, usize) {
    let extra = usize::from(b[0] >> 6);
    if extra == 0 {
        return (usize::from(b[0] & 0x3f), 1);
    }
    let mut len = usize::from(b[0] & 0x0f);
    for i in 0..extra {
        len |= usize::from(b[1 + i]) << (4 + 8 * i);
    }
    (len, 1 + extra)
}

/// Decodes an integer or string data object: (value, bytes used).
fn data(b: &[u8]) -> (std::result::Result<u64, String>, usize) {
    match b[0] {
        0x00 => (Ok(0), 1),
        0x01 => (Ok(1), 1),
        0x0a => (Ok(u64::from(b[1])), 2),
        0x0b => (Ok(u64::from(u16::from_le_bytes([b[1], b[2]]))), 3),
        0x0c => (Ok(u64::from(u32_at(b, 1))), 5),
        0x0d => {
            let end = b.iter().position(|&c| c == 0).unwrap();
            (Err(String::from_utf8(b[1..end].to_vec()).unwrap()), end + 1)
        }
        op => panic!("unexpected data opcode {op:#x}"),
    }
}

/// A compressed EISA id back to its 7-character form.
fn eisa_id(v: u64) -> String {
    let v = (v as u32).swap_bytes();
    let letter = |shift: u32| char::from(b'@' + ((v >> shift) & 0x1f) as u8);
    format!(
        "{}{}{}{:04X}",
        letter(26),
        letter(21),
        letter(16),
        v & 0xffff
    )
}

fn resources(dev: &mut Dev, mut b: &[u8]) {
    loop {
        match b[0] {
            0x47 => {
                let base = u16::from_le_bytes([b[2], b[3]]);
                assert_eq!(u16::from_le_bytes([b[4], b[5]]), base, "fixed range");
                dev.ports.push((base, b[7]));
                b = &b[8..];
            }
            0x89 => {
                assert_eq!(b[4], 1, "one interrupt");
                dev.irqs.push((u32_at(b, 5), b[3]));
                b = &b[3 + usize::from(u16::from_le_bytes([b[1], b[2]]))..];
            }
            // Word, DWord and QWord address space descriptors.
            tag @ (0x88 | 0x87 | 0x8a) => {
                let width = match tag {
                    0x88 => 2,
                    0x87 => 4,
                    _ => 8,
                };
                let field = |i: usize| {
                    let at = 6 + i * width;
                    let mut v = [0u8; 8];
                    v[..width].copy_from_slice(&b[at..at + width]);
                    u64::from_le_bytes(v)
                };
                dev.windows.push((b[3], field(1), field(2)));
                b = &b[3 + usize::from(u16::from_le_bytes([b[1], b[2]]))..];
            }
            0x79 => return assert_eq!(b.len(), 2, "the end tag ends the buffer"),
            tag => panic!("unexpected resource descriptor {tag:#x}"),
        }
    }
}

fn device(b: &[u8]) -> Dev {
    let mut dev = Dev {
        name: String::from_utf8(b[..4].to_vec()).unwrap(),
        ..Dev::default()
    };
    let mut at = 4;
    while at < b.len() {
        assert_eq!(b[at], 0x08, "only Name objects in devices");
        let name = &b[at + 1..at + 5];
        at += 5;
        if name == b"_CRS" {
            assert_eq!(b[at], 0x11, "a buffer");
            let (len, used) = pkg_length(&b[at + 1..]);
            let body = &b[at + 1 + used..at + 1 + len];
            let (size, used) = data(body);
            let bytes = &body[used..];
            assert_eq!(size.unwrap() as usize, bytes.len());
            resources(&mut dev, bytes);
            at += 1 + len;
            continue;
        }
        if name == b"_PRT" {
            assert_eq!(b[at], 0x12, "a package");
            let (len, used) = pkg_length(&b[at + 1..]);
            let body = &b[at + 1 + used..at + 1 + len];
            let mut e = 1;
            while e < body.len() {
                assert_eq!(body[e], 0x12, "a package per entry");
                let (elen, eused) = pkg_length(&body[e + 1..]);
                let entry = &body[e + 1 + eused..e + 1 + elen];
                let mut values = Vec::new();
                let mut v = 1;
                while v < entry.len() {
                    let (value, used) = data(&entry[v..]);
                    values.push(value.unwrap());
                    v += used;
                }
                dev.prt.push(values);
                e += 1 + elen;
            }
            assert_eq!(dev.prt.len(), usize::from(body[0]), "NumElements");
            at += 1 + len;
            continue;
        }
        let (value, used) = data(&b[at..]);
        at += used;
        match (name, value) {
            (b"_CID", Ok(id)) => dev.cid = Some(eisa_id(id)),
            (b"_SEG" | b"_BBN", Ok(v)) => dev.seg_bbn.push(v),
            (b"_HID", Ok(id)) => dev.hid = eisa_id(id),
            (b"_HID", Err(s)) => dev.hid = s,
            (b"_UID", Ok(uid)) => dev.uid = Some(uid),
            (other, v) => panic!("unexpected {other:?} = {v:?}"),
        }
    }
    dev
}

/// The DSDT's top level as the walker saw it: the devices of its `\_SB`
/// scope, then the packages named at the root (`\_S5`, ...) with their
/// integer elements.
struct Dsdt {
    devices: Vec<Dev>,
    packages: Vec<(String, Vec<u64>)>,
}

fn dsdt(image: &[u8]) -> Dsdt {
    let tables = parse(image);
    let aml = tables.dsdt().unwrap();
    let start = aml.address - ACPI_ADDR as usize;
    let b = &image[start..start + aml.length as usize];
    assert_eq!(b[0], 0x10, "a Scope");
    let (len, used) = pkg_length(&b[1..]);
    assert_eq!(&b[1 + used..6 + used], b"\\_SB_");
    let mut at = 6 + used;
    let mut devices = Vec::new();
    while at < 1 + len {
        assert_eq!(&b[at..at + 2], [0x5b, 0x82], "a Device");
        let (len, used) = pkg_length(&b[at + 2..]);
        devices.push(device(&b[at + 2 + used..at + 2 + len]));
        at += 2 + len;
    }
    assert_eq!(at, 1 + len, "the devices fill the scope");
    let mut packages = Vec::new();
    while at < b.len() {
        assert_eq!(b[at], 0x08, "a Name at the root");
        assert_eq!(b[at + 1], b'\\', "a root path");
        let name = String::from_utf8(b[at + 2..at + 6].to_vec()).unwrap();
        at += 6;
        assert_eq!(b[at], 0x12, "a Package");
        let (len, used) = pkg_length(&b[at + 1..]);
        let body = &b[at + 1 + used..at + 1 + len];
        let mut elements = Vec::new();
        let mut e = 1;
        while e < body.len() {
            let (value, used) = data(&body[e..]);
            elements.push(value.unwrap());
            e += used;
        }
        assert_eq!(elements.len(), usize::from(body[0]), "NumElements");
        packages.push((name, elements));
        at += 1 + len;
    }
    assert_eq!(at, b.len(), "nothing after the last object");
    Dsdt { devices, packages }
}

#[test]
fn dsdt_has_the_legacy_devices_and_one_processor_per_vcpu() {
    const EDGE_HIGH_CONSUMER: u8 = 0b0011;
    for cpus in COUNTS.clone() {
        let devices = dsdt(&build(cpus, WINDOW).unwrap()).devices;
        let isa = |name: &str, hid: &str, ports: &[(u16, u8)], irq: u32| Dev {
            name: name.into(),
            hid: hid.into(),
            uid: None,
            ports: ports.to_vec(),
            irqs: vec![(irq, EDGE_HIGH_CONSUMER)],
            ..Dev::default()
        };
        assert_eq!(
            devices[..4],
            [
                isa("COM1", "PNP0501", &[(0x3f8, 8)], 4),
                isa("KBD_", "PNP0303", &[(0x60, 1), (0x64, 1)], 1),
                isa("MOU_", "PNP0F13", &[], 12),
                isa("RTC_", "PNP0B00", &[(0x70, 2)], 8),
            ]
        );
        let processors: Vec<Dev> = (0..cpus)
            .map(|uid| Dev {
                name: format!("C{uid:03X}"),
                hid: "ACPI0007".into(),
                uid: Some(u64::from(uid)),
                ..Dev::default()
            })
            .collect();
        assert_eq!(devices[4..4 + cpus as usize], processors);
        assert_eq!(devices[4 + cpus as usize].name, "PCI0");
        assert_eq!(devices.len(), 5 + cpus as usize);
    }
}

#[test]
fn dsdt_has_a_pci_root_bridge_with_windows_and_intx_routing() {
    use crate::devices::pci::layout::{ECAM_BASE, MMIO32_WINDOW, intx_gsi};
    let image = build(1, WINDOW).unwrap();
    let devices = dsdt(&image).devices;
    let pci0 = devices.iter().find(|d| d.name == "PCI0").unwrap();
    assert_eq!(pci0.hid, "PNP0A08");
    assert_eq!(pci0.cid.as_deref(), Some("PNP0A03"));
    assert_eq!(
        (pci0.seg_bbn.as_slice(), pci0.uid),
        ([0, 0].as_slice(), Some(0))
    );
    assert_eq!(pci0.ports, [(0xcf8, 8)]);
    let (start, size) = MMIO32_WINDOW;
    assert_eq!(
        pci0.windows,
        [
            (2, 0, 0),
            (1, 0, 0xcf7),
            (1, 0xd00, 0xffff),
            (0, start, start + size - 1),
            (0, WINDOW.0, WINDOW.0 + WINDOW.1 - 1),
        ]
    );
    assert!(!(start..start + size).contains(&ECAM_BASE));
    assert_eq!(pci0.prt.len(), 32 * 4);
    for entry in &pci0.prt {
        let (slot, pin) = ((entry[0] >> 16) as u8, entry[1] as u8);
        assert_eq!(entry[0] & 0xffff, 0xffff, "any function");
        assert_eq!(entry[2], 0, "a GSI, no link device");
        assert_eq!(entry[3], u64::from(intx_gsi(slot, pin)));
        assert!((16..24).contains(&entry[3]));
    }
    // The MCFG: one ECAM for segment 0, bus 0.
    let xsdt = table(&image, u64_at(&image, 24));
    let mcfg = table(&image, u64_at(xsdt, 36 + 16));
    assert_eq!(&mcfg[..4], b"MCFG");
    assert_eq!(mcfg.len(), 44 + 16);
    assert_eq!(u64_at(mcfg, 44), ECAM_BASE);
    assert_eq!(&mcfg[52..56], &[0, 0, 0, 0], "segment 0, buses 0-0");
}

#[test]
fn dsdt_offers_soft_off_with_the_type_the_pm1_control_register_powers_off_with() {
    use crate::devices::{AcpiPm, DeviceAction, PioDevice, S5_SLP_TYP};
    for cpus in COUNTS.clone() {
        let packages = dsdt(&build(cpus, WINDOW).unwrap()).packages;
        let typ = u64::from(S5_SLP_TYP);
        assert_eq!(packages, [("_S5_".to_string(), vec![typ, typ, 0, 0])]);
    }
    // What Linux then writes to PM1a_CNT (SLP_TYPa in bits 10-12, SLP_EN).
    let mut pm = AcpiPm::default();
    let value = (u16::from(S5_SLP_TYP) << 10) | 0x2000;
    assert_eq!(pm.write(4, &value.to_le_bytes()), DeviceAction::PowerOff);
}

/// The RAM ranges `vmm` gives a VM with `ram_size` bytes of RAM (the PC
/// layout, as `pgm` lays it out), as `(start, length)` pairs.
fn pc_ram(ram_size: u64) -> Vec<(u64, u64)> {
    let mut map = pgm::phys::PhysMap::with_defaults();
    pgm::phys::PcLayout::new(ram_size).apply(&mut map).unwrap();
    map.ranges().iter().map(|r| (r.start, r.size)).collect()
}

#[test]
fn the_tables_lie_in_reserved_memory_for_odd_ram_sizes_below_and_above_4g() {
    use crate::boot::e820::{self, E820Kind};
    use crate::boot::layout::{LEGACY_HOLE, MPTABLE_SIZE, pc_reserved};

    const MIB: u64 = 1 << 20;
    let image = build(MAX_CPUS, WINDOW).unwrap().len() as u64;
    for ram_size in [
        2 * MIB,
        333 * MIB,
        (3 << 30) - 4096,
        (3 << 30) + 4096,
        (4 << 30) + MIB,
        (5 << 30) + 333 * MIB,
    ] {
        let map = e820::build(&pc_ram(ram_size), &pc_reserved()).unwrap();
        assert!(map.iter().any(|e| e.kind == E820Kind::Reserved
            && e.addr <= ACPI_ADDR
            && ACPI_ADDR + image <= e.end()));
        assert!(!map.iter().any(|e| e.kind == E820Kind::Ram
            && e.addr < ACPI_ADDR + ACPI_SIZE + MPTABLE_SIZE
            && ACPI_ADDR < e.end()));
        // All RAM but the legacy hole's and the tables' is the guest's.
        assert_eq!(
            e820::ram_total(&map),
            ram_size - LEGACY_HOLE.1 - ACPI_SIZE - MPTABLE_SIZE,
            "{ram_size:#x} bytes of RAM"
        );
    }
}

#[test]
fn cpu_counts_out_of_range_are_refused() {
    assert!(build(0, WINDOW).is_err());
    assert!(build(MAX_CPUS + 1, WINDOW).is_err());
}
