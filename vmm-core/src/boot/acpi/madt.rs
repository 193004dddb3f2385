//! The MADT ("APIC"): one local APIC per vCPU, the I/O APIC, how ISA IRQs
//! reach it, and where the NMI comes in.

use acpi_tables::Aml;
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;

use super::{HEADER_LEN, OEM_ID, OEM_REVISION, OEM_TABLE_ID, SCI_IRQ};
use crate::boot::layout::{IOAPIC_ADDR, LAPIC_ADDR};

const REVISION: u8 = 5;
/// MADT flag: the machine also has a pair of 8259 PICs.
const PCAT_COMPAT: u32 = 1;
const TYPE_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const TYPE_LOCAL_APIC_NMI: u8 = 4;
/// MPS INTI flags: active high, level triggered.
const ACTIVE_HIGH_LEVEL: u16 = 0b01 | (0b11 << 2);
/// A processor UID that means every processor.
const ALL_PROCESSORS: u8 = 0xff;
/// The local APIC input the NMI is wired to.
const NMI_LINT: u8 = 1;

/// The most vCPUs the table describes: APIC ids are one byte and the I/O
/// APIC takes the id after the last vCPU's.
pub const MAX_CPUS: u32 = 254;

/// Builds the MADT for `cpus` vCPUs with APIC ids `0..cpus` (as KVM
/// assigns them), processor UIDs equal to the ids, and the I/O APIC with
/// id `cpus` serving GSIs 0-23.
///
/// ISA IRQs keep their numbers as GSIs (the in-kernel PIT drives I/O APIC
/// input 0, as KVM's default routing wires it), so the only override is
/// the SCI's: level triggered, active high. `cpus` is 1 to [`MAX_CPUS`].
pub(super) fn build(cpus: u32) -> Vec<u8> {
    let mut madt = Sdt::new(
        *b"APIC",
        HEADER_LEN,
        REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.append(LAPIC_ADDR);
    madt.append(PCAT_COMPAT);
    let mut entries = Vec::new();
    for id in 0..cpus as u8 {
        ProcessorLocalApic::new(id, id, EnabledStatus::Enabled).to_aml_bytes(&mut entries);
    }
    IoApic::new(cpus as u8, IOAPIC_ADDR, 0).to_aml_bytes(&mut entries);
    let gsi = u32::from(SCI_IRQ);
    entries.extend_from_slice(&[TYPE_INTERRUPT_SOURCE_OVERRIDE, 10, 0, SCI_IRQ]);
    entries.extend_from_slice(&gsi.to_le_bytes());
    entries.extend_from_slice(&ACTIVE_HIGH_LEVEL.to_le_bytes());
    entries.extend_from_slice(&[TYPE_LOCAL_APIC_NMI, 6, ALL_PROCESSORS]);
    entries.extend_from_slice(&0u16.to_le_bytes()); // conforms to the bus
    entries.push(NMI_LINT);
    madt.append_slice(&entries);
    madt.as_slice().to_vec()
}
