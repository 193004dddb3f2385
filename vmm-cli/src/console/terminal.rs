//! Stdin as a terminal in raw mode, and putting it back.
//!
//! Raw mode: no line editing, no echo, no signals from keys (Ctrl-C and
//! Ctrl-Z are bytes for the guest), no input translation. Output
//! processing stays on (`\n` still becomes `\r\n`), so vmm's own messages
//! and a guest that sends bare newlines stay readable.
//!
//! The terminal's settings from before are put back when the [`RawMode`]
//! guard is dropped (every return path of `vmm run`, and a panic on the
//! main thread as it unwinds), by the panic hook (a panic on any thread),
//! and by [`restore`] (the shutdown watcher calls it before a second
//! signal ends `vmm` at once).

use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The file descriptor the console reads.
pub const STDIN: RawFd = libc::STDIN_FILENO;

/// The settings raw mode replaced, and whether they are to be put back.
static SAVED: OnceLock<libc::termios> = OnceLock::new();
static RAW: AtomicBool = AtomicBool::new(false);

/// What stdin is, as far as the console cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdin {
    /// A terminal vmm may read (it is in the terminal's foreground, or it
    /// is not vmm's controlling terminal).
    Terminal,
    /// A terminal whose foreground is another process group: vmm runs in
    /// the background and would be stopped if it read it.
    BackgroundTerminal,
    /// A pipe, a file or a device (`/dev/null`): read as it is.
    Stream,
}

/// What stdin is.
pub fn stdin_kind() -> Stdin {
    // SAFETY: isatty only looks at the descriptor.
    if unsafe { libc::isatty(STDIN) } != 1 {
        return Stdin::Stream;
    }
    // SAFETY: tcgetpgrp and getpgrp only read process state.
    let (foreground, ours) = unsafe { (libc::tcgetpgrp(STDIN), libc::getpgrp()) };
    // -1: not vmm's controlling terminal; no job control applies.
    if foreground == -1 || foreground == ours {
        Stdin::Terminal
    } else {
        Stdin::BackgroundTerminal
    }
}

/// Stdin in raw mode; the old settings come back when dropped.
pub struct RawMode(());

impl RawMode {
    /// Puts the terminal on stdin in raw mode (see the module).
    pub fn enter() -> std::io::Result<RawMode> {
        let mut termios = MaybeUninit::<libc::termios>::uninit();
        // SAFETY: tcgetattr fills the struct it is given on success.
        if unsafe { libc::tcgetattr(STDIN, termios.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: initialised by the successful tcgetattr.
        let saved = unsafe { termios.assume_init() };
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        raw.c_oflag |= libc::OPOST;
        install_panic_hook();
        // One raw mode per process: the settings saved are the user's.
        SAVED.get_or_init(|| saved);
        // Marked first: a change that half succeeded is undone too.
        RAW.store(true, Ordering::SeqCst);
        if let Err(e) = set(&raw) {
            restore();
            return Err(e);
        }
        Ok(RawMode(()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts back the terminal settings raw mode replaced, if it is on.
pub fn restore() {
    if RAW.swap(false, Ordering::SeqCst)
        && let Some(saved) = SAVED.get()
        && let Err(e) = set(saved)
    {
        eprintln!("vmm: cannot restore the terminal's settings: {e} (try `reset`)");
    }
}

/// Applies `termios` to stdin now.
fn set(termios: &libc::termios) -> std::io::Result<()> {
    // SAFETY: `termios` is a valid, initialised struct for the call.
    if unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, termios) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Restores the terminal before a panic's message is printed (once).
fn install_panic_hook() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}
