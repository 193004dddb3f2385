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

mod breakpoints;
mod dr7;
mod mem_target;
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

    /// Adds a hardware execute breakpoint at a linear address.
    pub fn add_hw_breakpoint(&mut self, addr: u64) -> Result<BreakpointId, DebuggerError> {
        self.table.add_hw(addr, 1, HwAccess::Execute)
    }

    /// Adds a data watchpoint over `[addr, addr + len)` (`access` is
    /// [`HwAccess::Write`] or [`HwAccess::ReadWrite`]); unaligned or odd-sized ranges
    /// take several slots.
    pub fn add_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        access: HwAccess,
    ) -> Result<BreakpointId, DebuggerError> {
        if access == HwAccess::Execute {
            return Err(DebuggerError::InvalidLength(len));
        }
        self.table.add_hw(addr, len, access)
    }

    /// Adds a data watchpoint over the linear range `[addr, addr + len)` as seen by
    /// `cpu`, armed as the [`WatchMode`] says. Debug registers have no read-only
    /// condition: there a [`MemAccess::Read`] watch triggers on writes too.
    pub fn add_data_watch<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        cpu: u32,
        addr: u64,
        len: u64,
        access: MemAccess,
    ) -> Result<BreakpointId, DebuggerError> {
        let hw = match access {
            MemAccess::Write => HwAccess::Write,
            MemAccess::Read | MemAccess::ReadWrite => HwAccess::ReadWrite,
        };
        match self.watch_mode {
            WatchMode::DebugRegisters => self.add_watchpoint(addr, len, hw),
            WatchMode::PageTraps => self.add_page_watch(target, cpu, addr, len, access),
            WatchMode::Auto if !target.delivers_data_breakpoints() => {
                self.add_page_watch(target, cpu, addr, len, access)
            }
            WatchMode::Auto => match self.add_watchpoint(addr, len, hw) {
                Err(
                    DebuggerError::NoFreeSlot { .. }
                    | DebuggerError::InvalidLength(_)
                    | DebuggerError::Misaligned { .. },
                ) => self.add_page_watch(target, cpu, addr, len, access),
                other => other,
            },
        }
    }

    /// Adds a page-trap watchpoint over the linear range `[addr, addr + len)`, translated
    /// now with `cpu`'s paging (page by page: the range may span pages that are not
    /// physically contiguous). The VM must be halted.
    pub fn add_page_watch<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        cpu: u32,
        addr: u64,
        len: u64,
        access: MemAccess,
    ) -> Result<BreakpointId, DebuggerError> {
        check_cpu(target, cpu)?;
        let size = watch_len(addr, len)?;
        let mut pieces: Vec<(u64, u64)> = Vec::new();
        for (off, n) in page_chunks(addr, size) {
            let first = target.translate(cpu, addr.wrapping_add(off as u64))?;
            let last = first + (n as u64 - 1);
            match pieces.last_mut() {
                Some(prev) if prev.1 + 1 == first => prev.1 = last,
                _ => pieces.push((first, last)),
            }
        }
        self.insert_page_watch(target, addr, len, access, pieces)
    }

    /// Adds a page-trap watchpoint over the guest-physical range `[phys, phys + len)`.
    /// The VM must be halted.
    pub fn add_phys_watch<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        phys: u64,
        len: u64,
        access: MemAccess,
    ) -> Result<BreakpointId, DebuggerError> {
        watch_len(phys, len)?;
        self.insert_page_watch(target, phys, len, access, vec![(phys, phys + (len - 1))])
    }

    fn insert_page_watch<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        addr: u64,
        len: u64,
        access: MemAccess,
        pieces: Vec<(u64, u64)>,
    ) -> Result<BreakpointId, DebuggerError> {
        if self.running {
            return Err(DebuggerError::Running);
        }
        let id = self.table.add_page_trap(addr, len, access, pieces);
        if let Err(e) = self.sync_page_traps(target) {
            self.table.remove(id)?;
            // Back to the traps that worked before; the first error is the one to report.
            let _ = self.sync_page_traps(target);
            return Err(e);
        }
        Ok(id)
    }

    /// Hands the page-trap set to the target and the exact ranges to the EMTs' filter.
    fn sync_page_traps<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
    ) -> Result<(), DebuggerError> {
        let ranges = self.table.mem_ranges();
        if ranges.is_empty() {
            self.mem_watch.set(ranges);
            target.set_page_traps(&[])?;
        } else {
            target.set_page_traps(&self.table.trap_pages())?;
            self.mem_watch.set(ranges);
        }
        Ok(())
    }

    /// Adds an `int3` breakpoint at a linear address (translated with `cpu`'s paging).
    pub fn add_sw_breakpoint<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        cpu: u32,
        addr: u64,
    ) -> Result<BreakpointId, DebuggerError> {
        check_cpu(target, cpu)?;
        let phys = target.translate(cpu, addr)?;
        if self.table.software().any(|(p, _)| p == phys) {
            return Err(DebuggerError::DuplicateSoftware(phys));
        }
        let mut original = [0u8];
        target.read_phys(phys, &mut original)?;
        target.write_phys(phys, &[INT3])?;
        Ok(self.table.add_sw(addr, phys, original[0]))
    }

    /// Adds an execute breakpoint: a DR slot while one is free, else an `int3`.
    pub fn add_breakpoint<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        cpu: u32,
        addr: u64,
    ) -> Result<BreakpointId, DebuggerError> {
        if self.table.free_slots() > 0 {
            self.add_hw_breakpoint(addr)
        } else {
            self.add_sw_breakpoint(target, cpu, addr)
        }
    }

    /// Adds an I/O-port breakpoint over ports `first..=last`.
    pub fn add_io_breakpoint(
        &mut self,
        first: u16,
        last: u16,
        access: IoAccess,
    ) -> Result<BreakpointId, DebuggerError> {
        if first > last {
            return Err(DebuggerError::InvalidPortRange { first, last });
        }
        let id = self.table.add_io(first, last, access);
        self.io_watch.set(self.table.io_ranges());
        Ok(id)
    }

    /// Removes a breakpoint, restoring the original byte of an `int3` (unless the guest
    /// has overwritten the `int3` since). A page-trap watchpoint gives its pages back
    /// ([`DebugTarget::set_page_traps`]), so the VM must be halted for it.
    pub fn remove_breakpoint<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        id: BreakpointId,
    ) -> Result<(), DebuggerError> {
        let lifted =
            matches!(&self.pending, Some(Pending::StepOver(s)) if s.lifted_sw.contains(&id));
        let page_trap = matches!(
            self.table.get(id).map(|e| e.bp.kind),
            Some(BreakpointKind::PageTrap { .. })
        );
        if page_trap && self.running {
            return Err(DebuggerError::Running);
        }
        let entry = self.table.remove(id)?;
        match entry.bp.kind {
            BreakpointKind::Software { phys, .. } if !lifted => {
                // If the guest overwrote the int3 meanwhile, its byte wins.
                let mut current = [0u8];
                target.read_phys(phys, &mut current)?;
                if current[0] == INT3 {
                    target.write_phys(phys, &[entry.original])?;
                }
            }
            BreakpointKind::Io { .. } => self.io_watch.set(self.table.io_ranges()),
            BreakpointKind::PageTrap { .. } => self.sync_page_traps(target)?,
            _ => {}
        }
        Ok(())
    }

    /// Removes every breakpoint.
    pub fn remove_all<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
    ) -> Result<(), DebuggerError> {
        for id in self.table.ids() {
            self.remove_breakpoint(target, id)?;
        }
        Ok(())
    }

    /// Reads guest-physical memory with `int3` patches hidden.
    pub fn read_phys<T: DebugTarget + ?Sized>(
        &self,
        target: &mut T,
        addr: u64,
        buf: &mut [u8],
    ) -> Result<(), DebuggerError> {
        target.read_phys(addr, buf)?;
        self.unpatch(addr, buf);
        Ok(())
    }

    /// Reads memory at a linear address with `int3` patches hidden.
    pub fn read_virt<T: DebugTarget + ?Sized>(
        &self,
        target: &mut T,
        cpu: u32,
        addr: u64,
        buf: &mut [u8],
    ) -> Result<(), DebuggerError> {
        check_cpu(target, cpu)?;
        target.read_virt(cpu, addr, buf)?;
        if self.table.has_software() {
            for (off, len) in page_chunks(addr, buf.len()) {
                let phys = target.translate(cpu, addr.wrapping_add(off as u64))?;
                self.unpatch(phys, &mut buf[off..off + len]);
            }
        }
        Ok(())
    }

    /// Writes guest-physical memory; bytes under an `int3` update the saved original and
    /// the `int3` stays in place.
    pub fn write_phys<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        addr: u64,
        data: &[u8],
    ) -> Result<(), DebuggerError> {
        let mut patched = data.to_vec();
        let lifted = self.lifted_sw();
        for (i, byte) in patched.iter_mut().enumerate() {
            let phys = addr.wrapping_add(i as u64);
            if let Some(e) = self.table.software_at_phys_mut(phys) {
                e.original = *byte;
                if !lifted.contains(&e.bp.id) {
                    *byte = INT3;
                }
            }
        }
        target.write_phys(addr, &patched)?;
        Ok(())
    }

    /// Writes memory at a linear address, keeping `int3` patches in place.
    pub fn write_virt<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        cpu: u32,
        addr: u64,
        data: &[u8],
    ) -> Result<(), DebuggerError> {
        check_cpu(target, cpu)?;
        if !self.table.has_software() {
            target.write_virt(cpu, addr, data)?;
            return Ok(());
        }
        for (off, len) in page_chunks(addr, data.len()) {
            let phys = target.translate(cpu, addr.wrapping_add(off as u64))?;
            self.write_phys(target, phys, &data[off..off + len])?;
        }
        Ok(())
    }

    /// Disassembles up to `count` instructions at a linear address in `cpu`'s current
    /// code size, with `int3` patches hidden. Stops early at unreadable memory.
    pub fn disassemble<T: DebugTarget + ?Sized>(
        &self,
        target: &mut T,
        cpu: u32,
        addr: u64,
        count: usize,
    ) -> Result<Vec<DisasLine>, DebuggerError> {
        check_cpu(target, cpu)?;
        let bitness = target.read_regs(cpu)?.bitness();
        let want = count.saturating_mul(MAX_INSN_LEN);
        let mut code = Vec::with_capacity(want);
        for (off, len) in page_chunks(addr, want) {
            let mut chunk = vec![0u8; len];
            if self
                .read_virt(target, cpu, addr.wrapping_add(off as u64), &mut chunk)
                .is_err()
            {
                break;
            }
            code.extend_from_slice(&chunk);
        }
        Ok(disassemble(&code, addr, bitness, count))
    }

    /// Asks the VM to halt; the VMM reports [`StopCause::Halted`] when it has.
    pub fn halt<T: DebugTarget + ?Sized>(&mut self, target: &mut T) -> Result<(), DebuggerError> {
        target.halt()?;
        Ok(())
    }

    /// Resumes the halted VM. If the vCPU that stopped last (or the stepping vCPU) sits
    /// on an execute breakpoint, it is first stepped over it alone, with the breakpoint
    /// lifted; the breakpoint is re-armed when that step's stop arrives in
    /// [`Debugger::handle_stop`].
    pub fn resume<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        how: Resume,
    ) -> Result<(), DebuggerError> {
        if self.running {
            return Err(DebuggerError::Running);
        }
        self.resume_halted(target, how)?;
        self.running = true;
        Ok(())
    }

    fn resume_halted<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        how: Resume,
    ) -> Result<(), DebuggerError> {
        let cpu = match how {
            Resume::Continue => self.last_stop_cpu,
            Resume::Step(cpu) | Resume::ContinueOnly(cpu) => cpu,
        };
        check_cpu(target, cpu)?;
        let rip = target.read_regs(cpu)?.linear_rip();
        let at_rip: Vec<&breakpoints::Entry> = self
            .table
            .iter()
            .filter(|e| e.bp.kind.is_execute_at(rip))
            .collect();
        if at_rip.is_empty() {
            return match how {
                Resume::Continue | Resume::ContinueOnly(_) => {
                    self.pending = None;
                    self.apply_guest_debug(target, None)?;
                    Ok(target.resume(continue_scope(how))?)
                }
                Resume::Step(cpu) => {
                    self.pending = Some(Pending::Step(cpu));
                    self.apply_guest_debug(target, Some(cpu))?;
                    Ok(target.resume(ResumeScope::Only(cpu))?)
                }
            };
        }
        let mut masked = [false; HW_SLOTS];
        let mut lifted_sw = Vec::new();
        let mut restores = Vec::new();
        for e in &at_rip {
            for &s in &e.slots {
                masked[s] = true;
            }
            if let BreakpointKind::Software { phys, .. } = e.bp.kind {
                lifted_sw.push(e.bp.id);
                restores.push((phys, e.original));
            }
        }
        for (phys, original) in restores {
            target.write_phys(phys, &[original])?;
        }
        self.pending = Some(Pending::StepOver(StepOver {
            cpu,
            then: how,
            masked,
            lifted_sw,
        }));
        self.apply_guest_debug_masked(target, cpu, masked)?;
        target.resume(ResumeScope::Only(cpu))?;
        Ok(())
    }

    /// Interprets a stop the VMM reported. Returns `None` when the stop was internal (the
    /// end of a step over a breakpoint before a continue) and the VM is running again.
    pub fn handle_stop<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        stop: VcpuStop,
    ) -> Result<Option<Stop>, DebuggerError> {
        self.last_stop_cpu = stop.cpu;
        self.running = false;
        let mut cause = stop.cause;
        let stepping = match self.pending.take() {
            Some(Pending::StepOver(over)) => {
                self.rearm(target, &over.lifted_sw)?;
                // DR6.Bn may be set for a disabled slot whose condition matched: drop them.
                if let StopCause::Debug { dr6, .. } = &mut cause {
                    for (s, &m) in over.masked.iter().enumerate() {
                        if m && stop.cpu == over.cpu {
                            *dr6 &= !(1 << s);
                        }
                    }
                }
                let single_step_done = stop.cpu == over.cpu
                    && matches!(cause, StopCause::Debug { exception: 1, dr6, .. }
                        if Dr6::decode(dr6).single_step);
                let continuing = !matches!(over.then, Resume::Step(_));
                if single_step_done && continuing {
                    // Report a watchpoint the stepped instruction hit; else keep going.
                    if let Some(reason) = self.interpret(cause, false) {
                        return Ok(Some(Stop {
                            cpu: stop.cpu,
                            reason,
                        }));
                    }
                    self.apply_guest_debug(target, None)?;
                    target.resume(continue_scope(over.then))?;
                    self.running = true;
                    return Ok(None);
                }
                !continuing && stop.cpu == over.cpu
            }
            Some(Pending::Step(cpu)) => cpu == stop.cpu,
            None => false,
        };
        let reason = self.interpret(cause, stepping).unwrap_or(match cause {
            StopCause::Debug {
                exception, dr6, pc, ..
            } => StopReason::Trap { exception, dr6, pc },
            _ => StopReason::Halted,
        });
        Ok(Some(Stop {
            cpu: stop.cpu,
            reason,
        }))
    }

    /// Removes every breakpoint (page traps included: call it with the VM halted), turns
    /// guest debugging off on every vCPU and lets the VM run (gdb's `detach`).
    pub fn detach<T: DebugTarget + ?Sized>(&mut self, target: &mut T) -> Result<(), DebuggerError> {
        if let Some(Pending::StepOver(over)) = self.pending.take() {
            self.rearm(target, &over.lifted_sw)?;
        }
        self.remove_all(target)?;
        self.apply_guest_debug(target, None)?;
        target.resume(ResumeScope::All)?;
        self.running = true;
        Ok(())
    }

    /// Maps a raw cause to a reason and counts hits; `None` when nothing of ours explains
    /// it. `stepping`: a single step on this vCPU was requested.
    fn interpret(&mut self, cause: StopCause, stepping: bool) -> Option<StopReason> {
        match cause {
            StopCause::Debug {
                exception: 3, pc, ..
            } => {
                let id = self
                    .table
                    .software()
                    .find(|(_, e)| e.bp.kind.is_execute_at(pc))
                    .map(|(_, e)| e.bp.id)?;
                let hits = self.table.hit(id);
                Some(StopReason::Breakpoint { id, hits })
            }
            StopCause::Debug {
                exception: 1, dr6, ..
            } => {
                let dr6 = Dr6::decode(dr6);
                let mut owners: Vec<BreakpointId> = (0..HW_SLOTS)
                    .filter(|&s| dr6.hit[s])
                    .filter_map(|s| self.table.slot_owner(s))
                    .collect();
                owners.sort_unstable();
                owners.dedup();
                let mut first = None;
                for id in owners {
                    let hits = self.table.hit(id);
                    let Some(entry) = self.table.get(id) else {
                        continue;
                    };
                    let reason = match entry.bp.kind {
                        BreakpointKind::Hardware {
                            addr,
                            access: access @ (HwAccess::Write | HwAccess::ReadWrite),
                            ..
                        } => StopReason::Watchpoint {
                            id,
                            hits,
                            addr,
                            access,
                        },
                        _ => StopReason::Breakpoint { id, hits },
                    };
                    first.get_or_insert(reason);
                }
                first.or((stepping && dr6.single_step).then_some(StopReason::Step))
            }
            StopCause::Debug { .. } => None,
            StopCause::Io { port, size, write } => {
                let id = self
                    .table
                    .iter()
                    .find(|e| match e.bp.kind {
                        BreakpointKind::Io {
                            first,
                            last,
                            access,
                        } => stop::IoRange {
                            first,
                            last,
                            access,
                        }
                        .matches(port, size, write),
                        _ => false,
                    })
                    .map(|e| e.bp.id)?;
                let hits = self.table.hit(id);
                Some(StopReason::IoBreakpoint {
                    id,
                    hits,
                    port,
                    write,
                })
            }
            StopCause::Mem { addr, size, write } => {
                let id = self.table.page_trap_hit(addr, size, write)?;
                let hits = self.table.hit(id);
                let Some(BreakpointKind::PageTrap { addr: start, .. }) =
                    self.table.get(id).map(|e| e.bp.kind)
                else {
                    return None;
                };
                Some(StopReason::PageWatchpoint {
                    id,
                    hits,
                    addr: start,
                    phys: addr,
                    write,
                })
            }
            StopCause::Halted => Some(StopReason::Halted),
            StopCause::PoweredOff => Some(StopReason::PoweredOff),
        }
    }

    fn lifted_sw(&self) -> Vec<BreakpointId> {
        match &self.pending {
            Some(Pending::StepOver(over)) => over.lifted_sw.clone(),
            _ => Vec::new(),
        }
    }

    /// Writes `int3` back for lifted software breakpoints that still exist.
    fn rearm<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        lifted: &[BreakpointId],
    ) -> Result<(), DebuggerError> {
        for &id in lifted {
            if let Some(BreakpointKind::Software { phys, .. }) =
                self.table.get(id).map(|e| e.bp.kind)
            {
                target.write_phys(phys, &[INT3])?;
            }
        }
        Ok(())
    }

    /// Hides `int3` patches in a buffer read from guest-physical `addr`.
    fn unpatch(&self, addr: u64, buf: &mut [u8]) {
        let lifted = self.lifted_sw();
        for (phys, e) in self.table.software() {
            if lifted.contains(&e.bp.id) {
                continue;
            }
            if let Some(off) = phys.checked_sub(addr) {
                if let Some(b) = usize::try_from(off).ok().and_then(|o| buf.get_mut(o)) {
                    *b = e.original;
                }
            }
        }
    }

    /// The guest-debug state for one vCPU.
    fn guest_debug(&self, single_step: bool, masked: [bool; HW_SLOTS]) -> GuestDebug {
        let slots = self.table.slots();
        let (dr, dr7) = encode_debug_regs(&slots, masked);
        let use_hw_bp = slots.iter().any(Option::is_some);
        let use_sw_bp = self.table.has_software();
        GuestDebug {
            enable: use_hw_bp || use_sw_bp || single_step,
            single_step,
            use_sw_bp,
            use_hw_bp,
            dr,
            dr7,
        }
    }

    /// Loads the guest-debug state into every vCPU whose state changed; `step` single
    /// steps that vCPU.
    fn apply_guest_debug<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        step: Option<u32>,
    ) -> Result<(), DebuggerError> {
        for cpu in 0..target.cpu_count() {
            let dbg = self.guest_debug(step == Some(cpu), [false; HW_SLOTS]);
            self.load(target, cpu, dbg)?;
        }
        Ok(())
    }

    /// Single steps `cpu` with `masked` slots disabled on it.
    fn apply_guest_debug_masked<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        cpu: u32,
        masked: [bool; HW_SLOTS],
    ) -> Result<(), DebuggerError> {
        let dbg = self.guest_debug(true, masked);
        self.load(target, cpu, dbg)
    }

    fn load<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        cpu: u32,
        dbg: GuestDebug,
    ) -> Result<(), DebuggerError> {
        let idx = cpu as usize;
        if self.applied.len() <= idx {
            self.applied.resize(idx + 1, None);
        }
        if self.applied[idx] != Some(dbg) {
            target.set_guest_debug(cpu, &dbg)?;
            self.applied[idx] = Some(dbg);
        }
        Ok(())
    }
}

/// Which vCPUs a continue lets run.
fn continue_scope(how: Resume) -> ResumeScope {
    match how {
        Resume::ContinueOnly(cpu) => ResumeScope::Only(cpu),
        Resume::Continue | Resume::Step(_) => ResumeScope::All,
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
