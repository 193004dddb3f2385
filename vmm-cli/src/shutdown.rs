//! Orderly shutdown of `vmm run` on SIGINT, SIGTERM and SIGHUP.
//!
//! The first of these signals while the VM runs powers it off the way
//! `vmm poweroff` does: the EMTs stop, the exit-time reports (`--stats`,
//! `--info`, `--dump-phys`) are written, the API socket is removed and a
//! gdb session ends; `vmm run` then exits with status 128 + the signal's
//! number (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP), as a shell
//! reports a command a signal ended. A second signal ends `vmm` at once
//! (the signal's default action). Before the VM runs (while it is built or
//! waits for a teleport or for gdb) and after its run has ended there is
//! nothing to power off, and the first signal ends `vmm` at once as well.
//!
//! The three signals are blocked on every thread: [`ShutdownSignals::watch`]
//! blocks them on the main thread before any other thread starts, the
//! threads started later inherit the mask, and a watcher thread takes them
//! with `sigtimedwait`. No handler runs on an EMT, so the vCPU kick signal
//! (`hm_vmx::kick`) stays the only one that interrupts `KVM_RUN`. A signal
//! the process ignores from its start (`nohup` ignores SIGHUP) stays
//! ignored.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};
use vmm_core::VmHandle;

/// The signals that shut `vmm run` down.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
/// How long the watcher waits for a signal before it looks again at what
/// it has to do (retry a power-off, stop).
const TICK: Duration = Duration::from_millis(100);

/// One of [`SIGNALS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(libc::c_int);

impl Signal {
    /// The signal's name (`SIGTERM`).
    pub fn name(self) -> &'static str {
        match self.0 {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            libc::SIGHUP => "SIGHUP",
            _ => "signal",
        }
    }

    /// The exit status after a power-off on this signal: 128 + its number.
    pub fn exit_status(self) -> u8 {
        u8::try_from(128 + self.0).unwrap_or(u8::MAX)
    }
}

/// What the watcher and `vmm run` share.
#[derive(Default)]
struct Shared {
    /// The running VM a first signal powers off; `None` outside its run.
    vm: Mutex<Option<VmHandle>>,
    /// The signal that powered the VM off (0: none).
    powered_off_by: AtomicI32,
    stop: AtomicBool,
}

impl Shared {
    fn vm(&self) -> MutexGuard<'_, Option<VmHandle>> {
        // A handle cannot be left half-written: a poisoned lock is fine.
        self.vm.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The watcher of the shutdown signals; stopped (and joined) when dropped.
pub struct ShutdownSignals {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ShutdownSignals {
    /// Blocks the shutdown signals on the calling thread and starts the
    /// watcher. Call it on the main thread before any other thread starts.
    pub fn watch() -> anyhow::Result<Self> {
        let set = signal_set(&SIGNALS)?;
        // SAFETY: `set` is an initialised signal set; the old mask is not
        // asked for (null).
        let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if blocked != 0 {
            bail!(
                "cannot block the shutdown signals: {}",
                std::io::Error::from_raw_os_error(blocked)
            );
        }
        let shared = Arc::new(Shared::default());
        let watched = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || watch(&set, &watched))
            .context("cannot start the signal watcher thread")?;
        Ok(ShutdownSignals {
            shared,
            thread: Some(thread),
        })
    }

    /// From now on the first signal powers `vm` off (call it just before
    /// the VM runs).
    pub fn arm(&self, vm: VmHandle) {
        *self.shared.vm() = Some(vm);
    }

    /// The run has ended: a signal from now on ends `vmm` at once. Returns
    /// the signal that powered the VM off, if one did.
    pub fn disarm(&self) -> Option<Signal> {
        self.shared.vm().take();
        match self.shared.powered_off_by.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(Signal(signal)),
        }
    }
}

impl Drop for ShutdownSignals {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!("vmm: the signal watcher thread panicked");
        }
    }
}

/// The set of `signals`.
fn signal_set(signals: &[libc::c_int]) -> anyhow::Result<libc::sigset_t> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given.
    if unsafe { libc::sigemptyset(set.as_mut_ptr()) } != 0 {
        bail!("sigemptyset: {}", std::io::Error::last_os_error());
    }
    for &signal in signals {
        // SAFETY: the set was initialised above; `signal` is a valid number.
        if unsafe { libc::sigaddset(set.as_mut_ptr(), signal) } != 0 {
            bail!("sigaddset: {}", std::io::Error::last_os_error());
        }
    }
    // SAFETY: initialised by sigemptyset.
    Ok(unsafe { set.assume_init() })
}

/// The watcher thread: takes the signals until told to stop.
fn watch(set: &libc::sigset_t, shared: &Shared) {
    let mut seen = false;
    // The signal whose power-off is not done yet: the VM was in a state
    // that cannot power off (starting, saving); tried again every tick.
    let mut pending: Option<Signal> = None;
    let mut refusal_told = false;
    while !shared.stop.load(Ordering::SeqCst) {
        if let Some(signal) = next_signal(set) {
            if seen {
                eprintln!("vmm: {} again: ending at once", signal.name());
                end_now(signal);
            }
            if shared.vm().is_none() {
                eprintln!(
                    "vmm: {}: the VM is not running; ending at once",
                    signal.name()
                );
                end_now(signal);
            }
            eprintln!(
                "vmm: {}: powering the VM off (send it again to end at once)",
                signal.name()
            );
            seen = true;
            pending = Some(signal);
        }
        let Some(signal) = pending else {
            continue;
        };
        let vm = shared.vm();
        let Some(vm) = vm.as_ref() else {
            // The run ended by itself meanwhile.
            pending = None;
            continue;
        };
        match vm.power_off() {
            Ok(()) => {
                shared.powered_off_by.store(signal.0, Ordering::SeqCst);
                pending = None;
            }
            Err(e) if !refusal_told => {
                refusal_told = true;
                eprintln!(
                    "vmm: {}: cannot power off yet ({e}); trying again",
                    signal.name()
                );
            }
            Err(_) => {}
        }
    }
}

/// Waits up to [`TICK`] for one of the signals in `set`.
fn next_signal(set: &libc::sigset_t) -> Option<Signal> {
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::c_long::try_from(TICK.as_nanos()).unwrap_or(0),
    };
    // SAFETY: `set` and `timeout` are valid for the call; no siginfo is
    // asked for (null).
    let signal = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) };
    // -1: the time ran out (EAGAIN) or another signal came (EINTR).
    (signal > 0).then_some(Signal(signal))
}

/// Ends the process as `signal` does by default (the terminal put back
/// first, if the console had it in raw mode).
fn end_now(signal: Signal) -> ! {
    crate::console::restore_terminal();
    if let Ok(set) = signal_set(&[signal.0]) {
        // SAFETY: restores the default action of a valid signal number,
        // then unblocks it on this thread alone (`set` is initialised) and
        // raises it there: the default action (terminate) ends the process.
        unsafe {
            libc::signal(signal.0, libc::SIG_DFL);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(signal.0);
        }
    }
    // Not reached: the signal ended the process.
    std::process::exit(i32::from(signal.exit_status()))
}
