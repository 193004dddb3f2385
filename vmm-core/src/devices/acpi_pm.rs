//! The ACPI PM1a event and control registers a non-hardware-reduced FADT
//! must point at: PM1 status and enable at [`ACPI_PM_PORT`], PM1 control
//! two bytes after them.
//!
//! The machine raises no ACPI fixed events, so the status register always
//! reads 0; the enable bits read back what the guest wrote (Linux checks
//! that an enabled event stays enabled). The FADT names no SMI command
//! port, so the machine is always in ACPI mode: `SCI_EN` reads 1. The
//! DSDT offers one sleep state, soft-off (`\_S5` with [`S5_SLP_TYP`]):
//! setting `SLP_EN` with that `SLP_TYP` powers the machine off
//! ([`DeviceAction::PowerOff`]); `SLP_EN` with any other type is ignored.

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
const CONTROL_KEPT: u16 = 0x0002 | SLP_TYP_MASK;
const SLP_TYP_MASK: u16 = 0x1c00;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_EN: u16 = 0x2000;
/// The `SLP_TYP` of soft-off (S5), which the DSDT's `\_S5` names.
pub const S5_SLP_TYP: u8 = 5;

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
        let mut sleep = false;
        for (i, &byte) in data.iter().enumerate() {
            let at = offset.saturating_add(i as u16);
            let shift = 8 * (at & 1);
            let merge = |old: u16| (old & !(0xff << shift)) | (u16::from(byte) << shift);
            match at & !1 {
                ENABLE => self.enable = merge(self.enable) & ENABLE_MASK,
                CONTROL => {
                    let value = merge(self.control);
                    sleep |= value & SLP_EN != 0;
                    self.control = value & CONTROL_KEPT;
                }
                _ => {} // status: write 1 to clear, and nothing is set
            }
        }
        // The whole access is applied first: a 16-bit write sets SLP_TYP
        // and SLP_EN together.
        let slp_typ = (self.control & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
        if sleep && slp_typ == u16::from(S5_SLP_TYP) {
            DeviceAction::PowerOff
        } else {
            DeviceAction::Continue
        }
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
        // SLP_TYP 3 with SLP_EN, GBL_RLS and BM_RLD.
        let action = pm.write(CONTROL, &(SLP_EN | 0x0c00 | 0x4 | 0x2).to_le_bytes());
        assert_eq!(action, DeviceAction::Continue, "S3 is not offered");
        assert_eq!(
            read(&mut pm, CONTROL, 2),
            (0x0c00u16 | 0x2 | 1).to_le_bytes()
        );
        pm.reset();
        assert_eq!(read(&mut pm, CONTROL, 2), [1, 0]);
        assert_eq!(read(&mut pm, ENABLE, 2), [0, 0]);
    }

    fn s5(with: u16) -> [u8; 2] {
        ((u16::from(S5_SLP_TYP) << SLP_TYP_SHIFT) | with).to_le_bytes()
    }

    #[test]
    fn slp_en_with_the_s5_type_powers_off_in_any_access_size() {
        let mut pm = AcpiPm::default();
        // ACPICA's order: SLP_TYP first, then SLP_TYP with SLP_EN.
        assert_eq!(pm.write(CONTROL, &s5(0)), DeviceAction::Continue);
        assert_eq!(pm.write(CONTROL, &s5(SLP_EN)), DeviceAction::PowerOff);
        // The high byte alone (SLP_TYP and SLP_EN live there).
        let mut pm = AcpiPm::default();
        assert_eq!(
            pm.write(CONTROL + 1, &[s5(SLP_EN)[1]]),
            DeviceAction::PowerOff
        );
        // A 32-bit write from the enable register on.
        let mut pm = AcpiPm::default();
        let [low, high] = s5(SLP_EN);
        assert_eq!(pm.write(ENABLE, &[0, 0, low, high]), DeviceAction::PowerOff);
    }

    #[test]
    fn slp_en_with_another_type_or_the_type_alone_does_nothing() {
        for slp_typ in (0..8u16).filter(|&t| t != u16::from(S5_SLP_TYP)) {
            let mut pm = AcpiPm::default();
            let value = (slp_typ << SLP_TYP_SHIFT) | SLP_EN;
            assert_eq!(
                pm.write(CONTROL, &value.to_le_bytes()),
                DeviceAction::Continue
            );
        }
        let mut pm = AcpiPm::default();
        assert_eq!(pm.write(CONTROL, &s5(0)), DeviceAction::Continue);
        // The low byte alone never carries SLP_EN.
        assert_eq!(pm.write(CONTROL, &[0xff]), DeviceAction::Continue);
    }

    #[test]
    fn garbage_writes_never_panic_and_only_s5_powers_off() {
        let mut pm = AcpiPm::default();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let offset = if seed & 0x100 != 0 {
                u16::MAX - (seed % 4) as u16
            } else {
                (seed % 8) as u16
            };
            let len = [1, 2, 4][(seed >> 9) as usize % 3];
            let bytes = (seed >> 16).to_le_bytes();
            let before = pm.control;
            let action = pm.write(offset, &bytes[..len]);
            if action == DeviceAction::PowerOff {
                assert_eq!(
                    pm.control & SLP_TYP_MASK,
                    u16::from(S5_SLP_TYP) << SLP_TYP_SHIFT
                );
            } else {
                assert_eq!(action, DeviceAction::Continue, "{before:#x}");
            }
            let mut out = [0u8; 4];
            pm.read(offset, &mut out[..len]);
        }
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
