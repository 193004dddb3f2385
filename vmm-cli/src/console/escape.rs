//! The console's escape sequences: Ctrl-A followed by a key.
//!
//! On a terminal in raw mode every key goes to the guest (Ctrl-C too)
//! except Ctrl-A, which starts a command, as QEMU's `-nographic` does:
//! `Ctrl-A x` powers the VM off and quits, `Ctrl-A h` (or `?`) prints the
//! help, `Ctrl-A Ctrl-A` sends one Ctrl-A to the guest. Any other key
//! after Ctrl-A is no command: neither byte reaches the guest, and the
//! help is pointed to.

/// Ctrl-A: the escape byte.
pub const ESCAPE: u8 = 0x01;

/// What the console says about its keys (`Ctrl-A h`, `vmm run --help`).
pub const HELP: &str = "\
Console keys (stdin on a terminal):
  Ctrl-A x       power the VM off in order and quit, status 0 (twice: at once)
  Ctrl-A h       this help
  Ctrl-A Ctrl-A  send Ctrl-A to the guest
Every other key, Ctrl-C included, goes to the guest.";

/// A console command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `Ctrl-A x`: power the VM off and quit.
    Quit,
    /// `Ctrl-A h` or `Ctrl-A ?`: print [`HELP`].
    Help,
    /// Ctrl-A then a key that is no command.
    Unknown(u8),
}

/// What one input byte amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A byte for the guest.
    Guest(u8),
    /// A command for the console.
    Command(Command),
    /// Nothing yet: the escape byte, waiting for its key.
    Pending,
}

/// The escape-sequence state machine: feed it the input byte by byte.
#[derive(Debug, Default)]
pub struct Escapes {
    after_escape: bool,
}

impl Escapes {
    /// What `byte` amounts to, given the bytes before it.
    pub fn feed(&mut self, byte: u8) -> Step {
        if !std::mem::take(&mut self.after_escape) {
            if byte == ESCAPE {
                self.after_escape = true;
                return Step::Pending;
            }
            return Step::Guest(byte);
        }
        match byte {
            ESCAPE => Step::Guest(ESCAPE),
            b'x' | b'X' => Step::Command(Command::Quit),
            b'h' | b'H' | b'?' => Step::Command(Command::Help),
            other => Step::Command(Command::Unknown(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(input: &[u8]) -> Vec<Step> {
        let mut escapes = Escapes::default();
        input.iter().map(|&b| escapes.feed(b)).collect()
    }

    #[test]
    fn plain_bytes_and_ctrl_c_go_to_the_guest() {
        assert_eq!(
            steps(b"a\x03\n"),
            [Step::Guest(b'a'), Step::Guest(0x03), Step::Guest(b'\n')]
        );
    }

    #[test]
    fn ctrl_a_x_quits_and_ctrl_a_h_helps() {
        assert_eq!(
            steps(b"\x01x"),
            [Step::Pending, Step::Command(Command::Quit)]
        );
        assert_eq!(steps(b"\x01X")[1], Step::Command(Command::Quit));
        assert_eq!(steps(b"\x01h")[1], Step::Command(Command::Help));
        assert_eq!(steps(b"\x01?")[1], Step::Command(Command::Help));
    }

    #[test]
    fn ctrl_a_twice_sends_one_ctrl_a_and_ends_the_sequence() {
        assert_eq!(
            steps(b"\x01\x01\x01x"),
            [
                Step::Pending,
                Step::Guest(ESCAPE),
                Step::Pending,
                Step::Command(Command::Quit)
            ]
        );
        // After the literal Ctrl-A, `x` is a plain key again.
        assert_eq!(steps(b"\x01\x01x")[2], Step::Guest(b'x'));
    }

    #[test]
    fn an_unknown_key_after_ctrl_a_is_swallowed_and_the_next_key_is_plain() {
        assert_eq!(
            steps(b"\x01zx"),
            [
                Step::Pending,
                Step::Command(Command::Unknown(b'z')),
                Step::Guest(b'x')
            ]
        );
    }

    #[test]
    fn the_sequence_may_span_two_reads() {
        let mut escapes = Escapes::default();
        assert_eq!(escapes.feed(ESCAPE), Step::Pending);
        // ... a later read brings the key.
        assert_eq!(escapes.feed(b'x'), Step::Command(Command::Quit));
        assert_eq!(escapes.feed(b'x'), Step::Guest(b'x'));
    }
}
