//! What the host offers a VT-x VMM: the VMX capability profile (read from
//! KVM's feature MSRs when the host exposes nested VMX, the model's
//! baseline otherwise), the host CPU vendor, and the `hm` info text.
//!
//! ```no_run
//! let hv = hm_vmx::Hypervisor::open()?;
//! let caps = hv.vmx_capabilities()?;
//! println!("VMX profile in force: {}", caps.source());
//! print!("{}", hv.hm_info_text());
//! # Ok::<(), hm_vmx::Error>(())
//! ```

use std::path::Path;

use kvm_bindings::{Msrs, kvm_msr_entry};
use kvm_ioctls::{Cap, Error as KvmError};

use crate::error::{Error, Result, ioctl};
use crate::hypervisor::Hypervisor;
use crate::vmx::{HostVendor, VmxCapabilities, format_hm_info, msr};

impl Hypervisor {
    /// The VMX capability profile in force: the host's VMX capability MSRs
    /// when KVM lists them among its feature MSRs (an Intel host with
    /// nested VMX), otherwise the model's documented
    /// [baseline](VmxCapabilities::baseline). [`VmxCapabilities::source`]
    /// says which.
    pub fn vmx_capabilities(&self) -> Result<VmxCapabilities> {
        VmxCapabilities::from_msrs_or_baseline(self.host_vmx_msrs()?)
            .map_err(Error::VmxCapabilities)
    }

    /// The VMX capability MSRs among KVM's feature MSRs, with their values
    /// (`KVM_GET_MSR_FEATURE_INDEX_LIST` and `KVM_GET_MSRS` on `/dev/kvm`).
    fn host_vmx_msrs(&self) -> Result<Vec<(u32, u64)>> {
        let kvm = self.kvm();
        if !kvm.check_extension(Cap::GetMsrFeatures) {
            return Ok(Vec::new());
        }
        let list = kvm
            .get_msr_feature_index_list()
            .map_err(ioctl("KVM_GET_MSR_FEATURE_INDEX_LIST"))?;
        let entries: Vec<kvm_msr_entry> = list
            .as_slice()
            .iter()
            .filter(|&&index| msr::name(index).is_some())
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|_| ioctl("KVM_GET_MSRS")(KvmError::new(libc::ENOMEM)))?;
        let read = kvm.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))?;
        Ok(msrs
            .as_slice()
            .iter()
            .take(read)
            .map(|e| (e.index, e.data))
            .collect())
    }

    /// The host CPU's vendor (CPUID leaf 0 of the CPU this runs on).
    pub fn host_vendor() -> HostVendor {
        let r = std::arch::x86_64::__cpuid(0);
        HostVendor::from_cpuid0(r.ebx, r.edx, r.ecx)
    }

    /// The backend's name for reports: `KVM (kvm-ioctls)`, the KVM API
    /// version, and which KVM implementation the host runs when its kernel
    /// module can be seen in sysfs (`kvm_pvm`, `kvm_intel` or `kvm_amd`).
    pub fn backend_name(&self) -> String {
        let layer = ["kvm_pvm", "kvm_intel", "kvm_amd"]
            .into_iter()
            .find(|m| Path::new("/sys/module").join(m).exists());
        let layer = match layer {
            Some("kvm_pvm") => "kvm_pvm (software virtualization layer)",
            Some("kvm_intel") => "kvm_intel (Intel VT-x)",
            Some("kvm_amd") => "kvm_amd (AMD-V)",
            _ => "KVM implementation not identified",
        };
        format!(
            "KVM (kvm-ioctls), API version {}, {layer}",
            self.kvm().get_api_version()
        )
    }

    /// The text of the `hm` info handler: backend, host vendor, the VMX
    /// capability profile in force and the controls the backend would
    /// program under it.
    pub fn hm_info_text(&self) -> String {
        let backend = self.backend_name();
        let vendor = Self::host_vendor();
        match self.vmx_capabilities() {
            Ok(caps) => format_hm_info(&backend, &vendor, &caps),
            Err(e) => {
                let mut text = format_hm_info(&backend, &vendor, &VmxCapabilities::baseline());
                text.push_str(&format!(
                    "Note: {e}; the baseline profile is shown instead.\n"
                ));
                text
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::kvm_available;
    use crate::vmx::ProfileSource;

    #[test]
    fn host_vendor_is_known_on_x86() {
        // Whatever the CPU, the vendor decodes to 12 bytes of text.
        match Hypervisor::host_vendor() {
            HostVendor::Other(s) => assert_eq!(s.len(), 12, "{s:?}"),
            HostVendor::Intel | HostVendor::Amd | HostVendor::Hygon => {}
        }
    }

    #[test]
    fn profile_and_info_text_from_the_host() {
        if !kvm_available("profile_and_info_text_from_the_host") {
            return;
        }
        let hv = Hypervisor::open().unwrap();
        let caps = hv.vmx_capabilities().unwrap();
        let vendor = Hypervisor::host_vendor();
        // Only an Intel host can expose VMX capability MSRs.
        if vendor != HostVendor::Intel {
            assert_eq!(caps.source(), ProfileSource::Baseline);
        }
        let text = hv.hm_info_text();
        assert!(
            text.starts_with("Backend:          KVM (kvm-ioctls), API version 12, "),
            "{text}"
        );
        assert!(
            text.contains(&format!("Host vendor:      {vendor}")),
            "{text}"
        );
        assert!(
            text.contains(&format!("VMX profile:      {}", caps.source())),
            "{text}"
        );
        assert!(
            text.contains("Controls the backend would program:"),
            "{text}"
        );
    }
}
