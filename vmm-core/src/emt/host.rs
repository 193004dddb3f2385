//! What an EMT needs of the machine it runs in, as a trait: the machine
//! implements it, and the EMT's loop tests use a fake.

use dbgf::debugger::StopCause;

use std::sync::Arc;

use dbgf::debugger::{KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP};
use pgm::phys::{PAGE_SIZE, RomWindow};

use super::exit::{DebugHooks, ExitContext, WatchHit};
use super::stall::{self, StallWatch};
use crate::config::OnReboot;
use crate::devices::DeviceAction;
use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::outcome::RunOutcome;
use crate::sync::ffs::{CpuFf, ForcedActions, VmFf};

/// The machine as an EMT's loop sees it.
pub(crate) trait EmtHost {
    /// The debugger's hooks the exit handler calls.
    type Debug: DebugHooks;
    /// The VM's forced actions (the loop enters the guest through them).
    fn forced_actions(&self) -> &ForcedActions;
    /// Serves `cpu`'s pending forced actions (rendezvous, requests); false
    /// when the EMT must terminate.
    fn serve_forced_actions(&self, cpu: u32) -> Result<bool>;
    /// Whether `cpu` may run guest code now (the VM runs, or the debugger
    /// lets this vCPU go).
    fn may_run(&self, cpu: u32) -> bool;
    /// Sleeps until the next forced action for `cpu`.
    fn wait(&self, cpu: u32) -> Result<()>;
    /// What an exit of `cpu` may touch.
    fn exit_context(&self, cpu: u32) -> ExitContext<'_, Self::Debug>;
    /// Counts a halt of `cpu` (the guest's `hlt`).
    fn halted(&self, cpu: u32);
    /// Reports a debugger stop; false when it was not reported (no
    /// debugger, or another stop halted the VM first).
    fn debug_stop(&self, cpu: u32, cause: StopCause) -> Result<bool>;
    /// Reports a watchpoint hit whose instruction completed; true when the
    /// hit must wait (another stop halted the VM first).
    fn report_watch_hit(&self, cpu: u32, hit: WatchHit) -> Result<bool>;
    /// Carries out a device's request to end or reset the machine: the
    /// run's outcome if it ends, nothing if the machine was reset and runs
    /// on.
    fn device_action(&self, action: DeviceAction) -> Result<Option<RunOutcome>>;
    /// Ends the run with `outcome` and stops every EMT.
    fn end_run(&self, outcome: RunOutcome);
    /// The watch over vCPUs stuck in one guest entry.
    fn stall_watch(&self) -> &StallWatch;
    /// If `cpu`'s descriptor tables lie in read-only ROM and a load would
    /// write them (see [`super::stall`]): maps those ROM pages writable
    /// and arms a single step, so that the next entry runs one
    /// instruction. Nothing while a debugger is attached (the step is its).
    fn open_descriptor_window(&self, cpu: u32) -> Result<Option<RomWindow>>;
    /// Undoes [`open_descriptor_window`](EmtHost::open_descriptor_window):
    /// the ROM bytes put back, the pages read-only, no single step.
    fn close_descriptor_window(&self, cpu: u32, window: RomWindow) -> Result<()>;
}

/// The machine (shared: a reset runs a rendezvous that holds it).
impl EmtHost for Arc<Machine> {
    type Debug = Machine;

    fn forced_actions(&self) -> &ForcedActions {
        &self.ffs
    }

    fn serve_forced_actions(&self, cpu: u32) -> Result<bool> {
        serve_forced_actions(self, cpu)
    }

    fn may_run(&self, cpu: u32) -> bool {
        Machine::may_run(self, cpu)
    }

    fn wait(&self, cpu: u32) -> Result<()> {
        self.ffs.halt_wait(cpu, None)?;
        Ok(())
    }

    fn exit_context(&self, cpu: u32) -> ExitContext<'_, Machine> {
        ExitContext {
            cpu,
            io: &self.io,
            memory: &self.memory,
            debug: self.as_ref(),
        }
    }

    fn halted(&self, cpu: u32) {
        if let Some(halts) = self.halts.get(cpu as usize) {
            halts.inc();
        }
    }

    fn debug_stop(&self, cpu: u32, cause: StopCause) -> Result<bool> {
        Machine::debug_stop(self, cpu, cause)
    }

    /// A watchpoint removed meanwhile is forgotten.
    fn report_watch_hit(&self, cpu: u32, hit: WatchHit) -> Result<bool> {
        let WatchHit { addr, size, write } = hit;
        if !self.debug.mem_matches(addr, size, write) {
            return Ok(false);
        }
        let cause = StopCause::Mem { addr, size, write };
        Ok(!Machine::debug_stop(self, cpu, cause)? && self.debug.is_attached())
    }

    fn device_action(&self, action: DeviceAction) -> Result<Option<RunOutcome>> {
        Ok(Some(match action {
            DeviceAction::Continue => return Ok(None),
            DeviceAction::GuestExit(status) => RunOutcome::GuestExit(status),
            DeviceAction::PowerOff => RunOutcome::GuestPoweredOff,
            DeviceAction::Reset if crate::reset::warm_reset(self) => RunOutcome::WarmReset,
            DeviceAction::Reset if restarts(self) => {
                crate::reset::reset(self)?;
                return Ok(None);
            }
            DeviceAction::Reset => RunOutcome::Reboot,
        }))
    }

    fn end_run(&self, outcome: RunOutcome) {
        Machine::finish(self, Ok(outcome));
    }

    fn stall_watch(&self) -> &StallWatch {
        &self.stall
    }

    fn open_descriptor_window(&self, cpu: u32) -> Result<Option<RomWindow>> {
        let Some(state) = self.vcpu_states.get(cpu as usize) else {
            return Ok(None);
        };
        if self.debug.is_attached() {
            return Ok(None);
        }
        let tables = stall::descriptor_tables(&state.sregs()?);
        let mut pages = Vec::new();
        let mut writes = false;
        {
            // Looked at under the read lock: a stalled vCPU is mostly one
            // that sleeps in the guest, and taking the write lock for it
            // would queue every MMIO exit behind whoever holds a read lock
            // for long (a live pass writing to a slow teleport peer).
            let map = self.memory.phys().read();
            for &(base, len) in &tables {
                let mut table = vec![0u8; len as usize];
                if map.read(base, &mut table).is_ok() {
                    writes |= stall::writes_on_load(&table);
                }
                pages.extend((base..base.saturating_add(len)).step_by(PAGE_SIZE as usize));
                pages.push(base.saturating_add(len - 1));
            }
        }
        if !writes {
            return Ok(None);
        }
        let mut map = self.memory.phys().write();
        let window = map
            .open_rom_window(&pages)
            .map_err(|e| Error::Memory(e.to_string()))?;
        drop(map);
        if window.is_empty() {
            return Ok(None);
        }
        tracing::debug!(
            "vCPU {cpu} stuck on a descriptor in ROM: one instruction with pages {:x?} writable",
            window.pages().collect::<Vec<_>>()
        );
        self.memory.sync_slots(&self.saved.backend)?;
        state.set_guest_debug(KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP, [0; 8])?;
        Ok(Some(window))
    }

    fn close_descriptor_window(&self, cpu: u32, window: RomWindow) -> Result<()> {
        if let Some(state) = self.vcpu_states.get(cpu as usize) {
            state.set_guest_debug(0, [0; 8])?;
        }
        let dropped = self
            .memory
            .phys()
            .write()
            .close_rom_window(window)
            .map_err(|e| Error::Memory(e.to_string()))?;
        tracing::debug!("vCPU {cpu}: {dropped} bytes written to ROM dropped");
        self.memory.sync_slots(&self.saved.backend)
    }
}

/// Handles the pending forced actions (rendezvous, requests); false when the
/// EMT must terminate.
fn serve_forced_actions(machine: &Machine, cpu: u32) -> Result<bool> {
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

/// After a stop in the middle of an exit: serves forced actions until the
/// debugger lets this vCPU run again; false when the EMT must terminate.
fn wait_for_debugger(machine: &Machine, cpu: u32) -> Result<bool> {
    loop {
        if !serve_forced_actions(machine, cpu)? {
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
