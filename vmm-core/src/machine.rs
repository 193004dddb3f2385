//! The running machine: everything the EMTs and other threads share, and the
//! [`VmHandle`] that steers a running VM from another thread.

use std::fmt::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use dbgf::{
    InfoCall, InfoError, InfoExecutor, InfoFlags, InfoHandler, InfoRegistry, SameThreadExecutor,
};
use hm_vmx::{Kicker, VcpuState};
use parking_lot::Mutex;
use stam::Counter;

use crate::bus::IoBus;
use crate::debug::DebugCtl;
use crate::error::Result;
use crate::memory::GuestMemoryMap;
use crate::outcome::RunOutcome;
use crate::saved_state::{Ended, TeleportOptions};
use crate::sync::ffs::{ForcedActions, Kick, VmFf};
use crate::sync::rendezvous::{Rendezvous, RendezvousFlags, RendezvousType};
use crate::sync::request::{RequestQueue, Target};
use crate::sync::vmstate::{VmState, VmStateMachine};

/// Kicks EMTs out of the guest: each EMT registers its [`Kicker`] when it
/// starts; a kick for an EMT that has not started yet is not needed (it
/// checks its flags before its first entry).
pub(crate) struct EmtKicks {
    kickers: Vec<OnceLock<Kicker>>,
}

impl EmtKicks {
    pub(crate) fn new(cpus: u32) -> Self {
        EmtKicks {
            kickers: (0..cpus).map(|_| OnceLock::new()).collect(),
        }
    }

    pub(crate) fn bind(&self, cpu: u32, kicker: Kicker) {
        if let Some(slot) = self.kickers.get(cpu as usize) {
            // An EMT binds once; a second bind would be the same thread.
            let _ = slot.set(kicker);
        }
    }
}

impl EmtKicks {
    /// Whether any EMT has started (a restored VM is suspended before its
    /// EMTs exist).
    fn any_started(&self) -> bool {
        self.kickers.iter().any(|k| k.get().is_some())
    }
}

impl Kick for EmtKicks {
    fn kick(&self, cpu: u32) {
        if let Some(kicker) = self.kickers.get(cpu as usize).and_then(OnceLock::get) {
            kicker.kick();
        }
    }
}

/// Everything the EMTs and control threads share.
pub(crate) struct Machine {
    // Field order is drop order: the vCPU handles go before the memory.
    pub(crate) vcpu_states: Vec<VcpuState>,
    /// What a reset goes back to.
    pub(crate) power_on: crate::reset::PowerOn,
    /// What a reboot from inside the guest does.
    pub(crate) on_reboot: crate::config::OnReboot,
    pub(crate) ffs: ForcedActions,
    pub(crate) requests: RequestQueue,
    pub(crate) rendezvous: Rendezvous,
    pub(crate) state: VmStateMachine,
    pub(crate) kicks: Arc<EmtKicks>,
    /// Finds vCPUs stuck in one guest entry.
    pub(crate) stall: crate::emt::StallWatch,
    pub(crate) io: IoBus,
    pub(crate) halts: Vec<Counter>,
    pub(crate) stats: stam::Registry,
    pub(crate) info: InfoRegistry,
    pub(crate) outcome: Mutex<Option<Result<RunOutcome>>>,
    /// EMTs that have not finished running the guest yet.
    pub(crate) running_emts: AtomicU32,
    /// The memory balloon's target and size.
    pub(crate) balloon: Arc<crate::devices::BalloonState>,
    pub(crate) debug: DebugCtl,
    /// The teleport in progress, to refuse a second one and to cancel it.
    pub(crate) teleport: crate::saved_state::TeleportSlot,
    /// Holds the backend VM: dropped before the memory it maps.
    pub(crate) saved: crate::saved_state::SaveContext,
    pub(crate) memory: GuestMemoryMap,
}

impl Drop for Machine {
    /// Stops the virtio devices' workers before anything else goes: they
    /// write guest RAM, which goes with the memory below.
    fn drop(&mut self) {
        for slot in &self.saved.virtio {
            if let Err(e) = slot.transport.lock().deactivate() {
                tracing::warn!("virtio device at {}: {e}", slot.at);
            }
        }
    }
}

impl Machine {
    pub(crate) fn cpus(&self) -> u32 {
        self.ffs.cpu_count()
    }

    /// Ends the run with `result` (the first caller wins) and stops every EMT.
    pub(crate) fn finish(&self, result: Result<RunOutcome>) {
        let mut outcome = self.outcome.lock();
        if outcome.is_none() {
            let path: &[VmState] = match &result {
                Ok(_) => &[VmState::PoweringOff, VmState::Off],
                Err(_) => &[VmState::GuruMeditation],
            };
            for &next in path {
                if let Err(e) = self.state.set(next) {
                    tracing::debug!("finishing the run: {e}");
                }
            }
            *outcome = Some(result);
        }
        drop(outcome);
        self.ffs.set_vm(VmFf::TERMINATE);
    }

    /// An EMT is done running the guest (it may still answer rendezvous).
    pub(crate) fn emt_draining(&self) {
        self.running_emts.fetch_sub(1, Ordering::SeqCst);
    }

    /// How many EMTs still run the guest.
    pub(crate) fn emts_in_guest_loop(&self) -> u32 {
        self.running_emts.load(Ordering::SeqCst)
    }

    /// Wakes every EMT waiting in a halt so that it looks at the state again.
    pub(crate) fn unhalt_all(&self) -> Result<()> {
        for cpu in 0..self.cpus() {
            self.ffs.unhalt(cpu)?;
        }
        Ok(())
    }

    /// Powers the VM off: the run ends with [`RunOutcome::PoweredOff`].
    /// (A teleport in progress must have ended: see [`VmHandle::power_off`].)
    pub(crate) fn power_off(&self) -> Result<()> {
        let from = [
            (VmState::Running, VmState::PoweringOff),
            (VmState::Suspended, VmState::PoweringOff),
            (VmState::Debugging, VmState::PoweringOff),
        ];
        self.state.try_transition(&from)?;
        self.state.set(VmState::Off)?;
        let mut outcome = self.outcome.lock();
        if outcome.is_none() {
            *outcome = Some(Ok(RunOutcome::PoweredOff));
        }
        drop(outcome);
        self.ffs.set_vm(VmFf::TERMINATE);
        Ok(())
    }

    /// Whether EMTs are there to run requests.
    fn emts_running(&self) -> bool {
        !matches!(
            self.state.state(),
            VmState::Created | VmState::Off | VmState::GuruMeditation | VmState::Terminated
        ) && self.kicks.any_started()
            && self.outcome.lock().is_none()
    }
}

/// Runs info handlers on the EMTs of a running VM (through the request
/// queue), or on the calling thread once the EMTs are gone.
struct EmtExecutor {
    machine: Arc<Machine>,
}

impl InfoExecutor for EmtExecutor {
    fn execute(
        &self,
        handler: Arc<InfoHandler>,
        args: &str,
        out: &mut dyn Write,
    ) -> std::result::Result<(), InfoError> {
        let flags = handler.flags();
        if !flags.needs_emt() || !self.machine.emts_running() {
            return SameThreadExecutor::new(self.machine.cpus()).execute(handler, args, out);
        }
        let cpus: Vec<u32> = if flags.contains(InfoFlags::ALL_EMTS) {
            (0..self.machine.cpus()).collect()
        } else {
            vec![0]
        };
        for cpu in cpus {
            let (on_emt, args) = (Arc::clone(&handler), args.to_owned());
            let (text, result) = self
                .machine
                .requests
                .call_wait(Target::Cpu(cpu), move |cpu| {
                    let mut text = String::new();
                    let result = on_emt.call(
                        &InfoCall {
                            args: &args,
                            cpu: Some(cpu),
                        },
                        &mut text,
                    );
                    (text, result)
                })
                .map_err(|e| InfoError::Executor {
                    name: handler.name().to_owned(),
                    reason: e.to_string(),
                })?;
            out.write_str(&text)?;
            result?;
        }
        Ok(())
    }
}

/// Steers a VM from any thread: state, pause, resume, reset, power off,
/// statistics and info handlers. Cheap to clone.
///
/// ```no_run
/// use vmm_core::{Vm, VmConfig, guests};
///
/// let mut vm = Vm::new(VmConfig::new(16 << 20, guests::find("demo")?.firmware()?))?;
/// let handle = vm.handle();
/// std::thread::spawn(move || {
///     std::thread::sleep(std::time::Duration::from_millis(10));
///     let _ = handle.power_off();
/// });
/// vm.run()?;
/// # Ok::<(), vmm_core::Error>(())
/// ```
#[derive(Clone)]
pub struct VmHandle {
    pub(crate) machine: Arc<Machine>,
}

impl VmHandle {
    pub(crate) fn new(machine: Arc<Machine>) -> Self {
        VmHandle { machine }
    }

    /// The VM's current state.
    pub fn state(&self) -> VmState {
        self.machine.state.state()
    }

    /// The VM's state machine, to watch or wait for changes.
    pub fn state_machine(&self) -> &VmStateMachine {
        &self.machine.state
    }

    /// The statistics registry.
    pub fn stats(&self) -> &stam::Registry {
        &self.machine.stats
    }

    /// The info-handler registry.
    pub fn info(&self) -> &InfoRegistry {
        &self.machine.info
    }

    /// Guest memory, also while another thread runs the VM (a host-side
    /// driver's register accesses through
    /// [`GuestMemoryMap::mmio_exit`], a look at guest RAM).
    pub fn memory(&self) -> &GuestMemoryMap {
        &self.machine.memory
    }

    /// Runs info handler `name` (or `help`) with `args`; per-vCPU handlers
    /// run on their EMTs while the VM runs.
    pub fn run_info(
        &self,
        name: &str,
        args: &str,
        out: &mut dyn Write,
    ) -> std::result::Result<(), InfoError> {
        self.machine.info.run(
            name,
            args,
            out,
            &EmtExecutor {
                machine: Arc::clone(&self.machine),
            },
        )
    }

    /// An executor that runs info handlers the way [`VmHandle::run_info`]
    /// does, for callers that run the registry themselves (the gdb stub's
    /// `monitor info`).
    pub fn info_executor(&self) -> Box<dyn InfoExecutor + Send> {
        Box::new(EmtExecutor {
            machine: Arc::clone(&self.machine),
        })
    }

    /// Suspends the VM: every EMT leaves the guest (a rendezvous) and waits.
    /// Refused while a teleport is in progress (cancel it first).
    pub fn pause(&self) -> Result<()> {
        let m = &self.machine;
        m.teleport.unless_in_progress(|| {
            m.state
                .try_transition(&[(VmState::Running, VmState::Suspending)])?;
            Ok(())
        })?;
        let machine = Arc::clone(m);
        m.rendezvous.call(
            RendezvousType::Descending,
            RendezvousFlags::default(),
            move |cpu| {
                // Descending: vCPU 0 is the last, when every EMT is out.
                if cpu == 0 {
                    machine.state.set(VmState::Suspended)?;
                }
                Ok(None)
            },
        )?;
        Ok(())
    }

    /// Resumes a suspended VM (its virtio devices parked by a save start
    /// again first).
    pub fn resume(&self) -> Result<()> {
        let m = &self.machine;
        m.state
            .try_transition(&[(VmState::Suspended, VmState::Resuming)])?;
        crate::saved_state::start_parked(&m.saved.virtio);
        m.state.set(VmState::Running)?;
        m.unhalt_all()
    }

    /// Resets the VM as the reset line of a PC does: every vCPU back to its
    /// power-on state (APs waiting for INIT/SIPI again), RAM zeroed, ROM,
    /// interrupt controllers, PIT and devices reset; a directly booted
    /// kernel is loaded again and entered as at power-on. A suspended VM
    /// stays suspended.
    pub fn reset(&self) -> Result<()> {
        crate::reset::reset(&self.machine)
    }

    /// Saves the VM's state to `path`: suspends it (all EMTs out of the
    /// guest), saves (live if asked: memory in passes while the guest
    /// runs), then resumes or powers it off as asked. Returns once the
    /// file is durable: a VM that runs on resumes as soon as the last byte
    /// is written and is running while the file is synced; if that fails,
    /// the save fails, no file is left at `path`, and the VM runs on. A VM
    /// powers off only once its file is durable. See
    /// [`saved_state`](crate::saved_state).
    pub fn save(
        &self,
        path: &std::path::Path,
        request: crate::saved_state::SaveRequest,
    ) -> Result<crate::saved_state::SaveReport> {
        crate::saved_state::save(&self.machine, path, request)
    }

    /// Teleports the running VM to a target waiting with
    /// [`Vm::incoming`](crate::Vm::incoming) at `address` (host:port): a
    /// live save over TCP, then this VM powers off (or runs on if the
    /// teleport fails, stalls or is cancelled). Waits with the default
    /// [`TeleportOptions`].
    pub fn teleport(&self, address: &str) -> Result<crate::saved_state::SaveReport> {
        self.teleport_with(address, &TeleportOptions::default())
    }

    /// [`teleport`](VmHandle::teleport) with its timeouts given.
    ///
    /// ```no_run
    /// # fn f(handle: vmm_core::VmHandle) -> vmm_core::Result<()> {
    /// use std::time::Duration;
    /// use vmm_core::saved_state::TeleportOptions;
    /// let options = TeleportOptions {
    ///     stall_timeout: Duration::from_secs(5),
    ///     ..TeleportOptions::default()
    /// };
    /// handle.teleport_with("10.0.0.2:7000", &options)?;
    /// # Ok(()) }
    /// ```
    pub fn teleport_with(
        &self,
        address: &str,
        options: &TeleportOptions,
    ) -> Result<crate::saved_state::SaveReport> {
        crate::saved_state::teleport(&self.machine, address, options)
    }

    /// Cancels the teleport in progress and returns once it has unwound:
    /// the VM runs on as before the teleport, and its
    /// [`teleport`](VmHandle::teleport) call fails with
    /// [`TeleportError::Cancelled`](crate::saved_state::TeleportError::Cancelled).
    /// Refused when no teleport is in progress, or when it has handed the
    /// VM over to the target already.
    pub fn cancel_teleport(&self) -> Result<()> {
        Ok(self.machine.teleport.cancel()?)
    }

    /// Asks the guest for a memory balloon of `bytes` (rounded down to
    /// pages): a guest with a balloon driver gives that much RAM back to the
    /// host (or takes it back when the target shrinks).
    pub fn set_balloon(&self, bytes: u64) {
        self.machine
            .balloon
            .set_target(bytes / pgm::phys::PAGE_SIZE);
    }

    /// The balloon's target and the size the guest has given, in bytes.
    pub fn balloon(&self) -> (u64, u64) {
        let b = &self.machine.balloon;
        (
            b.target() * pgm::phys::PAGE_SIZE,
            b.pages() * pgm::phys::PAGE_SIZE,
        )
    }

    /// Shares identical guest pages (GMM's page-sharing scan) with every
    /// EMT out of the guest and the virtio devices parked (nothing may
    /// write a page between the scan's compare and remap); returns what
    /// the scan did.
    pub fn share_pages(&self) -> Result<gmm::ScanReport> {
        let machine = Arc::clone(&self.machine);
        let report = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&report);
        self.machine.rendezvous.call(
            RendezvousType::Once,
            RendezvousFlags::default(),
            move |_| {
                let scan = crate::saved_state::with_devices_parked(&machine.saved.virtio, || {
                    machine.memory.share_pages()
                })
                .map_err(crate::error::Error::Memory)?;
                *slot.lock() = Some(scan?);
                Ok(None)
            },
        )?;
        let done = report.lock().take();
        done.ok_or_else(|| crate::error::Error::Memory("the page-sharing scan did not run".into()))
    }

    /// Powers the VM off: the run ends with [`RunOutcome::PoweredOff`]. A
    /// teleport in progress is cancelled first; one that has handed the VM
    /// over already powers this VM off itself, which is then all there is
    /// to do.
    pub fn power_off(&self) -> Result<()> {
        if self.machine.teleport.end()? == Ended::HandedOver {
            return Ok(());
        }
        self.machine.power_off()
    }
}
