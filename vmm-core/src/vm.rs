//! The VM: backend, memory, devices and EMTs put together.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::boot;
use crate::bus::IoBus;
use crate::config::VmConfig;
use crate::devices::{
    COM1_PORT, DEBUG_EXIT_PORT, DebugExit, I8042, I8042_PORT, I8042_PORTS, IrqLine, Uart,
};
use crate::emt::{RunOutcome, run_vcpu};
use crate::error::{Error, Result};
use crate::memory::{GuestMemoryMap, MMIO_HOLE_START, ram_ranges};

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
    memory: GuestMemoryMap,
}

impl Vm {
    /// Builds a VM from `config`: opens KVM, maps memory, creates vCPUs and
    /// attaches the devices.
    pub fn new(config: VmConfig) -> Result<Self> {
        config.validate()?;
        let hypervisor = hm_vmx::Hypervisor::open()?;
        let backend = hypervisor.create_vm()?;
        let memory = GuestMemoryMap::new(config.ram_bytes, &config.firmware)?;
        memory.map_into(&backend)?;
        if config.kernel.is_some() {
            boot::direct::before_vcpus(&backend)?;
        }
        let vcpus: Vec<_> = (0..config.cpus)
            .map(|id| backend.create_vcpu(id))
            .collect::<hm_vmx::Result<_>>()?;
        if let Some(kernel) = &config.kernel {
            let plan = boot::direct::plan(kernel, &ram_ranges(config.ram_bytes), MMIO_HOLE_START)?;
            boot::direct::after_vcpus(kernel, &plan, memory.ram(), &vcpus)?;
        }
        let uart_irq = match &config.kernel {
            Some(_) => boot::machine::uart_irq(backend.fd())?,
            None => IrqLine::None,
        };
        let mut io = IoBus::default();
        io.register(
            COM1_PORT,
            8,
            "uart",
            Arc::new(Mutex::new(Uart::with_irq(config.serial, uart_irq))),
        )?;
        io.register(
            DEBUG_EXIT_PORT,
            1,
            "debug-exit",
            Arc::new(Mutex::new(DebugExit)),
        )?;
        if config.kernel.is_some() {
            io.register(
                I8042_PORT,
                I8042_PORTS,
                "i8042",
                Arc::new(Mutex::new(I8042::default())),
            )?;
        }
        Ok(Vm {
            vcpus,
            _backend: backend,
            io: Arc::new(io),
            memory,
        })
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
