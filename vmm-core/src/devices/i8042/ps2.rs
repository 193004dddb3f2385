//! The two PS/2 devices behind the i8042: an AT keyboard on the keyboard
//! port and a standard two-button mouse on the auxiliary port. Neither has
//! host input to send; they answer the commands a driver probes and
//! configures them with, as the devices do.

use std::collections::VecDeque;

/// Acknowledge: the device took the byte.
const ACK: u8 = 0xfa;
/// Resend: the device did not understand the byte.
const RESEND: u8 = 0xfe;
/// Basic assurance test passed (after a reset).
const BAT_OK: u8 = 0xaa;
/// The most bytes a device queues for the controller (the longest answer
/// is four bytes; a driver that never reads loses the oldest).
const QUEUE_LIMIT: usize = 16;

/// Bytes a device has for the controller, oldest first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Queue(VecDeque<u8>);

impl Queue {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.0.len() == QUEUE_LIMIT {
                self.0.pop_front();
            }
            self.0.push_back(b);
        }
    }

    /// The next byte for the controller.
    pub(super) fn pop(&mut self) -> Option<u8> {
        self.0.pop_front()
    }

    /// The queued bytes, oldest first.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.iter().copied().collect()
    }

    /// A queue holding `bytes` (the newest `QUEUE_LIMIT` of them).
    pub fn from_bytes(bytes: &[u8]) -> Queue {
        let mut q = Queue::default();
        q.push(bytes);
        q
    }
}

/// An AT (MF2) keyboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyboard {
    /// Bytes for the controller.
    pub out: Queue,
    /// A command waiting for its parameter byte.
    pub awaiting: Option<u8>,
    /// The scan code set (1 to 3).
    pub scan_set: u8,
    /// The last byte sent, for a resend request.
    pub last: u8,
}

impl Default for Keyboard {
    fn default() -> Self {
        Keyboard {
            out: Queue::default(),
            awaiting: None,
            scan_set: 2,
            last: 0,
        }
    }
}

impl Keyboard {
    fn answer(&mut self, bytes: &[u8]) {
        if let Some(&last) = bytes.last() {
            self.last = last;
        }
        self.out.push(bytes);
    }

    /// Takes a byte the host sent; `translated`: the controller translates
    /// the keyboard's bytes to set 1 (which changes the identity's second
    /// byte, 0x83, to 0x41).
    pub(super) fn receive(&mut self, byte: u8, translated: bool) {
        if let Some(command) = self.awaiting.take() {
            match (command, byte) {
                (0xf0, 0) => self.answer(&[ACK, self.scan_set]),
                (0xf0, 1..=3) => {
                    self.scan_set = byte;
                    self.answer(&[ACK]);
                }
                (0xf0, _) => self.answer(&[RESEND]),
                // LEDs (0xed) and typematic rate (0xf3): nothing to show.
                _ => self.answer(&[ACK]),
            }
            return;
        }
        match byte {
            0xed | 0xf0 | 0xf3 => {
                self.awaiting = Some(byte);
                self.answer(&[ACK]);
            }
            0xee => self.answer(&[0xee]),
            0xf2 => self.answer(&[ACK, 0xab, if translated { 0x41 } else { 0x83 }]),
            // Enable, disable, defaults, set-3 key modes.
            0xf4..=0xfd => self.answer(&[ACK]),
            0xfe => {
                let last = self.last;
                self.answer(&[last]);
            }
            0xff => {
                *self = Keyboard {
                    out: std::mem::take(&mut self.out),
                    ..Keyboard::default()
                };
                self.answer(&[ACK, BAT_OK]);
            }
            _ => self.answer(&[RESEND]),
        }
    }
}

/// A standard PS/2 mouse (device id 0: two buttons, no wheel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mouse {
    /// Bytes for the controller.
    pub out: Queue,
    /// A command waiting for its parameter byte.
    pub awaiting: Option<u8>,
    /// Samples per second.
    pub rate: u8,
    /// Counts per millimetre, as the 0..=3 code.
    pub resolution: u8,
    /// 2:1 scaling.
    pub scaling_2_1: bool,
    /// Remote (polled) mode rather than stream mode.
    pub remote: bool,
    /// Data reporting enabled.
    pub reporting: bool,
    /// Wrap (echo) mode.
    pub wrap: bool,
    /// The last byte sent, for a resend request.
    pub last: u8,
}

impl Default for Mouse {
    fn default() -> Self {
        Mouse {
            out: Queue::default(),
            awaiting: None,
            rate: 100,
            resolution: 2,
            scaling_2_1: false,
            remote: false,
            reporting: false,
            wrap: false,
            last: 0,
        }
    }
}

impl Mouse {
    fn answer(&mut self, bytes: &[u8]) {
        if let Some(&last) = bytes.last() {
            self.last = last;
        }
        self.out.push(bytes);
    }

    /// Back to the power-on settings, keeping what is queued.
    fn defaults(&mut self) {
        *self = Mouse {
            out: std::mem::take(&mut self.out),
            ..Mouse::default()
        };
    }

    /// Takes a byte the host sent through the controller.
    pub(super) fn receive(&mut self, byte: u8) {
        if let Some(command) = self.awaiting.take() {
            match command {
                0xe8 if byte <= 3 => self.resolution = byte,
                0xf3 => self.rate = byte,
                _ => return self.answer(&[RESEND]),
            }
            return self.answer(&[ACK]);
        }
        if self.wrap && byte != 0xec && byte != 0xff {
            return self.answer(&[byte]);
        }
        match byte {
            0xe6 | 0xe7 => {
                self.scaling_2_1 = byte == 0xe7;
                self.answer(&[ACK]);
            }
            0xe8 | 0xf3 => {
                self.awaiting = Some(byte);
                self.answer(&[ACK]);
            }
            0xe9 => {
                let status = u8::from(self.remote) << 6
                    | u8::from(self.reporting) << 5
                    | u8::from(self.scaling_2_1) << 4;
                self.answer(&[ACK, status, self.resolution, self.rate]);
            }
            0xea | 0xf0 => {
                self.remote = byte == 0xf0;
                self.answer(&[ACK]);
            }
            // Read data: no buttons, no movement (bit 3 is always set).
            0xeb => self.answer(&[ACK, 0x08, 0, 0]),
            0xec | 0xee => {
                self.wrap = byte == 0xee;
                self.answer(&[ACK]);
            }
            0xf2 => self.answer(&[ACK, 0x00]),
            0xf4 | 0xf5 => {
                self.reporting = byte == 0xf4;
                self.answer(&[ACK]);
            }
            0xf6 => {
                self.defaults();
                self.answer(&[ACK]);
            }
            0xfe => {
                let last = self.last;
                self.answer(&[last]);
            }
            0xff => {
                self.defaults();
                self.answer(&[ACK, BAT_OK, 0x00]);
            }
            _ => self.answer(&[RESEND]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut Queue) -> Vec<u8> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn keyboard_answers_as_an_at_keyboard() {
        let mut k = Keyboard::default();
        for (sent, translated, answer) in [
            (0xff, true, vec![ACK, BAT_OK]),
            (0xf2, true, vec![ACK, 0xab, 0x41]),
            (0xf2, false, vec![ACK, 0xab, 0x83]),
            (0xf5, true, vec![ACK]),
            (0xed, true, vec![ACK]),
            (0x07, true, vec![ACK]),
            (0xf0, false, vec![ACK]),
            (0x00, false, vec![ACK, 2]),
            (0xf0, false, vec![ACK]),
            (0x09, false, vec![RESEND]),
            (0xee, false, vec![0xee]),
            (0xfe, false, vec![0xee]),
            (0x42, false, vec![RESEND]),
        ] {
            k.receive(sent, translated);
            assert_eq!(drain(&mut k.out), answer, "after {sent:#x}");
        }
    }

    #[test]
    fn mouse_answers_as_a_ps2_mouse() {
        let mut m = Mouse::default();
        for (sent, answer) in [
            (0xff, vec![ACK, BAT_OK, 0x00]),
            (0xf2, vec![ACK, 0x00]),
            (0xf3, vec![ACK]),
            (200, vec![ACK]),
            (0xe8, vec![ACK]),
            (3, vec![ACK]),
            (0xe7, vec![ACK]),
            (0xf4, vec![ACK]),
            (0xe9, vec![ACK, 0x30, 3, 200]),
            (0xe8, vec![ACK]),
            (9, vec![RESEND]),
            (0xee, vec![ACK]),
            (0x5a, vec![0x5a]),
            (0xec, vec![ACK]),
            (0xeb, vec![ACK, 0x08, 0, 0]),
            (0xf6, vec![ACK]),
            (0xe9, vec![ACK, 0x00, 2, 100]),
            (0xe1, vec![RESEND]),
        ] {
            m.receive(sent);
            assert_eq!(drain(&mut m.out), answer, "after {sent:#x}");
        }
    }

    #[test]
    fn a_queue_keeps_the_newest_bytes() {
        let q = Queue::from_bytes(&(0..40).collect::<Vec<u8>>());
        assert_eq!(q.bytes(), (24..40).collect::<Vec<u8>>());
    }
}
