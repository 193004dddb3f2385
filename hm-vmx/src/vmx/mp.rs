//! Multi-processor consistency of the CPUID and VMX capability views.
//!
//! The SDM asks VMM software to make sure every logical processor it uses
//! reports the same VMX capabilities (Vol. 3, the multi-processor
//! considerations of the VMX chapter); a guest likewise expects identical
//! CPUID on all its processors apart from per-processor identity. This
//! module compares the views of several vCPUs against vCPU 0.
//!
//! Ignored because they legitimately differ per processor or follow its
//! current state: CPUID.1:EBX[31:24] (initial APIC ID), CPUID.0xB:EDX and
//! CPUID.0x1F:EDX (x2APIC ID), CPUID.0x8000001E EAX, EBX[7:0] and ECX[7:0]
//! (extended APIC, core and node ids), CPUID.1:ECX[27] (OSXSAVE, mirrors
//! CR4), CPUID.7.0:ECX[4] (OSPKE, mirrors CR4) and CPUID.0xD.0:EBX (XSAVE
//! size for the current XCR0).
//!
//! ```
//! use std::collections::BTreeMap;
//! use hm_vmx::vmx::{compare_vcpus, VcpuView};
//!
//! let mut a = VcpuView::default();
//! a.cpuid.insert((1, 0), [0x906ea, 0x0010_0800, 0x7ffa_fbff, 0xbfeb_fbff]);
//! let mut b = a.clone();
//! // Different APIC ID: fine.
//! b.cpuid.insert((1, 0), [0x906ea, 0x0110_0800, 0x7ffa_fbff, 0xbfeb_fbff]);
//! assert!(compare_vcpus(&[a.clone(), b.clone()]).is_empty());
//! // A different feature bit is reported.
//! b.cpuid.insert((1, 0), [0x906ea, 0x0110_0800, 0x7ffa_fbfe, 0xbfeb_fbff]);
//! let d = compare_vcpus(&[a, b]);
//! assert_eq!(d.len(), 1);
//! assert_eq!(d[0].to_string(), "vCPU 1: CPUID 0x1.0 ECX = 0x7ffafbfe, vCPU 0 has 0x7ffafbff");
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One vCPU's CPUID and VMX capability MSR view.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VcpuView {
    /// CPUID results keyed by (leaf, subleaf): [EAX, EBX, ECX, EDX].
    pub cpuid: BTreeMap<(u32, u32), [u32; 4]>,
    /// VMX capability MSRs (index -> value), e.g. from
    /// [`VmxCapabilities::msrs`](super::VmxCapabilities::msrs).
    pub vmx_msrs: BTreeMap<u32, u64>,
}

/// What differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ViewItem {
    /// One CPUID output register: leaf, subleaf, register 0-3 (EAX..EDX).
    Cpuid {
        /// Leaf.
        leaf: u32,
        /// Subleaf.
        subleaf: u32,
        /// 0 = EAX, 1 = EBX, 2 = ECX, 3 = EDX.
        reg: u8,
    },
    /// A VMX capability MSR.
    Msr(u32),
}

impl fmt::Display for ViewItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ViewItem::Cpuid { leaf, subleaf, reg } => {
                let r = ["EAX", "EBX", "ECX", "EDX"][usize::from(reg & 3)];
                write!(f, "CPUID {leaf:#x}.{subleaf} {r}")
            }
            ViewItem::Msr(i) => match super::caps::msr::name(i) {
                Some(n) => write!(f, "{n}"),
                None => write!(f, "MSR {i:#x}"),
            },
        }
    }
}

/// One difference between a vCPU and vCPU 0. `None` means the item is
/// missing from that view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Index of the differing vCPU (never 0).
    pub vcpu: usize,
    /// The item.
    pub item: ViewItem,
    /// vCPU 0's value.
    pub reference: Option<u64>,
    /// This vCPU's value.
    pub value: Option<u64>,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: Option<u64>| match v {
            Some(v) => format!("{v:#x}"),
            None => "nothing".to_string(),
        };
        write!(
            f,
            "vCPU {}: {} = {}, vCPU 0 has {}",
            self.vcpu,
            self.item,
            show(self.value),
            show(self.reference)
        )
    }
}

/// The mask of bits compared for one CPUID output register.
fn cpuid_compare_mask(leaf: u32, subleaf: u32, reg: u8) -> u32 {
    match (leaf, subleaf, reg) {
        (1, _, 1) => 0x00ff_ffff,
        (1, _, 2) => !(1 << 27),
        (7, 0, 2) => !(1 << 4),
        (0xb | 0x1f, _, 3) => 0,
        (0xd, 0, 1) => 0,
        (0x8000_001e, _, 0) => 0,
        (0x8000_001e, _, 1 | 2) => !0xff,
        _ => !0,
    }
}

/// Compares every view against the first and lists all differences, in
/// vCPU order, then item order.
pub fn compare_vcpus(views: &[VcpuView]) -> Vec<Difference> {
    let Some((first, rest)) = views.split_first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, v) in rest.iter().enumerate() {
        let vcpu = i + 1;
        let leaves: BTreeSet<&(u32, u32)> = first.cpuid.keys().chain(v.cpuid.keys()).collect();
        for &(leaf, subleaf) in leaves {
            let a = first.cpuid.get(&(leaf, subleaf));
            let b = v.cpuid.get(&(leaf, subleaf));
            for reg in 0..4u8 {
                let mask = cpuid_compare_mask(leaf, subleaf, reg);
                let pick = |r: Option<&[u32; 4]>| r.map(|r| r[usize::from(reg)]);
                let (ra, rb) = (pick(a), pick(b));
                let same = match (ra, rb) {
                    (Some(x), Some(y)) => x & mask == y & mask,
                    _ => false,
                };
                if !same {
                    out.push(Difference {
                        vcpu,
                        item: ViewItem::Cpuid { leaf, subleaf, reg },
                        reference: ra.map(u64::from),
                        value: rb.map(u64::from),
                    });
                }
            }
        }
        let msrs: BTreeSet<&u32> = first.vmx_msrs.keys().chain(v.vmx_msrs.keys()).collect();
        for &m in msrs {
            let (ra, rb) = (first.vmx_msrs.get(&m).copied(), v.vmx_msrs.get(&m).copied());
            if ra != rb {
                out.push(Difference {
                    vcpu,
                    item: ViewItem::Msr(m),
                    reference: ra,
                    value: rb,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::{VmxCapabilities, msr};

    fn view() -> VcpuView {
        VcpuView {
            cpuid: BTreeMap::from([
                ((0, 0), [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
                ((1, 0), [0x906ea, 0x0010_0800, 0x7ffa_fbff, 0xbfeb_fbff]),
                ((7, 0), [0, 0x029c_6fbf, 0x10, 0]),
                ((0xb, 0), [1, 2, 0x100, 0]),
                ((0xd, 0), [7, 0x340, 0x340, 0]),
            ]),
            vmx_msrs: VmxCapabilities::baseline_msrs(),
        }
    }

    #[test]
    fn identical_and_identity_fields_agree() {
        assert!(compare_vcpus(&[]).is_empty());
        assert!(compare_vcpus(&[view()]).is_empty());
        let mut b = view();
        b.cpuid.insert(
            (1, 0),
            [0x906ea, 0x0310_0800, 0x7ffa_fbff & !(1 << 27), 0xbfeb_fbff],
        );
        b.cpuid.insert((7, 0), [0, 0x029c_6fbf, 0, 0]);
        b.cpuid.insert((0xb, 0), [1, 2, 0x100, 3]);
        b.cpuid.insert((0xd, 0), [7, 0x240, 0x340, 0]);
        assert!(compare_vcpus(&[view(), b.clone(), b]).is_empty());
    }

    #[test]
    fn differences_are_all_reported() {
        let mut b = view();
        b.cpuid.insert((7, 0), [0, 0x029c_6fbe, 0x10, 0]);
        b.cpuid.remove(&(0xd, 0));
        b.cpuid.insert((0x8000_0001, 0), [0, 0, 1, 0]);
        b.vmx_msrs.insert(msr::IA32_VMX_PROCBASED_CTLS2, 0);
        let c = view();
        let d = compare_vcpus(&[view(), c, b]);
        assert!(d.iter().all(|d| d.vcpu == 2));
        let items: Vec<String> = d.iter().map(|d| d.item.to_string()).collect();
        assert_eq!(
            items,
            [
                "CPUID 0x7.0 EBX",
                "CPUID 0xd.0 EAX",
                "CPUID 0xd.0 EBX",
                "CPUID 0xd.0 ECX",
                "CPUID 0xd.0 EDX",
                "CPUID 0x80000001.0 EAX",
                "CPUID 0x80000001.0 EBX",
                "CPUID 0x80000001.0 ECX",
                "CPUID 0x80000001.0 EDX",
                "IA32_VMX_PROCBASED_CTLS2",
            ]
        );
        assert_eq!(d[1].value, None);
        assert_eq!(d[5].reference, None);
        assert!(
            d[9].to_string()
                .starts_with("vCPU 2: IA32_VMX_PROCBASED_CTLS2 = 0x0, vCPU 0 has 0x")
        );
        assert_eq!(
            d[1].to_string(),
            "vCPU 2: CPUID 0xd.0 EAX = nothing, vCPU 0 has 0x7"
        );
    }
}
