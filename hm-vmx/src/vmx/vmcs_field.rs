//! VMCS field encodings (Intel SDM Vol. 3, Appendix B).
//!
//! A VMCS field is named by a 32-bit encoding that VMREAD/VMWRITE take. Its
//! bits carry the field's shape:
//!
//! | bits  | meaning |
//! |-------|---------|
//! | 0     | access type: 0 = full, 1 = high (upper 32 bits of a 64-bit field) |
//! | 9:1   | index |
//! | 11:10 | type: 0 = control, 1 = VM-exit information (read-only data), 2 = guest state, 3 = host state |
//! | 12    | reserved (0) |
//! | 14:13 | width: 0 = 16-bit, 1 = 64-bit, 2 = 32-bit, 3 = natural width |
//! | 31:15 | reserved (0) |
//!
//! ```
//! use hm_vmx::vmx::{VmcsField, FieldWidth, FieldType};
//!
//! let f = VmcsField::GUEST_RIP;
//! assert_eq!(f.raw(), 0x681e);
//! assert_eq!(f.width(), FieldWidth::Natural);
//! assert_eq!(f.field_type(), FieldType::GuestState);
//! assert_eq!(f.name(), Some("GUEST_RIP"));
//! // The upper half of a 64-bit field has its own encoding.
//! let hi = VmcsField::EPT_POINTER.high().unwrap();
//! assert_eq!(hi.raw(), 0x201b);
//! assert_eq!(VmcsField::from_raw(0x201b).unwrap(), hi);
//! ```

use std::fmt;

/// Width of a VMCS field (encoding bits 14:13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldWidth {
    /// 16-bit field.
    Bits16,
    /// 64-bit field (has a "high" access encoding for its upper half).
    Bits64,
    /// 32-bit field.
    Bits32,
    /// Natural-width field (64 bits on a processor supporting Intel 64).
    Natural,
}

/// Type of a VMCS field (encoding bits 11:10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// VM-execution, VM-exit or VM-entry control field.
    Control,
    /// VM-exit information field (read-only data).
    ExitInformation,
    /// Guest-state area field.
    GuestState,
    /// Host-state area field.
    HostState,
}

/// Access type of a VMCS field encoding (bit 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldAccess {
    /// The whole field.
    Full,
    /// The upper 32 bits of a 64-bit field.
    High,
}

/// Error decoding a raw VMCS field encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmcsFieldError {
    /// A reserved bit (12 or 31:15) is set.
    #[error("VMCS field encoding {0:#x} has reserved bits set (bit 12 or bits 31:15)")]
    ReservedBits(u32),
    /// The "high" access type is only defined for 64-bit fields.
    #[error("VMCS field encoding {0:#x} uses high access on a field that is not 64 bits wide")]
    HighAccessOnNon64(u32),
}

/// A VMCS field encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VmcsField(u32);

const RESERVED_MASK: u32 = !0x6fff;

impl VmcsField {
    /// Builds a "full" encoding from its parts. `index` is truncated to 9 bits.
    pub const fn new(width: FieldWidth, field_type: FieldType, index: u16) -> VmcsField {
        let w = match width {
            FieldWidth::Bits16 => 0,
            FieldWidth::Bits64 => 1,
            FieldWidth::Bits32 => 2,
            FieldWidth::Natural => 3,
        };
        let t = match field_type {
            FieldType::Control => 0,
            FieldType::ExitInformation => 1,
            FieldType::GuestState => 2,
            FieldType::HostState => 3,
        };
        VmcsField((w << 13) | (t << 10) | (((index as u32) & 0x1ff) << 1))
    }

    /// Decodes and validates a raw encoding.
    pub const fn from_raw(raw: u32) -> Result<VmcsField, VmcsFieldError> {
        if raw & RESERVED_MASK != 0 {
            return Err(VmcsFieldError::ReservedBits(raw));
        }
        let f = VmcsField(raw);
        if raw & 1 != 0 && !matches!(f.width(), FieldWidth::Bits64) {
            return Err(VmcsFieldError::HighAccessOnNon64(raw));
        }
        Ok(f)
    }

    /// The raw 32-bit encoding.
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// Field width (bits 14:13).
    pub const fn width(self) -> FieldWidth {
        match (self.0 >> 13) & 3 {
            0 => FieldWidth::Bits16,
            1 => FieldWidth::Bits64,
            2 => FieldWidth::Bits32,
            _ => FieldWidth::Natural,
        }
    }

    /// Field type (bits 11:10).
    pub const fn field_type(self) -> FieldType {
        match (self.0 >> 10) & 3 {
            0 => FieldType::Control,
            1 => FieldType::ExitInformation,
            2 => FieldType::GuestState,
            _ => FieldType::HostState,
        }
    }

    /// Field index (bits 9:1).
    pub const fn index(self) -> u16 {
        ((self.0 >> 1) & 0x1ff) as u16
    }

    /// Access type (bit 0).
    pub const fn access(self) -> FieldAccess {
        if self.0 & 1 == 0 {
            FieldAccess::Full
        } else {
            FieldAccess::High
        }
    }

    /// The "high" encoding of a 64-bit field; `None` for other widths or if
    /// this already is the high encoding.
    pub const fn high(self) -> Option<VmcsField> {
        match (self.width(), self.access()) {
            (FieldWidth::Bits64, FieldAccess::Full) => Some(VmcsField(self.0 | 1)),
            _ => None,
        }
    }

    /// The "full" encoding of the same field.
    pub const fn full(self) -> VmcsField {
        VmcsField(self.0 & !1)
    }

    /// The SDM-derived name of a field in this model's table (the high
    /// encoding of a 64-bit field has the full field's name with `_HIGH`
    /// appended in [`Display`](fmt::Display), but `name()` returns the base
    /// name); `None` for encodings this model does not name.
    pub fn name(self) -> Option<&'static str> {
        let full = self.full();
        Self::NAMED
            .iter()
            .find(|(f, _)| *f == full)
            .map(|(_, name)| *name)
    }
}

impl fmt::Debug for VmcsField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VmcsField({self})")
    }
}

impl fmt::Display for VmcsField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.name(), self.access()) {
            (Some(n), FieldAccess::Full) => write!(f, "{n} ({:#06x})", self.0),
            (Some(n), FieldAccess::High) => write!(f, "{n}_HIGH ({:#06x})", self.0),
            (None, _) => write!(f, "{:#06x}", self.0),
        }
    }
}

macro_rules! vmcs_fields {
    ($($(#[$doc:meta])* $name:ident = $raw:literal;)*) => {
        impl VmcsField {
            $($(#[$doc])* pub const $name: VmcsField = VmcsField($raw);)*

            /// Every field this model names, with its name, in encoding order
            /// of the SDM's tables.
            pub const NAMED: &'static [(VmcsField, &'static str)] = &[
                $((VmcsField::$name, stringify!($name)),)*
            ];
        }
    };
}

vmcs_fields! {
    // --- 16-bit control fields (B.1.1) ---
    /// Virtual-processor identifier (VPID).
    VIRTUAL_PROCESSOR_ID = 0x0000;
    /// Posted-interrupt notification vector.
    POSTED_INTR_NOTIFICATION_VECTOR = 0x0002;
    /// EPTP index.
    EPTP_INDEX = 0x0004;
    /// HLAT prefix size.
    HLAT_PREFIX_SIZE = 0x0006;
    /// Last PID-pointer index.
    LAST_PID_POINTER_INDEX = 0x0008;
    // --- 16-bit guest-state fields (B.1.2) ---
    /// Guest ES selector.
    GUEST_ES_SELECTOR = 0x0800;
    /// Guest CS selector.
    GUEST_CS_SELECTOR = 0x0802;
    /// Guest SS selector.
    GUEST_SS_SELECTOR = 0x0804;
    /// Guest DS selector.
    GUEST_DS_SELECTOR = 0x0806;
    /// Guest FS selector.
    GUEST_FS_SELECTOR = 0x0808;
    /// Guest GS selector.
    GUEST_GS_SELECTOR = 0x080a;
    /// Guest LDTR selector.
    GUEST_LDTR_SELECTOR = 0x080c;
    /// Guest TR selector.
    GUEST_TR_SELECTOR = 0x080e;
    /// Guest interrupt status.
    GUEST_INTR_STATUS = 0x0810;
    /// PML index.
    GUEST_PML_INDEX = 0x0812;
    /// Guest UINV.
    GUEST_UINV = 0x0814;
    // --- 16-bit host-state fields (B.1.3) ---
    /// Host ES selector.
    HOST_ES_SELECTOR = 0x0c00;
    /// Host CS selector.
    HOST_CS_SELECTOR = 0x0c02;
    /// Host SS selector.
    HOST_SS_SELECTOR = 0x0c04;
    /// Host DS selector.
    HOST_DS_SELECTOR = 0x0c06;
    /// Host FS selector.
    HOST_FS_SELECTOR = 0x0c08;
    /// Host GS selector.
    HOST_GS_SELECTOR = 0x0c0a;
    /// Host TR selector.
    HOST_TR_SELECTOR = 0x0c0c;
    // --- 64-bit control fields (B.2.1) ---
    /// Address of I/O bitmap A.
    IO_BITMAP_A = 0x2000;
    /// Address of I/O bitmap B.
    IO_BITMAP_B = 0x2002;
    /// Address of MSR bitmaps.
    MSR_BITMAP = 0x2004;
    /// VM-exit MSR-store address.
    VM_EXIT_MSR_STORE_ADDR = 0x2006;
    /// VM-exit MSR-load address.
    VM_EXIT_MSR_LOAD_ADDR = 0x2008;
    /// VM-entry MSR-load address.
    VM_ENTRY_MSR_LOAD_ADDR = 0x200a;
    /// Executive-VMCS pointer.
    EXECUTIVE_VMCS_POINTER = 0x200c;
    /// PML address.
    PML_ADDRESS = 0x200e;
    /// TSC offset.
    TSC_OFFSET = 0x2010;
    /// Virtual-APIC address.
    VIRTUAL_APIC_PAGE_ADDR = 0x2012;
    /// APIC-access address.
    APIC_ACCESS_ADDR = 0x2014;
    /// Posted-interrupt descriptor address.
    POSTED_INTR_DESC_ADDR = 0x2016;
    /// VM-function controls.
    VM_FUNCTION_CONTROLS = 0x2018;
    /// EPT pointer (EPTP).
    EPT_POINTER = 0x201a;
    /// EOI-exit bitmap 0.
    EOI_EXIT_BITMAP0 = 0x201c;
    /// EOI-exit bitmap 1.
    EOI_EXIT_BITMAP1 = 0x201e;
    /// EOI-exit bitmap 2.
    EOI_EXIT_BITMAP2 = 0x2020;
    /// EOI-exit bitmap 3.
    EOI_EXIT_BITMAP3 = 0x2022;
    /// EPTP-list address.
    EPTP_LIST_ADDRESS = 0x2024;
    /// VMREAD-bitmap address.
    VMREAD_BITMAP = 0x2026;
    /// VMWRITE-bitmap address.
    VMWRITE_BITMAP = 0x2028;
    /// Virtualization-exception information address.
    VE_INFORMATION_ADDRESS = 0x202a;
    /// XSS-exiting bitmap.
    XSS_EXIT_BITMAP = 0x202c;
    /// ENCLS-exiting bitmap.
    ENCLS_EXITING_BITMAP = 0x202e;
    /// Sub-page-permission-table pointer.
    SPP_TABLE_POINTER = 0x2030;
    /// TSC multiplier.
    TSC_MULTIPLIER = 0x2032;
    /// Tertiary processor-based VM-execution controls.
    TERTIARY_VM_EXEC_CONTROL = 0x2034;
    /// ENCLV-exiting bitmap.
    ENCLV_EXITING_BITMAP = 0x2036;
    // --- 64-bit read-only data field (B.2.2) ---
    /// Guest-physical address.
    GUEST_PHYSICAL_ADDRESS = 0x2400;
    // --- 64-bit guest-state fields (B.2.3) ---
    /// VMCS link pointer.
    VMCS_LINK_POINTER = 0x2800;
    /// Guest IA32_DEBUGCTL.
    GUEST_IA32_DEBUGCTL = 0x2802;
    /// Guest IA32_PAT.
    GUEST_IA32_PAT = 0x2804;
    /// Guest IA32_EFER.
    GUEST_IA32_EFER = 0x2806;
    /// Guest IA32_PERF_GLOBAL_CTRL.
    GUEST_IA32_PERF_GLOBAL_CTRL = 0x2808;
    /// Guest PDPTE0.
    GUEST_PDPTE0 = 0x280a;
    /// Guest PDPTE1.
    GUEST_PDPTE1 = 0x280c;
    /// Guest PDPTE2.
    GUEST_PDPTE2 = 0x280e;
    /// Guest PDPTE3.
    GUEST_PDPTE3 = 0x2810;
    /// Guest IA32_BNDCFGS.
    GUEST_IA32_BNDCFGS = 0x2812;
    /// Guest IA32_RTIT_CTL.
    GUEST_IA32_RTIT_CTL = 0x2814;
    /// Guest IA32_LBR_CTL.
    GUEST_IA32_LBR_CTL = 0x2816;
    /// Guest IA32_PKRS.
    GUEST_IA32_PKRS = 0x2818;
    // --- 64-bit host-state fields (B.2.4) ---
    /// Host IA32_PAT.
    HOST_IA32_PAT = 0x2c00;
    /// Host IA32_EFER.
    HOST_IA32_EFER = 0x2c02;
    /// Host IA32_PERF_GLOBAL_CTRL.
    HOST_IA32_PERF_GLOBAL_CTRL = 0x2c04;
    /// Host IA32_PKRS.
    HOST_IA32_PKRS = 0x2c06;
    // --- 32-bit control fields (B.3.1) ---
    /// Pin-based VM-execution controls.
    PIN_BASED_VM_EXEC_CONTROL = 0x4000;
    /// Primary processor-based VM-execution controls.
    CPU_BASED_VM_EXEC_CONTROL = 0x4002;
    /// Exception bitmap.
    EXCEPTION_BITMAP = 0x4004;
    /// Page-fault error-code mask.
    PAGE_FAULT_ERROR_CODE_MASK = 0x4006;
    /// Page-fault error-code match.
    PAGE_FAULT_ERROR_CODE_MATCH = 0x4008;
    /// CR3-target count.
    CR3_TARGET_COUNT = 0x400a;
    /// Primary VM-exit controls.
    VM_EXIT_CONTROLS = 0x400c;
    /// VM-exit MSR-store count.
    VM_EXIT_MSR_STORE_COUNT = 0x400e;
    /// VM-exit MSR-load count.
    VM_EXIT_MSR_LOAD_COUNT = 0x4010;
    /// VM-entry controls.
    VM_ENTRY_CONTROLS = 0x4012;
    /// VM-entry MSR-load count.
    VM_ENTRY_MSR_LOAD_COUNT = 0x4014;
    /// VM-entry interruption-information field.
    VM_ENTRY_INTR_INFO = 0x4016;
    /// VM-entry exception error code.
    VM_ENTRY_EXCEPTION_ERROR_CODE = 0x4018;
    /// VM-entry instruction length.
    VM_ENTRY_INSTRUCTION_LEN = 0x401a;
    /// TPR threshold.
    TPR_THRESHOLD = 0x401c;
    /// Secondary processor-based VM-execution controls.
    SECONDARY_VM_EXEC_CONTROL = 0x401e;
    /// PLE_Gap.
    PLE_GAP = 0x4020;
    /// PLE_Window.
    PLE_WINDOW = 0x4022;
    /// Instruction-timeout control.
    INSTRUCTION_TIMEOUT_CONTROL = 0x4024;
    // --- 32-bit read-only data fields (B.3.2) ---
    /// VM-instruction error.
    VM_INSTRUCTION_ERROR = 0x4400;
    /// Exit reason.
    VM_EXIT_REASON = 0x4402;
    /// VM-exit interruption information.
    VM_EXIT_INTR_INFO = 0x4404;
    /// VM-exit interruption error code.
    VM_EXIT_INTR_ERROR_CODE = 0x4406;
    /// IDT-vectoring information field.
    IDT_VECTORING_INFO = 0x4408;
    /// IDT-vectoring error code.
    IDT_VECTORING_ERROR_CODE = 0x440a;
    /// VM-exit instruction length.
    VM_EXIT_INSTRUCTION_LEN = 0x440c;
    /// VM-exit instruction information.
    VMX_INSTRUCTION_INFO = 0x440e;
    // --- 32-bit guest-state fields (B.3.3) ---
    /// Guest ES limit.
    GUEST_ES_LIMIT = 0x4800;
    /// Guest CS limit.
    GUEST_CS_LIMIT = 0x4802;
    /// Guest SS limit.
    GUEST_SS_LIMIT = 0x4804;
    /// Guest DS limit.
    GUEST_DS_LIMIT = 0x4806;
    /// Guest FS limit.
    GUEST_FS_LIMIT = 0x4808;
    /// Guest GS limit.
    GUEST_GS_LIMIT = 0x480a;
    /// Guest LDTR limit.
    GUEST_LDTR_LIMIT = 0x480c;
    /// Guest TR limit.
    GUEST_TR_LIMIT = 0x480e;
    /// Guest GDTR limit.
    GUEST_GDTR_LIMIT = 0x4810;
    /// Guest IDTR limit.
    GUEST_IDTR_LIMIT = 0x4812;
    /// Guest ES access rights.
    GUEST_ES_AR_BYTES = 0x4814;
    /// Guest CS access rights.
    GUEST_CS_AR_BYTES = 0x4816;
    /// Guest SS access rights.
    GUEST_SS_AR_BYTES = 0x4818;
    /// Guest DS access rights.
    GUEST_DS_AR_BYTES = 0x481a;
    /// Guest FS access rights.
    GUEST_FS_AR_BYTES = 0x481c;
    /// Guest GS access rights.
    GUEST_GS_AR_BYTES = 0x481e;
    /// Guest LDTR access rights.
    GUEST_LDTR_AR_BYTES = 0x4820;
    /// Guest TR access rights.
    GUEST_TR_AR_BYTES = 0x4822;
    /// Guest interruptibility state.
    GUEST_INTERRUPTIBILITY_INFO = 0x4824;
    /// Guest activity state.
    GUEST_ACTIVITY_STATE = 0x4826;
    /// Guest SMBASE.
    GUEST_SMBASE = 0x4828;
    /// Guest IA32_SYSENTER_CS.
    GUEST_SYSENTER_CS = 0x482a;
    /// VMX-preemption timer value.
    VMX_PREEMPTION_TIMER_VALUE = 0x482e;
    // --- 32-bit host-state field (B.3.4) ---
    /// Host IA32_SYSENTER_CS.
    HOST_IA32_SYSENTER_CS = 0x4c00;
    // --- natural-width control fields (B.4.1) ---
    /// CR0 guest/host mask.
    CR0_GUEST_HOST_MASK = 0x6000;
    /// CR4 guest/host mask.
    CR4_GUEST_HOST_MASK = 0x6002;
    /// CR0 read shadow.
    CR0_READ_SHADOW = 0x6004;
    /// CR4 read shadow.
    CR4_READ_SHADOW = 0x6006;
    /// CR3-target value 0.
    CR3_TARGET_VALUE0 = 0x6008;
    /// CR3-target value 1.
    CR3_TARGET_VALUE1 = 0x600a;
    /// CR3-target value 2.
    CR3_TARGET_VALUE2 = 0x600c;
    /// CR3-target value 3.
    CR3_TARGET_VALUE3 = 0x600e;
    // --- natural-width read-only data fields (B.4.2) ---
    /// Exit qualification.
    EXIT_QUALIFICATION = 0x6400;
    /// I/O RCX.
    IO_RCX = 0x6402;
    /// I/O RSI.
    IO_RSI = 0x6404;
    /// I/O RDI.
    IO_RDI = 0x6406;
    /// I/O RIP.
    IO_RIP = 0x6408;
    /// Guest-linear address.
    GUEST_LINEAR_ADDRESS = 0x640a;
    // --- natural-width guest-state fields (B.4.3) ---
    /// Guest CR0.
    GUEST_CR0 = 0x6800;
    /// Guest CR3.
    GUEST_CR3 = 0x6802;
    /// Guest CR4.
    GUEST_CR4 = 0x6804;
    /// Guest ES base.
    GUEST_ES_BASE = 0x6806;
    /// Guest CS base.
    GUEST_CS_BASE = 0x6808;
    /// Guest SS base.
    GUEST_SS_BASE = 0x680a;
    /// Guest DS base.
    GUEST_DS_BASE = 0x680c;
    /// Guest FS base.
    GUEST_FS_BASE = 0x680e;
    /// Guest GS base.
    GUEST_GS_BASE = 0x6810;
    /// Guest LDTR base.
    GUEST_LDTR_BASE = 0x6812;
    /// Guest TR base.
    GUEST_TR_BASE = 0x6814;
    /// Guest GDTR base.
    GUEST_GDTR_BASE = 0x6816;
    /// Guest IDTR base.
    GUEST_IDTR_BASE = 0x6818;
    /// Guest DR7.
    GUEST_DR7 = 0x681a;
    /// Guest RSP.
    GUEST_RSP = 0x681c;
    /// Guest RIP.
    GUEST_RIP = 0x681e;
    /// Guest RFLAGS.
    GUEST_RFLAGS = 0x6820;
    /// Guest pending debug exceptions.
    GUEST_PENDING_DBG_EXCEPTIONS = 0x6822;
    /// Guest IA32_SYSENTER_ESP.
    GUEST_SYSENTER_ESP = 0x6824;
    /// Guest IA32_SYSENTER_EIP.
    GUEST_SYSENTER_EIP = 0x6826;
    /// Guest IA32_S_CET.
    GUEST_S_CET = 0x6828;
    /// Guest SSP.
    GUEST_SSP = 0x682a;
    /// Guest IA32_INTERRUPT_SSP_TABLE_ADDR.
    GUEST_INTR_SSP_TABLE = 0x682c;
    // --- natural-width host-state fields (B.4.4) ---
    /// Host CR0.
    HOST_CR0 = 0x6c00;
    /// Host CR3.
    HOST_CR3 = 0x6c02;
    /// Host CR4.
    HOST_CR4 = 0x6c04;
    /// Host FS base.
    HOST_FS_BASE = 0x6c06;
    /// Host GS base.
    HOST_GS_BASE = 0x6c08;
    /// Host TR base.
    HOST_TR_BASE = 0x6c0a;
    /// Host GDTR base.
    HOST_GDTR_BASE = 0x6c0c;
    /// Host IDTR base.
    HOST_IDTR_BASE = 0x6c0e;
    /// Host IA32_SYSENTER_ESP.
    HOST_IA32_SYSENTER_ESP = 0x6c10;
    /// Host IA32_SYSENTER_EIP.
    HOST_IA32_SYSENTER_EIP = 0x6c12;
    /// Host RSP.
    HOST_RSP = 0x6c14;
    /// Host RIP.
    HOST_RIP = 0x6c16;
    /// Host IA32_S_CET.
    HOST_S_CET = 0x6c18;
    /// Host SSP.
    HOST_SSP = 0x6c1a;
    /// Host IA32_INTERRUPT_SSP_TABLE_ADDR.
    HOST_INTR_SSP_TABLE = 0x6c1c;
}

#[cfg(test)]
mod tests;
