//! Kicking a vCPU out of `KVM_RUN` from another thread, without races.
//!
//! The EMT binds its vCPU to its thread ([`Vcpu::bind_kicks`]); a
//! [`Kicker`] then sends the EMT a real-time signal. The signal handler runs
//! on the EMT and sets `kvm_run.immediate_exit` of the vCPU bound to that
//! thread: if the EMT is inside `KVM_RUN`, the signal interrupts it; if it is
//! about to enter, `immediate_exit` makes the entry return at once. Either
//! way [`Vcpu::run`] reports [`Exit::Interrupted`](crate::Exit::Interrupted)
//! and clears the flag.

use std::cell::Cell;
use std::sync::OnceLock;

use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use crate::error::{Error, Result};
use crate::vcpu::Vcpu;

thread_local! {
    /// `immediate_exit` of the vCPU bound to this thread, or null.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used for kicks.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work here: a thread-local read and a byte store.
    let flag = IMMEDIATE_EXIT.with(Cell::get);
    if !flag.is_null() {
        // SAFETY: the pointer was set by `bind_kicks` on this thread to the
        // `immediate_exit` byte of a vCPU run page that stays mapped while
        // the vCPU lives, and is cleared before the vCPU is dropped.
        unsafe { flag.write_volatile(1) };
    }
}

fn install_handler() -> Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), on_kick).map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| Error::Kick(format!("cannot install the kick signal handler: {e}")))
}

/// Sends kicks to one EMT thread. Cheap to copy; usable from any thread.
#[derive(Debug, Clone, Copy)]
pub struct Kicker {
    thread: libc::pthread_t,
}

impl Kicker {
    /// Makes the EMT leave `KVM_RUN` (or not enter it) promptly.
    pub fn kick(&self) {
        // SAFETY: `thread` is an EMT that bound a vCPU and is still running
        // (EMTs unbind before they exit; a kick after that goes to a thread
        // that has no vCPU bound and is ignored by the handler).
        unsafe { libc::pthread_kill(self.thread, kick_signal()) };
    }
}

/// While alive, kicks sent to this thread stop its vCPU; dropped when the
/// EMT is done with the vCPU.
pub struct KickBinding {
    _not_send: std::marker::PhantomData<*mut u8>,
}

impl Drop for KickBinding {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
    }
}

/// Binds `flag` (a vCPU's `immediate_exit` byte) to the calling thread:
/// a kick sent to the thread sets it.
///
/// # Safety
///
/// `flag` must stay valid for writes until the returned binding is
/// dropped, and only the calling thread may hold the binding.
pub(crate) unsafe fn bind_flag(flag: *mut u8) -> Result<(Kicker, KickBinding)> {
    install_handler()?;
    IMMEDIATE_EXIT.with(|p| p.set(flag));
    // SAFETY: pthread_self has no preconditions.
    let thread = unsafe { libc::pthread_self() };
    Ok((
        Kicker { thread },
        KickBinding {
            _not_send: std::marker::PhantomData,
        },
    ))
}

impl Vcpu {
    /// Binds this vCPU to the calling thread (its EMT) for kicks and returns
    /// a [`Kicker`] for other threads plus the binding, which must live as
    /// long as the thread runs the vCPU.
    pub fn bind_kicks(&mut self) -> Result<(Kicker, KickBinding)> {
        let flag: *mut u8 = &mut self.run_page().immediate_exit;
        // SAFETY: the run page stays mapped while the vCPU lives, and the
        // binding (not `Send`) is dropped by this thread before the vCPU is.
        unsafe { bind_flag(flag) }
    }
}
