//! The VM: backend, memory, devices and EMTs put together.

use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

use dbgf::{InfoCall, InfoError, InfoFlags, InfoRegistry};
use hm_vmx::VcpuState;
use parking_lot::Mutex;
use stam::Unit;

use crate::boot;
use crate::bus::IoBus;
use crate::config::{SerialSink, VmConfig};
use crate::debug::{DebugAttachment, DebugCtl};
use crate::devices::pci::{PCI_CONFIG_PORT, PCI_CONFIG_PORTS, PciConf1};
use crate::devices::virtio::VirtioDevice;
use crate::devices::{
    A20Line, ACPI_PM_PORT, ACPI_PM_PORTS, AcpiPm, BALLOON_PORT, BALLOON_PORTS, Balloon,
    BalloonState, CMOS_PORT, CMOS_PORTS, COM1_PORT, Cmos, DEBUG_EXIT_PORT, DebugExit, I8042,
    I8042_PORT, I8042_PORTS, IrqLine, Port92, SYSTEM_CONTROL_A_PORT, SerialInput, Uart,
    spawn_interrupts, system_clock,
};
use crate::devices::{pci_platform, virtio::attach_virtio};
use crate::emt::emt_main;
use crate::error::{Error, Result};
use crate::info::{
    guest_features, register_cpuid_handler, register_paging_handlers, write_cpumguest,
};
use crate::machine::{EmtKicks, Machine, VmHandle};
use crate::memory::{GuestMemoryMap, pc_layout};
use crate::outcome::RunOutcome;
use crate::reset::{KernelReload, PowerOn};
use crate::saved_state::{
    self, RestoreOptions, RestoreReport, SaveContext, SaveProgress, SavedConfig, TeleportOptions,
    TeleportSlot,
};
use crate::sync::ffs::ForcedActions;
use crate::sync::rendezvous::Rendezvous;
use crate::sync::request::RequestQueue;
use crate::sync::vmstate::{VmState, VmStateMachine};

/// The ISA IRQs of the i8042's keyboard and auxiliary ports and of the RTC.
const KBD_IRQ: u32 = 1;
const AUX_IRQ: u32 = 12;
const RTC_IRQ: u32 = 8;

/// A virtual machine: one EMT thread per vCPU runs it.
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
    // Field order is drop order: the vCPUs go before the machine, which
    // drops the backend VM before the memory it maps.
    vcpus: Vec<hm_vmx::Vcpu>,
    machine: Arc<Machine>,
    restored: Option<RestoreReport>,
}

impl Vm {
    /// Builds a VM from `config`: opens KVM, lays out memory, creates the
    /// in-kernel interrupt controllers and the vCPUs, attaches the devices.
    pub fn new(mut config: VmConfig) -> Result<Self> {
        config.validate()?;
        let stats = config.stats.clone();
        let info = InfoRegistry::new();
        let hypervisor = hm_vmx::Hypervisor::open()?;
        let max = u32::try_from(hypervisor.max_vcpus()).unwrap_or(u32::MAX);
        if config.cpus > max {
            return Err(Error::Config(format!(
                "{} vCPUs requested: this host's KVM allows {max}",
                config.cpus
            )));
        }
        let mut backend = hypervisor.create_vm_with_stats(&stats)?;
        let memory = GuestMemoryMap::new(
            config.ram_bytes,
            &config.firmware,
            config.cpus,
            &stats,
            &info,
        )?;
        memory.map_into(&backend)?;
        backend.create_irqchip()?;
        let mut vcpus = backend.create_vcpus(config.cpus)?;
        if config.check_entry {
            vcpus.iter_mut().for_each(|v| v.set_entry_checks(true));
        }
        let vcpu_states: Vec<VcpuState> = vcpus.iter().map(|v| v.state().clone()).collect();
        // SDM "VMX and multi-processor": every vCPU must see the same CPUID
        // and capabilities; a VM whose vCPUs disagree does not start.
        let differences = backend.check_mp_consistency(&vcpu_states)?;
        if !differences.is_empty() {
            let list: Vec<String> = differences.iter().map(ToString::to_string).collect();
            return Err(Error::Config(format!(
                "the vCPUs' CPUID/VMX views differ: {}",
                list.join("; ")
            )));
        }
        let kernel = match config.kernel.take() {
            Some(boot) => {
                let ram = boot::direct::ram_ranges(memory.ram());
                let plan = boot::direct::plan(&boot, &ram, config.acpi)?;
                boot::direct::after_vcpus(&boot, &plan, memory.ram(), &vcpus)?;
                Some(KernelReload { boot, plan })
            }
            None => None,
        };
        let msrs = Arc::new(hypervisor.saved_msr_indices()?);
        let power_on = PowerOn::capture(&vcpu_states, &backend, &msrs, kernel)?;
        let backend = Arc::new(backend);
        let uart_irq = boot::machine::uart_irq(&backend)?;
        let mut io = IoBus::new(&stats)?;
        let uart_dropped = stats
            .counter(
                "/Devices/Serial0/cbDropped",
                Unit::Bytes,
                "Guest serial output lost because its sink failed (full disk, closed pipe)",
            )
            .map_err(|e| Error::Config(format!("statistics: {e}")))?;
        let uart = Uart::with_irq(config.serial, uart_irq).count_dropped(uart_dropped);
        let uart = Arc::new(Mutex::new(uart));
        io.register(COM1_PORT, 8, "uart", uart.clone())?;
        io.register(
            DEBUG_EXIT_PORT,
            1,
            "debug-exit",
            Arc::new(Mutex::new(DebugExit)),
        )?;
        let irq = |line: u32| {
            IrqLine::irqfd(&backend, line)
                .map_err(|e| Error::Config(format!("cannot wire IRQ {line} to KVM: {e}")))
        };
        let a20 = A20Line::new(memory.a20_control(&backend));
        let i8042 = I8042::new(irq(KBD_IRQ)?, irq(AUX_IRQ)?).with_a20(Arc::clone(&a20));
        let i8042 = Arc::new(Mutex::new(i8042));
        io.register(I8042_PORT, I8042_PORTS, "i8042", i8042.clone())?;
        let port92 = Arc::new(Mutex::new(Port92::new(Arc::clone(&a20))));
        io.register(SYSTEM_CONTROL_A_PORT, 1, "port92", port92.clone())?;
        let acpi_pm = Arc::new(Mutex::new(AcpiPm::default()));
        io.register(ACPI_PM_PORT, ACPI_PM_PORTS, "acpi-pm", acpi_pm.clone())?;
        let below_4g = config
            .ram_bytes
            .min(pc_layout(config.ram_bytes).mmio_hole_start());
        let cmos = Cmos::new(below_4g, config.ram_bytes - below_4g, system_clock());
        let cmos = Arc::new(Mutex::new(cmos.with_irq(irq(RTC_IRQ)?)));
        spawn_interrupts(&cmos)
            .map_err(|e| Error::Config(format!("cannot start the RTC's interrupt thread: {e}")))?;
        io.register(CMOS_PORT, CMOS_PORTS, "cmos", cmos.clone())?;
        let pci = pci_platform(&memory)?;
        let virtio = attach_virtio(
            &pci,
            std::mem::take(&mut config.virtio),
            &memory,
            &backend,
            &stats,
        )?;
        let conf1 = Arc::new(Mutex::new(PciConf1::new(Arc::clone(&pci))));
        io.register(PCI_CONFIG_PORT, PCI_CONFIG_PORTS, "pci", conf1)?;
        let balloon = Arc::new(BalloonState::default());
        balloon.set_target(config.balloon_bytes / pgm::phys::PAGE_SIZE);
        let refused = stats
            .counter(
                "/VMM/Balloon/Refused",
                Unit::Occurrences,
                "Pages the guest offered to or claimed from the balloon wrongly",
            )
            .map_err(|e| Error::Config(format!("statistics: {e}")))?;
        let device = Balloon::new(Arc::clone(memory.phys()), Arc::clone(&balloon), refused);
        io.register(
            BALLOON_PORT,
            BALLOON_PORTS,
            "balloon",
            Arc::new(Mutex::new(device)),
        )?;

        let kicks = Arc::new(EmtKicks::new(config.cpus));
        let ffs = ForcedActions::new(config.cpus, kicks.clone())?;
        let requests = RequestQueue::new(ffs.clone());
        let rendezvous = Rendezvous::new(requests.clone());
        let halts = (0..config.cpus)
            .map(|cpu| {
                stats.counter(
                    format!("/VMM/CPU{cpu}/Halts"),
                    Unit::Occurrences,
                    format!("HLT exits of vCPU {cpu} handled by sleeping in the EMT"),
                )
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Config(format!("statistics: {e}")))?;
        let progress = SaveProgress::register(&stats)
            .map_err(|e| Error::Config(format!("statistics: {e}")))?;
        let machine = Arc::new(Machine {
            vcpu_states,
            power_on,
            on_reboot: config.on_reboot,
            ffs,
            requests,
            rendezvous,
            state: VmStateMachine::new(),
            kicks,
            stall: crate::emt::StallWatch::new(config.cpus),
            io,
            halts,
            stats,
            info,
            outcome: Mutex::new(None),
            running_emts: std::sync::atomic::AtomicU32::new(config.cpus),
            balloon,
            debug: DebugCtl::new(),
            teleport: TeleportSlot::default(),
            saved: SaveContext {
                config: Arc::new(SavedConfig {
                    ram_bytes: config.ram_bytes,
                    cpus: config.cpus,
                    firmware: config.firmware,
                }),
                backend: Arc::clone(&backend),
                msrs,
                xcrs: backend.guest_has_xsave(),
                uart,
                i8042,
                port92,
                a20,
                acpi_pm,
                cmos,
                pci,
                virtio,
                progress,
            },
            memory,
        });
        register_info_handlers(&machine, &backend)?;
        let hm = hypervisor.hm_info_text();
        machine
            .info
            .register(
                "hm",
                "The execution backend: host vendor, VMX capability profile in force, the controls it would program.",
                InfoFlags::empty(),
                move |_: &InfoCall<'_>, out: &mut dyn Write| Ok(out.write_str(&hm)?),
            )
            .map_err(info_error)?;
        register_vmm_stats(&machine)?;
        machine.state.set(VmState::Created)?;
        Ok(Vm {
            vcpus,
            machine,
            restored: None,
        })
    }

    /// Builds a VM from the saved state at `path` and loads the state into
    /// it; [`run`](Vm::run) continues the guest where it was saved. The
    /// saved RAM is mapped from the file (see [`restore_with`](Vm::restore_with)).
    ///
    /// ```no_run
    /// let mut vm = vmm_core::Vm::restore(std::path::Path::new("vm.sav"), Box::new(std::io::stdout()), false)?;
    /// vm.run()?;
    /// # Ok::<(), vmm_core::Error>(())
    /// ```
    pub fn restore(path: &Path, serial: SerialSink, check_entry: bool) -> Result<Vm> {
        let options = RestoreOptions {
            check_entry,
            ..RestoreOptions::default()
        };
        Self::restore_with(path, serial, options)
    }

    /// [`restore`](Vm::restore) with options: whether the saved RAM is
    /// mapped from the file (the default; the file must then stay as it is
    /// while the VM runs, see [`saved_state`]) or copied.
    ///
    /// The whole file is verified, every CRC, before anything is loaded (a
    /// truncated or damaged file is refused; the VM built meanwhile is
    /// dropped); the VM gets the RAM size, vCPU count and firmware the file
    /// records. A unit the file holds in a version this VMM does not know
    /// is an error naming the unit. [`restore_report`](Vm::restore_report)
    /// tells where the time went.
    ///
    /// ```no_run
    /// use vmm_core::saved_state::{RamLoad, RestoreOptions};
    /// let options = RestoreOptions { ram: RamLoad::Copy, ..RestoreOptions::default() };
    /// let mut vm = vmm_core::Vm::restore_with(
    ///     std::path::Path::new("vm.sav"),
    ///     Box::new(std::io::stdout()),
    ///     options,
    /// )?;
    /// std::fs::remove_file("vm.sav").ok(); // a copied VM does not need it
    /// vm.run()?;
    /// # Ok::<(), vmm_core::Error>(())
    /// ```
    pub fn restore_with(path: &Path, serial: SerialSink, options: RestoreOptions) -> Result<Vm> {
        Self::restore_with_devices(path, serial, options, Vec::new(), stam::Registry::new())
    }

    /// [`restore_with`](Vm::restore_with) for a VM that had virtio devices:
    /// `virtio` must be the same devices in the same order as
    /// [`VmConfig::virtio`] of the saved VM (same types, names and
    /// features; each `virtio-pci` unit refuses another device), freshly
    /// made (with `stats`, the registry their statistics went into); they
    /// get the saved state.
    pub fn restore_with_devices(
        path: &Path,
        serial: SerialSink,
        options: RestoreOptions,
        virtio: Vec<Box<dyn VirtioDevice>>,
        stats: stam::Registry,
    ) -> Result<Vm> {
        let start = std::time::Instant::now();
        // The CRC pass reads the whole file; it runs beside building the
        // VM, which does not depend on it.
        let owned = path.to_path_buf();
        let verifier = std::thread::Builder::new()
            .name("restore-verify".into())
            .spawn(move || {
                let t = std::time::Instant::now();
                ssm::verify(&owned).map(|_| t.elapsed())
            })
            .map_err(|e| Error::Config(format!("cannot start the verification thread: {e}")))?;
        let built = saved_state::read_config(path).and_then(|saved| {
            let mut config = VmConfig::new(saved.ram_bytes, saved.firmware);
            config.cpus = saved.cpus;
            config.serial = serial;
            config.check_entry = options.check_entry;
            config.on_reboot = options.on_reboot;
            config.virtio = virtio;
            config.stats = stats;
            Vm::new(config)
        });
        let build = start.elapsed();
        let verified = verifier
            .join()
            .map_err(|_| Error::Config("the verification thread panicked".into()))?;
        // A damaged file is reported as such, whatever building made of it.
        let verify = verified?;
        let mut vm = built?;
        let verify_wait = start.elapsed() - build;
        let t = std::time::Instant::now();
        let mapped_before = vm.memory().phys().read().pages_mapped_from_file();
        saved_state::load(&vm.machine, path, options.ram)?;
        let load = t.elapsed();
        let mapped = vm.memory().phys().read().pages_mapped_from_file();
        vm.restored = Some(RestoreReport {
            verify,
            build,
            verify_wait,
            load,
            pages_mapped: mapped - mapped_before,
        });
        Ok(vm)
    }

    /// Where the time of [`restore_with`](Vm::restore_with) went (`None`
    /// for a VM that was not restored from a file).
    pub fn restore_report(&self) -> Option<RestoreReport> {
        self.restored
    }

    /// Builds a VM like [`Vm::new`] with a debugger attached: [`Vm::run`]
    /// powers it on halted before its first instruction, in
    /// [`VmState::Debugging`], until the debugger resumes it (see
    /// [`crate::debug`]).
    pub fn new_debuggable(config: VmConfig) -> Result<(Self, DebugAttachment)> {
        let vm = Self::new(config)?;
        let features = guest_features(vm.machine.saved.backend.cpuid())
            .map_err(|e| Error::Config(format!("guest CPU features: {e}")))?;
        let attachment = crate::debug::attach(&vm.machine, features)?;
        Ok((vm, attachment))
    }

    /// A handle to steer the VM from other threads (pause, resume, reset,
    /// power off, info, statistics).
    pub fn handle(&self) -> VmHandle {
        VmHandle::new(Arc::clone(&self.machine))
    }

    /// Input for COM1's receiver: bytes sent through it reach the guest as
    /// if typed on the serial line (see [`SerialInput`]). It closes when
    /// [`run`](Vm::run) returns.
    pub fn serial_input(&self) -> SerialInput {
        SerialInput::new(Arc::clone(&self.machine.saved.uart))
    }

    /// Builds a VM from `config` and waits on `listener` for a teleport
    /// (`VmHandle::teleport` on the source, which must be configured the
    /// same way); [`run`](Vm::run) continues the guest. The wait for the
    /// source to connect has no limit; once connected, a source that stalls
    /// for the default [`TeleportOptions`]' stall timeout fails it.
    ///
    /// ```no_run
    /// use vmm_core::{Vm, VmConfig, guests};
    /// let listener = std::net::TcpListener::bind("127.0.0.1:7000").unwrap();
    /// let config = VmConfig::new(16 << 20, guests::find("counter")?.firmware()?);
    /// let mut vm = Vm::incoming(config, &listener)?;
    /// vm.run()?;
    /// # Ok::<(), vmm_core::Error>(())
    /// ```
    pub fn incoming(config: VmConfig, listener: &std::net::TcpListener) -> Result<Vm> {
        Self::incoming_with(config, listener, &TeleportOptions::default())
    }

    /// [`incoming`](Vm::incoming) with the stall timeout of `options`.
    pub fn incoming_with(
        config: VmConfig,
        listener: &std::net::TcpListener,
        options: &TeleportOptions,
    ) -> Result<Vm> {
        let vm = Vm::new(config)?;
        saved_state::incoming(&vm.machine, listener, options)?;
        Ok(vm)
    }

    /// The RAM size, vCPU count and firmware the VM was built with (what
    /// its saved states record).
    pub fn saved_config(&self) -> &SavedConfig {
        &self.machine.saved.config
    }

    /// The VM's statistics registry (`/HM/...`, `/IOM/...`, `/PGM/...`, `/VMM/...`).
    pub fn stats(&self) -> &stam::Registry {
        &self.machine.stats
    }

    /// The VM's info-handler registry.
    pub fn info(&self) -> &InfoRegistry {
        &self.machine.info
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMap {
        &self.machine.memory
    }

    /// The I/O port bus.
    pub fn io_bus(&self) -> &IoBus {
        &self.machine.io
    }

    /// Runs info handler `name` (or `help`) with `args`, writing to `out`.
    pub fn run_info(
        &self,
        name: &str,
        args: &str,
        out: &mut dyn Write,
    ) -> std::result::Result<(), InfoError> {
        self.handle().run_info(name, args, out)
    }

    /// Powers the VM on and runs it, one EMT per vCPU, until the guest ends
    /// the run, the VM is powered off, or something fails.
    pub fn run(&mut self) -> Result<RunOutcome> {
        let _input_closes = self.serial_input().closed_on_drop();
        let machine = &self.machine;
        // A restored VM resumes; a new one powers on.
        let starting = if machine.state.state() == VmState::Suspended {
            VmState::Resuming
        } else {
            VmState::PoweringOn
        };
        machine.state.set(starting)?;
        // A restored VM's devices start now, before its vCPUs.
        crate::saved_state::start_parked(&machine.saved.virtio);
        machine.debug.power_on(&machine.state)?;
        std::thread::scope(|scope| {
            let (stop_watch, stopped) = std::sync::mpsc::channel::<()>();
            let watch = std::thread::Builder::new()
                .name("stall-watch".into())
                .spawn_scoped(scope, move || machine.stall.watch(&machine.ffs, &stopped));
            if let Err(e) = watch {
                machine.finish(Err(Error::Config(format!(
                    "cannot start the stall watch: {e}"
                ))));
            }
            let emts: Vec<_> = self
                .vcpus
                .iter_mut()
                .map(|vcpu| {
                    let id = vcpu.id();
                    let emt = std::thread::Builder::new()
                        .name(format!("EMT-{id}"))
                        .spawn_scoped(scope, move || emt_main(vcpu, machine));
                    (id, emt)
                })
                .collect();
            for (id, emt) in emts {
                let joined = match emt {
                    Ok(handle) => handle.join().map_err(|_| Error::EmtPanicked(id)),
                    Err(e) => Err(Error::Config(format!("cannot start EMT {id}: {e}"))),
                };
                if let Err(e) = joined {
                    machine.finish(Err(e));
                }
            }
            drop(stop_watch);
        });
        machine.requests.shut_down();
        machine.debug.powered_off();
        machine.outcome.lock().take().unwrap_or(Err(Error::Config(
            "the run ended without an outcome".into(),
        )))
    }
}

fn info_error(e: InfoError) -> Error {
    Error::Config(format!("info handler registration: {e}"))
}

/// Registers the handlers the VM itself answers: `exits`, `cpumguest`, `fflags`,
/// `cpuid`, `mode`, `pgmcr3`.
fn register_info_handlers(machine: &Arc<Machine>, backend: &hm_vmx::Vm) -> Result<()> {
    let info = &machine.info;
    let exits = Arc::clone(backend.exit_stats());
    info.register(
        "exits",
        "Exit counts by VMX basic exit reason. Args: 'all' lists reasons never seen too.",
        InfoFlags::empty(),
        move |call: &InfoCall<'_>, out: &mut dyn Write| Ok(exits.write_table(call.args, out)?),
    )
    .map_err(info_error)?;
    let states = machine.vcpu_states.clone();
    info.register(
        "cpumguest",
        "Guest CPU state: general, control, segment, descriptor-table and debug registers and EFER of each vCPU.",
        InfoFlags::RUN_ON_EMT | InfoFlags::ALL_EMTS,
        move |call: &InfoCall<'_>, out: &mut dyn Write| {
            let cpu = call.cpu.unwrap_or(0);
            let state = states.get(cpu as usize).ok_or_else(|| InfoError::BadArgs(format!("no vCPU {cpu}")))?;
            let failed = |e: hm_vmx::Error| InfoError::Failed(e.to_string());
            let regs = state.regs().map_err(failed)?;
            let sregs = state.sregs().map_err(failed)?;
            let debug = state.debug_regs().map_err(failed)?;
            Ok(write_cpumguest(cpu, &regs, &sregs, &debug, out)?)
        },
    )
    .map_err(info_error)?;
    let ffs = machine.ffs.clone();
    info.register(
        "fflags",
        "Forced-action flags of the VM and of each vCPU, by name.",
        InfoFlags::empty(),
        move |_: &InfoCall<'_>, out: &mut dyn Write| Ok(ffs.format_fflags(out)?),
    )
    .map_err(info_error)?;
    register_cpuid_handler(info, &machine.vcpu_states, backend.cpuid()).map_err(info_error)?;
    let virtio = machine.saved.virtio.clone();
    info.register(
        "virtio",
        "Virtio devices on the PCI bus: transport state (status, features, queues, interrupts) and the device's own description.",
        InfoFlags::empty(),
        move |_: &InfoCall<'_>, out: &mut dyn Write| {
            if virtio.is_empty() {
                writeln!(out, "no virtio devices")?;
            }
            for v in &virtio {
                let t = v.transport.lock();
                write!(out, "{} {}: ", v.at, t.device.name())?;
                t.describe(out)?;
            }
            Ok(())
        },
    )
    .map_err(info_error)?;
    let features = guest_features(backend.cpuid()).map_err(info_error)?;
    register_paging_handlers(info, &machine.vcpu_states, machine.memory.phys(), features)
        .map_err(info_error)
}

/// `/VMM/...`: the VM state (as VirtualBox's VMSTATE number order) and the
/// number of vCPUs.
fn register_vmm_stats(machine: &Arc<Machine>) -> Result<()> {
    let stats = &machine.stats;
    let weak = Arc::downgrade(machine);
    let cpus = u64::from(machine.cpus());
    let registered = stats
        .callback("/VMM/cCpus", Unit::Count, "Number of vCPUs", move || cpus)
        .and_then(|()| {
            stats.callback(
                "/VMM/State",
                Unit::None,
                "VM state (VirtualBox VMSTATE order)",
                move || weak.upgrade().map_or(0, |m| m.state.state() as u64),
            )
        });
    registered.map_err(|e| Error::Config(format!("statistics: {e}")))
}
