//! The EMT (emulation thread): runs one vCPU, handles its exits and its
//! forced actions.
//!
//! An EMT is a small state machine ([`EmtState`]): it serves forced
//! actions (rendezvous, requests, termination), waits while the VM may not
//! run, enters the guest, and after each exit does what the exit handler
//! ([`exit::handle_exit`], which sees only the buses, guest memory and the
//! debugger's hooks) asked. It needs two things: a vCPU, anything that
//! implements [`VirtualCpu`] (hm-vmx's KVM vCPU, or a scripted one), and a
//! machine, anything that implements [`EmtHost`] (the VM's, or a fake):
//! the loop and the exit handler are tested without `/dev/kvm`.

mod exit;
mod host;
mod stall;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use hm_vmx::VirtualCpu;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::sync::ffs::{CpuFf, VmFf};

use exit::{ExitAction, Unhandled, WatchHit, handle_exit};
use host::EmtHost;
pub(crate) use stall::StallWatch;

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
        if machine.ffs.vm().contains(VmFf::EMT_RENDEZVOUS)
            && let Err(e) = machine.rendezvous.on_ff(cpu)
        {
            tracing::debug!("EMT {cpu}: rendezvous while stopping: {e}");
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
fn run_guest(vcpu: &mut impl VirtualCpu, host: &impl EmtHost) -> Result<()> {
    let cpu = vcpu.id();
    let mut state = EmtState::Ready;
    loop {
        state = match state {
            EmtState::Ready => ready(vcpu, host)?,
            EmtState::Waiting => {
                host.wait(cpu)?;
                EmtState::Ready
            }
            EmtState::InGuest => {
                let Some(guest) = host.forced_actions().enter_guest(cpu)? else {
                    state = EmtState::Ready;
                    continue;
                };
                host.stall_watch().entering(cpu);
                let exit = vcpu.run();
                drop(guest);
                let exit = exit?;
                if matches!(exit, hm_vmx::Exit::Interrupted) && host.stall_watch().take_suspect(cpu)
                {
                    stall::recover(vcpu, host)?
                } else {
                    host.stall_watch().running(cpu);
                    let action = handle_exit(exit, &host.exit_context(cpu))?;
                    after_exit(vcpu, host, action)?
                }
            }
            EmtState::CompletingWatched(hit) => complete_watched(vcpu, host, hit)?,
            EmtState::Terminated => return Ok(()),
        };
    }
}

/// Where the EMT goes next: into the guest when nothing keeps it out;
/// otherwise the last exit's instruction completes first
/// ([`complete_instruction`]), then forced actions are served or the EMT
/// waits, so that whoever looks at the vCPU meanwhile (a save, a teleport,
/// a reset, the debugger) sees the instruction complete.
fn ready(vcpu: &mut impl VirtualCpu, host: &impl EmtHost) -> Result<EmtState> {
    let cpu = vcpu.id();
    let ffs = host.forced_actions();
    if !ffs.is_pending(cpu, VmFf::GUEST_EXIT_MASK, CpuFf::GUEST_EXIT_MASK)? && host.may_run(cpu) {
        return Ok(EmtState::InGuest);
    }
    if let Some(next) = complete_instruction(vcpu, host)? {
        return Ok(next);
    }
    Ok(if !host.serve_forced_actions(cpu)? {
        EmtState::Terminated
    } else if host.may_run(cpu) {
        EmtState::InGuest
    } else {
        EmtState::Waiting
    })
}

/// Completes the instruction of the last I/O or MMIO exit without running
/// guest code (what gem5 calls draining): KVM stores an `in`'s value and
/// moves RIP past the instruction only on the next entry, and a state read
/// before it (by a save, a teleport, a reset) would make a restored guest
/// execute the instruction again, a second device access. Exits on the way
/// (the rest of a string I/O) are handled as usual; when one of them sends
/// the EMT elsewhere, that is where it goes.
fn complete_instruction(
    vcpu: &mut impl VirtualCpu,
    host: &impl EmtHost,
) -> Result<Option<EmtState>> {
    let cpu = vcpu.id();
    while let Some(exit) = vcpu.complete_pending_io()? {
        let action = handle_exit(exit, &host.exit_context(cpu))?;
        match after_exit(vcpu, host, action)? {
            EmtState::Ready => {}
            next => return Ok(Some(next)),
        }
    }
    Ok(None)
}

/// Carries out what the exit handler asked.
fn after_exit(
    vcpu: &mut impl VirtualCpu,
    host: &impl EmtHost,
    action: ExitAction,
) -> Result<EmtState> {
    let cpu = vcpu.id();
    Ok(match action {
        ExitAction::Continue => EmtState::Ready,
        ExitAction::Halt => {
            host.halted(cpu);
            EmtState::Waiting
        }
        ExitAction::DebugStop(cause) => {
            // Not reported when another stop halted the VM first: a
            // breakpoint fires again when the vCPU resumes.
            host.debug_stop(cpu, cause)?;
            EmtState::Ready
        }
        ExitAction::Watched(hit) => EmtState::CompletingWatched(hit),
        ExitAction::Terminate => EmtState::Terminated,
        ExitAction::Unhandled(u) => return Err(unhandled(vcpu, u)),
        // The machine ends or resets once the instruction is complete (a
        // reset must not find it pending in the power-on state).
        ExitAction::Device(action) => match complete_instruction(vcpu, host)? {
            Some(next) => next,
            None => match host.device_action(action)? {
                Some(end) => {
                    host.end_run(end);
                    EmtState::Terminated
                }
                None => EmtState::Ready,
            },
        },
    })
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

/// Completes the instruction of a watched access (see
/// [`complete_instruction`]) and reports the hit once the vCPU may run.
fn complete_watched(
    vcpu: &mut impl VirtualCpu,
    host: &impl EmtHost,
    hit: WatchHit,
) -> Result<EmtState> {
    let cpu = vcpu.id();
    match vcpu.complete_pending_io()? {
        // The instruction is complete, now or on an earlier pass (a single
        // step it ended is reported as the watchpoint hit, as with DR6.Bn
        // and DR6.BS).
        None | Some(hm_vmx::Exit::Debug(_)) => {}
        // Anything else is handled as usual, and the hit waits on.
        Some(other) => {
            let action = handle_exit(other, &host.exit_context(cpu))?;
            return Ok(match after_exit(vcpu, host, action)? {
                EmtState::Ready => EmtState::CompletingWatched(hit),
                next => next,
            });
        }
    }
    if !host.serve_forced_actions(cpu)? {
        return Ok(EmtState::Terminated);
    }
    if !host.may_run(cpu) {
        host.wait(cpu)?;
        return Ok(EmtState::CompletingWatched(hit));
    }
    Ok(if host.report_watch_hit(cpu, hit)? {
        EmtState::CompletingWatched(hit)
    } else {
        EmtState::Ready
    })
}
