//! `gdbstub` target over the debugger core: one gdb thread per vCPU (tid = vCPU + 1).

use std::num::NonZeroUsize;

use gdbstub::common::{Signal, Tid};
use gdbstub::stub::MultiThreadStopReason;
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd, MonitorCmdOps};
use gdbstub::target::{Target, TargetError as GdbError, TargetResult};
use gdbstub_arch::x86::X86_64_SSE;
use gdbstub_arch::x86::reg::X86_64CoreRegs;

use super::monitor::{self, InfoAccess};
use super::regs::{from_gdb, to_gdb};
use crate::debugger::{
    BreakpointId, DebugTarget, Debugger, DebuggerError, MemAccess, Resume, Stop, StopListener,
    StopReason, TargetError,
};

/// A breakpoint as gdb asked for it (`Z0`..`Z4`), to answer in gdb's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GdbBp {
    /// `Z0` (`break`): a DR slot while one is free, else `int3`.
    Sw(u64),
    /// `Z1` (`hbreak`).
    Hw(u64),
    /// `Z2`..`Z4` (`watch`, `rwatch`, `awatch`).
    Watch(u64, u64, WatchKind),
}

/// The debugger core, the VM and the stop listener, seen through gdb's eyes.
pub struct GdbTarget<T: DebugTarget> {
    pub(super) target: T,
    pub(super) dbg: Debugger,
    pub(super) stops: StopListener,
    /// gdb's breakpoints (a handful at most) and the core's ids for them.
    gdb_bps: Vec<(GdbBp, BreakpointId)>,
    /// Resume actions being collected: the vCPU to single step, the vCPU named in a
    /// continue action, and whether gdb locked the scheduler to the named vCPUs.
    step: Option<u32>,
    cont: Option<u32>,
    locked: bool,
    /// DBGF info handlers for `monitor info`.
    pub(super) info: Option<InfoAccess>,
}

impl<T: DebugTarget> std::fmt::Debug for GdbTarget<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GdbTarget")
            .field("dbg", &self.dbg)
            .field("gdb_bps", &self.gdb_bps)
            .finish_non_exhaustive()
    }
}

pub(super) fn tid_to_cpu(tid: Tid) -> u32 {
    u32::try_from(tid.get() - 1).unwrap_or(u32::MAX)
}

pub(super) fn cpu_to_tid(cpu: u32) -> Tid {
    NonZeroUsize::MIN.saturating_add(cpu as usize)
}

fn fatal(e: impl Into<DebuggerError>) -> GdbError<DebuggerError> {
    GdbError::Fatal(e.into())
}

/// Failures gdb can live with (no free slot, unmapped address) become `false`.
fn inserted(r: Result<BreakpointId, DebuggerError>) -> Result<Option<BreakpointId>, DebuggerError> {
    match r {
        Ok(id) => Ok(Some(id)),
        Err(DebuggerError::Target(TargetError::Other(e))) => Err(TargetError::Other(e).into()),
        Err(
            DebuggerError::Target(_)
            | DebuggerError::NoFreeSlot { .. }
            | DebuggerError::Misaligned { .. }
            | DebuggerError::InvalidLength(_)
            | DebuggerError::DuplicateSoftware(_),
        ) => Ok(None),
        Err(e) => Err(e),
    }
}

impl<T: DebugTarget> GdbTarget<T> {
    pub(super) fn new(target: T, dbg: Debugger, stops: StopListener) -> Self {
        Self {
            target,
            dbg,
            stops,
            gdb_bps: Vec::new(),
            step: None,
            cont: None,
            locked: false,
            info: None,
        }
    }

    /// Translates an interpreted stop into gdb's stop reply.
    pub(super) fn gdb_stop(&self, stop: Stop) -> MultiThreadStopReason<u64> {
        let tid = cpu_to_tid(stop.cpu);
        let trap = MultiThreadStopReason::SignalWithThread {
            tid,
            signal: Signal::SIGTRAP,
        };
        let asked = |id: BreakpointId| self.gdb_bps.iter().find(|(_, v)| *v == id).map(|(k, _)| *k);
        match stop.reason {
            StopReason::Breakpoint { id, .. }
            | StopReason::Watchpoint { id, .. }
            | StopReason::PageWatchpoint { id, .. } => match asked(id) {
                Some(GdbBp::Sw(_)) => MultiThreadStopReason::SwBreak(tid),
                Some(GdbBp::Hw(_)) => MultiThreadStopReason::HwBreak(tid),
                Some(GdbBp::Watch(addr, _, kind)) => {
                    MultiThreadStopReason::Watch { tid, kind, addr }
                }
                None => trap,
            },
            StopReason::Step | StopReason::Trap { .. } | StopReason::IoBreakpoint { .. } => trap,
            StopReason::Halted => MultiThreadStopReason::SignalWithThread {
                tid,
                signal: Signal::SIGINT,
            },
            StopReason::PoweredOff => MultiThreadStopReason::Exited(0),
        }
    }

    fn insert(
        &mut self,
        key: GdbBp,
        add: impl FnOnce(&mut Self) -> Result<BreakpointId, DebuggerError>,
    ) -> TargetResult<bool, Self> {
        if self.gdb_bps.iter().any(|(k, _)| *k == key) {
            return Ok(true); // Z packets are idempotent
        }
        match inserted(add(self)).map_err(fatal)? {
            Some(id) => {
                self.gdb_bps.push((key, id));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn remove(&mut self, key: GdbBp) -> TargetResult<bool, Self> {
        let Some(pos) = self.gdb_bps.iter().position(|(k, _)| *k == key) else {
            return Ok(false);
        };
        let (_, id) = self.gdb_bps.swap_remove(pos);
        self.dbg
            .remove_breakpoint(&mut self.target, id)
            .map_err(fatal)?;
        Ok(true)
    }

    fn checked_cpu(&self, tid: Tid) -> Result<u32, DebuggerError> {
        let cpu = tid_to_cpu(tid);
        if cpu < self.target.cpu_count() {
            Ok(cpu)
        } else {
            Err(DebuggerError::InvalidCpu(cpu))
        }
    }

    /// Drops gdb's breakpoint bookkeeping after the core removed everything.
    pub(super) fn forget_breakpoints(&mut self) {
        self.gdb_bps.clear();
    }
}

impl<T: DebugTarget> Target for GdbTarget<T> {
    type Arch = X86_64_SSE;
    type Error = DebuggerError;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }

    /// Acks stay on: a packet with a bad checksum is answered `-` and gdb sends it
    /// again, which it does not do in no-ack mode.
    fn use_no_ack_mode(&self) -> bool {
        false
    }
}

impl<T: DebugTarget> MonitorCmd for GdbTarget<T> {
    fn handle_monitor_cmd(
        &mut self,
        cmd: &[u8],
        mut out: ConsoleOutput<'_>,
    ) -> Result<(), Self::Error> {
        let cmd = String::from_utf8_lossy(cmd);
        let owned: Vec<BreakpointId> = self.gdb_bps.iter().map(|(_, id)| *id).collect();
        // A failed console write only loses text; the command itself has run.
        let _ = monitor::run(
            &cmd,
            &mut self.dbg,
            &mut self.target,
            self.info.as_ref(),
            &owned,
            &mut out,
        );
        Ok(())
    }
}

impl<T: DebugTarget> MultiThreadBase for GdbTarget<T> {
    fn read_registers(&mut self, regs: &mut X86_64CoreRegs, tid: Tid) -> TargetResult<(), Self> {
        let r = self
            .target
            .read_regs(tid_to_cpu(tid))
            .map_err(|_| GdbError::NonFatal)?;
        *regs = to_gdb(&r);
        Ok(())
    }

    fn write_registers(&mut self, regs: &X86_64CoreRegs, tid: Tid) -> TargetResult<(), Self> {
        let cpu = tid_to_cpu(tid);
        let base = self.target.read_regs(cpu).map_err(|_| GdbError::NonFatal)?;
        self.target
            .write_regs(cpu, &from_gdb(regs, &base))
            .map_err(|_| GdbError::NonFatal)
    }

    /// Reads up to the first unreadable page, and never past the end of the address
    /// space (the read comes back short).
    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        let cpu = tid_to_cpu(tid);
        let to_end = usize::try_from(u64::MAX - start).map_or(usize::MAX, |n| n.saturating_add(1));
        let len = to_end.min(data.len());
        let data = &mut data[..len];
        let mut done = 0;
        for (off, len) in crate::debugger::page_chunks(start, data.len()) {
            let addr = start.wrapping_add(off as u64);
            if self
                .dbg
                .read_virt(&mut self.target, cpu, addr, &mut data[off..off + len])
                .is_err()
            {
                break;
            }
            done += len;
        }
        if done == 0 && !data.is_empty() {
            return Err(GdbError::NonFatal);
        }
        Ok(done)
    }

    /// Refuses a write that would wrap past the end of the address space.
    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        if start
            .checked_add(data.len().saturating_sub(1) as u64)
            .is_none()
        {
            return Err(GdbError::NonFatal);
        }
        self.dbg
            .write_virt(&mut self.target, tid_to_cpu(tid), start, data)
            .map_err(|_| GdbError::NonFatal)
    }

    fn list_active_threads(&mut self, report: &mut dyn FnMut(Tid)) -> Result<(), Self::Error> {
        for cpu in 0..self.target.cpu_count() {
            report(cpu_to_tid(cpu));
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl<T: DebugTarget> MultiThreadResume for GdbTarget<T> {
    /// Steps the one vCPU gdb asked to step (the others stay halted); else continues
    /// every vCPU, or only the named one under scheduler locking. Signals gdb asks to
    /// deliver are ignored: a VM has none.
    fn resume(&mut self) -> Result<(), Self::Error> {
        let how = match (self.step, self.cont, self.locked) {
            (Some(cpu), _, _) => Resume::Step(cpu),
            (None, Some(cpu), true) => Resume::ContinueOnly(cpu),
            _ => Resume::Continue,
        };
        self.dbg.resume(&mut self.target, how)
    }

    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        (self.step, self.cont, self.locked) = (None, None, false);
        Ok(())
    }

    fn set_resume_action_continue(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        self.cont = Some(self.checked_cpu(tid)?);
        Ok(())
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl<T: DebugTarget> MultiThreadSingleStep for GdbTarget<T> {
    fn set_resume_action_step(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        self.step = Some(self.checked_cpu(tid)?);
        Ok(())
    }
}

impl<T: DebugTarget> MultiThreadSchedulerLocking for GdbTarget<T> {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Self::Error> {
        self.locked = true;
        Ok(())
    }
}

impl<T: DebugTarget> Breakpoints for GdbTarget<T> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl<T: DebugTarget> SwBreakpoint for GdbTarget<T> {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.insert(GdbBp::Sw(addr), |s| {
            let cpu = s.dbg.last_stop_cpu();
            s.dbg.add_breakpoint(&mut s.target, cpu, addr)
        })
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.remove(GdbBp::Sw(addr))
    }
}

impl<T: DebugTarget> HwBreakpoint for GdbTarget<T> {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.insert(GdbBp::Hw(addr), |s| s.dbg.add_hw_breakpoint(addr))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.remove(GdbBp::Hw(addr))
    }
}

impl<T: DebugTarget> HwWatchpoint for GdbTarget<T> {
    /// Armed as the debugger's [`WatchMode`](crate::debugger::WatchMode) says: debug
    /// registers or page traps. Debug registers have no read-only condition: there
    /// `rwatch` uses a read/write slot (gdb filters writes by checking whether the value
    /// changed); page traps watch reads alone. A linear address is translated with the
    /// vCPU of the last stop.
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let access = match kind {
            WatchKind::Write => MemAccess::Write,
            WatchKind::Read => MemAccess::Read,
            WatchKind::ReadWrite => MemAccess::ReadWrite,
        };
        self.insert(GdbBp::Watch(addr, len, kind), |s| {
            let cpu = s.dbg.last_stop_cpu();
            s.dbg.add_data_watch(&mut s.target, cpu, addr, len, access)
        })
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        self.remove(GdbBp::Watch(addr, len, kind))
    }
}

#[cfg(test)]
mod tests;
