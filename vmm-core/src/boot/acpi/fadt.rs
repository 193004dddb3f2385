//! The FADT ("FACP") of a PC that is not hardware-reduced, and its FACS.

use acpi_tables::Aml;
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID, SCI_IRQ};
use crate::devices::{ACPI_PM_PORT, CMOS_CENTURY, PM1_CNT_LEN, PM1_EVT_LEN};

/// IA-PC boot architecture flags: legacy (ISA) devices, an 8042, no VGA.
/// "CMOS RTC not present" (bit 5) stays clear: the RTC is there.
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// Worst-case C2 and C3 latencies above these say "not supported".
const C2_UNSUPPORTED: u16 = 101;
const C3_UNSUPPORTED: u16 = 1001;

/// Builds the FADT pointing at the DSDT at `dsdt` and the FACS at `facs`.
///
/// The SCI is ISA IRQ 9; the PM1a event and control blocks are the
/// [`AcpiPm`](crate::devices::AcpiPm) registers; there is no SMI command
/// port (always in ACPI mode), no PM timer, no GPE block, no reset
/// register. The CMOS RTC keeps the century at [`CMOS_CENTURY`]. The power and sleep buttons are not fixed features, the RTC
/// has no fixed wake status, C1 is HLT and WBINVD works.
pub(super) fn build(dsdt: u64, facs: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .firmware_ctrl_64(facs)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::FixRtc);
    fadt.sci_int = u16::from(SCI_IRQ).into();
    fadt.pm1a_evt_blk = u32::from(ACPI_PM_PORT).into();
    fadt.pm1_evt_len = PM1_EVT_LEN;
    fadt.pm1a_cnt_blk = (u32::from(ACPI_PM_PORT) + u32::from(PM1_EVT_LEN)).into();
    fadt.pm1_cnt_len = PM1_CNT_LEN;
    fadt.p_lvl2_lat = C2_UNSUPPORTED.into();
    fadt.p_lvl3_lat = C3_UNSUPPORTED.into();
    fadt.century = CMOS_CENTURY;
    fadt.iapc_boot_arch = (IAPC_LEGACY_DEVICES | IAPC_8042 | IAPC_VGA_NOT_PRESENT).into();
    let mut bytes = Vec::new();
    fadt.finalize().to_aml_bytes(&mut bytes);
    bytes
}

/// The FACS (64 bytes; must be 64-byte aligned).
pub(super) fn facs() -> Vec<u8> {
    let mut bytes = Vec::new();
    FACS::new().to_aml_bytes(&mut bytes);
    bytes
}
