//! Text of the `hm` info handler: backend, host vendor, the VMX capability
//! profile in force and the controls the backend would program.
//!
//! ```
//! use hm_vmx::vmx::{HostVendor, VmxCapabilities, format_hm_info};
//!
//! // CPUID leaf 0 returns the vendor in EBX, EDX, ECX.
//! let vendor = HostVendor::from_cpuid0(0x756e_6547, 0x4965_6e69, 0x6c65_746e);
//! assert_eq!(vendor, HostVendor::Intel);
//! let text = format_hm_info("kvm", &vendor, &VmxCapabilities::baseline());
//! assert!(text.contains("Backend:          kvm"));
//! assert!(text.contains("HLT exiting"));
//! ```

use std::fmt::{self, Write};

use super::caps::VmxCapabilities;
use super::programmed::ProgrammedControls;

/// The host CPU vendor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostVendor {
    /// "GenuineIntel".
    Intel,
    /// "AuthenticAMD".
    Amd,
    /// "HygonGenuine".
    Hygon,
    /// Any other vendor string.
    Other(String),
}

impl HostVendor {
    /// Decodes the vendor from CPUID leaf 0's EBX, EDX and ECX (in that
    /// order, as the 12-byte string is laid out).
    pub fn from_cpuid0(ebx: u32, edx: u32, ecx: u32) -> HostVendor {
        let mut bytes = Vec::with_capacity(12);
        for r in [ebx, edx, ecx] {
            bytes.extend_from_slice(&r.to_le_bytes());
        }
        match &bytes[..] {
            b"GenuineIntel" => HostVendor::Intel,
            b"AuthenticAMD" => HostVendor::Amd,
            b"HygonGenuine" => HostVendor::Hygon,
            other => HostVendor::Other(String::from_utf8_lossy(other).into_owned()),
        }
    }
}

impl fmt::Display for HostVendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostVendor::Intel => f.write_str("Intel (GenuineIntel)"),
            HostVendor::Amd => f.write_str("AMD (AuthenticAMD)"),
            HostVendor::Hygon => f.write_str("Hygon (HygonGenuine)"),
            HostVendor::Other(s) => write!(f, "{s:?}"),
        }
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Formats the `hm` info text.
pub fn format_hm_info(backend: &str, vendor: &HostVendor, caps: &VmxCapabilities) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write_info(&mut s, backend, vendor, caps);
    s
}

fn write_info(
    s: &mut String,
    backend: &str,
    vendor: &HostVendor,
    caps: &VmxCapabilities,
) -> fmt::Result {
    let b = caps.basic();
    let m = caps.misc();
    let e = caps.ept_vpid();
    writeln!(s, "Backend:          {backend}")?;
    writeln!(s, "Host vendor:      {vendor}")?;
    writeln!(s, "VMX profile:      {}", caps.source())?;
    writeln!(
        s,
        "  VMCS revision {:#x}, region {} bytes, memory type {}, TRUE controls: {}",
        b.revision_id(),
        b.vmcs_size(),
        b.memory_type(),
        yes(b.true_controls())
    )?;
    let a = m.activity_states();
    writeln!(
        s,
        "  activity states: HLT {}, shutdown {}, wait-for-SIPI {}; preemption timer: TSC >> {}; CR3 targets: {}",
        yes(a.hlt),
        yes(a.shutdown),
        yes(a.wait_for_sipi),
        m.preemption_timer_rate(),
        m.cr3_targets()
    )?;
    writeln!(
        s,
        "  EPT: 4-level {}, 5-level {}, 2M {}, 1G {}, A/D {}, execute-only {}; INVVPID: {}",
        yes(e.page_walk_4()),
        yes(e.page_walk_5()),
        yes(e.pages_2m()),
        yes(e.pages_1g()),
        yes(e.accessed_dirty()),
        yes(e.execute_only()),
        yes(e.invvpid())
    )?;
    let (c0f0, c0f1) = caps.cr0_fixed();
    let (c4f0, c4f1) = caps.cr4_fixed();
    writeln!(
        s,
        "  CR0 fixed0/fixed1 {c0f0:#x}/{c0f1:#x}, CR4 fixed0/fixed1 {c4f0:#x}/{c4f1:#x}"
    )?;
    match ProgrammedControls::kvm_like(caps) {
        Ok(p) => {
            writeln!(s, "Controls the backend would program:")?;
            write!(s, "{p}")?;
        }
        Err(err) => writeln!(s, "Controls: cannot be programmed: {err}")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::msr;

    #[test]
    fn vendors() {
        let v = |s: &[u8; 12]| {
            let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
            HostVendor::from_cpuid0(w(0), w(4), w(8))
        };
        assert_eq!(v(b"GenuineIntel"), HostVendor::Intel);
        assert_eq!(v(b"AuthenticAMD"), HostVendor::Amd);
        assert_eq!(v(b"HygonGenuine"), HostVendor::Hygon);
        assert_eq!(
            v(b"KVMKVMKVM\0\0\0"),
            HostVendor::Other("KVMKVMKVM\0\0\0".into())
        );
        assert_eq!(HostVendor::Amd.to_string(), "AMD (AuthenticAMD)");
    }

    #[test]
    fn info_text() {
        let t = format_hm_info(
            "kvm (hm-vmx)",
            &HostVendor::Amd,
            &VmxCapabilities::baseline(),
        );
        for want in [
            "Backend:          kvm (hm-vmx)",
            "Host vendor:      AMD (AuthenticAMD)",
            "VMX profile:      baseline",
            "VMCS revision 0x4, region 1024 bytes, memory type 6, TRUE controls: yes",
            "CR0 fixed0/fixed1 0x80000021/0xffffffff",
            "Controls the backend would program:",
            "Enable EPT",
            "Unrestricted guest",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        let mut m = VmxCapabilities::baseline_msrs();
        m.insert(msr::IA32_VMX_TRUE_PINBASED_CTLS, 0x16_0000_0016);
        let caps = VmxCapabilities::from_msrs(m).unwrap();
        let t = format_hm_info("kvm", &HostVendor::Intel, &caps);
        assert!(t.contains("VMX profile:      host"), "{t}");
        assert!(
            t.contains("Controls: cannot be programmed: pin-based VM-execution controls: the CPU does not allow required External-interrupt exiting, NMI exiting"),
            "{t}"
        );
    }
}
