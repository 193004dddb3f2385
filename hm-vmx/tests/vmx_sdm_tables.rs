//! Table-driven checks of the model against the Intel SDM's own tables
//! (Vol. 3, Appendix B "Field Encoding in VMCS" and Appendix C "VMX Basic
//! Exit Reasons"). The numbers below were written down from the SDM tables,
//! independently of the constants in the crate.

use hm_vmx::vmx::{ExitReason, FieldType, FieldWidth, VmcsField};

use FieldType::{Control as C, ExitInformation as X, GuestState as G, HostState as H};
use FieldWidth::{Bits16 as W16, Bits32 as W32, Bits64 as W64, Natural as WN};

/// (field, SDM encoding, width, type, index)
const FIELDS: &[(VmcsField, u32, FieldWidth, FieldType, u16)] = &[
    // B.1.1 16-bit control fields
    (VmcsField::VIRTUAL_PROCESSOR_ID, 0x0000, W16, C, 0),
    (
        VmcsField::POSTED_INTR_NOTIFICATION_VECTOR,
        0x0002,
        W16,
        C,
        1,
    ),
    (VmcsField::EPTP_INDEX, 0x0004, W16, C, 2),
    // B.1.2 16-bit guest-state fields
    (VmcsField::GUEST_ES_SELECTOR, 0x0800, W16, G, 0),
    (VmcsField::GUEST_CS_SELECTOR, 0x0802, W16, G, 1),
    (VmcsField::GUEST_SS_SELECTOR, 0x0804, W16, G, 2),
    (VmcsField::GUEST_DS_SELECTOR, 0x0806, W16, G, 3),
    (VmcsField::GUEST_FS_SELECTOR, 0x0808, W16, G, 4),
    (VmcsField::GUEST_GS_SELECTOR, 0x080a, W16, G, 5),
    (VmcsField::GUEST_LDTR_SELECTOR, 0x080c, W16, G, 6),
    (VmcsField::GUEST_TR_SELECTOR, 0x080e, W16, G, 7),
    (VmcsField::GUEST_INTR_STATUS, 0x0810, W16, G, 8),
    (VmcsField::GUEST_PML_INDEX, 0x0812, W16, G, 9),
    // B.1.3 16-bit host-state fields
    (VmcsField::HOST_ES_SELECTOR, 0x0c00, W16, H, 0),
    (VmcsField::HOST_CS_SELECTOR, 0x0c02, W16, H, 1),
    (VmcsField::HOST_SS_SELECTOR, 0x0c04, W16, H, 2),
    (VmcsField::HOST_TR_SELECTOR, 0x0c0c, W16, H, 6),
    // B.2.1 64-bit control fields
    (VmcsField::IO_BITMAP_A, 0x2000, W64, C, 0),
    (VmcsField::IO_BITMAP_B, 0x2002, W64, C, 1),
    (VmcsField::MSR_BITMAP, 0x2004, W64, C, 2),
    (VmcsField::VM_EXIT_MSR_STORE_ADDR, 0x2006, W64, C, 3),
    (VmcsField::VM_EXIT_MSR_LOAD_ADDR, 0x2008, W64, C, 4),
    (VmcsField::VM_ENTRY_MSR_LOAD_ADDR, 0x200a, W64, C, 5),
    (VmcsField::PML_ADDRESS, 0x200e, W64, C, 7),
    (VmcsField::TSC_OFFSET, 0x2010, W64, C, 8),
    (VmcsField::VIRTUAL_APIC_PAGE_ADDR, 0x2012, W64, C, 9),
    (VmcsField::APIC_ACCESS_ADDR, 0x2014, W64, C, 10),
    (VmcsField::POSTED_INTR_DESC_ADDR, 0x2016, W64, C, 11),
    (VmcsField::VM_FUNCTION_CONTROLS, 0x2018, W64, C, 12),
    (VmcsField::EPT_POINTER, 0x201a, W64, C, 13),
    (VmcsField::EOI_EXIT_BITMAP0, 0x201c, W64, C, 14),
    (VmcsField::EPTP_LIST_ADDRESS, 0x2024, W64, C, 18),
    (VmcsField::VMREAD_BITMAP, 0x2026, W64, C, 19),
    (VmcsField::VMWRITE_BITMAP, 0x2028, W64, C, 20),
    (VmcsField::XSS_EXIT_BITMAP, 0x202c, W64, C, 22),
    (VmcsField::TSC_MULTIPLIER, 0x2032, W64, C, 25),
    (VmcsField::TERTIARY_VM_EXEC_CONTROL, 0x2034, W64, C, 26),
    // B.2.2 64-bit read-only data field
    (VmcsField::GUEST_PHYSICAL_ADDRESS, 0x2400, W64, X, 0),
    // B.2.3 64-bit guest-state fields
    (VmcsField::VMCS_LINK_POINTER, 0x2800, W64, G, 0),
    (VmcsField::GUEST_IA32_DEBUGCTL, 0x2802, W64, G, 1),
    (VmcsField::GUEST_IA32_PAT, 0x2804, W64, G, 2),
    (VmcsField::GUEST_IA32_EFER, 0x2806, W64, G, 3),
    (VmcsField::GUEST_IA32_PERF_GLOBAL_CTRL, 0x2808, W64, G, 4),
    (VmcsField::GUEST_PDPTE0, 0x280a, W64, G, 5),
    (VmcsField::GUEST_PDPTE1, 0x280c, W64, G, 6),
    (VmcsField::GUEST_PDPTE2, 0x280e, W64, G, 7),
    (VmcsField::GUEST_PDPTE3, 0x2810, W64, G, 8),
    (VmcsField::GUEST_IA32_BNDCFGS, 0x2812, W64, G, 9),
    // B.2.4 64-bit host-state fields
    (VmcsField::HOST_IA32_PAT, 0x2c00, W64, H, 0),
    (VmcsField::HOST_IA32_EFER, 0x2c02, W64, H, 1),
    (VmcsField::HOST_IA32_PERF_GLOBAL_CTRL, 0x2c04, W64, H, 2),
    // B.3.1 32-bit control fields
    (VmcsField::PIN_BASED_VM_EXEC_CONTROL, 0x4000, W32, C, 0),
    (VmcsField::CPU_BASED_VM_EXEC_CONTROL, 0x4002, W32, C, 1),
    (VmcsField::EXCEPTION_BITMAP, 0x4004, W32, C, 2),
    (VmcsField::PAGE_FAULT_ERROR_CODE_MASK, 0x4006, W32, C, 3),
    (VmcsField::PAGE_FAULT_ERROR_CODE_MATCH, 0x4008, W32, C, 4),
    (VmcsField::CR3_TARGET_COUNT, 0x400a, W32, C, 5),
    (VmcsField::VM_EXIT_CONTROLS, 0x400c, W32, C, 6),
    (VmcsField::VM_EXIT_MSR_STORE_COUNT, 0x400e, W32, C, 7),
    (VmcsField::VM_EXIT_MSR_LOAD_COUNT, 0x4010, W32, C, 8),
    (VmcsField::VM_ENTRY_CONTROLS, 0x4012, W32, C, 9),
    (VmcsField::VM_ENTRY_MSR_LOAD_COUNT, 0x4014, W32, C, 10),
    (VmcsField::VM_ENTRY_INTR_INFO, 0x4016, W32, C, 11),
    (VmcsField::VM_ENTRY_EXCEPTION_ERROR_CODE, 0x4018, W32, C, 12),
    (VmcsField::VM_ENTRY_INSTRUCTION_LEN, 0x401a, W32, C, 13),
    (VmcsField::TPR_THRESHOLD, 0x401c, W32, C, 14),
    (VmcsField::SECONDARY_VM_EXEC_CONTROL, 0x401e, W32, C, 15),
    (VmcsField::PLE_GAP, 0x4020, W32, C, 16),
    (VmcsField::PLE_WINDOW, 0x4022, W32, C, 17),
    // B.3.2 32-bit read-only data fields
    (VmcsField::VM_INSTRUCTION_ERROR, 0x4400, W32, X, 0),
    (VmcsField::VM_EXIT_REASON, 0x4402, W32, X, 1),
    (VmcsField::VM_EXIT_INTR_INFO, 0x4404, W32, X, 2),
    (VmcsField::VM_EXIT_INTR_ERROR_CODE, 0x4406, W32, X, 3),
    (VmcsField::IDT_VECTORING_INFO, 0x4408, W32, X, 4),
    (VmcsField::IDT_VECTORING_ERROR_CODE, 0x440a, W32, X, 5),
    (VmcsField::VM_EXIT_INSTRUCTION_LEN, 0x440c, W32, X, 6),
    (VmcsField::VMX_INSTRUCTION_INFO, 0x440e, W32, X, 7),
    // B.3.3 32-bit guest-state fields
    (VmcsField::GUEST_ES_LIMIT, 0x4800, W32, G, 0),
    (VmcsField::GUEST_CS_LIMIT, 0x4802, W32, G, 1),
    (VmcsField::GUEST_SS_LIMIT, 0x4804, W32, G, 2),
    (VmcsField::GUEST_TR_LIMIT, 0x480e, W32, G, 7),
    (VmcsField::GUEST_GDTR_LIMIT, 0x4810, W32, G, 8),
    (VmcsField::GUEST_IDTR_LIMIT, 0x4812, W32, G, 9),
    (VmcsField::GUEST_ES_AR_BYTES, 0x4814, W32, G, 10),
    (VmcsField::GUEST_CS_AR_BYTES, 0x4816, W32, G, 11),
    (VmcsField::GUEST_SS_AR_BYTES, 0x4818, W32, G, 12),
    (VmcsField::GUEST_LDTR_AR_BYTES, 0x4820, W32, G, 16),
    (VmcsField::GUEST_TR_AR_BYTES, 0x4822, W32, G, 17),
    (VmcsField::GUEST_INTERRUPTIBILITY_INFO, 0x4824, W32, G, 18),
    (VmcsField::GUEST_ACTIVITY_STATE, 0x4826, W32, G, 19),
    (VmcsField::GUEST_SMBASE, 0x4828, W32, G, 20),
    (VmcsField::GUEST_SYSENTER_CS, 0x482a, W32, G, 21),
    (VmcsField::VMX_PREEMPTION_TIMER_VALUE, 0x482e, W32, G, 23),
    // B.3.4 32-bit host-state field
    (VmcsField::HOST_IA32_SYSENTER_CS, 0x4c00, W32, H, 0),
    // B.4.1 natural-width control fields
    (VmcsField::CR0_GUEST_HOST_MASK, 0x6000, WN, C, 0),
    (VmcsField::CR4_GUEST_HOST_MASK, 0x6002, WN, C, 1),
    (VmcsField::CR0_READ_SHADOW, 0x6004, WN, C, 2),
    (VmcsField::CR4_READ_SHADOW, 0x6006, WN, C, 3),
    (VmcsField::CR3_TARGET_VALUE0, 0x6008, WN, C, 4),
    (VmcsField::CR3_TARGET_VALUE3, 0x600e, WN, C, 7),
    // B.4.2 natural-width read-only data fields
    (VmcsField::EXIT_QUALIFICATION, 0x6400, WN, X, 0),
    (VmcsField::IO_RCX, 0x6402, WN, X, 1),
    (VmcsField::IO_RSI, 0x6404, WN, X, 2),
    (VmcsField::IO_RDI, 0x6406, WN, X, 3),
    (VmcsField::IO_RIP, 0x6408, WN, X, 4),
    (VmcsField::GUEST_LINEAR_ADDRESS, 0x640a, WN, X, 5),
    // B.4.3 natural-width guest-state fields
    (VmcsField::GUEST_CR0, 0x6800, WN, G, 0),
    (VmcsField::GUEST_CR3, 0x6802, WN, G, 1),
    (VmcsField::GUEST_CR4, 0x6804, WN, G, 2),
    (VmcsField::GUEST_ES_BASE, 0x6806, WN, G, 3),
    (VmcsField::GUEST_CS_BASE, 0x6808, WN, G, 4),
    (VmcsField::GUEST_SS_BASE, 0x680a, WN, G, 5),
    (VmcsField::GUEST_DS_BASE, 0x680c, WN, G, 6),
    (VmcsField::GUEST_FS_BASE, 0x680e, WN, G, 7),
    (VmcsField::GUEST_GS_BASE, 0x6810, WN, G, 8),
    (VmcsField::GUEST_LDTR_BASE, 0x6812, WN, G, 9),
    (VmcsField::GUEST_TR_BASE, 0x6814, WN, G, 10),
    (VmcsField::GUEST_GDTR_BASE, 0x6816, WN, G, 11),
    (VmcsField::GUEST_IDTR_BASE, 0x6818, WN, G, 12),
    (VmcsField::GUEST_DR7, 0x681a, WN, G, 13),
    (VmcsField::GUEST_RSP, 0x681c, WN, G, 14),
    (VmcsField::GUEST_RIP, 0x681e, WN, G, 15),
    (VmcsField::GUEST_RFLAGS, 0x6820, WN, G, 16),
    (VmcsField::GUEST_PENDING_DBG_EXCEPTIONS, 0x6822, WN, G, 17),
    (VmcsField::GUEST_SYSENTER_ESP, 0x6824, WN, G, 18),
    (VmcsField::GUEST_SYSENTER_EIP, 0x6826, WN, G, 19),
    // B.4.4 natural-width host-state fields
    (VmcsField::HOST_CR0, 0x6c00, WN, H, 0),
    (VmcsField::HOST_CR3, 0x6c02, WN, H, 1),
    (VmcsField::HOST_CR4, 0x6c04, WN, H, 2),
    (VmcsField::HOST_FS_BASE, 0x6c06, WN, H, 3),
    (VmcsField::HOST_GS_BASE, 0x6c08, WN, H, 4),
    (VmcsField::HOST_TR_BASE, 0x6c0a, WN, H, 5),
    (VmcsField::HOST_GDTR_BASE, 0x6c0c, WN, H, 6),
    (VmcsField::HOST_IDTR_BASE, 0x6c0e, WN, H, 7),
    (VmcsField::HOST_IA32_SYSENTER_ESP, 0x6c10, WN, H, 8),
    (VmcsField::HOST_IA32_SYSENTER_EIP, 0x6c12, WN, H, 9),
    (VmcsField::HOST_RSP, 0x6c14, WN, H, 10),
    (VmcsField::HOST_RIP, 0x6c16, WN, H, 11),
];

#[test]
fn vmcs_field_encodings_match_the_sdm() {
    assert!(
        FIELDS.len() >= 60,
        "only {} fields in the table",
        FIELDS.len()
    );
    for &(field, raw, width, ty, index) in FIELDS {
        let name = field.name().unwrap_or("<unnamed>");
        assert_eq!(field.raw(), raw, "{name}");
        assert_eq!(field.width(), width, "{name}");
        assert_eq!(field.field_type(), ty, "{name}");
        assert_eq!(field.index(), index, "{name}");
        assert_eq!(VmcsField::from_raw(raw), Ok(field), "{name}");
        assert_eq!(VmcsField::new(width, ty, index), field, "{name}");
        assert!(field.name().is_some(), "{raw:#x} has no name");
        // 64-bit fields have a high half at encoding + 1, others do not.
        match width {
            W64 => assert_eq!(field.high().map(VmcsField::raw), Some(raw + 1), "{name}"),
            _ => assert_eq!(field.high(), None, "{name}"),
        }
    }
}

/// Appendix C, Table C-1: every basic exit reason with its number and name.
const EXIT_REASONS: &[(u16, &str)] = &[
    (0, "Exception or non-maskable interrupt (NMI)"),
    (1, "External interrupt"),
    (2, "Triple fault"),
    (3, "INIT signal"),
    (4, "Start-up IPI (SIPI)"),
    (5, "I/O system-management interrupt (SMI)"),
    (6, "Other SMI"),
    (7, "Interrupt window"),
    (8, "NMI window"),
    (9, "Task switch"),
    (10, "CPUID"),
    (11, "GETSEC"),
    (12, "HLT"),
    (13, "INVD"),
    (14, "INVLPG"),
    (15, "RDPMC"),
    (16, "RDTSC"),
    (17, "RSM"),
    (18, "VMCALL"),
    (19, "VMCLEAR"),
    (20, "VMLAUNCH"),
    (21, "VMPTRLD"),
    (22, "VMPTRST"),
    (23, "VMREAD"),
    (24, "VMRESUME"),
    (25, "VMWRITE"),
    (26, "VMXOFF"),
    (27, "VMXON"),
    (28, "Control-register accesses"),
    (29, "MOV DR"),
    (30, "I/O instruction"),
    (31, "RDMSR"),
    (32, "WRMSR"),
    (33, "VM-entry failure due to invalid guest state"),
    (34, "VM-entry failure due to MSR loading"),
    (36, "MWAIT"),
    (37, "Monitor trap flag"),
    (39, "MONITOR"),
    (40, "PAUSE"),
    (41, "VM-entry failure due to machine-check event"),
    (43, "TPR below threshold"),
    (44, "APIC access"),
    (45, "Virtualized EOI"),
    (46, "Access to GDTR or IDTR"),
    (47, "Access to LDTR or TR"),
    (48, "EPT violation"),
    (49, "EPT misconfiguration"),
    (50, "INVEPT"),
    (51, "RDTSCP"),
    (52, "VMX-preemption timer expired"),
    (53, "INVVPID"),
    (54, "WBINVD or WBNOINVD"),
    (55, "XSETBV"),
    (56, "APIC write"),
    (57, "RDRAND"),
    (58, "INVPCID"),
    (59, "VMFUNC"),
    (60, "ENCLS"),
    (61, "RDSEED"),
    (62, "Page-modification log full"),
    (63, "XSAVES"),
    (64, "XRSTORS"),
    (65, "PCONFIG"),
    (66, "SPP-related event"),
    (67, "UMWAIT"),
    (68, "TPAUSE"),
    (69, "LOADIWKEY"),
    (70, "ENCLV"),
    (72, "ENQCMD PASID translation failure"),
    (73, "ENQCMDS PASID translation failure"),
    (74, "Bus lock"),
    (75, "Instruction timeout"),
    (76, "SEAMCALL"),
    (77, "TDCALL"),
    (78, "RDMSRLIST"),
    (79, "WRMSRLIST"),
];

#[test]
fn exit_reasons_match_the_sdm() {
    assert_eq!(ExitReason::ALL.len(), EXIT_REASONS.len());
    for &(num, name) in EXIT_REASONS {
        let r = ExitReason::from_raw(num).unwrap_or_else(|| panic!("reason {num} missing"));
        assert_eq!(r as u16, num);
        assert_eq!(r.name(), name, "reason {num}");
    }
    // Numbers the SDM leaves unassigned decode to nothing.
    for num in [35u16, 38, 42, 71, 80, 0xffff] {
        assert_eq!(ExitReason::from_raw(num), None, "reason {num}");
    }
}
