//! The debugger core: breakpoints, stepping and memory access over a [`DebugTarget`].
//!
//! The core owns the breakpoint table and turns it into what KVM wants
//! ([`GuestDebug`] per vCPU: control flags, DR0..DR3, DR7), patches `int3` bytes for
//! software breakpoints (and hides them from memory reads), steps over breakpoints
//! when resuming, and interprets the raw stops the VMM reports ([`VcpuStop`]) into
//! [`Stop`]s, counting hits.
//!
//! How the VMM wires it:
//! 1. implement [`DebugTarget`] over the VM (`set_guest_debug` is `KVM_SET_GUEST_DEBUG`);
//! 2. give a [`StopNotifier`] to the EMTs: on `KVM_EXIT_DEBUG` halt every vCPU and send
//!    [`StopCause::Debug`]; on a port access for which [`Debugger::io_watch`] matches,
//!    halt and send [`StopCause::Io`]; on an MMIO exit for which [`Debugger::mem_watch`]
//!    matches, complete the access and the instruction, halt and send
//!    [`StopCause::Mem`]; after a requested halt send [`StopCause::Halted`];
//! 3. whoever drives the debugger (the gdb stub, a console) passes each received stop to
//!    [`Debugger::handle_stop`].
//!
//! # Watchpoints: debug registers or page traps
//!
//! A data watchpoint ([`Debugger::add_data_watch`]) is armed one of two ways:
//! - **debug registers**: DR0..DR3 through `KVM_SET_GUEST_DEBUG`; no cost while the
//!   guest runs, but at most four slots of 1, 2, 4 or 8 aligned bytes, and only where
//!   the backend delivers data breakpoints ([`DebugTarget::delivers_data_breakpoints`]);
//! - **page traps**: the VMM makes guest accesses to the guest-physical page(s) behind
//!   the range exit ([`DebugTarget::set_page_traps`]: a PGM write or all-access handler,
//!   the page gets a read-only KVM slot or none) and the EMT checks each exit against
//!   the exact bytes ([`MemWatch`]). Works on any host, for any length and any number
//!   of watches, and can watch reads alone; every access to the trapped page costs an
//!   exit. A linear address is translated when the watchpoint is set, so the watch
//!   follows the physical page (like VirtualBox's physical access handlers): a guest
//!   that remaps the linear address is not followed, and other mappings of the page are
//!   watched too. A read (or access) watch leaves the page without a KVM mapping, so
//!   the guest cannot execute code from that page while it is set; and since the
//!   CPU's own page walks cannot be handed to the VMM, watching a page that holds
//!   the guest's page tables can end the run with an emulation failure.
//!
//! [`WatchMode`] picks: [`WatchMode::Auto`] (the default) uses debug registers when the
//! target delivers data breakpoints and the range fits in the free slots, page traps
//! otherwise.
//!
//! ```
//! use dbgf::debugger::*;
//! let (tx, _rx) = stop_channel();
//! let mut vm = MemTarget::new(1, 0x10000, tx); // an in-memory target (identity-mapped)
//! vm.write_phys(0x1000, &[0x90, 0x90]).unwrap();
//! let mut dbg = Debugger::new();
//! let id = dbg.add_sw_breakpoint(&mut vm, 0, 0x1001).unwrap();
//! let mut buf = [0u8; 2];
//! dbg.read_virt(&mut vm, 0, 0x1000, &mut buf).unwrap();
//! assert_eq!(buf, [0x90, 0x90]);                     // the int3 is hidden ...
//! vm.read_phys(0x1000, &mut buf).unwrap();
//! assert_eq!(buf, [0x90, 0xcc]);                     // ... but it is in memory
//! let stop = dbg.handle_stop(&mut vm, VcpuStop {
//!     cpu: 0,
//!     cause: StopCause::Debug { exception: 3, dr6: 0, pc: 0x1001 },
//! }).unwrap();
//! assert_eq!(stop, Some(Stop { cpu: 0, reason: StopReason::Breakpoint { id, hits: 1 } }));
//! ```

mod arm;
mod breakpoints;
mod control;
mod dr7;
mod mem_target;
mod memory;
mod stop;
mod target;

pub use breakpoints::{Breakpoint, BreakpointId, BreakpointKind};
pub use dr7::{Dr6, HW_SLOTS, HwAccess, HwLen, HwSlot, encode_debug_regs, split_aligned};
pub use mem_target::MemTarget;
pub use stop::{
    IoAccess, IoWatch, MemAccess, MemWatch, StopCause, StopChannelError, StopListener,
    StopNotifier, VcpuStop, stop_channel,
};
pub use target::{
    CodeBitness, DebugTarget, FpuRegs, GuestDebug, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP,
    KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP, PAGE_SIZE, PageTrap, Registers, ResumeScope,
    Segment, TargetError,
};

use crate::disas::{DisasLine, disassemble};
use breakpoints::Table;
pub(crate) use target::page_chunks;

/// The `int3` opcode.
const INT3: u8 = 0xcc;
/// Longest x86 instruction.
const MAX_INSN_LEN: usize = 15;

/// Errors of the debugger core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DebuggerError {
    /// The target failed.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// Not enough free DR0..DR3 slots.
    #[error("no free debug register: need {needed}, {free} free")]
    NoFreeSlot {
        /// Slots the breakpoint needs.
        needed: usize,
        /// Slots still free.
        free: usize,
    },
    /// A hardware breakpoint length that x86 cannot express.
    #[error("invalid breakpoint length {0}")]
    InvalidLength(u64),
    /// A data breakpoint not aligned to its length.
    #[error("breakpoint at {addr:#x} is not aligned to its length {len}")]
    Misaligned {
        /// Address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// No breakpoint with this id.
    #[error("no breakpoint {0}")]
    UnknownBreakpoint(BreakpointId),
    /// A software breakpoint already patches this guest-physical byte.
    #[error("a software breakpoint already exists at guest-physical {0:#x}")]
    DuplicateSoftware(u64),
    /// An empty or reversed I/O port range.
    #[error("invalid I/O port range {first:#x}..={last:#x}")]
    InvalidPortRange {
        /// First port.
        first: u16,
        /// Last port.
        last: u16,
    },
    /// The vCPU index does not exist.
    #[error("no vCPU {0}")]
    InvalidCpu(u32),
    /// The VM is running; it must stop (see [`Debugger::halt`]) first.
    #[error("the VM is running")]
    Running,
}

/// How [`Debugger::add_data_watch`] arms a data watchpoint (see the
/// [module docs](self#watchpoints-debug-registers-or-page-traps)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchMode {
    /// Debug registers when the target delivers data breakpoints and the range fits in
    /// the free DR slots; page traps otherwise.
    #[default]
    Auto,
    /// Debug registers only (fails when the slots are taken or the range does not fit).
    DebugRegisters,
    /// Page traps only.
    PageTraps,
}

/// How to resume a halted VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Let every vCPU run until the next stop.
    Continue,
    /// Let only this vCPU run (gdb's scheduler locking).
    ContinueOnly(u32),
    /// Execute one instruction on this vCPU (the others stay halted).
    Step(u32),
}

/// An interpreted stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    /// The vCPU that stopped.
    pub cpu: u32,
    /// Why.
    pub reason: StopReason,
}

/// Why the VM stopped, in debugger terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A requested single step completed.
    Step,
    /// An execute breakpoint (hardware or `int3`) hit before its instruction ran.
    Breakpoint {
        /// The breakpoint.
        id: BreakpointId,
        /// Its hit count including this hit.
        hits: u64,
    },
    /// A data watchpoint triggered (after the accessing instruction).
    Watchpoint {
        /// The breakpoint.
        id: BreakpointId,
        /// Its hit count including this hit.
        hits: u64,
        /// Start of the watched range.
        addr: u64,
        /// Its trigger condition.
        access: HwAccess,
    },
    /// A page-trap watchpoint triggered (after the accessing instruction).
    PageWatchpoint {
        /// The breakpoint.
        id: BreakpointId,
        /// Its hit count including this hit.
        hits: u64,
        /// Start of the watched range, as it was set.
        addr: u64,
        /// Guest-physical address of the access.
        phys: u64,
        /// A write (true) or a read (false).
        write: bool,
    },
    /// An I/O-port breakpoint matched (before the access completes).
    IoBreakpoint {
        /// The breakpoint.
        id: BreakpointId,
        /// Its hit count including this hit.
        hits: u64,
        /// Port accessed.
        port: u16,
        /// Direction.
        write: bool,
    },
    /// The VM halted on request.
    Halted,
    /// A debug exception that no breakpoint of ours explains (the guest's own `int3` or
    /// `#DB`); the VMM may reinject it.
    Trap {
        /// Exception vector.
        exception: u32,
        /// DR6.
        dr6: u64,
        /// Linear RIP.
        pc: u64,
    },
    /// The VM is gone.
    PoweredOff,
}

/// What a resume lifted to step one vCPU over a breakpoint at its RIP.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StepOver {
    cpu: u32,
    then: Resume,
    /// DR slots disabled on `cpu` for the step.
    masked: [bool; HW_SLOTS],
    /// Software breakpoints whose original byte is back in memory.
    lifted_sw: Vec<BreakpointId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    /// A plain single step on this vCPU.
    Step(u32),
    /// Stepping over a breakpoint, then `then`.
    StepOver(StepOver),
}

/// The debugger core. See the [module docs](self) for the wiring.
#[derive(Debug, Default)]
pub struct Debugger {
    table: Table,
    io_watch: IoWatch,
    mem_watch: MemWatch,
    watch_mode: WatchMode,
    /// Last guest-debug state loaded per vCPU, to skip redundant ioctls.
    applied: Vec<Option<GuestDebug>>,
    pending: Option<Pending>,
    last_stop_cpu: u32,
    /// Resumed and no stop reported yet.
    running: bool,
}

impl Debugger {
    /// A debugger with no breakpoints.
    pub fn new() -> Self {
        Self::default()
    }

    /// The I/O-port filter the EMTs consult on port exits.
    pub fn io_watch(&self) -> IoWatch {
        self.io_watch.clone()
    }

    /// The page-trap watchpoint filter the EMTs consult on MMIO exits.
    pub fn mem_watch(&self) -> MemWatch {
        self.mem_watch.clone()
    }

    /// The same debugger with another [`WatchMode`].
    pub fn with_watch_mode(mut self, mode: WatchMode) -> Self {
        self.watch_mode = mode;
        self
    }

    /// Changes how later watchpoints are armed (existing ones stay as they are).
    pub fn set_watch_mode(&mut self, mode: WatchMode) {
        self.watch_mode = mode;
    }

    /// How watchpoints are armed.
    pub fn watch_mode(&self) -> WatchMode {
        self.watch_mode
    }

    /// All breakpoints, by id.
    pub fn breakpoints(&self) -> Vec<Breakpoint> {
        self.table.iter().map(|e| e.bp).collect()
    }

    /// One breakpoint.
    pub fn breakpoint(&self, id: BreakpointId) -> Option<Breakpoint> {
        self.table.get(id).map(|e| e.bp)
    }

    /// Whether the VM was resumed and has not reported a stop yet.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The vCPU of the last reported stop (0 before the first stop).
    pub fn last_stop_cpu(&self) -> u32 {
        self.last_stop_cpu
    }

    /// Number of DR0..DR3 slots still free.
    pub fn free_hw_slots(&self) -> usize {
        self.table.free_slots()
    }
}

/// The longest page-trap watchpoint (each page is translated and trapped on its own).
pub const MAX_PAGE_WATCH_LEN: u64 = 16 << 20;

/// A watch length as a buffer size: 1..=[`MAX_PAGE_WATCH_LEN`] bytes, no wrap past the top.
fn watch_len(addr: u64, len: u64) -> Result<usize, DebuggerError> {
    match usize::try_from(len) {
        Ok(n) if (1..=MAX_PAGE_WATCH_LEN).contains(&len) && addr.checked_add(len - 1).is_some() => {
            Ok(n)
        }
        _ => Err(DebuggerError::InvalidLength(len)),
    }
}

fn check_cpu<T: DebugTarget + ?Sized>(target: &T, cpu: u32) -> Result<(), DebuggerError> {
    if cpu < target.cpu_count() {
        Ok(())
    } else {
        Err(DebuggerError::InvalidCpu(cpu))
    }
}

#[cfg(test)]
mod tests;
