//! Minimal PC devices.

mod a20;
mod acpi_pm;
mod balloon;
mod cmos;
mod debug_exit;
mod i8042;
pub mod pci;
mod pci_setup;
mod serial;
mod serial_input;
pub mod virtio;

pub use a20::{A20Line, A20Source, Port92, SYSTEM_CONTROL_A_PORT};
pub use acpi_pm::{ACPI_PM_PORT, ACPI_PM_PORTS, AcpiPm, PM1_CNT_LEN, PM1_EVT_LEN, S5_SLP_TYP};
pub use balloon::{BALLOON_PORT, BALLOON_PORTS, Balloon, BalloonState};
pub use cmos::{
    CMOS_CENTURY, CMOS_PORT, CMOS_PORTS, Cmos, CmosState, HostClock, spawn_interrupts, system_clock,
};
pub use debug_exit::{DEBUG_EXIT_PORT, DebugExit};
pub use i8042::{
    DataTarget, I8042, I8042_PORT, I8042_PORTS, I8042State, Keyboard, Mouse, PENDING_LIMIT, Queue,
    Source,
};
pub(crate) use pci_setup::pci_platform;
pub(crate) use serial::UART_FIFO_SIZE;
pub use serial::{COM1_PORT, IrqLine, Uart};
pub use serial_input::{SerialInput, SerialInputClosed};

/// Answers an `in` from a byte-wide register: `value` in the first byte,
/// zeros in any wider part of the access.
pub(crate) fn answer_byte(data: &mut [u8], value: u8) {
    data.fill(0);
    if let Some(first) = data.first_mut() {
        *first = value;
    }
}

/// What a device asks of the VM after an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAction {
    /// Carry on running the guest.
    Continue,
    /// End the run: the guest asked to exit with this status.
    GuestExit(u8),
    /// The guest reset the machine (a reboot): the VM restarts or the run
    /// ends, as configured.
    Reset,
    /// End the run: the guest powered the machine off (ACPI soft-off).
    PowerOff,
}

/// A device on the I/O port bus.
///
/// `offset` is the port relative to the start of the device's range; `data`
/// holds the access's bytes (1, 2 or 4 of them).
pub trait PioDevice: Send {
    /// Handles an `in`: fill `data`.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Handles an `out`.
    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction;
    /// Returns to the power-on state (machine reset).
    fn reset(&mut self) {}
}
