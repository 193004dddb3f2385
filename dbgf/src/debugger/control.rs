//! Execution control: halting, resuming and stepping (over breakpoints),
//! interpreting raw stops, and the guest-debug state handed to the target.

use super::*;

impl Debugger {
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

    pub(super) fn lifted_sw(&self) -> Vec<BreakpointId> {
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
