//! An i8042 (8042-compatible) keyboard controller with an AT keyboard on
//! its keyboard port and a PS/2 mouse on its auxiliary port.
//!
//! The controller has one output buffer: its own answers (command byte,
//! self tests, output port, loopback bytes) go first, then the keyboard's
//! bytes unless the keyboard port is disabled, then the mouse's unless the
//! auxiliary port is disabled. A byte entering the buffer raises IRQ 1
//! (controller and keyboard bytes) or IRQ 12 (mouse bytes) when the command
//! byte enables that interrupt. The status register reports the keyboard
//! as not inhibited (no keylock). Command 0xfe, and an output-port write
//! that clears bit 0, reset the machine (Linux's `reboot=k`). The output
//! port's bit 1 drives the A20 line ([`A20Line`]): written with command
//! 0xd1, cleared by 0xdd and set by 0xdf.

mod ps2;

use std::collections::VecDeque;
use std::sync::Arc;

use vm_superio::Trigger;

use super::{A20Line, A20Source, DeviceAction, IrqLine, PioDevice};
pub use ps2::{Keyboard, Mouse, Queue};

/// The I/O base of the controller: data at +0 (0x60), status and command
/// at +4 (0x64).
pub const I8042_PORT: u16 = 0x60;
/// Ports the controller's range spans (0x60..=0x64).
pub const I8042_PORTS: u16 = 5;

const DATA: u16 = 0;
const COMMAND: u16 = 4;

/// Status register bits.
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
/// The last write went to the command port.
const STATUS_COMMAND: u8 = 0x08;
/// The keyboard is not inhibited by the keylock.
const STATUS_UNLOCKED: u8 = 0x10;
/// The output buffer holds a byte from the auxiliary device.
const STATUS_AUX_DATA: u8 = 0x20;

/// Command byte bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_AUX_INT: u8 = 0x02;
const CTR_SYSTEM_FLAG: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
const CTR_TRANSLATE: u8 = 0x40;
/// What firmware leaves: translation, POST passed, keyboard enabled with
/// its interrupt, mouse disabled.
const CTR_DEFAULT: u8 = CTR_TRANSLATE | CTR_AUX_DISABLED | CTR_SYSTEM_FLAG | CTR_KBD_INT;

/// Output port bits: the reset line (0 resets the CPU) and the A20 gate.
const OUTPUT_PORT_NO_RESET: u8 = 0x01;
const OUTPUT_PORT_A20: u8 = 0x02;
/// Output port bits that mirror the output buffer.
const OUTPUT_PORT_KBD_FULL: u8 = 0x10;
const OUTPUT_PORT_AUX_FULL: u8 = 0x20;

/// The most controller answers waiting for the output buffer.
pub const PENDING_LIMIT: usize = 16;

const SELF_TEST_PASSED: u8 = 0x55;
const INTERFACE_OK: u8 = 0x00;

/// Where a byte in the output buffer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The controller, or the keyboard port (status bit 5 clear, IRQ 1).
    Keyboard,
    /// The auxiliary port (status bit 5 set, IRQ 12).
    Aux,
}

/// What the next byte written to the data port is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataTarget {
    /// The keyboard.
    #[default]
    Keyboard,
    /// The command byte (command 0x60).
    CommandByte,
    /// The output port (command 0xd1).
    OutputPort,
    /// The output buffer, as if from the keyboard (command 0xd2).
    KeyboardLoopback,
    /// The output buffer, as if from the mouse (command 0xd3).
    AuxLoopback,
    /// The mouse (command 0xd4).
    Aux,
}

/// Everything the controller and its devices hold, for a saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct I8042State {
    /// The command byte.
    pub command_byte: u8,
    /// The output port (reset line, A20).
    pub output_port: u8,
    /// The output buffer.
    pub output: Option<(u8, Source)>,
    /// The controller's own bytes waiting for the output buffer.
    pub pending: VecDeque<(u8, Source)>,
    /// What the next data byte is for.
    pub data_target: DataTarget,
    /// Whether the last write went to the command port.
    pub last_was_command: bool,
    /// The keyboard.
    pub keyboard: Keyboard,
    /// The mouse.
    pub mouse: Mouse,
}

impl I8042State {
    /// Whether the output port drives the A20 line high.
    pub fn a20(&self) -> bool {
        self.output_port & OUTPUT_PORT_A20 != 0
    }
}

impl Default for I8042State {
    fn default() -> Self {
        I8042State {
            command_byte: CTR_DEFAULT,
            output_port: OUTPUT_PORT_NO_RESET | OUTPUT_PORT_A20,
            output: None,
            pending: VecDeque::new(),
            data_target: DataTarget::default(),
            last_was_command: false,
            keyboard: Keyboard::default(),
            mouse: Mouse::default(),
        }
    }
}

/// The controller with its keyboard and mouse, and their interrupt lines.
///
/// ```
/// use vmm_core::devices::{DeviceAction, I8042, PioDevice};
/// let mut kbc = I8042::default();
/// kbc.write(4, &[0xaa]); // self test
/// let mut b = [0];
/// kbc.read(0, &mut b);
/// assert_eq!(b[0], 0x55);
/// assert_eq!(kbc.write(4, &[0xfe]), DeviceAction::Reset);
/// ```
#[derive(Default)]
pub struct I8042 {
    state: I8042State,
    kbd_irq: IrqLine,
    aux_irq: IrqLine,
    a20: Option<Arc<A20Line>>,
}

impl I8042 {
    /// A controller raising `kbd_irq` (IRQ 1) and `aux_irq` (IRQ 12).
    pub fn new(kbd_irq: IrqLine, aux_irq: IrqLine) -> Self {
        I8042 {
            state: I8042State::default(),
            kbd_irq,
            aux_irq,
            a20: None,
        }
    }

    /// The controller with its output port's bit 1 driving `line`.
    pub fn with_a20(mut self, line: Arc<A20Line>) -> Self {
        self.a20 = Some(line);
        self
    }

    /// The state, for a saved state.
    pub fn state(&self) -> I8042State {
        self.state.clone()
    }

    /// Puts back a state [`I8042::state`] returned; the A20 line is left
    /// alone (see [`A20Line::restore`]).
    pub fn set_state(&mut self, state: I8042State) {
        self.state = state;
    }

    fn drive_a20(&self) {
        if let Some(line) = &self.a20 {
            line.drive(A20Source::KeyboardController, self.state.a20());
        }
    }

    fn set_output_port_a20(&mut self, high: bool) {
        let port = &mut self.state.output_port;
        *port = if high {
            *port | OUTPUT_PORT_A20
        } else {
            *port & !OUTPUT_PORT_A20
        };
        self.drive_a20();
    }

    /// Raises the interrupt of the byte in the output buffer, if the
    /// command byte enables it.
    fn signal(&self) {
        let Some((_, source)) = self.state.output else {
            return;
        };
        let (enable, line) = match source {
            Source::Keyboard => (CTR_KBD_INT, &self.kbd_irq),
            Source::Aux => (CTR_AUX_INT, &self.aux_irq),
        };
        if self.state.command_byte & enable != 0
            && let Err(e) = line.trigger()
        {
            tracing::warn!("i8042 interrupt lost: {e}");
        }
    }

    /// Moves the next byte into an empty output buffer.
    fn refill(&mut self) {
        let s = &mut self.state;
        if s.output.is_some() {
            return;
        }
        s.output = s.pending.pop_front().or_else(|| {
            let kbd = (s.command_byte & CTR_KBD_DISABLED == 0)
                .then(|| s.keyboard.out.pop())
                .flatten()
                .map(|b| (b, Source::Keyboard));
            kbd.or_else(|| {
                (s.command_byte & CTR_AUX_DISABLED == 0)
                    .then(|| s.mouse.out.pop())
                    .flatten()
                    .map(|b| (b, Source::Aux))
            })
        });
        self.signal();
    }

    fn answer(&mut self, byte: u8, source: Source) {
        // A guest that never reads loses the oldest answers.
        if self.state.pending.len() == PENDING_LIMIT {
            self.state.pending.pop_front();
        }
        self.state.pending.push_back((byte, source));
        self.refill();
    }

    fn set_command_byte(&mut self, value: u8) {
        let before = self.state.command_byte;
        self.state.command_byte = value;
        let newly_enabled = value & !before & (CTR_KBD_INT | CTR_AUX_INT);
        if newly_enabled != 0 && self.state.output.is_some() {
            self.signal();
        }
        self.refill();
    }

    fn output_port(&self) -> u8 {
        let full = match self.state.output {
            Some((_, Source::Keyboard)) => OUTPUT_PORT_KBD_FULL,
            Some((_, Source::Aux)) => OUTPUT_PORT_AUX_FULL,
            None => 0,
        };
        (self.state.output_port & (OUTPUT_PORT_NO_RESET | OUTPUT_PORT_A20)) | full
    }

    fn command(&mut self, command: u8) -> DeviceAction {
        let ctr = self.state.command_byte;
        let mut target = DataTarget::Keyboard;
        match command {
            0x20 => self.answer(ctr, Source::Keyboard),
            0x60 => target = DataTarget::CommandByte,
            0xa7 => self.set_command_byte(ctr | CTR_AUX_DISABLED),
            0xa8 => self.set_command_byte(ctr & !CTR_AUX_DISABLED),
            0xa9 | 0xab => self.answer(INTERFACE_OK, Source::Keyboard),
            0xaa => self.answer(SELF_TEST_PASSED, Source::Keyboard),
            0xad => self.set_command_byte(ctr | CTR_KBD_DISABLED),
            0xae => self.set_command_byte(ctr & !CTR_KBD_DISABLED),
            0xd0 => self.answer(self.output_port(), Source::Keyboard),
            0xd1 => target = DataTarget::OutputPort,
            0xd2 => target = DataTarget::KeyboardLoopback,
            0xd3 => target = DataTarget::AuxLoopback,
            0xd4 => target = DataTarget::Aux,
            0xdd => self.set_output_port_a20(false),
            0xdf => self.set_output_port_a20(true),
            // Pulse output lines: bit 0 clear pulses the reset line.
            0xf0..=0xff if command & 1 == 0 => return DeviceAction::Reset,
            _ => {}
        }
        self.state.data_target = target;
        DeviceAction::Continue
    }

    fn data(&mut self, value: u8) -> DeviceAction {
        let target = std::mem::take(&mut self.state.data_target);
        match target {
            DataTarget::Keyboard => {
                let translated = self.state.command_byte & CTR_TRANSLATE != 0;
                self.state.keyboard.receive(value, translated);
                self.refill();
            }
            DataTarget::CommandByte => self.set_command_byte(value),
            DataTarget::OutputPort => {
                self.state.output_port = value;
                self.drive_a20();
                if value & OUTPUT_PORT_NO_RESET == 0 {
                    return DeviceAction::Reset;
                }
            }
            DataTarget::KeyboardLoopback => self.answer(value, Source::Keyboard),
            DataTarget::AuxLoopback => self.answer(value, Source::Aux),
            DataTarget::Aux => {
                self.state.mouse.receive(value);
                self.refill();
            }
        }
        DeviceAction::Continue
    }

    fn status(&self) -> u8 {
        let s = &self.state;
        let mut status = STATUS_UNLOCKED;
        match s.output {
            Some((_, Source::Keyboard)) => status |= STATUS_OUTPUT_FULL,
            Some((_, Source::Aux)) => status |= STATUS_OUTPUT_FULL | STATUS_AUX_DATA,
            None => {}
        }
        if s.command_byte & CTR_SYSTEM_FLAG != 0 {
            status |= STATUS_SYSTEM_FLAG;
        }
        if s.last_was_command {
            status |= STATUS_COMMAND;
        }
        status
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = match offset {
            DATA => match self.state.output.take() {
                Some((byte, _)) => {
                    self.refill();
                    byte
                }
                None => 0,
            },
            COMMAND => self.status(),
            _ => 0xff,
        };
        crate::devices::answer_byte(data, value);
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        let Some(&value) = data.first() else {
            return DeviceAction::Continue;
        };
        match offset {
            DATA => {
                self.state.last_was_command = false;
                self.data(value)
            }
            COMMAND => {
                self.state.last_was_command = true;
                self.command(value)
            }
            _ => DeviceAction::Continue,
        }
    }

    fn reset(&mut self) {
        self.set_state(I8042State::default());
        self.drive_a20();
    }
}

#[cfg(test)]
mod tests;
