//! Setting a vCPU's CPUID and reading its TSC frequency, the facts a
//! VMM's guest CPUID is built from.
//!
//! ```no_run
//! let hv = hm_vmx::Hypervisor::open()?;
//! let vm = hv.create_vm()?;
//! let vcpu = vm.create_vcpu(0)?;
//! let mut cpuid = vcpu.state().cpuid()?;
//! for leaf in cpuid.as_mut_slice().iter_mut().filter(|e| e.function == 1) {
//!     leaf.ecx |= 1 << 31; // "running under a hypervisor"
//! }
//! vcpu.state().set_cpuid(&cpuid)?;
//! println!("TSC at {} kHz", vcpu.state().tsc_khz()?);
//! # Ok::<(), hm_vmx::Error>(())
//! ```

use crate::error::{Result, ioctl};
use crate::types::Cpuid;
use crate::vcpu::VcpuState;

impl VcpuState {
    /// Gives the vCPU the CPUID leaves `cpuid` (`KVM_SET_CPUID2`), read
    /// back by [`cpuid`](VcpuState::cpuid). Call it before the vCPU first
    /// runs: KVM refuses a different CPUID after that.
    pub fn set_cpuid(&self, cpuid: &Cpuid) -> Result<()> {
        self.kvm_fd()
            .set_cpuid2(cpuid)
            .map_err(ioctl("KVM_SET_CPUID2"))
    }

    /// The frequency of the vCPU's time-stamp counter in kHz
    /// (`KVM_GET_TSC_KHZ`).
    pub fn tsc_khz(&self) -> Result<u32> {
        self.kvm_fd()
            .get_tsc_khz()
            .map_err(ioctl("KVM_GET_TSC_KHZ"))
    }
}
