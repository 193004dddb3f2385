//! Saving and restoring a VM: the saved-state units and the orchestration
//! around `ssm`'s manager.
//!
//! A save stops every EMT outside the guest through a rendezvous (the VM
//! goes `Running -> Suspending -> Suspended -> Saving -> Suspended`), writes
//! the units in this order and then resumes or powers off (a VM that runs
//! on resumes once the last byte is written, and its file is synced and
//! renamed into place while the guest runs; the save succeeds once the
//! file is durable):
//!
//! | unit | contents |
//! |---|---|
//! | `vmm` | RAM size, vCPU count and the firmware image |
//! | `irqchip` | in-kernel PIC pair and IOAPIC |
//! | `pit` | in-kernel PIT |
//! | `cpu` (instance N) | registers, FPU, XCRs, MSRs, events, MP state and local APIC of vCPU N |
//! | `pgm` | RAM, ROM shadows and protection, MMIO2 (live passes over the dirty log), each vCPU's A20 gate |
//! | `uart` | COM1 registers and receive FIFO |
//! | `i8042` | the keyboard controller and port 0x92 (System Control Port A) |
//! | `acpi-pm` | the ACPI PM1a enable and control registers |
//! | `cmos` | the RTC's registers, CMOS RAM and the guest clock's offset |
//! | `balloon` | the balloon's target and the pages the guest has given |
//! | `pci` | the PCI configuration address latch and each function's configuration space |
//! | `virtio-pci` (instance = slot) | a virtio device's transport registers, queue positions, MSI-X table and device state (the device is quiesced before any unit saves, so `pgm` sees all its writes) |
//! | `kvmclock` | the guest's paravirtual clock (set last, just before the VM runs) |
//!
//! An EMT that stops completes its vCPU's last `in`, `out` or MMIO
//! instruction first (KVM finishes one only on the next entry), so a saved
//! vCPU never has an access the device saw but the instruction did not
//! finish, which the restored guest would make again.
//!
//! The debug-exit port has no state. GMM needs no unit of its own: its
//! accounting follows the pages `pgm` allocates, maps and balloons while
//! loading.
//!
//! A live save ([`SaveRequest::live`]) keeps the guest running
//! (`Running -> RunningLs`) while `pgm` sends memory in passes, using KVM's
//! dirty log for the guest's writes and `pgm`'s write bitmaps for the
//! writes devices make through [`GuestMemoryMap::ram`](crate::memory::GuestMemoryMap::ram);
//! `pgm`'s vote decides when the VM stops for the final pass.
//!
//! A restore ([`Vm::restore`](crate::Vm::restore)) verifies the whole file
//! (every CRC, while the VM is being built from the `vmm` unit) and loads
//! every unit into the new VM (`Created -> Loading -> Suspended`);
//! [`Vm::run`](crate::Vm::run) then resumes it.
//!
//! `pgm` saves runs of non-zero RAM pages page-aligned in the file, and a
//! restore maps them from the file copy-on-write ([`RamLoad::Map`], the
//! default, as Firecracker does with its snapshot memory file): they cost
//! nothing until the guest touches them, so a VM with large, mostly
//! untouched RAM resumes in milliseconds, and a guest write gives the VM a
//! private copy, never changing the file. The load does not read the
//! mapped pages; the verification before it read and checked them. While
//! the VM runs it needs the file: do not truncate or rewrite it in place
//! (saving again to the same path is safe: a save writes a new file and
//! renames it over the old one). [`RamLoad::Copy`] copies everything
//! instead, for a VM independent of the file. A teleport always copies
//! (see [`TeleportOptions`] for how it bounds its waits and how it hands
//! the VM over).

mod dirty;
mod kbc_unit;
mod live;
mod pci_unit;
mod progress;
mod save;
mod teleport;
mod units;
mod virtio_unit;

pub(crate) use progress::SaveProgress;
pub(crate) use save::save;
pub(crate) use teleport::{Ended, TeleportSlot, incoming, teleport};
pub use teleport::{TeleportError, TeleportOptions};
pub(crate) use virtio_unit::{start_parked, with_devices_parked};

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use ssm::{Manager, StreamReader};

use crate::devices::pci::PciPlatform;
use crate::devices::{A20Line, AcpiPm, Cmos, I8042, Port92, Uart};
use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::sync::vmstate::VmState;

use hm_vmx::{ClockState, IrqchipState, PitState};
use kbc_unit::I8042Unit;
use pci_unit::PciUnit;
pub use units::SavedConfig;
use units::{
    AcpiPmUnit, BalloonUnit, CmosUnit, CpuUnit, KernelDeviceUnit, UartUnit, VMM_UNIT, VmmUnit,
};
use virtio_unit::VirtioUnit;

/// What the machine keeps for saving and restoring.
pub(crate) struct SaveContext {
    pub(crate) config: Arc<SavedConfig>,
    pub(crate) backend: Arc<hm_vmx::Vm>,
    pub(crate) msrs: Arc<Vec<u32>>,
    pub(crate) xcrs: bool,
    pub(crate) uart: Arc<Mutex<Uart>>,
    pub(crate) i8042: Arc<Mutex<I8042>>,
    pub(crate) port92: Arc<Mutex<Port92>>,
    pub(crate) a20: Arc<A20Line>,
    pub(crate) acpi_pm: Arc<Mutex<AcpiPm>>,
    pub(crate) cmos: Arc<Mutex<Cmos>>,
    pub(crate) pci: Arc<PciPlatform>,
    pub(crate) virtio: Vec<crate::devices::virtio::VirtioSlot>,
    pub(crate) progress: SaveProgress,
}

/// What to do with the VM after a save.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterSave {
    /// Resume it if it was running (the default).
    #[default]
    Resume,
    /// Power it off: the run ends with [`RunOutcome::PoweredOff`](crate::RunOutcome::PoweredOff).
    PowerOff,
}

/// How to save.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SaveRequest {
    /// Keep the guest running while memory is sent in passes; stop it only
    /// for the final pass.
    pub live: bool,
    /// What happens to the VM afterwards.
    pub then: AfterSave,
}

/// What a save did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveReport {
    /// Bytes written.
    pub bytes: u64,
    /// Unit records written (every pass of every unit).
    pub units: u32,
    /// Live passes before the VM stopped (0 for a plain save).
    pub live_passes: u32,
    /// How long the guest was stopped: from the vCPUs stopping to the VM
    /// running again. The file of a VM that runs on is synced after it
    /// resumed, outside this time; for a VM that stays stopped or powers
    /// off it ends once the state is durable (a teleport: handed over).
    pub downtime: Duration,
}

/// How a restore brings the saved RAM into the new VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RamLoad {
    /// Map RAM saved as page runs from the file, copy-on-write (the
    /// default): fast, and the pages cost memory only once touched; the
    /// file must stay unchanged while the VM runs.
    #[default]
    Map,
    /// Copy all RAM into the VM's own memory: slower, but the VM no longer
    /// needs the file.
    Copy,
}

/// Options of [`Vm::restore_with`](crate::Vm::restore_with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoreOptions {
    /// Map or copy the saved RAM.
    pub ram: RamLoad,
    /// Check each vCPU's state against the VM-entry rules before it enters
    /// the guest (see [`VmConfig::check_entry`](crate::VmConfig::check_entry)).
    pub check_entry: bool,
    /// What a reboot from inside the guest does (see
    /// [`VmConfig::on_reboot`](crate::VmConfig::on_reboot)).
    pub on_reboot: crate::config::OnReboot,
}

/// Where the time of a restore went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreReport {
    /// Checking every CRC of the file (runs while the VM is built).
    pub verify: Duration,
    /// Building the VM (KVM, memory, devices, vCPUs).
    pub build: Duration,
    /// Waiting for the verification after the VM was built.
    pub verify_wait: Duration,
    /// Loading the units into the VM.
    pub load: Duration,
    /// RAM pages mapped from the file instead of copied.
    pub pages_mapped: u64,
}

/// Reads the configuration (`vmm` unit) of the saved state at `path`.
///
/// ```no_run
/// let config = vmm_core::saved_state::read_config(std::path::Path::new("vm.sav"))?;
/// println!("{} MiB, {} vCPUs", config.ram_bytes >> 20, config.cpus);
/// # Ok::<(), vmm_core::Error>(())
/// ```
pub fn read_config(path: &Path) -> Result<SavedConfig> {
    let file = std::fs::File::open(path).map_err(ssm::Error::from)?;
    read_config_from(StreamReader::buffered(file, true)?)
}

/// Checks the saved state at `path` as a restore would before building
/// anything: every CRC and structure, and that the machine its `vmm` unit
/// records (vCPUs, RAM, firmware) is one a VM can be built as. A stream
/// without a `vmm` unit (written by another user of `ssm`) gets the stream
/// checks only.
///
/// ```no_run
/// let summary = vmm_core::saved_state::verify(std::path::Path::new("vm.sav"))?;
/// println!("{} units, {} bytes", summary.units, summary.bytes);
/// # Ok::<(), vmm_core::Error>(())
/// ```
pub fn verify(path: &Path) -> Result<ssm::VerifySummary> {
    let summary = ssm::verify(path)?;
    match read_config(path) {
        Ok(_) | Err(Error::SavedState(ssm::Error::MissingUnit(_))) => Ok(summary),
        Err(e) => Err(e),
    }
}

fn read_config_from<R: BufRead>(mut reader: StreamReader<R>) -> Result<SavedConfig> {
    while let Some(info) = reader.next_unit()? {
        if info.id.name == VMM_UNIT && info.id.instance == 0 {
            if info.version != units::VMM_VERSION {
                return Err(ssm::Error::UnsupportedVersion {
                    unit: info.id,
                    version: info.version,
                    oldest: units::VMM_VERSION,
                    newest: units::VMM_VERSION,
                }
                .into());
            }
            let config = SavedConfig::get(&mut reader.unit_reader())?;
            // The unit's CRC, before anything is built from a damaged size.
            reader.finish_unit()?;
            return Ok(config);
        }
    }
    Err(ssm::Error::MissingUnit(ssm::UnitId::new(VMM_UNIT, 0)).into())
}

/// The manager with every unit of `machine`; for a live save (`live`: the
/// machine again, shared) `pgm` gets the KVM dirty log.
fn manager(machine: &Machine, live: Option<&Arc<Machine>>) -> Result<Manager> {
    let ctx = &machine.saved;
    let mut m = Manager::new();
    m.register(Box::new(VmmUnit {
        config: Arc::clone(&ctx.config),
    }))?;
    m.register(Box::new(KernelDeviceUnit::<IrqchipState>::new(Arc::clone(
        &ctx.backend,
    ))))?;
    m.register(Box::new(KernelDeviceUnit::<PitState>::new(Arc::clone(
        &ctx.backend,
    ))))?;
    for state in &machine.vcpu_states {
        m.register(Box::new(CpuUnit {
            state: state.clone(),
            msrs: Arc::clone(&ctx.msrs),
            xcrs: ctx.xcrs,
        }))?;
    }
    let map = machine.memory.phys();
    match live {
        Some(machine) => {
            let applied = machine.memory.applied_slots();
            let log = dirty::KvmDirtyLog::new(Arc::clone(&ctx.backend), applied);
            let pgm = pgm::phys::PgmUnit::new(Arc::clone(map), Some(Box::new(log)));
            m.register(Box::new(live::LivePgm::new(pgm, Arc::clone(machine))))?;
        }
        None => m.register(Box::new(pgm::phys::PgmUnit::new(Arc::clone(map), None)))?,
    }
    m.register(Box::new(UartUnit {
        uart: Arc::clone(&ctx.uart),
    }))?;
    m.register(Box::new(I8042Unit {
        kbc: Arc::clone(&ctx.i8042),
        port92: Arc::clone(&ctx.port92),
        a20: Arc::clone(&ctx.a20),
    }))?;
    m.register(Box::new(AcpiPmUnit {
        pm: Arc::clone(&ctx.acpi_pm),
    }))?;
    m.register(Box::new(CmosUnit {
        cmos: Arc::clone(&ctx.cmos),
    }))?;
    m.register(Box::new(BalloonUnit {
        state: Arc::clone(&machine.balloon),
    }))?;
    m.register(Box::new(PciUnit {
        platform: Arc::clone(&ctx.pci),
    }))?;
    for v in &ctx.virtio {
        m.register(Box::new(VirtioUnit {
            slot: u32::from(v.at.bits() >> 3),
            transport: Arc::clone(&v.transport),
        }))?;
    }
    // Last: a restore sets the clock just before the VM runs, so loading
    // the other units takes none of the guest's time.
    m.register(Box::new(KernelDeviceUnit::<ClockState>::new(Arc::clone(
        &ctx.backend,
    ))))?;
    Ok(m)
}

/// Loads the saved state at `path` into a freshly created VM
/// (`Created -> Loading -> Suspended`), mapping or copying the RAM.
pub(crate) fn load(machine: &Machine, path: &Path, ram: RamLoad) -> Result<ssm::LoadStats> {
    machine
        .state
        .try_transition(&[(VmState::Created, VmState::Loading)])?;
    let loaded = manager(machine, None).and_then(|mut m| match ram {
        RamLoad::Map => Ok(m.load_from_file(path)?),
        RamLoad::Copy => {
            let file = std::fs::File::open(path).map_err(ssm::Error::from)?;
            Ok(m.load(StreamReader::buffered(file, true)?)?)
        }
    });
    match loaded {
        Ok(stats) => {
            machine.state.set(VmState::Suspended)?;
            Ok(stats)
        }
        Err(e) => {
            machine.state.set(VmState::LoadFailure)?;
            Err(e)
        }
    }
}
