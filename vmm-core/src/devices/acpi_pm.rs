//! The ACPI PM1a event and control registers a non-hardware-reduced FADT
//! must point at: PM1 status and enable at [`ACPI_PM_PORT`], PM1 control
//! two bytes after them.
//!
//! The machine raises no ACPI fixed events, so the status register always
//! reads 0; the enable bits read back what the guest wrote (Linux checks
//! that an enabled event stays enabled). The FADT names no SMI command
//! port, so the machine is always in ACPI mode: `SCI_EN` reads 1. Sleep
//! requests (`SLP_EN`) are not acted on: the DSDT offers no sleep state.

use super::{DeviceAction, PioDevice};

/// The first port: PM1a status (2 bytes), then PM1a enable (2 bytes),
/// then PM1a control (2 bytes).
pub const ACPI_PM_PORT: u16 = 0x600;
/// Ports the block spans.
pub const ACPI_PM_PORTS: u16 = 6;
/// Bytes of the PM1 event block (status and enable), as the FADT says.
pub const PM1_EVT_LEN: u8 = 4;
/// Bytes of the PM1 control block, as the FADT says.
pub const PM1_CNT_LEN: u8 = 2;

const ENABLE: u16 = 2;
const CONTROL: u16 = 4;
/// PM1 enable bits the specification defines: timer, global lock, power
/// button, sleep button, RTC alarm, PCIe wake disable.
const ENABLE_MASK: u16 = 0x0001 | 0x0020 | 0x0100 | 0x0200 | 0x0400 | 0x4000;
const SCI_EN: u16 = 0x0001;
/// Control bits that hold a value: `BM_RLD` and `SLP_TYP`. `GBL_RLS` and
/// `SLP_EN` are write-only and read 0.
const CONTROL_KEPT: u16 = 0x0002 | 0x1c00;

/// The PM1a register block.
///
/// ```
/// use vmm_core::devices::{AcpiPm, PioDevice};
/// let mut pm = AcpiPm::default();
/// let mut cnt = [0u8; 2];
/// pm.read(4, &mut cnt);
/// assert_eq!(u16::from_le_bytes(cnt) & 1, 1, "always in ACPI mode");
/// pm.write(2, &[0x20, 0]);
/// let mut en = [0u8; 2];
/// pm.read(2, &mut en);
/// assert_eq!(en, [0x20, 0]);
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AcpiPm {
    enable: u16,
    control: u16,
}

impl AcpiPm {
    /// The enable and control registers, for a saved state.
    pub(crate) fn state(&self) -> (u16, u16) {
        (self.enable, self.control)
    }

    /// Puts back what [`AcpiPm::state`] returned (bits the registers do
    /// not hold are dropped).
    pub(crate) fn set_state(&mut self, enable: u16, control: u16) {
        self.enable = enable & ENABLE_MASK;
        self.control = control & CONTROL_KEPT;
    }

    fn register(&self, offset: u16) -> u16 {
        match offset {
            ENABLE => self.enable,
            CONTROL => self.control | SCI_EN,
            _ => 0, // status: no event ever occurs
        }
    }
}

impl PioDevice for AcpiPm {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i as u16);
            let [low, high] = self.register(at & !1).to_le_bytes();
            *byte = if at & 1 == 0 { low } else { high };
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        for (i, &byte) in data.iter().enumerate() {
            let at = offset.saturating_add(i as u16);
            let shift = 8 * (at & 1);
            let merge = |old: u16| (old & !(0xff << shift)) | (u16::from(byte) << shift);
            match at & !1 {
                ENABLE => self.enable = merge(self.enable) & ENABLE_MASK,
                CONTROL => self.control = merge(self.control) & CONTROL_KEPT,
                _ => {} // status: write 1 to clear, and nothing is set
            }
        }
        DeviceAction::Continue
    }

    fn reset(&mut self) {
        *self = AcpiPm::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pm: &mut AcpiPm, offset: u16, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        pm.read(offset, &mut data);
        data
    }

    #[test]
    fn status_reads_zero_and_ignores_writes() {
        let mut pm = AcpiPm::default();
        pm.write(0, &[0xff, 0xff]);
        assert_eq!(read(&mut pm, 0, 2), [0, 0]);
    }

    #[test]
    fn enable_keeps_defined_bits_in_any_access_size() {
        let mut pm = AcpiPm::default();
        pm.write(0, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(read(&mut pm, 2, 2), ENABLE_MASK.to_le_bytes());
        pm.write(3, &[0]);
        assert_eq!(read(&mut pm, 2, 2), [0x21, 0]);
        assert_eq!(read(&mut pm, 0, 4), [0, 0, 0x21, 0]);
    }

    #[test]
    fn control_has_sci_en_and_write_only_bits_read_zero() {
        let mut pm = AcpiPm::default();
        // SLP_TYP 5 with SLP_EN, GBL_RLS and BM_RLD.
        pm.write(CONTROL, &(0x2000u16 | 0x1400 | 0x4 | 0x2).to_le_bytes());
        assert_eq!(
            read(&mut pm, CONTROL, 2),
            (0x1400u16 | 0x2 | 1).to_le_bytes()
        );
        pm.reset();
        assert_eq!(read(&mut pm, CONTROL, 2), [1, 0]);
        assert_eq!(read(&mut pm, ENABLE, 2), [0, 0]);
    }

    #[test]
    fn state_round_trips() {
        let mut pm = AcpiPm::default();
        pm.write(ENABLE, &[0x20, 0x01]);
        pm.write(CONTROL, &[0x02, 0x14]);
        let (enable, control) = pm.state();
        let mut other = AcpiPm::default();
        other.set_state(enable, control);
        assert_eq!(other, pm);
        other.set_state(0xffff, 0xffff);
        assert_eq!(other.state(), (ENABLE_MASK, CONTROL_KEPT));
    }
}
