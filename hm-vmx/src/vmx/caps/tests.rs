use super::*;
use crate::vmx::Control;

#[test]
fn baseline_parses_and_decodes() {
    let caps = VmxCapabilities::baseline();
    assert_eq!(caps.source(), ProfileSource::Baseline);
    let b = caps.basic();
    assert_eq!(b.revision_id(), 4);
    assert_eq!(b.vmcs_size(), 1024);
    assert_eq!(b.memory_type(), 6);
    assert!(b.true_controls() && b.ins_outs_info() && b.dual_monitor());
    assert!(!b.addresses_32bit() && !b.no_error_code_check());
    let m = caps.misc();
    assert_eq!(m.preemption_timer_rate(), 5);
    assert!(m.stores_lma());
    assert_eq!(
        m.activity_states(),
        ActivityStates {
            hlt: true,
            shutdown: true,
            wait_for_sipi: true
        }
    );
    assert_eq!(m.cr3_targets(), 4);
    assert_eq!(m.max_msr_list(), 512);
    assert!(m.vmwrite_any_field() && m.zero_length_injection() && m.pt_in_vmx());
    let e = caps.ept_vpid();
    assert!(e.execute_only() && e.page_walk_4() && !e.page_walk_5());
    assert!(e.memory_type_uc() && e.memory_type_wb() && e.pages_2m() && e.pages_1g());
    assert!(e.invept() && e.accessed_dirty() && e.advanced_exit_info());
    assert!(e.invept_single_context() && e.invept_all_context());
    assert!(!e.supervisor_shadow_stack());
    assert!(e.invvpid() && e.invvpid_individual_address() && e.invvpid_single_context());
    assert!(e.invvpid_all_context() && e.invvpid_single_context_retain_globals());
    assert_eq!(caps.vmfunc(), 1);
    assert_eq!(caps.cr0_fixed(), (0x8000_0021, 0xffff_ffff));
    // TRUE MSRs are in force: CR3-load exiting may be cleared.
    assert!(
        caps.controls(ControlKind::ProcBased)
            .can_clear(Control::CR3_LOAD_EXITING.mask())
    );
    let p2 = caps.controls(ControlKind::ProcBased2);
    assert!(p2.can_set(Control::UNRESTRICTED_GUEST.mask() | Control::ENABLE_VPID.mask()));
    assert!(!p2.can_set(Control::ENCLS_EXITING.mask()));
}

#[test]
fn non_true_msrs_used_without_bit_55() {
    let mut m = VmxCapabilities::baseline_msrs();
    m.insert(msr::IA32_VMX_BASIC, BASELINE_BASIC & !(1 << 55));
    m.remove(&msr::IA32_VMX_TRUE_PROCBASED_CTLS);
    let caps = VmxCapabilities::from_msrs(m).unwrap();
    assert_eq!(caps.source(), ProfileSource::Host);
    assert!(
        !caps
            .controls(ControlKind::ProcBased)
            .can_clear(Control::CR3_LOAD_EXITING.mask())
    );
}

#[test]
fn missing_and_bad_msrs() {
    let mut m = VmxCapabilities::baseline_msrs();
    m.remove(&msr::IA32_VMX_TRUE_ENTRY_CTLS);
    assert_eq!(
        VmxCapabilities::from_msrs(m.clone()),
        Err(CapsError::MissingMsr {
            index: 0x490,
            name: "IA32_VMX_TRUE_ENTRY_CTLS"
        })
    );
    m.insert(msr::IA32_VMX_TRUE_ENTRY_CTLS, 0x11fb);
    let err = VmxCapabilities::from_msrs(m.clone()).unwrap_err();
    assert!(
        matches!(
            err,
            CapsError::Control {
                name: "IA32_VMX_TRUE_ENTRY_CTLS",
                ..
            }
        ),
        "{err}"
    );
    let mut m = VmxCapabilities::baseline_msrs();
    m.insert(msr::IA32_VMX_CR4_FIXED1, 0);
    assert_eq!(
        VmxCapabilities::from_msrs(m),
        Err(CapsError::FixedInconsistent {
            name: "CR4",
            bad: 0x2000
        })
    );
    let mut m = VmxCapabilities::baseline_msrs();
    m.insert(msr::IA32_VMX_BASIC, BASELINE_BASIC & !(0x1fff << 32));
    assert_eq!(VmxCapabilities::from_msrs(m), Err(CapsError::VmcsSize(0)));
    // Without secondary controls, PROCBASED_CTLS2/EPT_VPID/VMFUNC are optional.
    let mut m = VmxCapabilities::baseline_msrs();
    m.insert(msr::IA32_VMX_TRUE_PROCBASED_CTLS, 0x7ff9_fffe_0400_6172);
    m.remove(&msr::IA32_VMX_PROCBASED_CTLS2);
    m.remove(&msr::IA32_VMX_EPT_VPID_CAP);
    m.remove(&msr::IA32_VMX_VMFUNC);
    let caps = VmxCapabilities::from_msrs(m).unwrap();
    assert_eq!(
        caps.controls(ControlKind::ProcBased2),
        ControlCaps::default()
    );
    assert_eq!(caps.ept_vpid(), EptVpidCap(0));
}

#[test]
fn or_baseline_and_unknown_msrs() {
    let caps = VmxCapabilities::from_msrs_or_baseline([(0x10u32, 5u64)]).unwrap();
    assert_eq!(caps.source(), ProfileSource::Baseline);
    let mut m = VmxCapabilities::baseline_msrs();
    m.insert(0x10, 1234);
    let caps = VmxCapabilities::from_msrs_or_baseline(m).unwrap();
    assert_eq!(caps.source(), ProfileSource::Host);
    assert!(!caps.msrs().contains_key(&0x10));
    assert_eq!(caps.msrs(), &VmxCapabilities::baseline_msrs());
    assert!(ProfileSource::Baseline.to_string().starts_with("baseline"));
}
