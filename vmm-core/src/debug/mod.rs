//! The debugger wired into the VM: [`VmDebugTarget`] implements
//! [`dbgf::debugger::DebugTarget`] over the real vCPUs and guest memory, and
//! the EMTs report debug exits, I/O-port breakpoints and page-trap
//! watchpoint hits through the VM's [`StopNotifier`].
//!
//! Page-trap watchpoints: [`VmDebugTarget`] puts a `pgm` physical access
//! handler on each trapped RAM page (a write handler for write watches, the
//! page gets a read-only KVM slot; an all-access handler for read watches,
//! the page gets no slot) and updates the KVM slots while the VM is halted.
//! The handler only lets the access happen; the EMT checks every MMIO exit
//! against the debugger's [`MemWatch`], and on a match completes the
//! instruction (one `KVM_RUN` with `immediate_exit`) before it halts the VM,
//! so the stop comes after the access like an x86 data breakpoint. MMIO and
//! unassigned pages exit on every access anyway and need no handler; ROM
//! writes exit (read-only slot), ROM reads cannot be trapped. A page under a
//! read trap has no KVM mapping at all: the guest cannot execute code or
//! keep page tables there while the watch is set (page walks, which also
//! set accessed and dirty bits, cannot be handed to the VMM, so a write
//! trap on a page-table page is not safe either). A page already covered by
//! another `pgm` handler cannot be trapped (the watchpoint is refused).
//!
//! Which mechanism a watchpoint gets is the debugger's
//! [`WatchMode`](dbgf::debugger::WatchMode); under `Auto` the target says
//! whether the host delivers DR7 data breakpoints
//! ([`VmDebugTarget::delivers_data_breakpoints`](dbgf::debugger::DebugTarget::delivers_data_breakpoints)):
//! not on the kvm_pvm software layer, which emulates CPL0 code without them.
//!
//! All-stop: a stop (a debug exit, a matching I/O access, a requested halt)
//! moves the VM to [`VmState::Debugging`], keeps every EMT out of the guest
//! and only then reports the stop. While the VM is in that state an EMT runs
//! its vCPU only when the debugger lets it (a single step, a step over a
//! breakpoint, a continue of one vCPU).
//!
//! ```no_run
//! use dbgf::debugger::{Resume, StopReason};
//! use vmm_core::{Vm, VmConfig, guests};
//!
//! let config = VmConfig::new(16 << 20, guests::find("demo")?.firmware()?);
//! let (mut vm, attach) = Vm::new_debuggable(config)?; // halted before the first instruction
//! let (mut target, mut dbg, stops) = (attach.target, attach.debugger, attach.stops);
//! let runner = std::thread::spawn(move || vm.run());
//! dbg.resume(&mut target, Resume::Step(0)).unwrap();
//! let stop = dbg.handle_stop(&mut target, stops.recv().unwrap()).unwrap();
//! assert_eq!(stop.map(|s| s.reason), Some(StopReason::Step));
//! dbg.detach(&mut target).unwrap(); // the demo guest runs to its end
//! runner.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dbgf::debugger::{IoWatch, MemWatch, StopCause, StopNotifier, VcpuStop};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::sync::ffs::ExecState;
use crate::sync::vmstate::{VmState, VmStateMachine};

/// How long a stop waits for the other EMTs to leave the guest.
const LEAVE_GUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Which vCPUs the debugger lets run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// None: the VM is halted (or a stop is being reported).
    Halted,
    /// Every vCPU (the VM is in the running state).
    All,
    /// Only this one (the VM stays in the debugging state).
    Only(u32),
}

struct Attached {
    notifier: Option<StopNotifier>,
    scope: Scope,
}

/// The VM's side of the debugger: set up once by [`crate::Vm::new_debuggable`].
pub(crate) struct DebugCtl {
    io_watch: OnceLock<IoWatch>,
    mem_watch: OnceLock<MemWatch>,
    attached: Mutex<Option<Attached>>,
}

impl DebugCtl {
    pub(crate) fn new() -> Self {
        DebugCtl {
            io_watch: OnceLock::new(),
            mem_watch: OnceLock::new(),
            attached: Mutex::new(None),
        }
    }

    /// Attaches a debugger: the VM starts halted.
    fn attach(&self, notifier: StopNotifier, io_watch: IoWatch, mem_watch: MemWatch) -> Result<()> {
        let mut attached = self.attached.lock();
        if attached.is_some() {
            return Err(Error::Config("a debugger is already attached".into()));
        }
        // Set once, under the lock that makes a second attach fail.
        let _ = self.io_watch.set(io_watch);
        let _ = self.mem_watch.set(mem_watch);
        *attached = Some(Attached {
            notifier: Some(notifier),
            scope: Scope::Halted,
        });
        Ok(())
    }

    /// Whether a debugger is attached.
    pub(crate) fn is_attached(&self) -> bool {
        self.attached.lock().is_some()
    }

    /// Whether a port access hits an I/O-port breakpoint (one atomic load
    /// when none is set).
    #[inline]
    pub(crate) fn io_matches(&self, port: u16, size: u8, write: bool) -> bool {
        self.io_watch
            .get()
            .is_some_and(|w| w.matches(port, size, write))
    }

    /// Whether a guest-physical access (an MMIO exit) hits a page-trap
    /// watchpoint (one atomic load when none is set).
    #[inline]
    pub(crate) fn mem_matches(&self, addr: u64, size: u32, write: bool) -> bool {
        self.mem_watch
            .get()
            .is_some_and(|w| w.matches(addr, size, write))
    }

    /// Whether the debugger has the VM halted (nothing runs).
    fn is_halted(&self) -> bool {
        self.attached
            .lock()
            .as_ref()
            .is_some_and(|a| a.scope == Scope::Halted)
    }

    /// Powers on: `Running`, then `Debugging` unless the debugger let every
    /// vCPU run already.
    pub(crate) fn power_on(&self, state: &VmStateMachine) -> Result<()> {
        let attached = self.attached.lock();
        state.set(VmState::Running)?;
        if attached.as_ref().is_some_and(|a| a.scope != Scope::All) {
            state.set(VmState::Debugging)?;
        }
        Ok(())
    }

    /// In the debugging state: whether the debugger lets `cpu` run.
    pub(crate) fn allows(&self, cpu: u32) -> bool {
        self.attached
            .lock()
            .as_ref()
            .is_some_and(|a| matches!(a.scope, Scope::Only(c) if c == cpu))
    }

    /// Claims the stop being reported: halts the VM's execution (the state
    /// goes to `Debugging`). False when the VM is already halted (another stop
    /// won the race) or no debugger is attached.
    fn claim_stop(&self, state: &VmStateMachine) -> bool {
        let mut attached = self.attached.lock();
        let Some(a) = attached.as_mut() else {
            return false;
        };
        if a.scope == Scope::Halted {
            return false;
        }
        a.scope = Scope::Halted;
        if let Err(e) = state.try_transition(&[(VmState::Running, VmState::Debugging)]) {
            tracing::debug!("debugger stop: {e}");
        }
        true
    }

    fn notify(&self, stop: VcpuStop) {
        let attached = self.attached.lock();
        if let Some(n) = attached.as_ref().and_then(|a| a.notifier.as_ref())
            && n.notify(stop).is_err()
        {
            tracing::debug!("debugger gone; stop {stop:?} dropped");
        }
    }

    /// The VM's run ended: tells the debugger and closes the stop channel.
    pub(crate) fn powered_off(&self) {
        let notifier = self
            .attached
            .lock()
            .as_mut()
            .and_then(|a| a.notifier.take());
        if let Some(n) = notifier {
            // The debugger may be gone already; nothing to tell then.
            let _ = n.notify(VcpuStop {
                cpu: 0,
                cause: StopCause::PoweredOff,
            });
        }
    }
}

impl Machine {
    /// Whether `cpu`'s EMT may enter the guest now.
    pub(crate) fn may_run(&self, cpu: u32) -> bool {
        match self.state.state() {
            VmState::Running | VmState::RunningLs => true,
            VmState::Debugging => self.debug.allows(cpu),
            _ => false,
        }
    }

    /// Reports a stop from `cpu`'s EMT (a debug exit, an I/O breakpoint):
    /// halts the VM, waits for the other EMTs to leave the guest and tells
    /// the debugger. False when the stop was not reported (no debugger, or
    /// another stop already halted the VM).
    pub(crate) fn debug_stop(&self, cpu: u32, cause: StopCause) -> Result<bool> {
        if !self.debug.claim_stop(&self.state) {
            return Ok(false);
        }
        self.wait_out_of_guest(Some(cpu))?;
        self.debug.notify(VcpuStop { cpu, cause });
        Ok(true)
    }

    /// Makes every EMT but `except` leave the guest and waits until they have.
    /// The VM's state already keeps them out once they look at it; `UNHALT`
    /// stops an EMT that is about to enter and kicks one that is in.
    fn wait_out_of_guest(&self, except: Option<u32>) -> Result<()> {
        let others: Vec<u32> = (0..self.cpus()).filter(|&c| Some(c) != except).collect();
        for &cpu in &others {
            self.ffs.unhalt(cpu)?;
        }
        let deadline = Instant::now() + LEAVE_GUEST_TIMEOUT;
        for &cpu in &others {
            while self.ffs.exec_state(cpu)? == ExecState::InGuest {
                if Instant::now() >= deadline {
                    return Err(Error::Config(format!(
                        "vCPU {cpu} did not leave the guest for the debugger within {LEAVE_GUEST_TIMEOUT:?}"
                    )));
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        Ok(())
    }
}

mod page_traps;
mod registers;
mod target;

pub(crate) use target::attach;
pub use target::{DebugAttachment, VmDebugTarget};
