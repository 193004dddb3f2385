//! The Intel MultiProcessor Specification 1.4 table: how a guest without
//! ACPI learns its processors, its I/O APIC and how ISA IRQs are routed.
//!
//! The routing told is the one KVM's in-kernel irqchip has with its
//! default GSI routing (which the VM keeps): ISA IRQ `n` drives I/O APIC
//! input `n` (the PIT IRQ 0, so input 0 is the timer, not the 8259's
//! output) and the 8259 pair's output reaches the local APICs' LINT0 only.
//! The machine runs in virtual wire mode (no IMCR). The ACPI MADT says the
//! same: no override for IRQ 0.

use super::error::{Error, Result};
use super::layout::{IOAPIC_ADDR, LAPIC_ADDR, MP_CONFIG_ADDR, MPTABLE_ADDR};

const SPEC_REV: u8 = 4;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// ISA IRQs routed to the I/O APIC's inputs of the same number.
const ISA_IRQS: u8 = 16;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// A local interrupt entry's destination: every local APIC.
const ALL_LAPICS: u8 = 0xff;
const FLOATING_POINTER_LEN: usize = 16;
const CONFIG_HEADER_LEN: usize = 44;
/// Bytes between the configuration table's start and the floating pointer.
const CONFIG_ROOM: usize = (MPTABLE_ADDR - MP_CONFIG_ADDR) as usize;

/// The most vCPUs the table describes: APIC ids are one byte and the I/O
/// APIC takes the id after the last vCPU's.
pub const MAX_CPUS: u32 = 254;

/// Builds the MP table for `cpus` processors (APIC ids 0..cpus, the first
/// one the BSP) as one image to be written at [`MP_CONFIG_ADDR`]: the
/// configuration table, zeros, and at [`MPTABLE_ADDR`] (where guests scan
/// for it) the floating pointer, which points at the configuration table.
///
/// ```
/// use vmm_core::boot::layout::{MPTABLE_ADDR, MP_CONFIG_ADDR};
///
/// let image = vmm_core::boot::mptable::build(2)?;
/// let pointer = &image[(MPTABLE_ADDR - MP_CONFIG_ADDR) as usize..];
/// assert_eq!(&pointer[..4], b"_MP_");
/// assert_eq!(pointer.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
/// assert_eq!(&image[..4], b"PCMP");
/// # Ok::<(), vmm_core::boot::Error>(())
/// ```
pub fn build(cpus: u32) -> Result<Vec<u8>> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(Error::Machine(format!(
            "{cpus} vCPUs: the MP table describes 1 to {MAX_CPUS}"
        )));
    }
    let (entries, count) = entries(cpus as u8);
    let config_len = CONFIG_HEADER_LEN + entries.len();
    let mut image = Vec::with_capacity(CONFIG_ROOM + FLOATING_POINTER_LEN);
    image.extend_from_slice(b"PCMP");
    image.extend_from_slice(&(config_len as u16).to_le_bytes());
    image.extend_from_slice(&[SPEC_REV, 0]);
    image.extend_from_slice(b"VMMCORE ");
    image.extend_from_slice(b"DIRECTBOOT  ");
    image.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    image.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    image.extend_from_slice(&count.to_le_bytes());
    image.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    image.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    image.extend_from_slice(&entries);
    image[7] = checksum(&image);
    if image.len() > CONFIG_ROOM {
        return Err(Error::Machine(format!(
            "the MP table for {cpus} vCPUs takes {} bytes, {CONFIG_ROOM} are reserved",
            image.len()
        )));
    }
    image.resize(CONFIG_ROOM, 0);
    let mut pointer = Vec::with_capacity(FLOATING_POINTER_LEN);
    pointer.extend_from_slice(b"_MP_");
    pointer.extend_from_slice(&(MP_CONFIG_ADDR as u32).to_le_bytes());
    // Length in paragraphs, revision, checksum, then feature bytes: 1 = 0
    // (a configuration table is present), 2 = 0 (no IMCR: virtual wire).
    pointer.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    pointer[10] = checksum(&pointer);
    image.extend_from_slice(&pointer);
    Ok(image)
}

/// The configuration table's entries for `cpus` processors and their
/// count: processors, the ISA bus, the I/O APIC (id `cpus`), one INT entry
/// per ISA IRQ to the I/O APIC input of its number, then the 8259's ExtINT
/// on LINT0 and the NMI on LINT1 of every local APIC.
fn entries(cpus: u8) -> (Vec<u8>, u16) {
    let ioapic_id = cpus;
    let mut entries: Vec<u8> = Vec::new();
    for id in 0..cpus {
        let flags = if id == 0 { 0b11 } else { 0b01 }; // enabled, BSP
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // FPU, APIC
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    // Polarity and trigger (bytes 2-3) 0: as the ISA bus has them, edge
    // triggered and active high.
    for irq in 0..ISA_IRQS {
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0), (INT_TYPE_NMI, 1)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0, 0, 0, ALL_LAPICS, lint]);
    }
    let count = u16::from(cpus) + 2 + u16::from(ISA_IRQS) + 2;
    (entries, count)
}

/// The byte that makes `bytes` sum to 0.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::e820::{self, E820Kind};
    use crate::boot::layout::{MPTABLE_SIZE, pc_reserved};

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    /// The floating pointer and the configuration table it points at.
    fn parts(image: &[u8]) -> (&[u8], &[u8]) {
        let pointer = &image[CONFIG_ROOM..];
        let at = u32::from_le_bytes(pointer[4..8].try_into().unwrap());
        let config = &image[(u64::from(at) - MP_CONFIG_ADDR) as usize..];
        let len = usize::from(u16::from_le_bytes([config[4], config[5]]));
        (pointer, &config[..len])
    }

    /// The configuration table's entries, each as its bytes.
    fn entries_of(config: &[u8]) -> Vec<&[u8]> {
        let count = u16::from_le_bytes([config[34], config[35]]);
        let mut rest = &config[CONFIG_HEADER_LEN..];
        let entries = (0..count)
            .map(|_| {
                let len = if rest[0] == ENTRY_PROCESSOR { 20 } else { 8 };
                let (entry, after) = rest.split_at(len);
                rest = after;
                entry
            })
            .collect();
        assert!(rest.is_empty(), "the count covers every entry");
        entries
    }

    #[test]
    fn every_cpu_count_fits_with_good_checksums_and_entry_counts() {
        for cpus in 1..=MAX_CPUS {
            let image = build(cpus).unwrap();
            assert_eq!(image.len() as u64, MPTABLE_ADDR + 16 - MP_CONFIG_ADDR);
            assert!(image.len() as u64 <= MPTABLE_SIZE);
            let (pointer, config) = parts(&image);
            assert_eq!(pointer.len(), FLOATING_POINTER_LEN);
            assert_eq!(&pointer[..4], b"_MP_");
            assert_eq!(sum(pointer), 0, "{cpus} vCPUs: pointer checksum");
            assert_eq!(pointer[8], 1, "one paragraph");
            assert_eq!(pointer[11..], [0; 5], "default config absent, no IMCR");
            assert_eq!(&config[..4], b"PCMP");
            assert_eq!(sum(config), 0, "{cpus} vCPUs: table checksum");
            let entries = entries_of(config);
            assert_eq!(entries.len() as u32, cpus + 2 + 16 + 2);
            let processors: Vec<(u8, u8)> = entries
                .iter()
                .filter(|e| e[0] == ENTRY_PROCESSOR)
                .map(|e| (e[1], e[3]))
                .collect();
            let expected: Vec<(u8, u8)> = (0..cpus as u8)
                .map(|id| (id, if id == 0 { 0b11 } else { 0b01 }))
                .collect();
            assert_eq!(processors, expected, "{cpus} enabled processors, one BSP");
            let ioapics: Vec<&[u8]> = entries
                .iter()
                .copied()
                .filter(|e| e[0] == ENTRY_IOAPIC)
                .collect();
            assert_eq!(ioapics.len(), 1);
            assert_eq!(
                u32::from(ioapics[0][1]),
                cpus,
                "I/O APIC id after the CPUs'"
            );
        }
    }

    #[test]
    fn isa_irqs_reach_the_ioapic_input_of_their_number_as_kvm_routes_them() {
        let image = build(4).unwrap();
        let entries = entries_of(parts(&image).1);
        let io: Vec<[u8; 7]> = entries
            .iter()
            .filter(|e| e[0] == ENTRY_IO_INTERRUPT)
            .map(|e| e[1..].try_into().unwrap())
            .collect();
        // type INT, flags conform to the ISA bus (edge, active high), bus
        // 0, IRQ n -> I/O APIC 4 input n. IRQ 0 is the PIT's: KVM raises
        // GSI 0, which reaches input 0; the 8259's output is not there.
        let expected: Vec<[u8; 7]> = (0..16).map(|n| [INT_TYPE_INT, 0, 0, 0, n, 4, n]).collect();
        assert_eq!(io, expected);
        let local: Vec<&[u8]> = entries
            .iter()
            .copied()
            .filter(|e| e[0] == ENTRY_LOCAL_INTERRUPT)
            .collect();
        assert_eq!(
            local,
            [
                [ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0],
                [ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1],
            ]
        );
    }

    #[test]
    fn cpu_counts_out_of_range_are_refused() {
        assert!(build(0).is_err());
        assert!(build(MAX_CPUS + 1).is_err());
    }

    #[test]
    fn every_vcpu_count_a_vm_may_have_gets_both_tables() {
        assert_eq!(MAX_CPUS, crate::config::MAX_CPUS);
        assert_eq!(MAX_CPUS, crate::boot::acpi::MAX_CPUS);
    }

    #[test]
    fn the_pointer_lies_where_guests_scan_and_the_table_in_reserved_memory() {
        // Linux scans the last KiB of base memory (639 KiB on).
        assert_eq!(MPTABLE_ADDR, 639 << 10);
        for ram_top in [333 << 20, 0xa_0000 + (1 << 20)] {
            let ram = [(0, 0xa_0000), (0x10_0000, ram_top - 0x10_0000)];
            let map = e820::build(&ram, &pc_reserved()).unwrap();
            assert!(map.iter().any(|e| e.kind == E820Kind::Reserved
                && e.addr <= MP_CONFIG_ADDR
                && MPTABLE_ADDR + 16 <= e.end()));
        }
    }
}
