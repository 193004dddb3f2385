//! A vCPU's multi-processor state: running, halted, or waiting for
//! INIT/SIPI (kept by the in-kernel local APIC).
//!
//! ```no_run
//! use hm_vmx::MpState;
//!
//! let hv = hm_vmx::Hypervisor::open()?;
//! let mut vm = hv.create_vm()?;
//! vm.create_irqchip()?;
//! let vcpus = vm.create_vcpus(2)?;
//! assert_eq!(vcpus[0].state().mp_state()?, MpState::Runnable);
//! assert_eq!(vcpus[1].state().mp_state()?, MpState::Uninitialized);
//! # Ok::<(), hm_vmx::Error>(())
//! ```

use std::fmt;

use crate::error::{Result, ioctl};
use crate::vcpu::VcpuState;

/// KVM's multi-processor state of a vCPU (`KVM_MP_STATE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MpState {
    /// Running guest code (the boot processor after reset).
    Runnable,
    /// An application processor waiting for INIT.
    Uninitialized,
    /// INIT received: waiting for SIPI.
    InitReceived,
    /// Halted (`hlt`) until an interrupt.
    Halted,
    /// SIPI received: starts at the SIPI vector on its next run.
    SipiReceived,
    /// Stopped (s390).
    Stopped,
    /// Check-stopped (s390).
    CheckStop,
    /// Operating (s390).
    Operating,
    /// Loading (s390).
    Load,
    /// Waiting in the AP reset hold (SEV-ES).
    ApResetHold,
    /// A state this backend does not know, with KVM's number.
    Unknown(u32),
}

impl MpState {
    /// The state for KVM's `kvm_mp_state::mp_state` number.
    pub fn from_kvm(mp_state: u32) -> MpState {
        match mp_state {
            0 => MpState::Runnable,
            1 => MpState::Uninitialized,
            2 => MpState::InitReceived,
            3 => MpState::Halted,
            4 => MpState::SipiReceived,
            5 => MpState::Stopped,
            6 => MpState::CheckStop,
            7 => MpState::Operating,
            8 => MpState::Load,
            9 => MpState::ApResetHold,
            n => MpState::Unknown(n),
        }
    }
}

impl fmt::Display for MpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MpState::Runnable => "runnable",
            MpState::Uninitialized => "uninitialized",
            MpState::InitReceived => "INIT received",
            MpState::Halted => "halted",
            MpState::SipiReceived => "SIPI received",
            MpState::Stopped => "stopped",
            MpState::CheckStop => "check-stop",
            MpState::Operating => "operating",
            MpState::Load => "load",
            MpState::ApResetHold => "AP reset hold",
            MpState::Unknown(_) => "unknown",
        })
    }
}

impl VcpuState {
    /// The vCPU's multi-processor state (`KVM_GET_MP_STATE`). Without the
    /// VM's in-kernel irqchip ([`Vm::create_irqchip`](crate::Vm::create_irqchip))
    /// every vCPU is [`MpState::Runnable`] until it halts.
    pub fn mp_state(&self) -> Result<MpState> {
        let mp = self
            .kvm_fd()
            .get_mp_state()
            .map_err(ioctl("KVM_GET_MP_STATE"))?;
        Ok(MpState::from_kvm(mp.mp_state))
    }

    /// Whether the vCPU is halted (`hlt`) with interrupts disabled
    /// (RFLAGS.IF clear) and no NMI or SMI pending: no interrupt can wake
    /// it, only an NMI, SMI or INIT sent by another processor.
    pub fn halted_with_interrupts_off(&self) -> Result<bool> {
        if self.mp_state()? != MpState::Halted || self.regs()?.rflags & RFLAGS_IF != 0 {
            return Ok(false);
        }
        let events = self
            .kvm_fd()
            .get_vcpu_events()
            .map_err(ioctl("KVM_GET_VCPU_EVENTS"))?;
        Ok(events.nmi.pending == 0 && events.nmi.injected == 0 && events.smi.pending == 0)
    }
}

/// RFLAGS.IF: maskable interrupts enabled.
const RFLAGS_IF: u64 = 1 << 9;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_numbers_map_to_states_and_names() {
        assert_eq!(MpState::from_kvm(0), MpState::Runnable);
        assert_eq!(MpState::from_kvm(1), MpState::Uninitialized);
        assert_eq!(MpState::from_kvm(3).to_string(), "halted");
        assert_eq!(MpState::from_kvm(4).to_string(), "SIPI received");
        assert_eq!(MpState::from_kvm(9).to_string(), "AP reset hold");
        assert_eq!(MpState::from_kvm(42), MpState::Unknown(42));
        assert_eq!(MpState::from_kvm(42).to_string(), "unknown");
    }
}
