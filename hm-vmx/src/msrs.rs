//! Reading and writing a vCPU's model-specific registers.
//!
//! ```no_run
//! use hm_vmx::MsrValue;
//!
//! let hv = hm_vmx::Hypervisor::open()?;
//! let vm = hv.create_vm()?;
//! let vcpu = vm.create_vcpu(0)?;
//! // IA32_SYSENTER_CS
//! vcpu.state().set_msrs(&[MsrValue { index: 0x174, value: 0x10 }])?;
//! assert_eq!(vcpu.state().msrs(&[0x174])?[0].value, 0x10);
//! # Ok::<(), hm_vmx::Error>(())
//! ```

use kvm_bindings::{Msrs, kvm_msr_entry};

use crate::error::{Error, Result, ioctl};
use crate::vcpu::VcpuState;

/// One MSR: index and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsrValue {
    /// The MSR's index (ECX of `rdmsr`).
    pub index: u32,
    /// Its value.
    pub value: u64,
}

/// MSRs per `KVM_GET_MSRS`/`KVM_SET_MSRS` call (KVM's limit is larger).
const MSR_BATCH: usize = 64;

impl VcpuState {
    /// Reads the MSRs `indices` (`KVM_GET_MSRS`, in batches). An MSR the
    /// vCPU refuses to read is left out of the result, which otherwise
    /// follows the order of `indices`.
    pub fn msrs(&self, indices: &[u32]) -> Result<Vec<MsrValue>> {
        let mut out = Vec::with_capacity(indices.len());
        let mut rest = indices;
        while !rest.is_empty() {
            let batch = &rest[..rest.len().min(MSR_BATCH)];
            let entries: Vec<kvm_msr_entry> = batch
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = msr_list(&entries)?;
            let read = self
                .kvm_fd()
                .get_msrs(&mut msrs)
                .map_err(ioctl("KVM_GET_MSRS"))?
                .min(batch.len());
            out.extend(msrs.as_slice()[..read].iter().map(|e| MsrValue {
                index: e.index,
                value: e.data,
            }));
            // KVM stops at the first MSR it cannot read: skip that one.
            let consumed = if read < batch.len() { read + 1 } else { read };
            rest = &rest[consumed..];
        }
        Ok(out)
    }

    /// Writes the MSRs in order (`KVM_SET_MSRS`, in batches). The first one
    /// KVM refuses ends the write with [`Error::MsrRefused`] naming it; the
    /// MSRs before it are written.
    pub fn set_msrs(&self, values: &[MsrValue]) -> Result<()> {
        for batch in values.chunks(MSR_BATCH) {
            let entries: Vec<kvm_msr_entry> = batch
                .iter()
                .map(|m| kvm_msr_entry {
                    index: m.index,
                    data: m.value,
                    ..Default::default()
                })
                .collect();
            let written = self
                .kvm_fd()
                .set_msrs(&msr_list(&entries)?)
                .map_err(ioctl("KVM_SET_MSRS"))?;
            if let Some(refused) = batch.get(written) {
                return Err(Error::MsrRefused {
                    index: refused.index,
                    value: refused.value,
                });
            }
        }
        Ok(())
    }
}

/// KVM's MSR list holding `entries` (at most [`MSR_BATCH`], well below
/// KVM's limit).
fn msr_list(entries: &[kvm_msr_entry]) -> Result<Msrs> {
    Msrs::from_entries(entries).map_err(|e| Error::BadCpuState(format!("MSR list: {e}")))
}
