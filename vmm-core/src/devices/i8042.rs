//! A minimal i8042 keyboard controller: enough for Linux to probe it
//! without hanging and to reset the machine through it (`reboot=k`).

use std::collections::VecDeque;

use super::{DeviceAction, PioDevice};

/// The I/O base of the controller: data at +0 (0x60), status and command
/// at +4 (0x64).
pub const I8042_PORT: u16 = 0x60;
/// Ports the controller's range spans (0x60..=0x64).
pub const I8042_PORTS: u16 = 5;

const DATA: u16 = 0;
const COMMAND: u16 = 4;
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const CMD_READ_CONFIG: u8 = 0x20;
const CMD_WRITE_CONFIG: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_PULSE_RESET: u8 = 0xfe;
const SELF_TEST_PASSED: u8 = 0x55;

/// The controller: a configuration byte, a small output queue, and the
/// reset line (command 0xfe ends the run as a guest reboot).
///
/// ```
/// use vmm_core::devices::{DeviceAction, I8042, PioDevice};
/// let mut kbc = I8042::default();
/// assert_eq!(kbc.write(4, &[0xfe]), DeviceAction::Reset);
/// ```
#[derive(Debug, Default)]
pub struct I8042 {
    config: u8,
    output: VecDeque<u8>,
    /// The last command wants a data byte (write configuration).
    awaiting_config: bool,
}

impl I8042 {
    /// Configuration byte, pending output bytes and whether a configuration
    /// byte is expected next, for a saved state.
    pub(crate) fn state(&self) -> (u8, Vec<u8>, bool) {
        (
            self.config,
            self.output.iter().copied().collect(),
            self.awaiting_config,
        )
    }

    /// Puts back what [`I8042::state`] returned.
    pub(crate) fn set_state(&mut self, config: u8, output: &[u8], awaiting_config: bool) {
        self.config = config;
        self.output = output.iter().copied().collect();
        self.awaiting_config = awaiting_config;
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = match offset {
            DATA => self.output.pop_front().unwrap_or(0),
            COMMAND => {
                let full = if self.output.is_empty() {
                    0
                } else {
                    STATUS_OUTPUT_FULL
                };
                STATUS_SYSTEM_FLAG | full
            }
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        let Some(&value) = data.first() else {
            return DeviceAction::Continue;
        };
        match offset {
            DATA if self.awaiting_config => {
                self.config = value;
                self.awaiting_config = false;
            }
            COMMAND => match value {
                CMD_READ_CONFIG => self.output.push_back(self.config),
                CMD_WRITE_CONFIG => self.awaiting_config = true,
                CMD_SELF_TEST => self.output.push_back(SELF_TEST_PASSED),
                CMD_PULSE_RESET => return DeviceAction::Reset,
                _ => {}
            },
            _ => {}
        }
        DeviceAction::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(kbc: &mut I8042, offset: u16) -> u8 {
        let mut b = [0];
        kbc.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn self_test_and_config_round_trip() {
        let mut kbc = I8042::default();
        assert_eq!(read(&mut kbc, COMMAND) & STATUS_OUTPUT_FULL, 0);
        kbc.write(COMMAND, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut kbc, COMMAND) & STATUS_OUTPUT_FULL, 1);
        assert_eq!(read(&mut kbc, DATA), SELF_TEST_PASSED);
        kbc.write(COMMAND, &[CMD_WRITE_CONFIG]);
        kbc.write(DATA, &[0x47]);
        kbc.write(COMMAND, &[CMD_READ_CONFIG]);
        assert_eq!(read(&mut kbc, DATA), 0x47);
        assert_eq!(read(&mut kbc, COMMAND) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn reset_pulse_asks_for_a_reboot() {
        let mut kbc = I8042::default();
        assert_eq!(kbc.write(COMMAND, &[0xd1]), DeviceAction::Continue);
        assert_eq!(kbc.write(COMMAND, &[CMD_PULSE_RESET]), DeviceAction::Reset);
        assert_eq!(kbc.write(COMMAND, &[]), DeviceAction::Continue);
    }
}
