//! The A20 gate line and System Control Port A (port 0x92, "fast A20").
//!
//! Two sources drive a PC's A20 gate: the keyboard controller's output
//! port (bit 1, the GATEA20 pin; see [`I8042`](super::I8042)) and bit 1 of
//! port 0x92 (ALT_A20). The chipset ORs them: the CPU's A20M# input is
//! asserted, and address bit 20 masked, only while both are low; either
//! one high opens the gate. This is the rule of the Super I/O chips that
//! implement port 0x92 (SMSC FDC37B72x "Port 92 Fast GateA20" truth
//! table; LPC47M10x: ALT_A20 "is externally OR'ed with the A20GATE signal
//! from the keyboard controller"). After a reset port 0x92's bit is low
//! and the controller's is high (firmware state), so the gate is open.
//!
//! Port 0x92 bit 0 is the alternate reset: writing it from 0 to 1 resets
//! the machine as the keyboard controller's reset line does; it must be
//! written back to 0 before it can reset again.

use std::sync::Arc;

use parking_lot::Mutex;

use super::{DeviceAction, PioDevice};

/// The port of System Control Port A.
pub const SYSTEM_CONTROL_A_PORT: u16 = 0x92;

/// Port 0x92 bit 0: alternate (fast) reset.
const FAST_RESET: u8 = 0x01;
/// Port 0x92 bit 1: ALT_A20.
const ALT_A20: u8 = 0x02;

/// Who drives the A20 line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum A20Source {
    /// The keyboard controller's output port, bit 1.
    KeyboardController,
    /// Port 0x92, bit 1.
    Port92,
}

/// The chipset's A20 line: open while either source drives it high (see
/// the module). Every change of a source is handed to the line's action
/// (in the VM: `pgm`'s gate of every vCPU and the KVM slots).
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use vmm_core::devices::{A20Line, A20Source};
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = Arc::clone(&seen);
/// let line = A20Line::new(move |open| log.lock().unwrap().push(open));
/// line.drive(A20Source::KeyboardController, false);
/// line.drive(A20Source::Port92, true);
/// assert!(line.is_open());
/// assert_eq!(*seen.lock().unwrap(), [false, true]);
/// ```
pub struct A20Line {
    /// The keyboard controller's and port 0x92's levels.
    levels: Mutex<(bool, bool)>,
    action: Box<dyn Fn(bool) + Send + Sync>,
}

impl A20Line {
    /// A line in the reset state (keyboard controller high, port 0x92
    /// low: open) whose changes go to `action`.
    pub fn new(action: impl Fn(bool) + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(A20Line {
            levels: Mutex::new((true, false)),
            action: Box::new(action),
        })
    }

    /// Sets `source`'s level and hands the line's state to the action.
    pub fn drive(&self, source: A20Source, high: bool) {
        // Held across the action, so that the VM follows the sources in
        // the order they changed.
        let mut levels = self.levels.lock();
        match source {
            A20Source::KeyboardController => levels.0 = high,
            A20Source::Port92 => levels.1 = high,
        }
        (self.action)(levels.0 || levels.1);
    }

    /// Sets both levels at once, as a restored machine had them, and hands
    /// the line's state to the action (also when it did not change: the VM
    /// follows the restored sources without passing through a state they
    /// never had).
    pub fn restore(&self, keyboard_controller: bool, port92: bool) {
        let mut levels = self.levels.lock();
        *levels = (keyboard_controller, port92);
        (self.action)(keyboard_controller || port92);
    }

    /// Whether the gate is open.
    pub fn is_open(&self) -> bool {
        let levels = self.levels.lock();
        levels.0 || levels.1
    }
}

/// System Control Port A: ALT_A20 (bit 1) and the alternate reset
/// (bit 0); the other bits read as 0. Without a line (the default), bit 1
/// is kept but drives nothing.
///
/// ```
/// use vmm_core::devices::{DeviceAction, PioDevice, Port92};
/// let mut port = Port92::default();
/// assert_eq!(port.write(0, &[0x02]), DeviceAction::Continue);
/// assert_eq!(port.write(0, &[0x03]), DeviceAction::Reset);
/// let mut b = [0];
/// port.read(0, &mut b);
/// assert_eq!(b[0], 0x03);
/// ```
#[derive(Default)]
pub struct Port92 {
    value: u8,
    line: Option<Arc<A20Line>>,
}

impl Port92 {
    /// The port driving `line`.
    pub fn new(line: Arc<A20Line>) -> Self {
        Port92 {
            value: 0,
            line: Some(line),
        }
    }

    /// The register, for a saved state.
    pub fn value(&self) -> u8 {
        self.value
    }

    /// Puts back a register [`Port92::value`] returned: no reset even if
    /// bit 0 is set (the pulse happened before the save), and the line is
    /// left alone (see [`A20Line::restore`]).
    pub fn set_value(&mut self, value: u8) {
        self.value = value & (FAST_RESET | ALT_A20);
    }

    /// Whether ALT_A20 (bit 1) is high.
    pub fn alt_a20(&self) -> bool {
        self.value & ALT_A20 != 0
    }

    fn drive(&self) {
        if let Some(line) = &self.line {
            line.drive(A20Source::Port92, self.value & ALT_A20 != 0);
        }
    }
}

impl PioDevice for Port92 {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        super::answer_byte(data, self.value);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) -> DeviceAction {
        let Some(&value) = data.first() else {
            return DeviceAction::Continue;
        };
        let before = self.value;
        self.set_value(value);
        self.drive();
        if before & FAST_RESET == 0 && value & FAST_RESET != 0 {
            DeviceAction::Reset
        } else {
            DeviceAction::Continue
        }
    }

    fn reset(&mut self) {
        self.set_value(0);
        self.drive();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line recording what it hands to the VM.
    fn recording_line() -> (Arc<A20Line>, Arc<Mutex<Vec<bool>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        (A20Line::new(move |open| log.lock().push(open)), seen)
    }

    #[test]
    fn either_source_opens_the_gate() {
        let (line, seen) = recording_line();
        assert!(line.is_open());
        line.drive(A20Source::KeyboardController, false);
        assert!(!line.is_open());
        line.drive(A20Source::Port92, true);
        assert!(line.is_open());
        line.drive(A20Source::KeyboardController, true);
        line.drive(A20Source::Port92, false);
        assert!(line.is_open());
        line.drive(A20Source::KeyboardController, false);
        assert!(!line.is_open());
        assert_eq!(*seen.lock(), [false, true, true, true, false]);
    }

    #[test]
    fn port92_drives_alt_a20_and_resets_on_a_rising_bit_0() {
        let (line, seen) = recording_line();
        line.drive(A20Source::KeyboardController, false);
        let mut port = Port92::new(Arc::clone(&line));
        assert_eq!(port.write(0, &[ALT_A20 | 0xf0]), DeviceAction::Continue);
        assert!(line.is_open());
        let mut b = [0xff; 2];
        port.read(0, &mut b);
        assert_eq!(b, [ALT_A20, 0], "reserved bits read as 0");
        assert_eq!(port.write(0, &[0]), DeviceAction::Continue);
        assert!(!line.is_open());
        assert_eq!(port.write(0, &[FAST_RESET]), DeviceAction::Reset);
        // still set: no new pulse until it is written back to 0
        assert_eq!(
            port.write(0, &[FAST_RESET | ALT_A20]),
            DeviceAction::Continue
        );
        assert_eq!(port.write(0, &[ALT_A20]), DeviceAction::Continue);
        assert_eq!(port.write(0, &[FAST_RESET]), DeviceAction::Reset);
        assert_eq!(port.write(0, &[]), DeviceAction::Continue);
        port.reset();
        assert_eq!(port.value(), 0);
        assert_eq!(
            *seen.lock(),
            [false, true, false, false, true, true, false, false]
        );
    }

    #[test]
    fn a_restored_value_neither_resets_nor_moves_the_line() {
        let (line, seen) = recording_line();
        let mut port = Port92::new(Arc::clone(&line));
        port.set_value(FAST_RESET | 0x80);
        assert_eq!(port.value(), FAST_RESET);
        assert!(!port.alt_a20());
        assert!(seen.lock().is_empty());
        line.restore(false, port.alt_a20());
        assert!(!line.is_open());
        // bit 0 was set before the save: writing it again is no pulse
        assert_eq!(
            port.write(0, &[FAST_RESET | ALT_A20]),
            DeviceAction::Continue
        );
        assert!(line.is_open());
        assert_eq!(*seen.lock(), [false, true]);
    }
}
