//! Multi-processor consistency of a VM: every vCPU should see the same
//! CPUID (apart from per-processor identity) and the same VMX capabilities
//! (SDM Vol. 3, the multi-processor considerations of the VMX chapter).
//!
//! ```no_run
//! let hv = hm_vmx::Hypervisor::open()?;
//! let vm = hv.create_vm()?;
//! let vcpus = vm.create_vcpus(2)?;
//! let states: Vec<_> = vcpus.iter().map(|v| v.state().clone()).collect();
//! for d in vm.check_mp_consistency(&states)? {
//!     println!("{d}"); // vCPU 1: CPUID 0x1.0 ECX = ..., vCPU 0 has ...
//! }
//! # Ok::<(), hm_vmx::Error>(())
//! ```

use kvm_bindings::{Msrs, kvm_msr_entry};
use kvm_ioctls::Error as KvmError;

use crate::error::{Result, ioctl};
use crate::vcpu::VcpuState;
use crate::vm::Vm;
use crate::vmx::{Difference, VcpuView, compare_vcpus, msr};

impl VcpuState {
    /// This vCPU's CPUID (`KVM_GET_CPUID2`) and VMX capability view: the
    /// capability MSRs the vCPU itself reports (nested VMX), or else the
    /// VM's capability profile, which is what the VMM uses for it.
    pub fn vcpu_view(&self) -> Result<VcpuView> {
        let cpuid = self.cpuid()?;
        let mut view = VcpuView::default();
        for e in cpuid.as_slice() {
            view.cpuid
                .insert((e.function, e.index), [e.eax, e.ebx, e.ecx, e.edx]);
        }
        view.vmx_msrs = self.vcpu_vmx_msrs()?.into_iter().collect();
        if view.vmx_msrs.is_empty() {
            view.vmx_msrs = self.entry_checker().caps().msrs().clone();
        }
        Ok(view)
    }

    /// The VMX capability MSRs `KVM_GET_MSRS` returns for this vCPU. KVM
    /// stops at the first MSR it does not know, so on hosts without nested
    /// VMX this is empty.
    fn vcpu_vmx_msrs(&self) -> Result<Vec<(u32, u64)>> {
        let entries: Vec<kvm_msr_entry> = msr::ALL
            .iter()
            .map(|&(index, _)| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|_| ioctl("KVM_GET_MSRS")(KvmError::new(libc::ENOMEM)))?;
        let read = self
            .kvm_fd()
            .get_msrs(&mut msrs)
            .map_err(ioctl("KVM_GET_MSRS"))?;
        Ok(msrs
            .as_slice()
            .iter()
            .take(read)
            .map(|e| (e.index, e.data))
            .collect())
    }
}

impl Vm {
    /// Compares the CPUID and VMX capability views of `vcpus` against the
    /// first one and returns every difference (empty when consistent).
    /// Identity fields (APIC ids) and state mirrors (OSXSAVE, OSPKE, XSAVE
    /// size) are not differences; see [`compare_vcpus`].
    /// Takes [`VcpuState`] handles, so it can run while the vCPUs belong to
    /// their EMTs.
    pub fn check_mp_consistency(&self, vcpus: &[VcpuState]) -> Result<Vec<Difference>> {
        let views = vcpus
            .iter()
            .map(VcpuState::vcpu_view)
            .collect::<Result<Vec<_>>>()?;
        Ok(compare_vcpus(&views))
    }
}
