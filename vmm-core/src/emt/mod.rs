//! The EMT (emulation thread): runs one vCPU, handles its exits and its
//! forced actions.
//!
//! An EMT is a small state machine ([`EmtState`]): it serves forced
//! actions (rendezvous, requests, termination), waits while the VM may not
//! run, enters the guest, and after each exit does what the exit handler
//! ([`exit::handle_exit`], which sees only the buses, guest memory and the
//! debugger's hooks) asked. The vCPU is anything that implements
//! [`VirtualCpu`]: hm-vmx's KVM vCPU, or a scripted one in tests.

mod exit;
#[cfg(test)]
mod tests;

use dbgf::debugger::StopCause;
use hm_vmx::VirtualCpu;

use std::sync::Arc;

use crate::config::OnReboot;
use crate::devices::DeviceAction;
use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::sync::ffs::{CpuFf, VmFf};

use exit::{DebugHooks, ExitAction, ExitContext, Unhandled, WatchHit, handle_exit};

/// How a run ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest wrote this status to the debug-exit port.
    GuestExit(u8),
    /// The guest reset the machine (for example through the keyboard
    /// controller, as Linux's `reboot=k` does) and the VM is configured to
    /// end the run then ([`OnReboot::Exit`]).
    Reboot,
    /// The VM was powered off from outside (the control API).
    PoweredOff,
    /// The guest powered the machine off (ACPI soft-off, as Linux's
    /// `poweroff` does).
    GuestPoweredOff,
    /// The guest reset the machine with the BIOS warm-reset flag set (0x1234
    /// at 0x472), as Linux does on a panic with `reboot=panic_warm`:
    /// the run ends whatever [`OnReboot`] says.
    WarmReset,
}

/// The EMT of vCPU `cpu`: runs until the VM terminates. Whatever ends the
/// run (the guest's exit status, an error) is reported to the machine,
/// which stops the other EMTs.
pub(crate) fn emt_main(vcpu: &mut impl VirtualCpu, machine: &Arc<Machine>) {
    if let Err(e) = emt_loop(vcpu, machine) {
        machine.finish(Err(e));
    }
}

fn emt_loop(vcpu: &mut impl VirtualCpu, machine: &Arc<Machine>) -> Result<()> {
    let cpu = vcpu.id();
    let (kicker, _binding) = vcpu.bind_kicks()?;
    machine.kicks.bind(cpu, kicker);
    let _emt = machine.ffs.register_emt(cpu)?;
    stam::set_thread_shard(cpu as usize);
    if let Err(e) = run_guest(vcpu, machine) {
        machine.finish(Err(e));
    }
    drain(machine, cpu);
    Ok(())
}

/// After the run ended for this EMT: keep answering rendezvous until every
/// EMT has stopped, so that an EMT caught in a rendezvous (a pause racing
/// with the guest's exit) is never left waiting for this one. Requests are
/// not taken any more (one could start a rendezvous nobody would join);
/// their callers get an error when the run shuts the queue down.
fn drain(machine: &Machine, cpu: u32) {
    machine.emt_draining();
    while machine.emts_in_guest_loop() > 0 {
        if machine.ffs.vm().contains(VmFf::EMT_RENDEZVOUS) {
            if let Err(e) = machine.rendezvous.on_ff(cpu) {
                tracing::debug!("EMT {cpu}: rendezvous while stopping: {e}");
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Where an EMT is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EmtState {
    /// Serve pending forced actions, then run if the VM may.
    Ready,
    /// The VM may not run (suspended, halted by the debugger) or the guest
    /// halted: sleep until the next forced action.
    Waiting,
    /// Enter the guest and handle the exit.
    InGuest,
    /// A watched access's instruction must complete (one entry that
    /// returns before another instruction runs) before the hit is
    /// reported.
    CompletingWatched(WatchHit),
    /// The run is over for this EMT.
    Terminated,
}

/// Runs the guest on this EMT until the VM terminates.
fn run_guest(vcpu: &mut impl VirtualCpu, machine: &Arc<Machine>) -> Result<()> {
    let cpu = vcpu.id();
    let mut state = EmtState::Ready;
    loop {
        state = match state {
            EmtState::Ready if !service_forced_actions(machine, cpu)? => EmtState::Terminated,
            EmtState::Ready if machine.may_run(cpu) => EmtState::InGuest,
            EmtState::Ready => EmtState::Waiting,
            EmtState::Waiting => {
                machine.ffs.halt_wait(cpu, None)?;
                EmtState::Ready
            }
            EmtState::InGuest => {
                let Some(guest) = machine.ffs.enter_guest(cpu)? else {
                    state = EmtState::Ready;
                    continue;
                };
                let exit = vcpu.run();
                drop(guest);
                let action = handle_exit(exit?, &exit_context(machine, cpu))?;
                after_exit(vcpu, machine, action)?
            }
            EmtState::CompletingWatched(hit) => complete_watched(vcpu, machine, hit)?,
            EmtState::Terminated => return Ok(()),
        };
    }
}

/// What an exit of `cpu` may touch of the machine.
fn exit_context(machine: &Machine, cpu: u32) -> ExitContext<'_> {
    ExitContext {
        cpu,
        io: &machine.io,
        memory: &machine.memory,
        debug: machine,
    }
}

/// Carries out what the exit handler asked.
fn after_exit(
    vcpu: &impl VirtualCpu,
    machine: &Arc<Machine>,
    action: ExitAction,
) -> Result<EmtState> {
    let cpu = vcpu.id();
    let end = match action {
        ExitAction::Continue => return Ok(EmtState::Ready),
        ExitAction::Halt => {
            machine.halts[cpu as usize].inc();
            return Ok(EmtState::Waiting);
        }
        ExitAction::DebugStop(cause) => {
            // Not reported when another stop halted the VM first: a
            // breakpoint fires again when the vCPU resumes.
            machine.debug_stop(cpu, cause)?;
            return Ok(EmtState::Ready);
        }
        ExitAction::Watched(hit) => return Ok(EmtState::CompletingWatched(hit)),
        ExitAction::Terminate => return Ok(EmtState::Terminated),
        ExitAction::Unhandled(u) => return Err(unhandled(vcpu, u)),
        ExitAction::Device(DeviceAction::Continue) => return Ok(EmtState::Ready),
        ExitAction::Device(DeviceAction::GuestExit(status)) => RunOutcome::GuestExit(status),
        ExitAction::Device(DeviceAction::PowerOff) => RunOutcome::GuestPoweredOff,
        ExitAction::Device(DeviceAction::Reset) if crate::reset::warm_reset(machine) => {
            RunOutcome::WarmReset
        }
        ExitAction::Device(DeviceAction::Reset) if restarts(machine) => {
            crate::reset::reset(machine)?;
            return Ok(EmtState::Ready);
        }
        ExitAction::Device(DeviceAction::Reset) => RunOutcome::Reboot,
    };
    machine.finish(Ok(end));
    Ok(EmtState::Terminated)
}

/// The error that ends the run on an exit the VMM does not handle: entry
/// and emulation failures are explained against the SDM's guest-state
/// rules instead of KVM's opaque codes.
fn unhandled(vcpu: &impl VirtualCpu, u: Unhandled) -> Error {
    Error::UnhandledExit {
        cpu: vcpu.id(),
        exit: u.exit,
        reason: u.reason,
        rip: vcpu.regs().map(|r| r.rip).unwrap_or(u64::MAX),
        diagnosis: u.diagnose.then(|| vcpu.diagnose_entry_failure()),
    }
}

/// Completes the instruction of a watched access and reports the hit.
/// KVM completes a pending MMIO access (a read's register write-back,
/// RIP) on the next entry; `immediate_exit` makes that entry return
/// before another guest instruction runs.
fn complete_watched(
    vcpu: &mut impl VirtualCpu,
    machine: &Arc<Machine>,
    hit: WatchHit,
) -> Result<EmtState> {
    let cpu = vcpu.id();
    if !service_forced_actions(machine, cpu)? {
        return Ok(EmtState::Terminated);
    }
    if !machine.may_run(cpu) {
        machine.ffs.halt_wait(cpu, None)?;
        return Ok(EmtState::CompletingWatched(hit));
    }
    let Some(guest) = machine.ffs.enter_guest(cpu)? else {
        return Ok(EmtState::CompletingWatched(hit));
    };
    vcpu.set_immediate_exit(true);
    let exit = vcpu.run();
    drop(guest);
    match exit? {
        // The instruction is complete (a single step it ended is reported
        // as the watchpoint hit, as with DR6.Bn and DR6.BS).
        hm_vmx::Exit::Interrupted | hm_vmx::Exit::Debug(_) => {
            Ok(if report_watch_hit(machine, cpu, hit)? {
                EmtState::CompletingWatched(hit)
            } else {
                EmtState::Ready
            })
        }
        // Anything else is handled as usual, and the hit waits on.
        other => {
            let action = handle_exit(other, &exit_context(machine, cpu))?;
            Ok(match after_exit(vcpu, machine, action)? {
                EmtState::Ready => EmtState::CompletingWatched(hit),
                next => next,
            })
        }
    }
}

/// Whether a reset from inside the guest restarts the VM (as configured,
/// and when the VM can: see [`PowerOn::restarts`](crate::reset::PowerOn::restarts)).
fn restarts(machine: &Machine) -> bool {
    let restarts = machine.power_on.restarts(&machine.saved.config.firmware);
    if machine.on_reboot == OnReboot::Restart && !restarts {
        tracing::warn!(
            "the guest reset the machine; a restored direct-boot VM cannot restart \
             (its kernel is not in the saved state): the run ends"
        );
    }
    machine.on_reboot == OnReboot::Restart && restarts
}

/// Handles the pending forced actions (rendezvous, requests); false when the
/// EMT must terminate.
fn service_forced_actions(machine: &Machine, cpu: u32) -> Result<bool> {
    let vm_ff = machine.ffs.vm();
    if vm_ff.contains(VmFf::TERMINATE) {
        return Ok(false);
    }
    if vm_ff.contains(VmFf::EMT_RENDEZVOUS) {
        machine.rendezvous.on_ff(cpu)?;
    }
    let cpu_ff = machine.ffs.cpu(cpu)?;
    if vm_ff.contains(VmFf::REQUEST) || cpu_ff.contains(CpuFf::REQUEST) {
        machine.requests.process_requests(cpu)?;
    }
    machine.ffs.test_and_clear_cpu(cpu, CpuFf::UNHALT)?;
    Ok(true)
}

/// Reports a page-trap watchpoint hit whose instruction has completed (a
/// watchpoint removed meanwhile is forgotten). True when the hit must wait:
/// another stop halted the VM first, so it is reported when the VM resumes.
fn report_watch_hit(machine: &Machine, cpu: u32, hit: WatchHit) -> Result<bool> {
    let WatchHit { addr, size, write } = hit;
    if !machine.debug.mem_matches(addr, size, write) {
        return Ok(false);
    }
    let cause = StopCause::Mem { addr, size, write };
    Ok(!machine.debug_stop(cpu, cause)? && machine.debug.is_attached())
}

/// After a stop in the middle of an exit: serves forced actions until the
/// debugger lets this vCPU run again; false when the EMT must terminate.
fn wait_for_debugger(machine: &Machine, cpu: u32) -> Result<bool> {
    loop {
        if !service_forced_actions(machine, cpu)? {
            return Ok(false);
        }
        if machine.may_run(cpu) {
            return Ok(true);
        }
        machine.ffs.halt_wait(cpu, None)?;
    }
}

/// The machine's debugger, as the exit path sees it.
impl DebugHooks for Machine {
    fn is_attached(&self) -> bool {
        self.debug.is_attached()
    }

    fn io_matches(&self, port: u16, size: u8, write: bool) -> bool {
        self.debug.io_matches(port, size, write)
    }

    fn mem_matches(&self, addr: u64, size: u32, write: bool) -> bool {
        self.debug.mem_matches(addr, size, write)
    }

    fn stop_before_io(&self, cpu: u32, cause: StopCause) -> Result<bool> {
        // Halted before the access; once resumed it completes without
        // being checked again.
        Ok(!self.debug_stop(cpu, cause)? || wait_for_debugger(self, cpu)?)
    }
}
