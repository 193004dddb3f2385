//! The EMT (emulation thread): runs one vCPU and handles its exits.

use hm_vmx::{Exit, IoData, MmioData, Vcpu};

use crate::bus::IoBus;
use crate::devices::DeviceAction;
use crate::error::{Error, Result};

/// How a vCPU's run ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest wrote this status to the debug-exit port.
    GuestExit(u8),
}

/// Runs `vcpu` until the guest ends the run or does something the VMM
/// cannot handle.
pub(crate) fn run_vcpu(vcpu: &mut Vcpu, io: &IoBus) -> Result<RunOutcome> {
    loop {
        let unhandled = match vcpu.run()? {
            Exit::Io(access) => {
                let size = usize::from(access.size.max(1));
                match access.data {
                    IoData::Out(data) => {
                        for chunk in data.chunks(size) {
                            if let DeviceAction::GuestExit(status) = io.write(access.port, chunk) {
                                return Ok(RunOutcome::GuestExit(status));
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
            // No MMIO devices yet: ROM writes are dropped, unassigned space
            // reads as all ones.
            Exit::Mmio(access) => {
                if let MmioData::Read(data) = access.data {
                    data.fill(0xff);
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
