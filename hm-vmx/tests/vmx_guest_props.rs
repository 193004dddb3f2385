//! Properties of the guest-state checker on random register states.

use std::collections::BTreeSet;

use hm_vmx::vmx::{
    AccessRights, CheckEnv, DescriptorTable, EventKind, GuestControls, GuestState, InjectedEvent,
    Rule, Segment, VmxCapabilities, check_guest_state,
};
use proptest::prelude::*;

fn env() -> CheckEnv {
    CheckEnv::from_caps(&VmxCapabilities::baseline(), 48)
}

fn any_segment() -> impl Strategy<Value = Segment> {
    (any::<u16>(), any::<u64>(), any::<u32>(), any::<u32>())
        .prop_map(|(sel, base, limit, ar)| Segment::new(sel, base, limit, ar))
}

fn any_event() -> impl Strategy<Value = Option<InjectedEvent>> {
    let kind = prop_oneof![
        Just(EventKind::ExternalInterrupt),
        Just(EventKind::Nmi),
        Just(EventKind::HardwareException),
        Just(EventKind::SoftwareInterrupt),
        Just(EventKind::PrivilegedSoftwareException),
        Just(EventKind::SoftwareException),
        Just(EventKind::Other),
    ];
    proptest::option::of(
        (kind, any::<u8>()).prop_map(|(kind, vector)| InjectedEvent { kind, vector }),
    )
}

fn any_controls() -> impl Strategy<Value = GuestControls> {
    any::<[bool; 6]>().prop_map(|b| GuestControls {
        ia32e_mode_guest: b[0],
        load_debug_controls: b[1],
        load_efer: b[2],
        unrestricted_guest: b[3],
        enable_ept: b[4],
        virtual_nmis: b[5],
    })
}

/// Completely random guest states.
fn any_state() -> impl Strategy<Value = GuestState> {
    (
        any::<[u64; 9]>(),
        proptest::collection::vec(any_segment(), 8),
        (any::<u64>(), any::<u32>(), any::<u64>(), any::<u32>()),
        (any::<u32>(), any::<u32>(), any::<u64>(), any::<[u64; 4]>()),
        any_controls(),
        any_event(),
    )
        .prop_map(|(r, s, dt, ns, controls, injected_event)| GuestState {
            cr0: r[0],
            cr3: r[1],
            cr4: r[2],
            dr7: r[3],
            debugctl: r[4],
            efer: r[5],
            rsp: r[6],
            rip: r[7],
            rflags: r[8],
            es: s[0],
            cs: s[1],
            ss: s[2],
            ds: s[3],
            fs: s[4],
            gs: s[5],
            ldtr: s[6],
            tr: s[7],
            gdtr: DescriptorTable {
                base: dt.0,
                limit: dt.1,
            },
            idtr: DescriptorTable {
                base: dt.2,
                limit: dt.3,
            },
            activity_state: ns.0,
            interruptibility: ns.1,
            pending_debug_exceptions: ns.2,
            pdptes: ns.3,
            controls,
            injected_event,
        })
}

/// Access rights built from plausible fields, so that valid values are
/// common: type, S, DPL, P, L, D/B, G, unusable.
fn plausible_ar() -> impl Strategy<Value = u32> {
    (
        0u32..16,
        any::<bool>(),
        0u32..4,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(t, s, dpl, p, l, db, g, unusable)| {
            t | (s as u32) << 4
                | dpl << 5
                | (p as u32) << 7
                | (l as u32) << 13
                | (db as u32) << 14
                | (g as u32) << 15
                | (unusable as u32) << 16
        })
}

/// The long-mode flat state with CS and SS replaced by random but
/// plausible values, random CR0.PE, unrestricted guest and RFLAGS.VM.
fn long_mode_cs_ss() -> impl Strategy<Value = GuestState> {
    (
        plausible_ar(),
        plausible_ar(),
        any::<u16>(),
        any::<u16>(),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(cs_ar, ss_ar, cs_sel, ss_sel, pe, unrestricted, vm)| {
            let mut gs = GuestState::long_mode_flat();
            gs.cs.access_rights = AccessRights(cs_ar);
            gs.cs.selector = cs_sel;
            gs.ss.access_rights = AccessRights(ss_ar);
            gs.ss.selector = ss_sel;
            if !pe {
                gs.cr0 &= !1;
            }
            gs.controls.unrestricted_guest = unrestricted;
            if vm {
                gs.rflags |= 1 << 17;
            }
            gs
        })
}

const CS_SS_RULES: [Rule; 7] = [
    Rule::CsType,
    Rule::SsType,
    Rule::CsDpl,
    Rule::SsDplRpl,
    Rule::SsDplZero,
    Rule::SsRplCsRpl,
    Rule::CsLongAndDefaultSize,
];

/// A plain restatement of the SDM's CS/SS rules for an IA-32e mode guest,
/// written from the raw bits.
fn reference_cs_ss(gs: &GuestState) -> BTreeSet<Rule> {
    let mut out = BTreeSet::new();
    if gs.rflags >> 17 & 1 == 1 {
        return out; // virtual-8086 checks replace these
    }
    let ug = gs.controls.unrestricted_guest;
    let cs = gs.cs.access_rights.0;
    let ss = gs.ss.access_rights.0;
    let (cs_type, ss_type) = (cs & 15, ss & 15);
    let (cs_dpl, ss_dpl) = ((cs >> 5) & 3, (ss >> 5) & 3);
    let (cs_rpl, ss_rpl) = (u32::from(gs.cs.selector & 3), u32::from(gs.ss.selector & 3));
    let ss_usable = ss & 0x1_0000 == 0;
    let cs_type_ok = [9, 11, 13, 15].contains(&cs_type) || (ug && cs_type == 3);
    if !cs_type_ok {
        out.insert(Rule::CsType);
    }
    if ss_usable && ss_type != 3 && ss_type != 7 {
        out.insert(Rule::SsType);
    }
    let cs_dpl_bad = (cs_type == 3 && cs_dpl != 0)
        || ((cs_type == 9 || cs_type == 11) && cs_dpl != ss_dpl)
        || ((cs_type == 13 || cs_type == 15) && cs_dpl > ss_dpl);
    if cs_dpl_bad {
        out.insert(Rule::CsDpl);
    }
    if !ug && ss_dpl != ss_rpl {
        out.insert(Rule::SsDplRpl);
    }
    if (cs_type == 3 || gs.cr0 & 1 == 0) && ss_dpl != 0 {
        out.insert(Rule::SsDplZero);
    }
    if !ug && ss_rpl != cs_rpl {
        out.insert(Rule::SsRplCsRpl);
    }
    if cs & (1 << 13) != 0 && cs & (1 << 14) != 0 {
        out.insert(Rule::CsLongAndDefaultSize);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics_and_is_deterministic(gs in any_state(), maxphy in 0u8..=255, la in 0u8..=255) {
        let mut env = env();
        env.maxphyaddr = maxphy;
        env.linear_address_bits = la;
        let a = check_guest_state(&gs, &env);
        let b = check_guest_state(&gs, &env);
        prop_assert_eq!(&a, &b);
        for v in &a {
            prop_assert!(!v.detail.is_empty());
            prop_assert!(!v.to_string().is_empty());
        }
    }

    #[test]
    fn long_mode_cs_ss_matches_reference(gs in long_mode_cs_ss()) {
        let got: BTreeSet<Rule> = check_guest_state(&gs, &env())
            .into_iter()
            .map(|v| v.rule)
            .filter(|r| CS_SS_RULES.contains(r))
            .collect();
        prop_assert_eq!(got, reference_cs_ss(&gs));
    }
}
