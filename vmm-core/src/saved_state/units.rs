//! The VM's saved-state units: `vmm` (the configuration), `irqchip`, one
//! `cpu` per vCPU, `pgm` (from `pgm`), `uart`, `i8042`, `acpi-pm`, `cmos` and
//! `balloon` (`i8042` and `pci` have files of their own).

use std::sync::Arc;

use hm_vmx::{ClockState, CpuState, IrqchipState, PitState, VcpuState};
use parking_lot::Mutex;
use ssm::{Unit, UnitReader, UnitWriter};

use crate::devices::{AcpiPm, BalloonState, Cmos, CmosState, Uart};

/// The firmware bytes the `vmm` unit may claim.
const MAX_FIRMWARE: usize = crate::firmware::MAX_FIRMWARE as usize;

/// The most bytes a vCPU's state blob may claim (with every MSR it is a
/// few KiB).
const MAX_BLOB: usize = 16 << 20;

pub(super) fn failed(e: impl std::fmt::Display) -> ssm::Error {
    ssm::Error::callback(e.to_string())
}

/// What the VM was built from: RAM size, vCPU count and the firmware image,
/// so that a saved state restores on its own (`vmm run --restore FILE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedConfig {
    /// Guest RAM in bytes.
    pub ram_bytes: u64,
    /// Number of vCPUs.
    pub cpus: u32,
    /// The firmware image mapped as ROM.
    pub firmware: Vec<u8>,
}

impl SavedConfig {
    /// Checks what building a VM from this configuration checks (vCPU
    /// count, RAM size, firmware size); saving and loading both do, so
    /// nothing is saved that could not be restored.
    pub(crate) fn check(&self) -> crate::Result<()> {
        crate::config::check_machine(self.ram_bytes, self.cpus, &self.firmware)
    }

    /// Writes the configuration into a unit (after [`check`](Self::check)).
    pub(crate) fn put(&self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        self.check().map_err(failed)?;
        w.put_u64(self.ram_bytes)?;
        w.put_u32(self.cpus)?;
        w.put_buf(&self.firmware)
    }

    /// Reads what [`SavedConfig::put`] wrote, with the same
    /// [`check`](Self::check).
    pub(crate) fn get(r: &mut UnitReader<'_>) -> ssm::Result<SavedConfig> {
        let config = SavedConfig {
            ram_bytes: r.get_u64()?,
            cpus: r.get_u32()?,
            firmware: r.get_buf(MAX_FIRMWARE)?,
        };
        config.check().map_err(failed)?;
        Ok(config)
    }
}

/// The name and version of the configuration unit.
pub(crate) const VMM_UNIT: &str = "vmm";
pub(crate) const VMM_VERSION: u32 = 1;

/// `vmm`: the configuration the VM was built with. Loading checks that the
/// VM being restored was built the same way.
pub(crate) struct VmmUnit {
    pub(crate) config: Arc<SavedConfig>,
}

impl Unit for VmmUnit {
    fn name(&self) -> &str {
        VMM_UNIT
    }

    fn version(&self) -> u32 {
        VMM_VERSION
    }

    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        self.config.put(w)
    }

    fn load_exec(&mut self, r: &mut UnitReader<'_>, _version: u32, _pass: u32) -> ssm::Result<()> {
        let saved = SavedConfig::get(r)?;
        let ours = &self.config;
        if saved.ram_bytes != ours.ram_bytes || saved.cpus != ours.cpus {
            return Err(failed(format!(
                "the saved VM has {} MiB of RAM and {} vCPUs, this VM {} MiB and {} vCPUs",
                saved.ram_bytes >> 20,
                saved.cpus,
                ours.ram_bytes >> 20,
                ours.cpus
            )));
        }
        if saved.firmware != ours.firmware {
            return Err(failed(
                "the saved VM ran different firmware than this VM's".to_string(),
            ));
        }
        Ok(())
    }
}

/// `cpu` instance N: the complete state of vCPU N.
pub(crate) struct CpuUnit {
    pub(crate) state: VcpuState,
    pub(crate) msrs: Arc<Vec<u32>>,
    pub(crate) xcrs: bool,
}

impl Unit for CpuUnit {
    fn name(&self) -> &str {
        "cpu"
    }

    fn instance(&self) -> u32 {
        self.state.id()
    }

    fn version(&self) -> u32 {
        1
    }

    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        let state = CpuState::read(&self.state, &self.msrs, self.xcrs).map_err(failed)?;
        w.put_buf(&state.encode())
    }

    fn load_exec(&mut self, r: &mut UnitReader<'_>, _version: u32, _pass: u32) -> ssm::Result<()> {
        let blob = r.get_buf(MAX_BLOB)?;
        let state = CpuState::decode(&blob).map_err(failed)?;
        state.write(&self.state).map_err(failed)
    }
}

/// VM-wide in-kernel device state that is saved as one encoded blob.
pub(crate) trait KernelDevice: Sized + Send {
    /// The unit's name.
    const UNIT: &'static str;
    fn read(vm: &hm_vmx::Vm) -> hm_vmx::Result<Self>;
    fn write(&self, vm: &hm_vmx::Vm) -> hm_vmx::Result<()>;
    fn encode(&self) -> Vec<u8>;
    fn decode(blob: &[u8]) -> hm_vmx::Result<Self>;
}

/// Implements [`KernelDevice`] for an hm-vmx state type with inherent
/// `read`, `write`, `encode` and `decode`, saved as unit `$unit`.
macro_rules! kernel_device {
    ($state:ty, $unit:literal) => {
        impl KernelDevice for $state {
            const UNIT: &'static str = $unit;
            fn read(vm: &hm_vmx::Vm) -> hm_vmx::Result<Self> {
                <$state>::read(vm)
            }
            fn write(&self, vm: &hm_vmx::Vm) -> hm_vmx::Result<()> {
                <$state>::write(self, vm)
            }
            fn encode(&self) -> Vec<u8> {
                <$state>::encode(self)
            }
            fn decode(blob: &[u8]) -> hm_vmx::Result<Self> {
                <$state>::decode(blob)
            }
        }
    };
}

// The in-kernel PIC pair and IOAPIC.
kernel_device!(IrqchipState, "irqchip");
// The in-kernel 8254 PIT.
kernel_device!(PitState, "pit");
// The guest's paravirtual clock, so that its time goes on where it stopped.
kernel_device!(ClockState, "kvmclock");

/// The unit of an in-kernel device (`irqchip`, `pit`, `kvmclock`).
pub(crate) struct KernelDeviceUnit<S> {
    backend: Arc<hm_vmx::Vm>,
    device: std::marker::PhantomData<fn() -> S>,
}

impl<S> KernelDeviceUnit<S> {
    pub(crate) fn new(backend: Arc<hm_vmx::Vm>) -> Self {
        KernelDeviceUnit {
            backend,
            device: std::marker::PhantomData,
        }
    }
}

impl<S: KernelDevice> Unit for KernelDeviceUnit<S> {
    fn name(&self) -> &str {
        S::UNIT
    }

    fn version(&self) -> u32 {
        1
    }

    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        let state = S::read(&self.backend).map_err(failed)?;
        w.put_buf(&state.encode())
    }

    fn load_exec(&mut self, r: &mut UnitReader<'_>, _version: u32, _pass: u32) -> ssm::Result<()> {
        let blob = r.get_buf(MAX_BLOB)?;
        let state = S::decode(&blob).map_err(failed)?;
        state.write(&self.backend).map_err(failed)
    }
}

/// `uart`: COM1's registers and receive FIFO.
pub(crate) struct UartUnit {
    pub(crate) uart: Arc<Mutex<Uart>>,
}

impl Unit for UartUnit {
    fn name(&self) -> &str {
        "uart"
    }

    fn version(&self) -> u32 {
        1
    }

    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        let s = self.uart.lock().state();
        for b in [
            s.baud_divisor_low,
            s.baud_divisor_high,
            s.interrupt_enable,
            s.interrupt_identification,
            s.line_control,
            s.line_status,
            s.modem_control,
            s.modem_status,
            s.scratch,
        ] {
            w.put_u8(b)?;
        }
        w.put_buf(&s.in_buffer)
    }

    fn load_exec(&mut self, r: &mut UnitReader<'_>, _version: u32, _pass: u32) -> ssm::Result<()> {
        let mut regs = [0u8; 9];
        r.get_bytes(&mut regs)?;
        let [
            baud_divisor_low,
            baud_divisor_high,
            interrupt_enable,
            interrupt_identification,
            line_control,
            line_status,
            modem_control,
            modem_status,
            scratch,
        ] = regs;
        let state = vm_superio::serial::SerialState {
            baud_divisor_low,
            baud_divisor_high,
            interrupt_enable,
            interrupt_identification,
            line_control,
            line_status,
            modem_control,
            modem_status,
            scratch,
            in_buffer: r.get_buf(crate::devices::UART_FIFO_SIZE)?,
        };
        self.uart.lock().set_state(&state).map_err(failed)
    }
}

/// `cmos`: the RTC's registers and CMOS RAM, the selected byte with the
/// NMI mask, and the guest clock's offset from the host's (a restored
/// guest's clock keeps the time it was set to, moving on with the host's).
pub(crate) struct CmosUnit {
    pub(crate) cmos: Arc<Mutex<Cmos>>,
}

impl Unit for CmosUnit {
    fn name(&self) -> &str {
        "cmos"
    }

    fn version(&self) -> u32 {
        1
    }

    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        let s = self.cmos.lock().state();
        w.put_bytes(&s.ram)?;
        w.put_u8(s.index)?;
        w.put_bool(s.nmi_masked)?;
        w.put_i64(s.offset_ns)?;
        w.put_i64(s.events_seen_ns)
    }

    fn load_exec(&mut self, r: &mut UnitReader<'_>, _version: u32, _pass: u32) -> ssm::Result<()> {
        let mut ram = [0; 128];
        r.get_bytes(&mut ram)?;
        let index = r.get_u8()?;
        if index >= 0x80 {
            return Err(failed(format!(
                "CMOS index {index:#x} beyond its 128 bytes"
            )));
        }
        let state = CmosState {
            ram,
            index,
            nmi_masked: r.get_bool()?,
            offset_ns: r.get_i64()?,
            events_seen_ns: r.get_i64()?,
        };
        self.cmos.lock().set_state(&state);
        Ok(())
    }
}

/// `acpi-pm`: the PM1a enable and control registers.
pub(crate) struct AcpiPmUnit {
    pub(crate) pm: Arc<Mutex<AcpiPm>>,
}

impl Unit for AcpiPmUnit {
    fn name(&self) -> &str {
        "acpi-pm"
    }

    fn version(&self) -> u32 {
        1
    }

    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        let (enable, control) = self.pm.lock().state();
        w.put_u16(enable)?;
        w.put_u16(control)
    }

    fn load_exec(&mut self, r: &mut UnitReader<'_>, _version: u32, _pass: u32) -> ssm::Result<()> {
        let enable = r.get_u16()?;
        let control = r.get_u16()?;
        self.pm.lock().set_state(enable, control);
        Ok(())
    }
}

/// `balloon`: the size the host asks for and the pages the guest has given
/// (which pages those are, `pgm` saves; GMM's balloon accounts follow them).
pub(crate) struct BalloonUnit {
    pub(crate) state: Arc<BalloonState>,
}

impl Unit for BalloonUnit {
    fn name(&self) -> &str {
        "balloon"
    }

    fn version(&self) -> u32 {
        1
    }

    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        w.put_u64(self.state.target())?;
        w.put_u64(self.state.pages())
    }

    fn load_exec(&mut self, r: &mut UnitReader<'_>, _version: u32, _pass: u32) -> ssm::Result<()> {
        let target = r.get_u64()?;
        let pages = r.get_u64()?;
        self.state.restore(target, pages);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_CPUS;
    use crate::firmware::MAX_FIRMWARE;
    use ssm::{Manager, SaveOptions, StreamReader};

    /// A `vmm` unit that writes its fields as given, without the check a
    /// save makes: what a hostile or older writer could put in a file.
    struct Unchecked(SavedConfig);

    impl Unit for Unchecked {
        fn name(&self) -> &str {
            VMM_UNIT
        }
        fn version(&self) -> u32 {
            VMM_VERSION
        }
        fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
            w.put_u64(self.0.ram_bytes)?;
            w.put_u32(self.0.cpus)?;
            w.put_buf(&self.0.firmware)
        }
        fn load_exec(&mut self, _: &mut UnitReader<'_>, _: u32, _: u32) -> ssm::Result<()> {
            Err(failed("a unit that only writes"))
        }
    }

    fn save(unit: impl Unit + 'static) -> ssm::Result<Vec<u8>> {
        let mut m = Manager::new();
        m.register(Box::new(unit))?;
        let mut bytes = Vec::new();
        m.save(&mut bytes, &SaveOptions::default())?;
        Ok(bytes)
    }

    #[test]
    fn a_save_refuses_exactly_what_a_load_refuses() {
        let good = SavedConfig {
            ram_bytes: 16 << 20,
            cpus: 1,
            firmware: vec![0xf4; 4096],
        };
        let with = |f: &dyn Fn(&mut SavedConfig)| {
            let mut c = good.clone();
            f(&mut c);
            c
        };
        let page = 4096;
        let cases = [
            (good.clone(), true),
            (with(&|c| c.firmware = vec![1; MAX_FIRMWARE as usize]), true),
            (with(&|c| c.cpus = MAX_CPUS), true),
            // The case: 17 MiB of firmware saved, never restored.
            (with(&|c| c.firmware = vec![1; 17 << 20]), false),
            (
                with(&|c| c.firmware = vec![1; MAX_FIRMWARE as usize + page]),
                false,
            ),
            (with(&|c| c.firmware = vec![1; page + 1]), false),
            (with(&|c| c.firmware.clear()), false),
            (with(&|c| c.cpus = 0), false),
            (with(&|c| c.cpus = MAX_CPUS + 1), false),
            (with(&|c| c.ram_bytes = 0), false),
        ];
        for (config, valid) in cases {
            let what = format!(
                "{} bytes of firmware, {} vCPUs, {} bytes of RAM",
                config.firmware.len(),
                config.cpus,
                config.ram_bytes
            );
            let saved = save(VmmUnit {
                config: Arc::new(config.clone()),
            });
            let unchecked = save(Unchecked(config.clone())).unwrap();
            let loaded =
                super::super::read_config_from(StreamReader::from_slice(&unchecked).unwrap());
            assert_eq!(saved.is_ok(), valid, "save of {what}: {:?}", saved.err());
            assert_eq!(loaded.is_ok(), valid, "load of {what}: {:?}", loaded.err());
            if let Ok(loaded) = loaded {
                assert_eq!(loaded, config);
            }
        }
    }
}
