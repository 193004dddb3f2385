//! The fields of the VMX capability MSRs that are not control words:
//! IA32_VMX_BASIC, IA32_VMX_MISC and IA32_VMX_EPT_VPID_CAP.

/// IA32_VMX_BASIC (SDM A.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxBasic(pub u64);

impl VmxBasic {
    /// VMCS revision identifier (bits 30:0).
    pub const fn revision_id(self) -> u32 {
        (self.0 & 0x7fff_ffff) as u32
    }
    /// Bytes to allocate for the VMXON and VMCS regions (bits 44:32).
    pub const fn vmcs_size(self) -> u32 {
        ((self.0 >> 32) & 0x1fff) as u32
    }
    /// VMXON/VMCS/bitmap addresses are limited to 32 bits (bit 48).
    pub const fn addresses_32bit(self) -> bool {
        self.0 & (1 << 48) != 0
    }
    /// Dual-monitor treatment of SMIs and SMM is supported (bit 49).
    pub const fn dual_monitor(self) -> bool {
        self.0 & (1 << 49) != 0
    }
    /// Memory type for VMCS access (bits 53:50): 0 = UC, 6 = WB.
    pub const fn memory_type(self) -> u8 {
        ((self.0 >> 50) & 0xf) as u8
    }
    /// VM exits for INS/OUTS report instruction information (bit 54).
    pub const fn ins_outs_info(self) -> bool {
        self.0 & (1 << 54) != 0
    }
    /// Default1 controls may be 0; the TRUE MSRs exist (bit 55).
    pub const fn true_controls(self) -> bool {
        self.0 & (1 << 55) != 0
    }
    /// VM entry may deliver hardware exceptions with or without an error
    /// code regardless of vector (bit 56).
    pub const fn no_error_code_check(self) -> bool {
        self.0 & (1 << 56) != 0
    }
}

/// Activity states the processor supports (IA32_VMX_MISC bits 8:6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivityStates {
    /// HLT (activity state 1).
    pub hlt: bool,
    /// Shutdown (activity state 2).
    pub shutdown: bool,
    /// Wait-for-SIPI (activity state 3).
    pub wait_for_sipi: bool,
}

/// IA32_VMX_MISC (SDM A.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxMisc(pub u64);

impl VmxMisc {
    /// The VMX-preemption timer counts down by 1 every time TSC bit X
    /// changes, X being bits 4:0.
    pub const fn preemption_timer_rate(self) -> u8 {
        (self.0 & 0x1f) as u8
    }
    /// VM exits store EFER.LMA into the "IA-32e mode guest" entry control
    /// (bit 5).
    pub const fn stores_lma(self) -> bool {
        self.0 & (1 << 5) != 0
    }
    /// Supported non-active activity states (bits 8:6).
    pub const fn activity_states(self) -> ActivityStates {
        ActivityStates {
            hlt: self.0 & (1 << 6) != 0,
            shutdown: self.0 & (1 << 7) != 0,
            wait_for_sipi: self.0 & (1 << 8) != 0,
        }
    }
    /// Intel PT may be used in VMX operation (bit 14).
    pub const fn pt_in_vmx(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    /// Number of CR3-target values (bits 24:16).
    pub const fn cr3_targets(self) -> u16 {
        ((self.0 >> 16) & 0x1ff) as u16
    }
    /// Recommended maximum number of MSRs in each MSR list: 512 * (N + 1)
    /// with N in bits 27:25.
    pub const fn max_msr_list(self) -> u32 {
        512 * ((((self.0 >> 25) & 7) as u32) + 1)
    }
    /// VMWRITE may write any supported field, VM-exit information included
    /// (bit 29).
    pub const fn vmwrite_any_field(self) -> bool {
        self.0 & (1 << 29) != 0
    }
    /// VM entry may inject software interrupts/exceptions with an
    /// instruction length of 0 (bit 30).
    pub const fn zero_length_injection(self) -> bool {
        self.0 & (1 << 30) != 0
    }
    /// MSEG revision identifier (bits 63:32).
    pub const fn mseg_revision(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// IA32_VMX_EPT_VPID_CAP (SDM A.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EptVpidCap(pub u64);

impl EptVpidCap {
    const fn bit(self, n: u32) -> bool {
        self.0 & (1 << n) != 0
    }
    /// Execute-only EPT translations (bit 0).
    pub const fn execute_only(self) -> bool {
        self.bit(0)
    }
    /// 4-level page walk (bit 6).
    pub const fn page_walk_4(self) -> bool {
        self.bit(6)
    }
    /// 5-level page walk (bit 7).
    pub const fn page_walk_5(self) -> bool {
        self.bit(7)
    }
    /// EPT paging structures may be uncacheable (bit 8).
    pub const fn memory_type_uc(self) -> bool {
        self.bit(8)
    }
    /// EPT paging structures may be write-back (bit 14).
    pub const fn memory_type_wb(self) -> bool {
        self.bit(14)
    }
    /// 2-MByte EPT pages (bit 16).
    pub const fn pages_2m(self) -> bool {
        self.bit(16)
    }
    /// 1-GByte EPT pages (bit 17).
    pub const fn pages_1g(self) -> bool {
        self.bit(17)
    }
    /// INVEPT supported (bit 20).
    pub const fn invept(self) -> bool {
        self.bit(20)
    }
    /// Accessed and dirty flags for EPT (bit 21).
    pub const fn accessed_dirty(self) -> bool {
        self.bit(21)
    }
    /// Advanced VM-exit information for EPT violations (bit 22).
    pub const fn advanced_exit_info(self) -> bool {
        self.bit(22)
    }
    /// Supervisor shadow-stack control (bit 23).
    pub const fn supervisor_shadow_stack(self) -> bool {
        self.bit(23)
    }
    /// Single-context INVEPT (bit 25).
    pub const fn invept_single_context(self) -> bool {
        self.bit(25)
    }
    /// All-context INVEPT (bit 26).
    pub const fn invept_all_context(self) -> bool {
        self.bit(26)
    }
    /// INVVPID supported (bit 32).
    pub const fn invvpid(self) -> bool {
        self.bit(32)
    }
    /// Individual-address INVVPID (bit 40).
    pub const fn invvpid_individual_address(self) -> bool {
        self.bit(40)
    }
    /// Single-context INVVPID (bit 41).
    pub const fn invvpid_single_context(self) -> bool {
        self.bit(41)
    }
    /// All-context INVVPID (bit 42).
    pub const fn invvpid_all_context(self) -> bool {
        self.bit(42)
    }
    /// Single-context-retaining-globals INVVPID (bit 43).
    pub const fn invvpid_single_context_retain_globals(self) -> bool {
        self.bit(43)
    }
}
