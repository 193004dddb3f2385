//! The Intel MultiProcessor Specification 1.4 table: how a guest without
//! ACPI learns its processors, its I/O APIC and how ISA IRQs are routed.

use super::error::{Error, Result};
use super::layout::{IOAPIC_ADDR, LAPIC_ADDR, MPTABLE_ADDR, MPTABLE_SIZE};

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
const FLOATING_POINTER_LEN: usize = 16;
const CONFIG_HEADER_LEN: usize = 44;

/// The most vCPUs the table's space (the last KiB of base memory) holds.
pub const MAX_CPUS: u32 = 32;

/// Builds the MP floating pointer followed by the configuration table for
/// `cpus` processors (APIC ids 0..cpus, the first one the BSP), to be placed
/// at [`MPTABLE_ADDR`].
///
/// ```
/// let table = vmm_core::boot::mptable::build(2)?;
/// assert_eq!(&table[..4], b"_MP_");
/// assert_eq!(&table[16..20], b"PCMP");
/// assert_eq!(table[..16].iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
/// # Ok::<(), vmm_core::boot::Error>(())
/// ```
pub fn build(cpus: u32) -> Result<Vec<u8>> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(Error::Machine(format!(
            "{cpus} vCPUs: the MP table describes 1 to {MAX_CPUS}"
        )));
    }
    let ioapic_id = cpus as u8;
    let mut entries: Vec<u8> = Vec::new();
    let mut count = 0u16;
    for id in 0..cpus as u8 {
        let flags = if id == 0 { 0b11 } else { 0b01 }; // enabled, BSP
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // FPU, APIC
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 2;
    for irq in 0..ISA_IRQS {
        let kind = if irq == 0 {
            INT_TYPE_EXTINT
        } else {
            INT_TYPE_INT
        };
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, kind, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0), (INT_TYPE_NMI, 1)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0, 0, 0, 0xff, lint]);
        count += 1;
    }

    let config_addr = MPTABLE_ADDR as u32 + FLOATING_POINTER_LEN as u32;
    let config_len = CONFIG_HEADER_LEN + entries.len();
    let mut config = Vec::with_capacity(config_len);
    config.extend_from_slice(b"PCMP");
    config.extend_from_slice(&(config_len as u16).to_le_bytes());
    config.extend_from_slice(&[SPEC_REV, 0]);
    config.extend_from_slice(b"VMMCORE ");
    config.extend_from_slice(b"DIRECTBOOT  ");
    config.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    config.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    config.extend_from_slice(&count.to_le_bytes());
    config.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    config.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    config.extend_from_slice(&entries);
    config[7] = checksum(&config);

    let mut table = Vec::with_capacity(FLOATING_POINTER_LEN + config_len);
    table.extend_from_slice(b"_MP_");
    table.extend_from_slice(&config_addr.to_le_bytes());
    table.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    table[10] = checksum(&table);
    table.extend_from_slice(&config);
    if table.len() as u64 > MPTABLE_SIZE {
        return Err(Error::Machine(format!(
            "the MP table for {cpus} vCPUs takes {} bytes, {MPTABLE_SIZE} are reserved",
            table.len()
        )));
    }
    Ok(table)
}

/// The byte that makes `bytes` sum to 0.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_lengths() {
        for cpus in [1, 2, 8, MAX_CPUS] {
            let t = build(cpus).unwrap();
            assert_eq!(sum(&t[..16]), 0);
            let len = usize::from(u16::from_le_bytes([t[20], t[21]]));
            assert_eq!(16 + len, t.len());
            assert_eq!(sum(&t[16..]), 0);
            let count = u16::from_le_bytes([t[16 + 34], t[16 + 35]]);
            assert_eq!(u32::from(count), cpus + 2 + 16 + 2);
        }
    }

    #[test]
    fn processors_are_listed_with_one_bsp() {
        let t = build(3).unwrap();
        let procs: Vec<_> = (0..3).map(|i| &t[60 + i * 20..80 + i * 20]).collect();
        for (i, p) in procs.iter().enumerate() {
            assert_eq!(p[0], ENTRY_PROCESSOR);
            assert_eq!(usize::from(p[1]), i);
            assert_eq!(p[3] & 1, 1);
            assert_eq!(p[3] & 2 != 0, i == 0);
        }
    }

    #[test]
    fn cpu_counts_out_of_range_are_refused() {
        assert!(build(0).is_err());
        assert!(build(MAX_CPUS + 1).is_err());
    }

    #[test]
    fn pointer_points_at_the_config_table() {
        let t = build(1).unwrap();
        let ptr = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
        assert_eq!(u64::from(ptr), MPTABLE_ADDR + 16);
    }
}
