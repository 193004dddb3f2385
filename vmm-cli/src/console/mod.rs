//! The serial console of `vmm run`: what comes in on stdin goes to COM1's
//! receiver, as if typed on the serial line.
//!
//! - stdin a terminal: it is put in raw mode (see [`terminal`]) for the
//!   run; every key goes to the guest, Ctrl-C included, except the escape
//!   sequences of [`escape`] (`Ctrl-A x` powers the VM off and quits).
//! - stdin a pipe or a file: the bytes go to the guest as they are (no
//!   escapes); at its end input stops and the VM runs on.
//! - stdin `/dev/null` or closed: nothing reaches the guest.
//! - stdin a terminal vmm runs in the background of: not read (reading
//!   would stop vmm); said once on stderr.
//!
//! Two threads do the work: a reader takes stdin (waking every [`TICK`]
//! to see whether to stop) and hands the bytes to a sender, which queues
//! them in the UART, waiting while its FIFO is full
//! ([`vmm_core::devices::SerialInput`]). On a terminal the reader never
//! waits for the sender, so the escapes work even while the guest reads
//! nothing; from a pipe it does (at most [`PIPE_CHUNKS`] chunks ahead),
//! which slows the writer down to the guest's pace.

pub mod escape;
mod terminal;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use vmm_core::VmHandle;
use vmm_core::devices::SerialInput;

use escape::{Command, Escapes, HELP, Step};
pub use terminal::restore as restore_terminal;
use terminal::{RawMode, STDIN, Stdin};

/// How long the reader waits for input before it looks at what it has to
/// do (stop, retry a power-off).
const TICK: Duration = Duration::from_millis(100);
/// Chunks read from a pipe that may wait for the guest.
const PIPE_CHUNKS: usize = 4;
/// The most bytes one read takes from stdin.
const CHUNK: usize = 4096;

/// `vmm run --console`: where COM1's input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsoleArg {
    /// stdin (a terminal in raw mode, with Ctrl-A escapes).
    Stdio,
    /// Nothing: stdin is not read, Ctrl-C stops vmm.
    None,
}

/// The running console; dropping it stops its threads and puts the
/// terminal back.
pub struct Console {
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    sender: Option<JoinHandle<()>>,
    // Dropped after the threads are joined (see `Drop`).
    _raw: Option<RawMode>,
}

impl Console {
    /// Starts the console `arg` asks for, feeding `input`; `Ctrl-A x`
    /// powers `vm` off. `None`: no console (`--console none`, or a
    /// terminal vmm runs in the background of).
    pub fn start(
        arg: ConsoleArg,
        vm: VmHandle,
        input: SerialInput,
    ) -> anyhow::Result<Option<Console>> {
        if arg == ConsoleArg::None {
            return Ok(None);
        }
        let kind = terminal::stdin_kind();
        let raw = match kind {
            Stdin::BackgroundTerminal => {
                eprintln!(
                    "vmm: stdin is a terminal vmm runs in the background of: no console input"
                );
                return Ok(None);
            }
            Stdin::Terminal => {
                let raw = RawMode::enter().context("cannot put the terminal in raw mode")?;
                eprintln!("vmm: console on this terminal: Ctrl-A x quits, Ctrl-A h for help");
                Some(raw)
            }
            Stdin::Stream => None,
        };
        let (feed, chunks) = match kind {
            Stdin::Terminal => {
                let (tx, rx) = mpsc::channel();
                (Feed::Terminal(tx), rx)
            }
            _ => {
                let (tx, rx) = mpsc::sync_channel(PIPE_CHUNKS);
                (Feed::Stream(tx), rx)
            }
        };
        let sender = std::thread::Builder::new()
            .name("console-send".into())
            .spawn(move || {
                for chunk in chunks {
                    if input.send(&chunk).is_err() {
                        break; // the run has ended
                    }
                }
            })
            .context("cannot start the console's sender thread")?;
        let stop = Arc::new(AtomicBool::new(false));
        let reader = Reader {
            stop: Arc::clone(&stop),
            feed,
            vm,
            escapes: (kind == Stdin::Terminal).then(Escapes::default),
            quit: Quit::NotAsked,
        };
        let reader = std::thread::Builder::new()
            .name("console-read".into())
            .spawn(move || reader.run())
            .context("cannot start the console's reader thread")?;
        Ok(Some(Console {
            stop,
            reader: Some(reader),
            sender: Some(sender),
            _raw: raw,
        }))
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The reader ends within a tick and drops its end of the feed; the
        // sender then ends, or already has: the run is over, the input
        // closed.
        for thread in [self.reader.take(), self.sender.take()]
            .into_iter()
            .flatten()
        {
            if thread.join().is_err() {
                eprintln!("vmm: a console thread panicked");
            }
        }
    }
}

/// The reader's end of the way to the sender.
enum Feed {
    /// From a terminal: never waits (a person types; the escapes must
    /// work while the guest reads nothing).
    Terminal(mpsc::Sender<Vec<u8>>),
    /// From a pipe or file: waits while [`PIPE_CHUNKS`] chunks wait.
    Stream(mpsc::SyncSender<Vec<u8>>),
}

impl Feed {
    /// Hands `chunk` to the sender; `false` when the sender has ended.
    fn push(&self, chunk: Vec<u8>) -> bool {
        match self {
            Feed::Terminal(tx) => tx.send(chunk).is_ok(),
            Feed::Stream(tx) => tx.send(chunk).is_ok(),
        }
    }
}

/// Where `Ctrl-A x` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quit {
    NotAsked,
    /// Asked; the VM has not accepted the power-off yet (it was starting
    /// or saving): tried again every tick.
    Pending {
        refusal_told: bool,
    },
    /// The VM is powering off.
    Done,
}

/// The reader thread's state.
struct Reader {
    stop: Arc<AtomicBool>,
    feed: Feed,
    vm: VmHandle,
    /// The escape parser, on a terminal.
    escapes: Option<Escapes>,
    quit: Quit,
}

/// What waiting for stdin came to.
enum Ready {
    Input,
    Timeout,
    /// Stdin is closed or unusable.
    Gone,
}

impl Reader {
    fn run(mut self) {
        let mut escapes = self.escapes.take();
        let mut buf = vec![0u8; CHUNK];
        while !self.stop.load(Ordering::SeqCst) {
            self.power_off_if_asked();
            match wait_for_input() {
                Ready::Input => {}
                Ready::Timeout => continue,
                Ready::Gone => return,
            }
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe { libc::read(STDIN, buf.as_mut_ptr().cast(), buf.len()) };
            let chunk = match usize::try_from(n) {
                Ok(0) => return, // end of input; the VM runs on
                Ok(n) => &buf[..n],
                Err(_) => {
                    let e = std::io::Error::last_os_error();
                    if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) {
                        continue;
                    }
                    eprintln!("vmm: console: cannot read stdin: {e}; no more input");
                    return;
                }
            };
            let for_guest = match &mut escapes {
                Some(escapes) => self.interpret(escapes, chunk),
                None => chunk.to_vec(),
            };
            if !for_guest.is_empty() && !self.feed.push(for_guest) {
                return; // the run has ended
            }
        }
    }

    /// The bytes of `chunk` for the guest; the commands in it carried out.
    fn interpret(&mut self, escapes: &mut Escapes, chunk: &[u8]) -> Vec<u8> {
        let mut for_guest = Vec::with_capacity(chunk.len());
        for &byte in chunk {
            match escapes.feed(byte) {
                Step::Guest(b) => for_guest.push(b),
                Step::Pending => {}
                Step::Command(command) => self.command(command),
            }
        }
        for_guest
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Quit if self.quit == Quit::NotAsked => {
                eprintln!("vmm: Ctrl-A x: powering the VM off (Ctrl-A x again ends vmm at once)");
                self.quit = Quit::Pending {
                    refusal_told: false,
                };
                self.power_off_if_asked();
            }
            Command::Quit => {
                eprintln!("vmm: Ctrl-A x again: ending at once");
                restore_terminal();
                std::process::exit(1);
            }
            Command::Help => eprintln!("{HELP}"),
            Command::Unknown(key) => eprintln!(
                "vmm: Ctrl-A {} is no command (Ctrl-A h for help)",
                std::ascii::escape_default(key)
            ),
        }
    }

    /// Powers the VM off if `Ctrl-A x` asked and it has not accepted yet.
    fn power_off_if_asked(&mut self) {
        let Quit::Pending { refusal_told } = self.quit else {
            return;
        };
        match self.vm.power_off() {
            Ok(()) => self.quit = Quit::Done,
            Err(e) => {
                if !refusal_told {
                    eprintln!("vmm: cannot power off yet ({e}); trying again");
                }
                self.quit = Quit::Pending { refusal_told: true };
            }
        }
    }
}

/// Waits up to [`TICK`] for stdin to have input (or its end).
fn wait_for_input() -> Ready {
    let mut fd = libc::pollfd {
        fd: STDIN,
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = libc::c_int::try_from(TICK.as_millis()).unwrap_or(100);
    // SAFETY: one valid pollfd for the call.
    match unsafe { libc::poll(&mut fd, 1, timeout) } {
        0 => Ready::Timeout,
        n if n > 0 && fd.revents & libc::POLLNVAL != 0 => Ready::Gone,
        n if n > 0 => Ready::Input,
        _ => {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ready::Timeout;
            }
            eprintln!("vmm: console: cannot wait for stdin: {e}; no more input");
            Ready::Gone
        }
    }
}
