//! VMX controls (Intel SDM Vol. 3, "VM-Execution Control Fields",
//! "VM-Exit Control Fields", "VM-Entry Control Fields") and the
//! allowed-0/allowed-1 adjustment of Appendix A.
//!
//! ```
//! use hm_vmx::vmx::{Control, ControlCaps, ControlKind};
//!
//! // A CPU's IA32_VMX_TRUE_PROCBASED_CTLS: allowed-0 in the low half,
//! // allowed-1 in the high half.
//! let caps = ControlCaps::from_msr(0xfff9_fffe_0400_6172).unwrap();
//! let want = Control::HLT_EXITING.mask() | Control::USE_IO_BITMAPS.mask();
//! let value = caps.adjust(ControlKind::ProcBased, want, 0).unwrap();
//! assert_eq!(value & want, want);
//! // Bits the CPU forces to 1 are set as well.
//! assert_eq!(value & 0x0400_6172, 0x0400_6172);
//! ```

use std::fmt;

/// Which 32-bit control field a control lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ControlKind {
    /// Pin-based VM-execution controls.
    PinBased,
    /// Primary processor-based VM-execution controls.
    ProcBased,
    /// Secondary processor-based VM-execution controls.
    ProcBased2,
    /// Primary VM-exit controls.
    Exit,
    /// VM-entry controls.
    Entry,
}

impl ControlKind {
    /// Every kind, in the order the SDM presents them.
    pub const ALL: [ControlKind; 5] = [
        ControlKind::PinBased,
        ControlKind::ProcBased,
        ControlKind::ProcBased2,
        ControlKind::Exit,
        ControlKind::Entry,
    ];

    /// Human-readable name of the control field.
    pub const fn name(self) -> &'static str {
        match self {
            ControlKind::PinBased => "pin-based VM-execution",
            ControlKind::ProcBased => "primary processor-based VM-execution",
            ControlKind::ProcBased2 => "secondary processor-based VM-execution",
            ControlKind::Exit => "VM-exit",
            ControlKind::Entry => "VM-entry",
        }
    }

    /// The "default1" bits of the field: reserved bits that must be 1 unless
    /// the TRUE capability MSR allows them to be 0 (SDM Appendix A.2).
    pub const fn default1(self) -> u32 {
        match self {
            ControlKind::PinBased => 0x0000_0016,
            ControlKind::ProcBased => 0x0401_e172,
            ControlKind::ProcBased2 => 0,
            ControlKind::Exit => 0x0003_6dff,
            ControlKind::Entry => 0x0000_11ff,
        }
    }

    fn table(self) -> &'static [(u8, &'static str)] {
        match self {
            ControlKind::PinBased => PIN_NAMES,
            ControlKind::ProcBased => PROC_NAMES,
            ControlKind::ProcBased2 => PROC2_NAMES,
            ControlKind::Exit => EXIT_NAMES,
            ControlKind::Entry => ENTRY_NAMES,
        }
    }

    /// The SDM's name of bit `bit` of this field, if it is defined.
    pub fn bit_name(self, bit: u8) -> Option<&'static str> {
        self.table()
            .iter()
            .find(|(b, _)| *b == bit)
            .map(|(_, n)| *n)
    }

    /// Names of the set bits of `bits`, undefined bits shown as `bit N`.
    pub fn describe(self, bits: u32) -> Vec<String> {
        (0..32u8)
            .filter(|b| bits & (1 << b) != 0)
            .map(|b| match self.bit_name(b) {
                Some(n) => n.to_string(),
                None => format!("bit {b}"),
            })
            .collect()
    }
}

impl fmt::Display for ControlKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One named VMX control: a bit in one of the control fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Control {
    /// The field the control lives in.
    pub kind: ControlKind,
    /// Bit position within the field.
    pub bit: u8,
}

impl Control {
    /// The control's bit as a mask of its field.
    pub const fn mask(self) -> u32 {
        1 << self.bit
    }

    /// The SDM's name of the control.
    pub fn name(self) -> &'static str {
        self.kind.bit_name(self.bit).unwrap_or("reserved")
    }
}

impl fmt::Display for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

macro_rules! controls {
    ($kind:ident, $table:ident, { $($(#[$doc:meta])* $c:ident = $bit:literal, $name:literal;)* }) => {
        impl Control {
            $($(#[$doc])* pub const $c: Control = Control { kind: ControlKind::$kind, bit: $bit };)*
        }
        const $table: &[(u8, &str)] = &[$(($bit, $name),)*];
    };
}

controls!(PinBased, PIN_NAMES, {
    /// Pin-based bit 0.
    EXTERNAL_INTERRUPT_EXITING = 0, "External-interrupt exiting";
    /// Pin-based bit 3.
    NMI_EXITING = 3, "NMI exiting";
    /// Pin-based bit 5.
    VIRTUAL_NMIS = 5, "Virtual NMIs";
    /// Pin-based bit 6.
    PREEMPTION_TIMER = 6, "Activate VMX-preemption timer";
    /// Pin-based bit 7.
    POSTED_INTERRUPTS = 7, "Process posted interrupts";
});

controls!(ProcBased, PROC_NAMES, {
    /// Primary processor-based bit 2.
    INTERRUPT_WINDOW_EXITING = 2, "Interrupt-window exiting";
    /// Primary processor-based bit 3.
    USE_TSC_OFFSETTING = 3, "Use TSC offsetting";
    /// Primary processor-based bit 7.
    HLT_EXITING = 7, "HLT exiting";
    /// Primary processor-based bit 9.
    INVLPG_EXITING = 9, "INVLPG exiting";
    /// Primary processor-based bit 10.
    MWAIT_EXITING = 10, "MWAIT exiting";
    /// Primary processor-based bit 11.
    RDPMC_EXITING = 11, "RDPMC exiting";
    /// Primary processor-based bit 12.
    RDTSC_EXITING = 12, "RDTSC exiting";
    /// Primary processor-based bit 15.
    CR3_LOAD_EXITING = 15, "CR3-load exiting";
    /// Primary processor-based bit 16.
    CR3_STORE_EXITING = 16, "CR3-store exiting";
    /// Primary processor-based bit 17.
    ACTIVATE_TERTIARY_CONTROLS = 17, "Activate tertiary controls";
    /// Primary processor-based bit 19.
    CR8_LOAD_EXITING = 19, "CR8-load exiting";
    /// Primary processor-based bit 20.
    CR8_STORE_EXITING = 20, "CR8-store exiting";
    /// Primary processor-based bit 21.
    USE_TPR_SHADOW = 21, "Use TPR shadow";
    /// Primary processor-based bit 22.
    NMI_WINDOW_EXITING = 22, "NMI-window exiting";
    /// Primary processor-based bit 23.
    MOV_DR_EXITING = 23, "MOV-DR exiting";
    /// Primary processor-based bit 24.
    UNCONDITIONAL_IO_EXITING = 24, "Unconditional I/O exiting";
    /// Primary processor-based bit 25.
    USE_IO_BITMAPS = 25, "Use I/O bitmaps";
    /// Primary processor-based bit 27.
    MONITOR_TRAP_FLAG = 27, "Monitor trap flag";
    /// Primary processor-based bit 28.
    USE_MSR_BITMAPS = 28, "Use MSR bitmaps";
    /// Primary processor-based bit 29.
    MONITOR_EXITING = 29, "MONITOR exiting";
    /// Primary processor-based bit 30.
    PAUSE_EXITING = 30, "PAUSE exiting";
    /// Primary processor-based bit 31.
    ACTIVATE_SECONDARY_CONTROLS = 31, "Activate secondary controls";
});

controls!(ProcBased2, PROC2_NAMES, {
    /// Secondary processor-based bit 0.
    VIRTUALIZE_APIC_ACCESSES = 0, "Virtualize APIC accesses";
    /// Secondary processor-based bit 1.
    ENABLE_EPT = 1, "Enable EPT";
    /// Secondary processor-based bit 2.
    DESCRIPTOR_TABLE_EXITING = 2, "Descriptor-table exiting";
    /// Secondary processor-based bit 3.
    ENABLE_RDTSCP = 3, "Enable RDTSCP";
    /// Secondary processor-based bit 4.
    VIRTUALIZE_X2APIC_MODE = 4, "Virtualize x2APIC mode";
    /// Secondary processor-based bit 5.
    ENABLE_VPID = 5, "Enable VPID";
    /// Secondary processor-based bit 6.
    WBINVD_EXITING = 6, "WBINVD exiting";
    /// Secondary processor-based bit 7.
    UNRESTRICTED_GUEST = 7, "Unrestricted guest";
    /// Secondary processor-based bit 8.
    APIC_REGISTER_VIRTUALIZATION = 8, "APIC-register virtualization";
    /// Secondary processor-based bit 9.
    VIRTUAL_INTERRUPT_DELIVERY = 9, "Virtual-interrupt delivery";
    /// Secondary processor-based bit 10.
    PAUSE_LOOP_EXITING = 10, "PAUSE-loop exiting";
    /// Secondary processor-based bit 11.
    RDRAND_EXITING = 11, "RDRAND exiting";
    /// Secondary processor-based bit 12.
    ENABLE_INVPCID = 12, "Enable INVPCID";
    /// Secondary processor-based bit 13.
    ENABLE_VM_FUNCTIONS = 13, "Enable VM functions";
    /// Secondary processor-based bit 14.
    VMCS_SHADOWING = 14, "VMCS shadowing";
    /// Secondary processor-based bit 15.
    ENCLS_EXITING = 15, "Enable ENCLS exiting";
    /// Secondary processor-based bit 16.
    RDSEED_EXITING = 16, "RDSEED exiting";
    /// Secondary processor-based bit 17.
    ENABLE_PML = 17, "Enable PML";
    /// Secondary processor-based bit 18.
    EPT_VIOLATION_VE = 18, "EPT-violation #VE";
    /// Secondary processor-based bit 19.
    CONCEAL_VMX_FROM_PT = 19, "Conceal VMX from PT";
    /// Secondary processor-based bit 20.
    ENABLE_XSAVES = 20, "Enable XSAVES/XRSTORS";
    /// Secondary processor-based bit 21.
    PASID_TRANSLATION = 21, "PASID translation";
    /// Secondary processor-based bit 22.
    MODE_BASED_EPT_EXECUTE = 22, "Mode-based execute control for EPT";
    /// Secondary processor-based bit 23.
    SUB_PAGE_WRITE_PERMISSIONS = 23, "Sub-page write permissions for EPT";
    /// Secondary processor-based bit 24.
    PT_USES_GUEST_PHYSICAL = 24, "Intel PT uses guest physical addresses";
    /// Secondary processor-based bit 25.
    USE_TSC_SCALING = 25, "Use TSC scaling";
    /// Secondary processor-based bit 26.
    ENABLE_USER_WAIT_PAUSE = 26, "Enable user wait and pause";
    /// Secondary processor-based bit 27.
    ENABLE_PCONFIG = 27, "Enable PCONFIG";
    /// Secondary processor-based bit 28.
    ENCLV_EXITING = 28, "Enable ENCLV exiting";
    /// Secondary processor-based bit 30.
    BUS_LOCK_DETECTION = 30, "VMM bus-lock detection";
    /// Secondary processor-based bit 31.
    INSTRUCTION_TIMEOUT = 31, "Instruction timeout";
});

controls!(Exit, EXIT_NAMES, {
    /// VM-exit bit 2.
    EXIT_SAVE_DEBUG_CONTROLS = 2, "Save debug controls";
    /// VM-exit bit 9.
    HOST_ADDRESS_SPACE_SIZE = 9, "Host address-space size";
    /// VM-exit bit 12.
    EXIT_LOAD_PERF_GLOBAL_CTRL = 12, "Load IA32_PERF_GLOBAL_CTRL";
    /// VM-exit bit 15.
    ACK_INTERRUPT_ON_EXIT = 15, "Acknowledge interrupt on exit";
    /// VM-exit bit 18.
    EXIT_SAVE_PAT = 18, "Save IA32_PAT";
    /// VM-exit bit 19.
    EXIT_LOAD_PAT = 19, "Load IA32_PAT";
    /// VM-exit bit 20.
    EXIT_SAVE_EFER = 20, "Save IA32_EFER";
    /// VM-exit bit 21.
    EXIT_LOAD_EFER = 21, "Load IA32_EFER";
    /// VM-exit bit 22.
    SAVE_PREEMPTION_TIMER = 22, "Save VMX-preemption timer value";
    /// VM-exit bit 23.
    EXIT_CLEAR_BNDCFGS = 23, "Clear IA32_BNDCFGS";
    /// VM-exit bit 24.
    EXIT_CONCEAL_VMX_FROM_PT = 24, "Conceal VMX from PT";
    /// VM-exit bit 25.
    EXIT_CLEAR_RTIT_CTL = 25, "Clear IA32_RTIT_CTL";
    /// VM-exit bit 26.
    EXIT_CLEAR_LBR_CTL = 26, "Clear IA32_LBR_CTL";
    /// VM-exit bit 27.
    EXIT_CLEAR_UINV = 27, "Clear UINV";
    /// VM-exit bit 28.
    EXIT_LOAD_CET_STATE = 28, "Load CET state";
    /// VM-exit bit 29.
    EXIT_LOAD_PKRS = 29, "Load PKRS";
    /// VM-exit bit 30.
    EXIT_SAVE_PERF_GLOBAL_CTRL = 30, "Save IA32_PERF_GLOBAL_CTL";
    /// VM-exit bit 31.
    ACTIVATE_SECONDARY_EXIT_CONTROLS = 31, "Activate secondary controls";
});

controls!(Entry, ENTRY_NAMES, {
    /// VM-entry bit 2.
    ENTRY_LOAD_DEBUG_CONTROLS = 2, "Load debug controls";
    /// VM-entry bit 9.
    IA32E_MODE_GUEST = 9, "IA-32e mode guest";
    /// VM-entry bit 10.
    ENTRY_TO_SMM = 10, "Entry to SMM";
    /// VM-entry bit 11.
    DEACTIVATE_DUAL_MONITOR = 11, "Deactivate dual-monitor treatment";
    /// VM-entry bit 13.
    ENTRY_LOAD_PERF_GLOBAL_CTRL = 13, "Load IA32_PERF_GLOBAL_CTRL";
    /// VM-entry bit 14.
    ENTRY_LOAD_PAT = 14, "Load IA32_PAT";
    /// VM-entry bit 15.
    ENTRY_LOAD_EFER = 15, "Load IA32_EFER";
    /// VM-entry bit 16.
    ENTRY_LOAD_BNDCFGS = 16, "Load IA32_BNDCFGS";
    /// VM-entry bit 17.
    ENTRY_CONCEAL_VMX_FROM_PT = 17, "Conceal VMX from PT";
    /// VM-entry bit 18.
    ENTRY_LOAD_RTIT_CTL = 18, "Load IA32_RTIT_CTL";
    /// VM-entry bit 19.
    ENTRY_LOAD_UINV = 19, "Load UINV";
    /// VM-entry bit 20.
    ENTRY_LOAD_CET_STATE = 20, "Load CET state";
    /// VM-entry bit 21.
    ENTRY_LOAD_LBR_CTL = 21, "Load guest IA32_LBR_CTL";
    /// VM-entry bit 22.
    ENTRY_LOAD_PKRS = 22, "Load PKRS";
});

/// Error adjusting controls or parsing a control capability MSR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Required controls cannot be set to 1 on this CPU.
    #[error("{kind} controls: the CPU does not allow required {}", kind.describe(*bits).join(", "))]
    Unsupported {
        /// The control field.
        kind: ControlKind,
        /// The required bits whose allowed-1 setting is 0.
        bits: u32,
    },
    /// A capability MSR demands a bit be 1 that it does not allow to be 1.
    #[error(
        "control capability MSR {raw:#018x} is inconsistent: allowed-0 bits {bad:#x} are not allowed-1"
    )]
    Inconsistent {
        /// The raw MSR value.
        raw: u64,
        /// allowed-0 bits missing from allowed-1.
        bad: u32,
    },
}

/// A control capability MSR split into its two halves (SDM Appendix A.3-A.5).
///
/// * `allowed0` (bits 31:0): bit X set means control bit X must be 1.
/// * `allowed1` (bits 63:32): bit X clear means control bit X must be 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ControlCaps {
    /// Bits that must be 1.
    pub allowed0: u32,
    /// Bits that may be 1.
    pub allowed1: u32,
}

impl ControlCaps {
    /// Parses a raw capability MSR value, rejecting one whose allowed-0
    /// settings are not a subset of its allowed-1 settings.
    pub fn from_msr(raw: u64) -> Result<ControlCaps, ControlError> {
        let caps = ControlCaps {
            allowed0: raw as u32,
            allowed1: (raw >> 32) as u32,
        };
        let bad = caps.allowed0 & !caps.allowed1;
        if bad != 0 {
            return Err(ControlError::Inconsistent { raw, bad });
        }
        Ok(caps)
    }

    /// The raw MSR value these capabilities come from.
    pub const fn to_msr(self) -> u64 {
        ((self.allowed1 as u64) << 32) | self.allowed0 as u64
    }

    /// Whether every control in `mask` may be 1.
    pub const fn can_set(self, mask: u32) -> bool {
        self.allowed1 & mask == mask
    }

    /// Whether the controls in `mask` may be 0.
    pub const fn can_clear(self, mask: u32) -> bool {
        self.allowed0 & mask == 0
    }

    /// Turns what a VMM wants into what the CPU allows: `required` bits
    /// must be settable (else [`ControlError::Unsupported`] naming them),
    /// `optional` bits are kept where allowed and dropped elsewhere, and
    /// every bit the CPU forces to 1 is set.
    pub fn adjust(
        self,
        kind: ControlKind,
        required: u32,
        optional: u32,
    ) -> Result<u32, ControlError> {
        let missing = required & !self.allowed1;
        if missing != 0 {
            return Err(ControlError::Unsupported {
                kind,
                bits: missing,
            });
        }
        Ok((required | optional | self.allowed0) & self.allowed1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_well_formed() {
        for kind in ControlKind::ALL {
            let mut seen = 0u32;
            for &(bit, name) in kind.table() {
                assert!(bit < 32 && !name.is_empty());
                assert_eq!(seen & (1 << bit), 0, "{kind}: bit {bit} twice");
                seen |= 1 << bit;
            }
            // Only CR3-load/-store exiting and save/load debug controls
            // are both default1 and named (the TRUE MSRs may clear them).
            let overlap = match kind {
                ControlKind::ProcBased => 0x18000,
                ControlKind::Exit | ControlKind::Entry => 0x4,
                _ => 0,
            };
            assert_eq!(seen & kind.default1(), overlap, "{kind}");
        }
        assert_eq!(Control::HLT_EXITING.mask(), 0x80);
        assert_eq!(Control::UNRESTRICTED_GUEST.name(), "Unrestricted guest");
        assert_eq!(Control::IA32E_MODE_GUEST.mask(), 0x200);
        assert_eq!(
            ControlKind::Exit.describe(1 << 9 | 1 << 1),
            ["bit 1", "Host address-space size"]
        );
    }

    #[test]
    fn from_msr_checks_consistency() {
        assert_eq!(
            ControlCaps::from_msr(0x0000_007f_0000_0016),
            Ok(ControlCaps {
                allowed0: 0x16,
                allowed1: 0x7f
            })
        );
        assert_eq!(
            ControlCaps::from_msr(0x0000_000f_0000_0016),
            Err(ControlError::Inconsistent {
                raw: 0x0000_000f_0000_0016,
                bad: 0x10
            })
        );
        let c = ControlCaps::from_msr(0x1234_5678_0000_0010).unwrap();
        assert_eq!(c.to_msr(), 0x1234_5678_0000_0010);
    }

    #[test]
    fn adjust_cases() {
        let caps = ControlCaps {
            allowed0: 0b0001_0000,
            allowed1: 0b0111_0011,
        };
        // Forced-1 bits appear even when not asked for.
        assert_eq!(caps.adjust(ControlKind::ProcBased, 0, 0), Ok(0b0001_0000));
        // Required settable bits are kept.
        assert_eq!(
            caps.adjust(ControlKind::ProcBased, 0b0000_0011, 0),
            Ok(0b0001_0011)
        );
        // Optional unsupported bits are dropped silently.
        assert_eq!(
            caps.adjust(ControlKind::ProcBased, 0b0000_0001, 0b0000_1100),
            Ok(0b0001_0001)
        );
        // Optional bits are kept where supported.
        assert_eq!(
            caps.adjust(ControlKind::ProcBased, 0, 0b1100_0000),
            Ok(0b0101_0000)
        );
        // Required unsupported bits are an error naming exactly them.
        let err = caps
            .adjust(
                ControlKind::ProcBased,
                Control::HLT_EXITING.mask() | 0b10,
                0,
            )
            .unwrap_err();
        assert_eq!(
            err,
            ControlError::Unsupported {
                kind: ControlKind::ProcBased,
                bits: 0x80
            }
        );
        assert!(err.to_string().contains("HLT exiting"), "{err}");
        assert!(caps.can_set(0b11) && !caps.can_set(0b1000_0000));
        assert!(caps.can_clear(0b1) && !caps.can_clear(0b1_0000));
    }
}
