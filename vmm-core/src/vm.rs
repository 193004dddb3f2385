//! The VM: backend, memory, devices and EMTs put together.

use std::fmt::Write;
use std::sync::Arc;

use dbgf::{InfoCall, InfoError, InfoFlags, InfoRegistry, SameThreadExecutor};
use hm_vmx::VcpuState;
use parking_lot::Mutex;

use crate::bus::IoBus;
use crate::config::VmConfig;
use crate::devices::{COM1_PORT, DEBUG_EXIT_PORT, DebugExit, Uart};
use crate::emt::{RunOutcome, run_vcpu};
use crate::error::{Error, Result};
use crate::info::write_cpumguest;
use crate::memory::GuestMemoryMap;

/// A virtual machine ready to run.
///
/// ```no_run
/// use vmm_core::{Vm, VmConfig, guests};
///
/// let firmware = guests::find("demo")?.firmware()?;
/// let mut config = VmConfig::new(64 << 20, firmware);
/// config.serial = Box::new(std::io::stdout());
/// let outcome = Vm::new(config)?.run()?;
/// println!("{outcome:?}");
/// # Ok::<(), vmm_core::Error>(())
/// ```
pub struct Vm {
    // Field order is drop order: vCPUs and the backend VM go before the
    // memory they map.
    vcpus: Vec<hm_vmx::Vcpu>,
    _backend: hm_vmx::Vm,
    io: Arc<IoBus>,
    stats: stam::Registry,
    info: InfoRegistry,
    memory: GuestMemoryMap,
}

impl Vm {
    /// Builds a VM from `config`: opens KVM, maps memory, creates vCPUs and
    /// attaches the devices.
    pub fn new(config: VmConfig) -> Result<Self> {
        config.validate()?;
        let stats = stam::Registry::new();
        let hypervisor = hm_vmx::Hypervisor::open()?;
        let backend = hypervisor.create_vm_with_stats(&stats)?;
        let memory = GuestMemoryMap::new(config.ram_bytes, &config.firmware)?;
        memory.map_into(&backend)?;
        let vcpus = (0..config.cpus)
            .map(|id| backend.create_vcpu(id))
            .collect::<hm_vmx::Result<Vec<_>>>()?;
        let mut io = IoBus::new(&stats)?;
        io.register(
            COM1_PORT,
            8,
            "uart",
            Arc::new(Mutex::new(Uart::new(config.serial))),
        )?;
        io.register(
            DEBUG_EXIT_PORT,
            1,
            "debug-exit",
            Arc::new(Mutex::new(DebugExit)),
        )?;
        let info = InfoRegistry::new();
        register_info_handlers(&info, &backend, &vcpus)?;
        Ok(Vm {
            vcpus,
            _backend: backend,
            io: Arc::new(io),
            stats,
            info,
            memory,
        })
    }

    /// The VM's statistics registry (`/HM/...`, `/IOM/...`, ...).
    pub fn stats(&self) -> &stam::Registry {
        &self.stats
    }

    /// The VM's info-handler registry.
    pub fn info(&self) -> &InfoRegistry {
        &self.info
    }

    /// Runs info handler `name` (or `help`) with `args` while the VM is not
    /// running, writing to `out`; per-vCPU handlers run for every vCPU.
    pub fn run_info(
        &self,
        name: &str,
        args: &str,
        out: &mut dyn Write,
    ) -> std::result::Result<(), InfoError> {
        let cpus = u32::try_from(self.vcpus.len()).unwrap_or(u32::MAX);
        self.info
            .run(name, args, out, &SameThreadExecutor::new(cpus))
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMap {
        &self.memory
    }

    /// The I/O port bus.
    pub fn io_bus(&self) -> &IoBus {
        &self.io
    }

    /// Runs the guest on one EMT per vCPU until it ends the run.
    pub fn run(&mut self) -> Result<RunOutcome> {
        let io = &self.io;
        std::thread::scope(|scope| {
            let emts: Vec<_> = self
                .vcpus
                .iter_mut()
                .map(|vcpu| {
                    let id = vcpu.id();
                    let emt = std::thread::Builder::new()
                        .name(format!("EMT-{id}"))
                        .spawn_scoped(scope, move || run_vcpu(vcpu, io));
                    (id, emt)
                })
                .collect();
            let mut outcome = None;
            for (id, emt) in emts {
                let result = emt
                    .map_err(|e| Error::Config(format!("cannot start EMT {id}: {e}")))?
                    .join()
                    .map_err(|_| Error::EmtPanicked(id))?;
                outcome.get_or_insert(result);
            }
            outcome.unwrap_or_else(|| Err(Error::Config("the VM has no vCPU".into())))
        })
    }
}

fn info_error(e: InfoError) -> Error {
    Error::Config(format!("info handler registration: {e}"))
}

/// Registers the handlers the VM itself answers: `exits` and `cpumguest`.
fn register_info_handlers(
    info: &InfoRegistry,
    backend: &hm_vmx::Vm,
    vcpus: &[hm_vmx::Vcpu],
) -> Result<()> {
    let exits = Arc::clone(backend.exit_stats());
    info.register(
        "exits",
        "Exit counts by VMX basic exit reason. Args: 'all' lists reasons never seen too.",
        InfoFlags::empty(),
        move |call: &InfoCall<'_>, out: &mut dyn Write| Ok(exits.write_table(call.args, out)?),
    )
    .map_err(info_error)?;
    let states: Vec<VcpuState> = vcpus.iter().map(|v| v.state().clone()).collect();
    info.register(
        "cpumguest",
        "Guest CPU state: general, control, segment, descriptor-table and debug registers and EFER of each vCPU.",
        InfoFlags::RUN_ON_EMT | InfoFlags::ALL_EMTS,
        move |call: &InfoCall<'_>, out: &mut dyn Write| {
            let cpu = call.cpu.unwrap_or(0);
            let state = states
                .get(cpu as usize)
                .ok_or_else(|| InfoError::BadArgs(format!("no vCPU {cpu}")))?;
            let failed = |e: hm_vmx::Error| InfoError::Failed(e.to_string());
            let regs = state.regs().map_err(failed)?;
            let sregs = state.sregs().map_err(failed)?;
            let debug = state.debug_regs().map_err(failed)?;
            Ok(write_cpumguest(cpu, &regs, &sregs, &debug, out)?)
        },
    )
    .map_err(info_error)
}
