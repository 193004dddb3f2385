//! The debug-exit port: a guest ends the run with a status code.

use super::{DeviceAction, PioDevice};

/// The I/O port of the debug-exit device.
pub const DEBUG_EXIT_PORT: u16 = 0x501;

/// A byte `V` written to [`DEBUG_EXIT_PORT`] ends the run; `vmm run` exits
/// with status `V`. Reads return 0xff (nothing to read).
#[derive(Debug, Default)]
pub struct DebugExit;

impl PioDevice for DebugExit {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) -> DeviceAction {
        match data.first() {
            Some(&status) => DeviceAction::GuestExit(status),
            None => DeviceAction::Continue,
        }
    }
}
