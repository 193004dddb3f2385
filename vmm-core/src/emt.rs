//! The EMT (emulation thread): runs one vCPU and handles its exits.

use hm_vmx::{Exit, IoData, MmioData, Vcpu};

use crate::bus::IoBus;
use crate::devices::DeviceAction;
use crate::error::{Error, Result};
use crate::memory::GuestMemoryMap;

/// How a vCPU's run ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest wrote this status to the debug-exit port.
    GuestExit(u8),
    /// The guest reset the machine (for example through the keyboard
    /// controller, as Linux's `reboot=k` does).
    Reboot,
}

/// Runs `vcpu` until the guest ends the run or does something the VMM
/// cannot handle.
pub(crate) fn run_vcpu(vcpu: &mut Vcpu, io: &IoBus, memory: &GuestMemoryMap) -> Result<RunOutcome> {
    loop {
        let unhandled = match vcpu.run()? {
            Exit::Io(access) => {
                let size = usize::from(access.size.max(1));
                match access.data {
                    IoData::Out(data) => {
                        for chunk in data.chunks(size) {
                            match io.write(access.port, chunk) {
                                DeviceAction::GuestExit(status) => {
                                    return Ok(RunOutcome::GuestExit(status));
                                }
                                DeviceAction::Reset => return Ok(RunOutcome::Reboot),
                                DeviceAction::Continue => {}
                            }
                        }
                    }
                    IoData::In(data) => {
                        for chunk in data.chunks_mut(size) {
                            io.read(access.port, chunk);
                        }
                    }
                }
                continue;
            }
            Exit::Mmio(access) => {
                match access.data {
                    MmioData::Read(data) => memory.mmio_exit(access.addr, data, false)?,
                    MmioData::Write(data) => {
                        let mut buf = [0u8; 8];
                        let buf = &mut buf[..data.len().min(8)];
                        buf.copy_from_slice(&data[..buf.len()]);
                        memory.mmio_exit(access.addr, buf, true)?;
                    }
                }
                continue;
            }
            Exit::Interrupted | Exit::InterruptWindow => continue,
            Exit::Hlt => (
                "HLT with no interrupt source that could wake the vCPU".to_string(),
                Exit::Hlt.vmx_reason(),
            ),
            Exit::InternalError(e) => (format!("KVM internal error: {e}"), None),
            other => (other.name().to_string(), other.vmx_reason()),
        };
        let (exit, reason) = unhandled;
        let rip = vcpu.state().regs().map(|r| r.rip).unwrap_or(u64::MAX);
        return Err(Error::UnhandledExit {
            cpu: vcpu.id(),
            exit,
            reason,
            rip,
        });
    }
}
