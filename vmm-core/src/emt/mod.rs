//! The EMT (emulation thread): runs one vCPU, handles its exits and its
//! forced actions.

use dbgf::debugger::StopCause;
use hm_vmx::{Exit, IoData, MmioData, Vcpu};

use std::sync::Arc;

use crate::config::OnReboot;
use crate::devices::DeviceAction;
use crate::error::{Error, Result};
use crate::ffs::{CpuFf, VmFf};
use crate::machine::Machine;

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
pub(crate) fn emt_main(vcpu: &mut Vcpu, machine: &Arc<Machine>) {
    if let Err(e) = emt_loop(vcpu, machine) {
        machine.finish(Err(e));
    }
}

fn emt_loop(vcpu: &mut Vcpu, machine: &Arc<Machine>) -> Result<()> {
    let cpu = vcpu.id();
    let (kicker, _binding) = vcpu.bind_kicks()?;
    machine.kicks.bind(cpu, kicker);
    let _emt = machine.ffs.register_emt(cpu)?;
    stam::set_thread_shard(cpu as usize);
    let result = run_guest(vcpu, machine, cpu);
    if let Err(e) = result {
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

/// Runs the guest on this EMT until the VM terminates.
fn run_guest(vcpu: &mut Vcpu, machine: &Arc<Machine>, cpu: u32) -> Result<()> {
    // A page-trap watchpoint hit waiting for its instruction to complete:
    // (guest-physical address, size, write).
    let mut watch_hit: Option<(u64, u32, bool)> = None;
    loop {
        if !service_forced_actions(machine, cpu)? {
            return Ok(());
        }
        if !machine.may_run(cpu) {
            // Suspended, halted by the debugger (or on the way somewhere):
            // wait for the next forced action, such as a resume.
            machine.ffs.halt_wait(cpu, None)?;
            continue;
        }
        let Some(guest) = machine.ffs.enter_guest(cpu)? else {
            continue;
        };
        if watch_hit.is_some() {
            // KVM completes the pending MMIO access (a read's register
            // write-back, RIP) on the next entry; `immediate_exit` makes that
            // entry return before another guest instruction runs.
            vcpu.set_immediate_exit(true);
        }
        let exit = vcpu.run();
        drop(guest);
        if let Some(hit) = watch_hit
            && matches!(exit, Ok(Exit::Interrupted | Exit::Debug(_)))
        {
            // The instruction is complete (a single step it ended is
            // reported as the watchpoint hit, as with DR6.Bn and DR6.BS).
            if !report_watch_hit(machine, cpu, hit)? {
                watch_hit = None;
            }
            continue;
        }
        let unhandled = match exit? {
            Exit::Io(access) => {
                let write = matches!(access.data, IoData::Out(_));
                if machine.debug.io_matches(access.port, access.size, write) {
                    let cause = StopCause::Io {
                        port: access.port,
                        size: access.size,
                        write,
                    };
                    // Halted before the access; once resumed it completes
                    // without being checked again.
                    if machine.debug_stop(cpu, cause)? && !wait_for_debugger(machine, cpu)? {
                        return Ok(());
                    }
                }
                let size = usize::from(access.size.max(1));
                match access.data {
                    IoData::Out(data) => {
                        for chunk in data.chunks(size) {
                            let end = match machine.io.write(access.port, chunk) {
                                DeviceAction::Continue => continue,
                                DeviceAction::GuestExit(status) => RunOutcome::GuestExit(status),
                                DeviceAction::PowerOff => RunOutcome::GuestPoweredOff,
                                DeviceAction::Reset if crate::reset::warm_reset(machine) => {
                                    RunOutcome::WarmReset
                                }
                                DeviceAction::Reset if restarts(machine) => {
                                    // The rest of a string `out` is lost
                                    // with the machine it was written to.
                                    crate::reset::reset(machine)?;
                                    break;
                                }
                                DeviceAction::Reset => RunOutcome::Reboot,
                            };
                            machine.finish(Ok(end));
                            return Ok(());
                        }
                    }
                    IoData::In(data) => {
                        for chunk in data.chunks_mut(size) {
                            machine.io.read(access.port, chunk);
                        }
                    }
                }
                continue;
            }
            Exit::Mmio(access) => {
                let (addr, size, write) = match &access.data {
                    MmioData::Read(data) => (access.addr, data.len(), false),
                    MmioData::Write(data) => (access.addr, data.len(), true),
                };
                match access.data {
                    MmioData::Read(data) => machine.memory.mmio_exit(access.addr, data, false)?,
                    MmioData::Write(data) => {
                        let mut buf = [0u8; 8];
                        let buf = &mut buf[..data.len().min(8)];
                        buf.copy_from_slice(&data[..buf.len()]);
                        machine.memory.mmio_exit(access.addr, buf, true)?;
                    }
                }
                let size = u32::try_from(size).unwrap_or(u32::MAX);
                if machine.debug.mem_matches(addr, size, write) {
                    watch_hit = Some((addr, size, write));
                }
                continue;
            }
            Exit::Interrupted | Exit::InterruptWindow => continue,
            Exit::Hlt => {
                // Only without an in-kernel irqchip does HLT reach us: sleep
                // until a forced action (nothing else can wake the vCPU).
                machine.halts[cpu as usize].inc();
                machine.ffs.halt_wait(cpu, None)?;
                continue;
            }
            Exit::Debug(d) if machine.debug.is_attached() => {
                let cause = StopCause::Debug {
                    exception: d.exception,
                    dr6: d.dr6,
                    pc: d.rip,
                };
                // Not reported when another stop halted the VM first: a
                // breakpoint fires again when the vCPU resumes.
                machine.debug_stop(cpu, cause)?;
                continue;
            }
            Exit::InternalError(e) => (format!("KVM internal error: {e}"), None, true),
            other @ Exit::FailEntry { .. } => (other.name().to_string(), other.vmx_reason(), true),
            other => (other.name().to_string(), other.vmx_reason(), false),
        };
        let (exit, reason, diagnose) = unhandled;
        let rip = vcpu.state().regs().map(|r| r.rip).unwrap_or(u64::MAX);
        // Entry failures and emulation failures are explained against the
        // SDM's guest-state rules instead of KVM's opaque codes.
        let diagnosis = diagnose.then(|| vcpu.diagnose_entry_failure().to_string());
        return Err(Error::UnhandledExit {
            cpu,
            exit,
            reason,
            rip,
            diagnosis,
        });
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
fn report_watch_hit(
    machine: &Machine,
    cpu: u32,
    (addr, size, write): (u64, u32, bool),
) -> Result<bool> {
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
