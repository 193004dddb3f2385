//! VMX capability MSRs (Intel SDM Vol. 3, Appendix A "VMX Capability
//! Reporting Facility") and the capability profile in force.
//!
//! ```
//! use hm_vmx::vmx::{Control, ControlKind, ProfileSource, VmxCapabilities, msr};
//!
//! // No VMX MSRs from the host: fall back to the documented baseline.
//! let caps = VmxCapabilities::baseline();
//! assert_eq!(caps.source(), ProfileSource::Baseline);
//! assert!(caps.controls(ControlKind::ProcBased2).can_set(Control::ENABLE_EPT.mask()));
//!
//! // The backend feeds what KVM reports, as an (MSR index -> value) map.
//! let mut msrs = caps.msrs().clone();
//! msrs.insert(msr::IA32_VMX_CR0_FIXED0, 0x8000_0021);
//! let host = VmxCapabilities::from_msrs(msrs).unwrap();
//! assert_eq!(host.source(), ProfileSource::Host);
//! ```

use std::collections::BTreeMap;
use std::fmt;

use super::controls::{ControlCaps, ControlError, ControlKind};

mod fields;

pub use fields::{ActivityStates, EptVpidCap, VmxBasic, VmxMisc};

/// Indices of the VMX capability MSRs.
pub mod msr {
    /// IA32_VMX_BASIC.
    pub const IA32_VMX_BASIC: u32 = 0x480;
    /// IA32_VMX_PINBASED_CTLS.
    pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
    /// IA32_VMX_PROCBASED_CTLS.
    pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
    /// IA32_VMX_EXIT_CTLS.
    pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
    /// IA32_VMX_ENTRY_CTLS.
    pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
    /// IA32_VMX_MISC.
    pub const IA32_VMX_MISC: u32 = 0x485;
    /// IA32_VMX_CR0_FIXED0.
    pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
    /// IA32_VMX_CR0_FIXED1.
    pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
    /// IA32_VMX_CR4_FIXED0.
    pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
    /// IA32_VMX_CR4_FIXED1.
    pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
    /// IA32_VMX_VMCS_ENUM.
    pub const IA32_VMX_VMCS_ENUM: u32 = 0x48a;
    /// IA32_VMX_PROCBASED_CTLS2.
    pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
    /// IA32_VMX_EPT_VPID_CAP.
    pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;
    /// IA32_VMX_TRUE_PINBASED_CTLS.
    pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;
    /// IA32_VMX_TRUE_PROCBASED_CTLS.
    pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48e;
    /// IA32_VMX_TRUE_EXIT_CTLS.
    pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48f;
    /// IA32_VMX_TRUE_ENTRY_CTLS.
    pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
    /// IA32_VMX_VMFUNC.
    pub const IA32_VMX_VMFUNC: u32 = 0x491;

    /// Every capability MSR this model knows, with its name.
    pub const ALL: &[(u32, &str)] = &[
        (IA32_VMX_BASIC, "IA32_VMX_BASIC"),
        (IA32_VMX_PINBASED_CTLS, "IA32_VMX_PINBASED_CTLS"),
        (IA32_VMX_PROCBASED_CTLS, "IA32_VMX_PROCBASED_CTLS"),
        (IA32_VMX_EXIT_CTLS, "IA32_VMX_EXIT_CTLS"),
        (IA32_VMX_ENTRY_CTLS, "IA32_VMX_ENTRY_CTLS"),
        (IA32_VMX_MISC, "IA32_VMX_MISC"),
        (IA32_VMX_CR0_FIXED0, "IA32_VMX_CR0_FIXED0"),
        (IA32_VMX_CR0_FIXED1, "IA32_VMX_CR0_FIXED1"),
        (IA32_VMX_CR4_FIXED0, "IA32_VMX_CR4_FIXED0"),
        (IA32_VMX_CR4_FIXED1, "IA32_VMX_CR4_FIXED1"),
        (IA32_VMX_VMCS_ENUM, "IA32_VMX_VMCS_ENUM"),
        (IA32_VMX_PROCBASED_CTLS2, "IA32_VMX_PROCBASED_CTLS2"),
        (IA32_VMX_EPT_VPID_CAP, "IA32_VMX_EPT_VPID_CAP"),
        (IA32_VMX_TRUE_PINBASED_CTLS, "IA32_VMX_TRUE_PINBASED_CTLS"),
        (IA32_VMX_TRUE_PROCBASED_CTLS, "IA32_VMX_TRUE_PROCBASED_CTLS"),
        (IA32_VMX_TRUE_EXIT_CTLS, "IA32_VMX_TRUE_EXIT_CTLS"),
        (IA32_VMX_TRUE_ENTRY_CTLS, "IA32_VMX_TRUE_ENTRY_CTLS"),
        (IA32_VMX_VMFUNC, "IA32_VMX_VMFUNC"),
    ];

    /// Name of a capability MSR, `None` for other indices.
    pub fn name(index: u32) -> Option<&'static str> {
        ALL.iter().find(|(i, _)| *i == index).map(|(_, n)| *n)
    }
}

/// Error building a capability profile from MSR values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapsError {
    /// An MSR the others say must exist was not supplied.
    #[error("capability MSR {name} ({index:#x}) is required but was not supplied")]
    MissingMsr {
        /// MSR index.
        index: u32,
        /// MSR name.
        name: &'static str,
    },
    /// A control capability MSR is self-contradictory.
    #[error("{name}: {source}")]
    Control {
        /// MSR name.
        name: &'static str,
        /// What is wrong with it.
        source: ControlError,
    },
    /// A FIXED0 MSR demands bits its FIXED1 partner forbids.
    #[error("{name}: FIXED0 bits {bad:#x} are not set in FIXED1")]
    FixedInconsistent {
        /// "CR0" or "CR4" fixed-bit pair.
        name: &'static str,
        /// Offending bits.
        bad: u64,
    },
    /// IA32_VMX_BASIC reports an impossible VMCS region size.
    #[error("IA32_VMX_BASIC reports a VMCS region of {0} bytes (must be 1..=4096)")]
    VmcsSize(u32),
}

/// Where the capability profile in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileSource {
    /// Read from the host (KVM's feature MSRs with nested VMX exposed).
    Host,
    /// The built-in [`VmxCapabilities::baseline`] profile, used when the
    /// host does not expose the VMX capability MSRs.
    Baseline,
}

impl fmt::Display for ProfileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProfileSource::Host => "host (VMX capability MSRs reported by the host)",
            ProfileSource::Baseline => {
                "baseline (typical modern Intel CPU; the host does not expose VMX capability MSRs)"
            }
        })
    }
}

/// A complete VMX capability profile: the parsed capability MSRs, with
/// the TRUE control MSRs taking over where IA32_VMX_BASIC says they exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmxCapabilities {
    source: ProfileSource,
    msrs: BTreeMap<u32, u64>,
    basic: VmxBasic,
    misc: VmxMisc,
    controls: [ControlCaps; 5],
    cr0_fixed: (u64, u64),
    cr4_fixed: (u64, u64),
    ept_vpid: EptVpidCap,
    vmfunc: u64,
}

// ---- The baseline profile, field by field. ----
//
// Modelled on a Skylake/Cascade Lake-generation Intel Xeon, the oldest
// generation still common in data centres; every value below is a typical
// reading of that generation.

/// IA32_VMX_BASIC of the baseline.
const BASELINE_BASIC: u64 = 4               // bits 30:0: VMCS revision identifier 4
    | (0x400 << 32)                          // bits 44:32: 1024-byte VMCS region
    // bit 48 clear: full physical-address width for VMX structures
    | (1 << 49)                              // bit 49: dual-monitor SMM treatment
    | (6 << 50)                              // bits 53:50: VMCS memory type write-back
    | (1 << 54)                              // bit 54: INS/OUTS instruction information
    | (1 << 55); // bit 55: TRUE control MSRs exist; bit 56 clear (error-code checks apply)

/// Pin-based: default1 bits 1, 2, 4 forced; all five controls (bits 0, 3,
/// 5, 6, 7) available. The TRUE MSR cannot clear the default1 bits either.
const BASELINE_PINBASED: u64 = (0xff << 32) | 0x16;
/// Primary processor-based: default1 bits (0x0401e172) forced; every
/// control except bits 0, 17 (tertiary controls) and 18 available.
const BASELINE_PROCBASED: u64 = (0xfff9_fffe << 32) | 0x0401_e172;
/// TRUE primary processor-based: CR3-load/-store exiting (bits 15, 16) may
/// be cleared.
const BASELINE_TRUE_PROCBASED: u64 = (0xfff9_fffe << 32) | 0x0400_6172;
/// Secondary processor-based: bits 0-14 (APIC virtualization, EPT,
/// descriptor-table exiting, RDTSCP, x2APIC, VPID, WBINVD exiting,
/// unrestricted guest, APIC-register virtualization, virtual-interrupt
/// delivery, PAUSE-loop exiting, RDRAND exiting, INVPCID, VM functions,
/// VMCS shadowing), 16 (RDSEED exiting), 17 (PML), 18 (EPT-violation #VE),
/// 19 (conceal VMX from PT), 20 (XSAVES), 22 (mode-based EPT execute) and
/// 25 (TSC scaling); no SGX, sub-page permissions or user wait/pause.
const BASELINE_PROCBASED2: u64 = 0x025f_7fff << 32;
/// VM-exit: default1 bits (0x00036dff) forced; bits 0-24 available (up to
/// "clear IA32_BNDCFGS" and "conceal VMX from PT").
const BASELINE_EXIT: u64 = (0x01ff_ffff << 32) | 0x0003_6dff;
/// TRUE VM-exit: "save debug controls" (bit 2) may be cleared.
const BASELINE_TRUE_EXIT: u64 = (0x01ff_ffff << 32) | 0x0003_6dfb;
/// VM-entry: default1 bits (0x000011ff) forced; bits 0-17 available (up to
/// "load IA32_BNDCFGS" and "conceal VMX from PT").
const BASELINE_ENTRY: u64 = (0x0003_ffff << 32) | 0x0000_11ff;
/// TRUE VM-entry: "load debug controls" (bit 2) may be cleared.
const BASELINE_TRUE_ENTRY: u64 = (0x0003_ffff << 32) | 0x0000_11fb;
/// IA32_VMX_MISC of the baseline.
const BASELINE_MISC: u64 = 5                 // bits 4:0: preemption timer ticks at TSC bit 5
    | (1 << 5)                               // bit 5: EFER.LMA stored on exit
    | (7 << 6)                               // bits 8:6: HLT, shutdown, wait-for-SIPI
    | (1 << 14)                              // bit 14: Intel PT usable in VMX operation
    | (1 << 15)                              // bit 15: RDMSR of IA32_SMBASE in SMM
    | (4 << 16)                              // bits 24:16: four CR3-target values
    // bits 27:25 zero: 512 MSRs per list
    | (1 << 28)                              // bit 28: SMM monitor control bit 2
    | (1 << 29)                              // bit 29: VMWRITE to any field
    | (1 << 30); // bit 30: zero-length software-event injection; MSEG revision 0
/// CR0 bits fixed to 1 in VMX operation: PE, NE, PG.
const BASELINE_CR0_FIXED0: u64 = 0x8000_0021;
/// CR0 bits allowed to be 1: all of the low 32.
const BASELINE_CR0_FIXED1: u64 = 0xffff_ffff;
/// CR4 bits fixed to 1 in VMX operation: VMXE.
const BASELINE_CR4_FIXED0: u64 = 0x2000;
/// CR4 bits allowed to be 1: VME..OSXMMEXCPT (0-10), VMXE, SMXE,
/// FSGSBASE, PCIDE, OSXSAVE, SMEP, SMAP, PKE (no UMIP, LA57, CET).
const BASELINE_CR4_FIXED1: u64 = 0x0077_67ff;
/// Highest VMCS field index is 0x17 (bits 9:1).
const BASELINE_VMCS_ENUM: u64 = 0x2e;
/// EPT/VPID: execute-only, 4-level walk, UC and WB paging structures, 2M
/// and 1G pages, INVEPT (single- and all-context), accessed/dirty flags,
/// advanced EPT-violation information; INVVPID with individual-address,
/// single-context, all-context and single-context-retaining-globals types.
const BASELINE_EPT_VPID_CAP: u64 = 0x0000_0f01_0673_4141;
/// VM functions: EPTP switching (function 0).
const BASELINE_VMFUNC: u64 = 1;

impl VmxCapabilities {
    /// The MSR values of the baseline profile (documented field by field in
    /// the source).
    pub fn baseline_msrs() -> BTreeMap<u32, u64> {
        use msr::*;
        BTreeMap::from([
            (IA32_VMX_BASIC, BASELINE_BASIC),
            (IA32_VMX_PINBASED_CTLS, BASELINE_PINBASED),
            (IA32_VMX_PROCBASED_CTLS, BASELINE_PROCBASED),
            (IA32_VMX_EXIT_CTLS, BASELINE_EXIT),
            (IA32_VMX_ENTRY_CTLS, BASELINE_ENTRY),
            (IA32_VMX_MISC, BASELINE_MISC),
            (IA32_VMX_CR0_FIXED0, BASELINE_CR0_FIXED0),
            (IA32_VMX_CR0_FIXED1, BASELINE_CR0_FIXED1),
            (IA32_VMX_CR4_FIXED0, BASELINE_CR4_FIXED0),
            (IA32_VMX_CR4_FIXED1, BASELINE_CR4_FIXED1),
            (IA32_VMX_VMCS_ENUM, BASELINE_VMCS_ENUM),
            (IA32_VMX_PROCBASED_CTLS2, BASELINE_PROCBASED2),
            (IA32_VMX_EPT_VPID_CAP, BASELINE_EPT_VPID_CAP),
            (IA32_VMX_TRUE_PINBASED_CTLS, BASELINE_PINBASED),
            (IA32_VMX_TRUE_PROCBASED_CTLS, BASELINE_TRUE_PROCBASED),
            (IA32_VMX_TRUE_EXIT_CTLS, BASELINE_TRUE_EXIT),
            (IA32_VMX_TRUE_ENTRY_CTLS, BASELINE_TRUE_ENTRY),
            (IA32_VMX_VMFUNC, BASELINE_VMFUNC),
        ])
    }

    /// The baseline profile: a typical modern Intel CPU, for hosts that do
    /// not expose the VMX capability MSRs.
    pub fn baseline() -> VmxCapabilities {
        match Self::parse(ProfileSource::Baseline, Self::baseline_msrs()) {
            Ok(caps) => caps,
            // The baseline is a constant checked by the unit tests.
            Err(e) => unreachable!("baseline VMX profile is invalid: {e}"),
        }
    }

    /// Builds the profile from `(MSR index -> value)` pairs read from the
    /// host. Indices this model does not know are ignored.
    pub fn from_msrs(
        msrs: impl IntoIterator<Item = (u32, u64)>,
    ) -> Result<VmxCapabilities, CapsError> {
        Self::parse(ProfileSource::Host, msrs.into_iter().collect())
    }

    /// [`from_msrs`](Self::from_msrs) when the host reports IA32_VMX_BASIC,
    /// otherwise the [`baseline`](Self::baseline).
    pub fn from_msrs_or_baseline(
        msrs: impl IntoIterator<Item = (u32, u64)>,
    ) -> Result<VmxCapabilities, CapsError> {
        let map: BTreeMap<u32, u64> = msrs.into_iter().collect();
        if map.contains_key(&msr::IA32_VMX_BASIC) {
            Self::parse(ProfileSource::Host, map)
        } else {
            Ok(Self::baseline())
        }
    }

    fn parse(source: ProfileSource, all: BTreeMap<u32, u64>) -> Result<VmxCapabilities, CapsError> {
        let msrs: BTreeMap<u32, u64> = all
            .into_iter()
            .filter(|(i, _)| msr::name(*i).is_some())
            .collect();
        let get = |index: u32| -> Result<u64, CapsError> {
            msrs.get(&index).copied().ok_or(CapsError::MissingMsr {
                index,
                name: msr::name(index).unwrap_or("?"),
            })
        };
        let ctl = |index: u32| -> Result<ControlCaps, CapsError> {
            ControlCaps::from_msr(get(index)?).map_err(|source| CapsError::Control {
                name: msr::name(index).unwrap_or("?"),
                source,
            })
        };
        let basic = VmxBasic(get(msr::IA32_VMX_BASIC)?);
        if !(1..=4096).contains(&basic.vmcs_size()) {
            return Err(CapsError::VmcsSize(basic.vmcs_size()));
        }
        let (pin, proc, exit, entry) = if basic.true_controls() {
            (
                msr::IA32_VMX_TRUE_PINBASED_CTLS,
                msr::IA32_VMX_TRUE_PROCBASED_CTLS,
                msr::IA32_VMX_TRUE_EXIT_CTLS,
                msr::IA32_VMX_TRUE_ENTRY_CTLS,
            )
        } else {
            (
                msr::IA32_VMX_PINBASED_CTLS,
                msr::IA32_VMX_PROCBASED_CTLS,
                msr::IA32_VMX_EXIT_CTLS,
                msr::IA32_VMX_ENTRY_CTLS,
            )
        };
        let pin = ctl(pin)?;
        let proc = ctl(proc)?;
        let exit = ctl(exit)?;
        let entry = ctl(entry)?;
        let proc2 = if proc.can_set(1 << 31) {
            ctl(msr::IA32_VMX_PROCBASED_CTLS2)?
        } else {
            ControlCaps::default()
        };
        // EPT (bit 1) or VPID (bit 5) make IA32_VMX_EPT_VPID_CAP exist.
        let ept_vpid = if proc2.allowed1 & 0b10_0010 != 0 {
            EptVpidCap(get(msr::IA32_VMX_EPT_VPID_CAP)?)
        } else {
            EptVpidCap(0)
        };
        // "Enable VM functions" (bit 13) makes IA32_VMX_VMFUNC exist.
        let vmfunc = if proc2.can_set(1 << 13) {
            get(msr::IA32_VMX_VMFUNC)?
        } else {
            0
        };
        let fixed = |name: &'static str, f0: u32, f1: u32| -> Result<(u64, u64), CapsError> {
            let (f0, f1) = (get(f0)?, get(f1)?);
            let bad = f0 & !f1;
            if bad != 0 {
                return Err(CapsError::FixedInconsistent { name, bad });
            }
            Ok((f0, f1))
        };
        Ok(VmxCapabilities {
            source,
            basic,
            misc: VmxMisc(get(msr::IA32_VMX_MISC)?),
            controls: [pin, proc, proc2, exit, entry],
            cr0_fixed: fixed("CR0", msr::IA32_VMX_CR0_FIXED0, msr::IA32_VMX_CR0_FIXED1)?,
            cr4_fixed: fixed("CR4", msr::IA32_VMX_CR4_FIXED0, msr::IA32_VMX_CR4_FIXED1)?,
            ept_vpid,
            vmfunc,
            msrs,
        })
    }

    /// Which profile is in force.
    pub fn source(&self) -> ProfileSource {
        self.source
    }

    /// The known capability MSRs the profile was built from.
    pub fn msrs(&self) -> &BTreeMap<u32, u64> {
        &self.msrs
    }

    /// IA32_VMX_BASIC.
    pub fn basic(&self) -> VmxBasic {
        self.basic
    }

    /// IA32_VMX_MISC.
    pub fn misc(&self) -> VmxMisc {
        self.misc
    }

    /// The control capabilities in force for `kind` (the TRUE MSR where it
    /// exists; all-zero secondary controls when the CPU has none).
    pub fn controls(&self, kind: ControlKind) -> ControlCaps {
        self.controls[kind as usize]
    }

    /// Adjusts wanted controls of `kind` against this profile.
    pub fn adjust(
        &self,
        kind: ControlKind,
        required: u32,
        optional: u32,
    ) -> Result<u32, ControlError> {
        self.controls(kind).adjust(kind, required, optional)
    }

    /// (IA32_VMX_CR0_FIXED0, IA32_VMX_CR0_FIXED1).
    pub fn cr0_fixed(&self) -> (u64, u64) {
        self.cr0_fixed
    }

    /// (IA32_VMX_CR4_FIXED0, IA32_VMX_CR4_FIXED1).
    pub fn cr4_fixed(&self) -> (u64, u64) {
        self.cr4_fixed
    }

    /// IA32_VMX_EPT_VPID_CAP (zero when neither EPT nor VPID exist).
    pub fn ept_vpid(&self) -> EptVpidCap {
        self.ept_vpid
    }

    /// IA32_VMX_VMFUNC (zero when VM functions do not exist).
    pub fn vmfunc(&self) -> u64 {
        self.vmfunc
    }
}

#[cfg(test)]
mod tests;
