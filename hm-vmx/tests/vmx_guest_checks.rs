//! For every guest-state rule: a state that passes, and a mutation of it
//! that breaks exactly that rule (SDM Vol. 3, "Checks on the Guest State
//! Area").

use std::collections::BTreeSet;

use hm_vmx::vmx::{
    CheckEnv, EventKind, GuestState, InjectedEvent, Rule, Segment, VmxCapabilities, activity,
    check_guest_state, cr0, cr4, efer, interruptibility as intr, pending_debug as pde,
};

/// The baseline CPU, with CET allowed in CR4 so the CET rule can be reached.
fn env() -> CheckEnv {
    let mut env = CheckEnv::from_caps(&VmxCapabilities::baseline(), 48);
    env.cr4_fixed1 |= cr4::CET;
    env
}

fn lm() -> GuestState {
    GuestState::long_mode_flat()
}

fn rm() -> GuestState {
    GuestState::real_mode_reset()
}

/// 32-bit protected mode with PAE paging and EPT, no unrestricted guest.
fn pm32() -> GuestState {
    let mut gs = GuestState::long_mode_flat();
    gs.controls.ia32e_mode_guest = false;
    gs.efer = efer::NXE;
    gs.cs.access_rights.0 = 0xc09b;
    gs.pdptes = [0x1001, 0x2001, 0, 0x3000_0001];
    gs
}

/// Virtual-8086 mode on top of `pm32`.
fn v86() -> GuestState {
    let mut gs = pm32();
    gs.rflags |= 1 << 17;
    for s in [
        &mut gs.cs, &mut gs.ss, &mut gs.ds, &mut gs.es, &mut gs.fs, &mut gs.gs,
    ] {
        *s = Segment::new(0x1000, 0x10000, 0xffff, 0xf3);
    }
    gs
}

const EXT_INT: Option<InjectedEvent> = Some(InjectedEvent {
    kind: EventKind::ExternalInterrupt,
    vector: 0x20,
});
const IF: u64 = 1 << 9;

type Case = (Rule, fn() -> GuestState, fn(&mut GuestState));

const CASES: &[Case] = &[
    (Rule::Cr0Fixed, lm, |g| g.cr0 &= !cr0::NE),
    (Rule::Cr0PgWithoutPe, rm, |g| g.cr0 |= cr0::PG),
    (Rule::Cr4Fixed, lm, |g| g.cr4 &= !cr4::VMXE),
    (Rule::Cr4CetWithoutWp, lm, |g| {
        g.cr0 &= !cr0::WP;
        g.cr4 |= cr4::CET;
    }),
    (Rule::Cr3Width, lm, |g| g.cr3 = 1 << 50),
    (Rule::Dr7High, lm, |g| {
        g.controls.load_debug_controls = true;
        g.dr7 = (1 << 32) | 0x400;
    }),
    (Rule::Ia32eWithoutPg, lm, |g| {
        g.controls.unrestricted_guest = true;
        g.cr0 &= !cr0::PG;
    }),
    (Rule::Ia32eWithoutPae, lm, |g| g.cr4 &= !cr4::PAE),
    (Rule::PcideOutsideIa32e, pm32, |g| g.cr4 |= cr4::PCIDE),
    (Rule::EferReserved, lm, |g| g.efer |= 1 << 1),
    (Rule::EferLma, pm32, |g| g.efer |= efer::LMA | efer::LME),
    (Rule::EferLme, lm, |g| g.efer &= !efer::LME),
    (Rule::TrTi, lm, |g| g.tr.selector |= 4),
    (Rule::LdtrTi, rm, |g| g.ldtr.selector = 4),
    (Rule::SsRplCsRpl, pm32, |g| g.cs.selector = 0x0b),
    (Rule::V86Base, v86, |g| g.ds.base = 0),
    (Rule::V86Limit, v86, |g| g.fs.limit = 0xfffff),
    (Rule::V86AccessRights, v86, |g| g.gs.access_rights.0 = 0xf2),
    (Rule::BaseCanonical, lm, |g| g.fs.base = 0x8000_0000_0000),
    (Rule::BaseHigh, lm, |g| g.ds.base = 1 << 32),
    (Rule::CsType, lm, |g| g.cs.access_rights.0 = 0xa098),
    (Rule::SsType, lm, |g| g.ss.access_rights.0 = 0xc091),
    (Rule::DataType, lm, |g| g.ds.access_rights.0 = 0xc092),
    (Rule::SegDescriptorType, lm, |g| {
        g.es.access_rights.0 = 0xc083
    }),
    (Rule::CsDpl, pm32, |g| g.cs.access_rights.0 = 0xc0fb),
    (Rule::SsDplRpl, pm32, |g| {
        g.ss.selector = 0x13;
        g.cs.selector = 0x0b;
    }),
    (Rule::SsDplZero, rm, |g| {
        g.ss.access_rights.0 = 0xf3;
        g.cs.access_rights.0 = 0x9f;
    }),
    (Rule::DataDpl, pm32, |g| g.ds.selector = 0x13),
    (Rule::SegPresent, lm, |g| g.gs.access_rights.0 = 0xc013),
    (Rule::SegReserved, lm, |g| g.ds.access_rights.0 |= 0x100),
    (Rule::CsLongAndDefaultSize, lm, |g| {
        g.cs.access_rights.0 |= 1 << 14
    }),
    (Rule::SegGranularity, lm, |g| g.ds.limit = 0xffff_f000),
    (Rule::TrType, lm, |g| g.tr.access_rights.0 = 0x83),
    (Rule::TrDescriptor, lm, |g| g.tr.access_rights.0 = 0x0b),
    (Rule::LdtrDescriptor, rm, |g| g.ldtr.access_rights.0 = 0x83),
    (Rule::DescriptorTableBase, lm, |g| g.idtr.base = 1 << 60),
    (Rule::DescriptorTableLimit, lm, |g| g.gdtr.limit = 0x1_0000),
    (Rule::RipHigh, pm32, |g| g.rip = 1 << 32),
    (Rule::RipCanonical, lm, |g| g.rip = 0x8000_0000_0000),
    (Rule::RflagsReserved, lm, |g| g.rflags |= 1 << 15),
    (Rule::RflagsVm, v86, |g| {
        g.controls.unrestricted_guest = true;
        g.cr0 &= !(cr0::PE | cr0::PG);
    }),
    (Rule::RflagsIf, lm, |g| g.injected_event = EXT_INT),
    (Rule::ActivityValid, lm, |g| g.activity_state = 4),
    (Rule::ActivityHltDpl, pm32, |g| {
        g.cs.selector = 0x1b;
        g.cs.access_rights.0 = 0xc0fb;
        g.ss.selector = 0x23;
        g.ss.access_rights.0 = 0xc0f3;
        g.activity_state = activity::HLT;
    }),
    (Rule::ActivityBlocking, lm, |g| {
        g.rflags |= IF;
        g.interruptibility = intr::STI;
        g.activity_state = activity::HLT;
    }),
    (Rule::ActivityEvent, lm, |g| {
        g.rflags |= IF;
        g.activity_state = activity::SHUTDOWN;
        g.injected_event = EXT_INT;
    }),
    (Rule::IntReserved, lm, |g| g.interruptibility = 1 << 5),
    (Rule::IntStiAndMovSs, lm, |g| {
        g.rflags |= IF;
        g.interruptibility = intr::STI | intr::MOV_SS;
    }),
    (Rule::IntStiWithoutIf, lm, |g| {
        g.interruptibility = intr::STI
    }),
    (Rule::IntEventBlocked, lm, |g| {
        g.rflags |= IF;
        g.interruptibility = intr::STI;
        g.injected_event = EXT_INT;
    }),
    (Rule::IntSmi, lm, |g| g.interruptibility = intr::SMI),
    (Rule::IntNmiBlocked, lm, |g| {
        g.controls.virtual_nmis = true;
        g.interruptibility = intr::NMI;
        g.injected_event = Some(InjectedEvent {
            kind: EventKind::Nmi,
            vector: 2,
        });
    }),
    (Rule::IntEnclaveMovSs, lm, |g| {
        g.interruptibility = intr::ENCLAVE | intr::MOV_SS
    }),
    (Rule::PendingDebugReserved, lm, |g| {
        g.pending_debug_exceptions = 1 << 4
    }),
    (Rule::PendingDebugBs, lm, |g| {
        g.rflags |= 1 << 8;
        g.interruptibility = intr::MOV_SS;
    }),
    (Rule::PendingDebugRtm, lm, |g| {
        g.pending_debug_exceptions = pde::RTM
    }),
    (Rule::PdpteReserved, pm32, |g| g.pdptes[1] |= 1 << 1),
];

fn rules_of(gs: &GuestState) -> BTreeSet<Rule> {
    check_guest_state(gs, &env())
        .iter()
        .map(|v| v.rule)
        .collect()
}

#[test]
fn base_states_pass() {
    for (name, gs) in [
        ("long mode", lm()),
        ("real mode", rm()),
        ("pm32", pm32()),
        ("v86", v86()),
    ] {
        let v = check_guest_state(&gs, &env());
        assert!(v.is_empty(), "{name}: {v:#?}");
    }
}

#[test]
fn each_rule_has_a_breaking_state() {
    for &(rule, base, mutate) in CASES {
        let gs = base();
        assert!(rules_of(&gs).is_empty(), "{}: base state fails", rule.id());
        let mut bad = gs.clone();
        mutate(&mut bad);
        let got = rules_of(&bad);
        assert_eq!(
            got,
            BTreeSet::from([rule]),
            "{}: {:#?}",
            rule.id(),
            check_guest_state(&bad, &env())
        );
    }
    let covered: BTreeSet<Rule> = CASES.iter().map(|c| c.0).collect();
    let missing: Vec<&str> = Rule::ALL
        .iter()
        .filter(|r| !covered.contains(r))
        .map(|r| r.id())
        .collect();
    assert!(missing.is_empty(), "rules without a case: {missing:?}");
}

#[test]
fn exceptions_that_let_states_pass() {
    // Real mode needs unrestricted guest: without it, CR0.PE/PG are fixed.
    let mut gs = rm();
    gs.controls.unrestricted_guest = false;
    let got = rules_of(&gs);
    assert!(got.contains(&Rule::Cr0Fixed), "{got:?}");
    // BS must be set when TF is set under MOV SS blocking; then it passes.
    let mut gs = lm();
    gs.rflags |= 1 << 8;
    gs.interruptibility = intr::MOV_SS;
    gs.pending_debug_exceptions = pde::BS;
    assert!(rules_of(&gs).is_empty());
    // ...unless DEBUGCTL.BTF is set, which wants BS clear.
    gs.debugctl = 1 << 1;
    assert_eq!(rules_of(&gs), BTreeSet::from([Rule::PendingDebugBs]));
    // HLT may take an NMI, #DB or #MC, but not a #GP.
    let mut gs = lm();
    gs.activity_state = activity::HLT;
    for (kind, vector, ok) in [
        (EventKind::Nmi, 2, true),
        (EventKind::HardwareException, 1, true),
        (EventKind::HardwareException, 18, true),
        (EventKind::Other, 0, true),
        (EventKind::HardwareException, 13, false),
        (EventKind::SoftwareInterrupt, 0x80, false),
    ] {
        gs.injected_event = Some(InjectedEvent { kind, vector });
        assert_eq!(rules_of(&gs).is_empty(), ok, "{kind:?} {vector}");
    }
    // An unsupported activity state is rejected even if in range.
    let mut env = env();
    env.activity_states.wait_for_sipi = false;
    let mut gs = lm();
    gs.activity_state = activity::WAIT_FOR_SIPI;
    let v = check_guest_state(&gs, &env);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].rule, Rule::ActivityValid);
    // PDPTEs are not checked when not present, nor without EPT.
    let mut gs = pm32();
    gs.pdptes[3] = !1;
    assert!(rules_of(&gs).is_empty());
    gs.pdptes[3] = u64::MAX;
    gs.controls.enable_ept = false;
    assert!(rules_of(&gs).is_empty());
}

#[test]
fn all_violations_are_reported_with_text() {
    let mut gs = lm();
    gs.cr0 &= !cr0::NE;
    gs.tr.selector |= 4;
    gs.rflags = 0;
    gs.interruptibility = intr::SMI;
    let v = check_guest_state(&gs, &env());
    let ids: Vec<&str> = v.iter().map(|v| v.rule.id()).collect();
    assert_eq!(
        ids,
        ["GS-CR0-FIXED", "GS-TR-TI", "GS-RFLAGS-RSVD", "GS-INT-SMI"]
    );
    let text = v[0].to_string();
    assert!(
        text.starts_with("[GS-CR0-FIXED] SDM 28.3.1.1: CR0 must"),
        "{text}"
    );
    assert!(text.contains("missing 0x20"), "{text}");
    // Rule ids are unique and well-formed.
    let ids: BTreeSet<&str> = Rule::ALL.iter().map(|r| r.id()).collect();
    assert_eq!(ids.len(), Rule::ALL.len());
    for r in Rule::ALL {
        assert!(
            r.id().starts_with("GS-")
                && r.section().starts_with("28.3.1.")
                && r.text().ends_with('.')
        );
    }
}
