//! The SDM's checks on the guest-state area before VM entry (Intel SDM
//! Vol. 3, "Checks on the Guest State Area": 28.3.1 in recent editions,
//! 26.3.1 in older ones; subsection numbers below follow recent editions).
//!
//! [`check_guest_state`] reports every violation, each with a stable rule
//! id, a sentence stating the rule, the SDM section and a detail naming the
//! offending values.
//!
//! ```
//! use hm_vmx::vmx::{check_guest_state, CheckEnv, GuestState, Rule, VmxCapabilities};
//!
//! let env = CheckEnv::from_caps(&VmxCapabilities::baseline(), 48);
//! let mut gs = GuestState::long_mode_flat();
//! assert!(check_guest_state(&gs, &env).is_empty());
//!
//! gs.rflags = 0;          // bit 1 must be set
//! gs.cs.access_rights.0 |= 1 << 14; // CS.L and CS.D/B together
//! let v = check_guest_state(&gs, &env);
//! let rules: Vec<Rule> = v.iter().map(|v| v.rule).collect();
//! assert_eq!(rules, [Rule::CsLongAndDefaultSize, Rule::RflagsReserved]);
//! println!("{}", v[0]); // "[GS-CS-L-D] SDM 28.3.1.2: ..."
//! ```

use super::caps::{ActivityStates, VmxCapabilities};
use super::guest_state::{
    EventKind, GuestState, SegReg, Segment, activity, cr0, cr4, efer, interruptibility as intr,
    pending_debug as pde,
};

/// What the checks need to know about the processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckEnv {
    /// IA32_VMX_CR0_FIXED0.
    pub cr0_fixed0: u64,
    /// IA32_VMX_CR0_FIXED1.
    pub cr0_fixed1: u64,
    /// IA32_VMX_CR4_FIXED0.
    pub cr4_fixed0: u64,
    /// IA32_VMX_CR4_FIXED1.
    pub cr4_fixed1: u64,
    /// Activity states the processor supports (IA32_VMX_MISC).
    pub activity_states: ActivityStates,
    /// Physical-address width (MAXPHYADDR), 32..=52.
    pub maxphyaddr: u8,
    /// Linear-address width for canonical checks: 48, or 57 with LA57.
    pub linear_address_bits: u8,
}

impl CheckEnv {
    /// Takes the fixed bits and activity states from a capability profile;
    /// 48-bit linear addresses.
    pub fn from_caps(caps: &VmxCapabilities, maxphyaddr: u8) -> CheckEnv {
        let (cr0_fixed0, cr0_fixed1) = caps.cr0_fixed();
        let (cr4_fixed0, cr4_fixed1) = caps.cr4_fixed();
        CheckEnv {
            cr0_fixed0,
            cr0_fixed1,
            cr4_fixed0,
            cr4_fixed1,
            activity_states: caps.misc().activity_states(),
            maxphyaddr,
            linear_address_bits: 48,
        }
    }

    fn canonical(&self, addr: u64) -> bool {
        let bits = u32::from(self.linear_address_bits.clamp(32, 64));
        let shift = 64 - bits;
        (((addr << shift) as i64) >> shift) as u64 == addr
    }

    /// Bits at and above MAXPHYADDR.
    fn above_maxphy(&self, v: u64) -> u64 {
        let w = u32::from(self.maxphyaddr.min(63));
        v & !((1u64 << w) - 1)
    }
}

mod rules;

pub use rules::{Rule, Violation};

struct Checker<'a> {
    gs: &'a GuestState,
    env: &'a CheckEnv,
    out: Vec<Violation>,
}

impl Checker<'_> {
    fn fail(&mut self, rule: Rule, detail: String) {
        self.out.push(Violation { rule, detail });
    }

    fn check(&mut self, ok: bool, rule: Rule, detail: impl FnOnce() -> String) {
        if !ok {
            self.fail(rule, detail());
        }
    }

    fn control_registers(&mut self) {
        let (gs, env) = (self.gs, self.env);
        let c = gs.controls;
        let mut fixed0 = env.cr0_fixed0;
        if c.unrestricted_guest {
            fixed0 &= !(cr0::PE | cr0::PG);
        }
        let (must1, must0) = (fixed0 & !gs.cr0, gs.cr0 & !env.cr0_fixed1);
        self.check(must1 | must0 == 0, Rule::Cr0Fixed, || {
            format!(
                "CR0 {:#x}: missing {must1:#x}, forbidden {must0:#x}",
                gs.cr0
            )
        });
        self.check(
            gs.cr0 & cr0::PG == 0 || gs.cr0 & cr0::PE != 0,
            Rule::Cr0PgWithoutPe,
            || format!("CR0 {:#x}", gs.cr0),
        );
        let (must1, must0) = (env.cr4_fixed0 & !gs.cr4, gs.cr4 & !env.cr4_fixed1);
        self.check(must1 | must0 == 0, Rule::Cr4Fixed, || {
            format!(
                "CR4 {:#x}: missing {must1:#x}, forbidden {must0:#x}",
                gs.cr4
            )
        });
        self.check(
            gs.cr4 & cr4::CET == 0 || gs.cr0 & cr0::WP != 0,
            Rule::Cr4CetWithoutWp,
            || format!("CR0 {:#x}, CR4 {:#x}", gs.cr0, gs.cr4),
        );
        let high = env.above_maxphy(gs.cr3);
        self.check(high == 0, Rule::Cr3Width, || {
            format!(
                "CR3 {:#x} has bits {high:#x} at or above bit {}",
                gs.cr3, env.maxphyaddr
            )
        });
        self.check(
            !c.load_debug_controls || gs.dr7 >> 32 == 0,
            Rule::Dr7High,
            || format!("DR7 {:#x}", gs.dr7),
        );
        if c.ia32e_mode_guest {
            self.check(gs.cr0 & cr0::PG != 0, Rule::Ia32eWithoutPg, || {
                format!("CR0 {:#x}", gs.cr0)
            });
            self.check(gs.cr4 & cr4::PAE != 0, Rule::Ia32eWithoutPae, || {
                format!("CR4 {:#x}", gs.cr4)
            });
        } else {
            self.check(gs.cr4 & cr4::PCIDE == 0, Rule::PcideOutsideIa32e, || {
                format!("CR4 {:#x}", gs.cr4)
            });
        }
        if c.load_efer {
            let rsvd = gs.efer & !(efer::SCE | efer::LME | efer::LMA | efer::NXE);
            self.check(rsvd == 0, Rule::EferReserved, || {
                format!("EFER {:#x} has reserved bits {rsvd:#x}", gs.efer)
            });
            let lma = gs.efer & efer::LMA != 0;
            self.check(lma == c.ia32e_mode_guest, Rule::EferLma, || {
                format!(
                    "EFER.LMA {} but IA-32e mode guest {}",
                    lma as u8, c.ia32e_mode_guest as u8
                )
            });
            let lme = gs.efer & efer::LME != 0;
            self.check(gs.cr0 & cr0::PG == 0 || lme == lma, Rule::EferLme, || {
                format!("EFER {:#x} with CR0.PG = 1", gs.efer)
            });
        }
    }

    /// Limit/granularity and reserved-bit checks shared by all segments.
    fn common_segment(&mut self, r: SegReg, s: &Segment) {
        let ar = s.access_rights;
        self.check(ar.reserved() == 0, Rule::SegReserved, || {
            format!(
                "{r} access rights {:#x} have reserved bits {:#x}",
                ar.raw(),
                ar.reserved()
            )
        });
        let g_ok = (s.limit & 0xfff == 0xfff || !ar.g()) && (s.limit & 0xfff0_0000 == 0 || ar.g());
        self.check(g_ok, Rule::SegGranularity, || {
            format!("{r} limit {:#x} with G = {}", s.limit, ar.g() as u8)
        });
    }

    fn segments(&mut self) {
        let (gs, env) = (self.gs, self.env);
        let c = gs.controls;
        let v86 = gs.v8086();
        self.check(!gs.tr.ti(), Rule::TrTi, || {
            format!("TR selector {:#x}", gs.tr.selector)
        });
        self.check(!gs.ldtr.usable() || !gs.ldtr.ti(), Rule::LdtrTi, || {
            format!("LDTR selector {:#x}", gs.ldtr.selector)
        });
        if !v86 && !c.unrestricted_guest {
            self.check(gs.ss.rpl() == gs.cs.rpl(), Rule::SsRplCsRpl, || {
                format!("SS.RPL {} vs CS.RPL {}", gs.ss.rpl(), gs.cs.rpl())
            });
        }
        // Bases.
        for r in [SegReg::Tr, SegReg::Fs, SegReg::Gs, SegReg::Ldtr] {
            let s = gs.segment(r);
            if r == SegReg::Ldtr && !s.usable() {
                continue;
            }
            self.check(env.canonical(s.base), Rule::BaseCanonical, || {
                format!("{r} base {:#x}", s.base)
            });
        }
        for r in [SegReg::Cs, SegReg::Ss, SegReg::Ds, SegReg::Es] {
            let s = gs.segment(r);
            if r != SegReg::Cs && !s.usable() {
                continue;
            }
            self.check(s.base >> 32 == 0, Rule::BaseHigh, || {
                format!("{r} base {:#x}", s.base)
            });
        }
        let user = [
            SegReg::Cs,
            SegReg::Ss,
            SegReg::Ds,
            SegReg::Es,
            SegReg::Fs,
            SegReg::Gs,
        ];
        if v86 {
            for r in user {
                let s = gs.segment(r);
                self.check(s.base == u64::from(s.selector) << 4, Rule::V86Base, || {
                    format!("{r} base {:#x}, selector {:#x}", s.base, s.selector)
                });
                self.check(s.limit == 0xffff, Rule::V86Limit, || {
                    format!("{r} limit {:#x}", s.limit)
                });
                self.check(s.access_rights.raw() == 0xf3, Rule::V86AccessRights, || {
                    format!("{r} access rights {:#x}", s.access_rights.raw())
                });
            }
        } else {
            self.protected_segments(user);
        }
        self.system_segments();
    }

    fn protected_segments(&mut self, user: [SegReg; 6]) {
        let gs = self.gs;
        let c = gs.controls;
        let (cs, ss) = (gs.cs.access_rights, gs.ss.access_rights);
        let cs_ok =
            matches!(cs.type_(), 9 | 11 | 13 | 15) || (c.unrestricted_guest && cs.type_() == 3);
        self.check(cs_ok, Rule::CsType, || format!("CS type {}", cs.type_()));
        if gs.ss.usable() {
            self.check(matches!(ss.type_(), 3 | 7), Rule::SsType, || {
                format!("SS type {}", ss.type_())
            });
        }
        for r in [SegReg::Ds, SegReg::Es, SegReg::Fs, SegReg::Gs] {
            let s = gs.segment(r);
            if !s.usable() {
                continue;
            }
            let t = s.access_rights.type_();
            let ok = t & 1 != 0 && (t & 8 == 0 || t & 2 != 0);
            self.check(ok, Rule::DataType, || format!("{r} type {t}"));
        }
        for r in user {
            let s = gs.segment(r);
            if r != SegReg::Cs && !s.usable() {
                continue;
            }
            let ar = s.access_rights;
            self.check(ar.s(), Rule::SegDescriptorType, || {
                format!("{r} access rights {:#x}", ar.raw())
            });
            self.check(ar.present(), Rule::SegPresent, || {
                format!("{r} access rights {:#x}", ar.raw())
            });
            self.common_segment(r, s);
        }
        let cs_dpl_ok = match cs.type_() {
            3 => cs.dpl() == 0,
            9 | 11 => cs.dpl() == ss.dpl(),
            13 | 15 => cs.dpl() <= ss.dpl(),
            _ => true, // reported under GS-CS-TYPE
        };
        self.check(cs_dpl_ok, Rule::CsDpl, || {
            format!(
                "CS type {} DPL {}, SS.DPL {}",
                cs.type_(),
                cs.dpl(),
                ss.dpl()
            )
        });
        if !c.unrestricted_guest {
            self.check(ss.dpl() == gs.ss.rpl(), Rule::SsDplRpl, || {
                format!("SS.DPL {} vs selector {:#x}", ss.dpl(), gs.ss.selector)
            });
        }
        if cs.type_() == 3 || gs.cr0 & cr0::PE == 0 {
            self.check(ss.dpl() == 0, Rule::SsDplZero, || {
                format!(
                    "SS.DPL {} with CS type {} and CR0 {:#x}",
                    ss.dpl(),
                    cs.type_(),
                    gs.cr0
                )
            });
        }
        if !c.unrestricted_guest {
            for r in [SegReg::Ds, SegReg::Es, SegReg::Fs, SegReg::Gs] {
                let s = gs.segment(r);
                let ar = s.access_rights;
                if s.usable() && ar.type_() <= 11 {
                    self.check(ar.dpl() >= s.rpl(), Rule::DataDpl, || {
                        format!("{r} DPL {} < RPL {}", ar.dpl(), s.rpl())
                    });
                }
            }
        }
        if c.ia32e_mode_guest {
            self.check(!(cs.l() && cs.db()), Rule::CsLongAndDefaultSize, || {
                format!("CS access rights {:#x}", cs.raw())
            });
        }
    }

    fn system_segments(&mut self) {
        let gs = self.gs;
        let tr = gs.tr.access_rights;
        let tr_type_ok = tr.type_() == 11 || (!gs.controls.ia32e_mode_guest && tr.type_() == 3);
        self.check(tr_type_ok, Rule::TrType, || {
            format!("TR type {}", tr.type_())
        });
        self.check(
            !tr.unusable() && tr.present() && !tr.s(),
            Rule::TrDescriptor,
            || format!("TR access rights {:#x}", tr.raw()),
        );
        self.common_segment(SegReg::Tr, &gs.tr);
        if gs.ldtr.usable() {
            let l = gs.ldtr.access_rights;
            self.check(
                l.type_() == 2 && !l.s() && l.present(),
                Rule::LdtrDescriptor,
                || format!("LDTR access rights {:#x}", l.raw()),
            );
            self.common_segment(SegReg::Ldtr, &gs.ldtr);
        }
    }

    fn descriptor_tables(&mut self) {
        let (gs, env) = (self.gs, self.env);
        for (name, t) in [("GDTR", gs.gdtr), ("IDTR", gs.idtr)] {
            self.check(env.canonical(t.base), Rule::DescriptorTableBase, || {
                format!("{name} base {:#x}", t.base)
            });
            self.check(t.limit >> 16 == 0, Rule::DescriptorTableLimit, || {
                format!("{name} limit {:#x}", t.limit)
            });
        }
    }

    fn rip_rflags(&mut self) {
        let (gs, env) = (self.gs, self.env);
        if gs.in_64bit_code() {
            self.check(env.canonical(gs.rip), Rule::RipCanonical, || {
                format!("RIP {:#x}", gs.rip)
            });
        } else {
            self.check(gs.rip >> 32 == 0, Rule::RipHigh, || {
                format!("RIP {:#x}", gs.rip)
            });
        }
        let rsvd = gs.rflags & !0x3f_7fd7;
        self.check(
            rsvd == 0 && gs.rflags & 2 != 0,
            Rule::RflagsReserved,
            || format!("RFLAGS {:#x}", gs.rflags),
        );
        if gs.controls.ia32e_mode_guest || gs.cr0 & cr0::PE == 0 {
            self.check(!gs.v8086(), Rule::RflagsVm, || {
                format!("RFLAGS {:#x}", gs.rflags)
            });
        }
        if let Some(ev) = gs.injected_event {
            self.check(
                ev.kind != EventKind::ExternalInterrupt || gs.rflags & (1 << 9) != 0,
                Rule::RflagsIf,
                || format!("RFLAGS {:#x}, injecting vector {:#x}", gs.rflags, ev.vector),
            );
        }
    }

    fn non_register_state(&mut self) {
        let (gs, env) = (self.gs, self.env);
        let act = gs.activity_state;
        let a = env.activity_states;
        let supported = match act {
            activity::ACTIVE => true,
            activity::HLT => a.hlt,
            activity::SHUTDOWN => a.shutdown,
            activity::WAIT_FOR_SIPI => a.wait_for_sipi,
            _ => false,
        };
        self.check(supported, Rule::ActivityValid, || {
            format!("activity state {act}")
        });
        if act == activity::HLT {
            let dpl = gs.ss.access_rights.dpl();
            self.check(dpl == 0, Rule::ActivityHltDpl, || format!("SS.DPL {dpl}"));
        }
        let i = gs.interruptibility;
        let sti_or_movss = i & (intr::STI | intr::MOV_SS) != 0;
        self.check(
            !sti_or_movss || act == activity::ACTIVE,
            Rule::ActivityBlocking,
            || format!("activity state {act}, interruptibility {i:#x}"),
        );
        if let Some(ev) = gs.injected_event {
            let ok = match act {
                activity::HLT => match ev.kind {
                    EventKind::ExternalInterrupt | EventKind::Nmi => true,
                    EventKind::HardwareException => matches!(ev.vector, 1 | 18),
                    EventKind::Other => ev.vector == 0,
                    _ => false,
                },
                activity::SHUTDOWN => {
                    ev.kind == EventKind::Nmi
                        || (ev.kind == EventKind::HardwareException && ev.vector == 18)
                }
                activity::WAIT_FOR_SIPI => false,
                _ => true,
            };
            self.check(ok, Rule::ActivityEvent, || {
                format!(
                    "activity state {act}, injecting {:?} vector {}",
                    ev.kind, ev.vector
                )
            });
            let blocked = match ev.kind {
                EventKind::ExternalInterrupt => i & (intr::STI | intr::MOV_SS) != 0,
                EventKind::Nmi => i & intr::MOV_SS != 0,
                _ => false,
            };
            self.check(!blocked, Rule::IntEventBlocked, || {
                format!("interruptibility {i:#x}, injecting {:?}", ev.kind)
            });
            if ev.kind == EventKind::Nmi && gs.controls.virtual_nmis {
                self.check(i & intr::NMI == 0, Rule::IntNmiBlocked, || {
                    format!("interruptibility {i:#x}")
                });
            }
        }
        self.check(i >> 5 == 0, Rule::IntReserved, || {
            format!("interruptibility {i:#x}")
        });
        self.check(i & 3 != 3, Rule::IntStiAndMovSs, || {
            format!("interruptibility {i:#x}")
        });
        self.check(
            i & intr::STI == 0 || gs.rflags & (1 << 9) != 0,
            Rule::IntStiWithoutIf,
            || format!("interruptibility {i:#x}, RFLAGS {:#x}", gs.rflags),
        );
        self.check(i & intr::SMI == 0, Rule::IntSmi, || {
            format!("interruptibility {i:#x}")
        });
        self.check(
            i & intr::ENCLAVE == 0 || i & intr::MOV_SS == 0,
            Rule::IntEnclaveMovSs,
            || format!("interruptibility {i:#x}"),
        );
        let p = gs.pending_debug_exceptions;
        let rsvd = p & !(pde::B0_3 | pde::ENABLED_BREAKPOINT | pde::BS | pde::RTM);
        self.check(rsvd == 0, Rule::PendingDebugReserved, || {
            format!("pending debug exceptions {p:#x}")
        });
        if sti_or_movss || act == activity::HLT {
            let tf = gs.rflags & (1 << 8) != 0;
            let btf = gs.debugctl & (1 << 1) != 0;
            let want_bs = tf && !btf;
            self.check((p & pde::BS != 0) == want_bs, Rule::PendingDebugBs, || {
                format!(
                    "BS {} with RFLAGS.TF {} and DEBUGCTL.BTF {}",
                    (p & pde::BS != 0) as u8,
                    tf as u8,
                    btf as u8
                )
            });
        }
        if p & pde::RTM != 0 {
            let ok = p & (pde::B0_3 | pde::BS) == 0
                && p & pde::ENABLED_BREAKPOINT != 0
                && i & intr::MOV_SS == 0;
            self.check(ok, Rule::PendingDebugRtm, || {
                format!("pending debug exceptions {p:#x}, interruptibility {i:#x}")
            });
        }
    }

    fn pdptes(&mut self) {
        let (gs, env) = (self.gs, self.env);
        let pae_paging = gs.cr0 & cr0::PG != 0 && gs.cr4 & cr4::PAE != 0;
        if !(pae_paging && !gs.controls.ia32e_mode_guest && gs.controls.enable_ept) {
            return;
        }
        for (n, &e) in gs.pdptes.iter().enumerate() {
            if e & 1 == 0 {
                continue;
            }
            let bad = (e & 0x1e6) | env.above_maxphy(e);
            self.check(bad == 0, Rule::PdpteReserved, || {
                format!("PDPTE{n} {e:#x} has reserved bits {bad:#x}")
            });
        }
    }
}

/// Runs every guest-state check and returns all violations, in the order
/// of [`Rule::ALL`] groups (control registers, segments, descriptor tables,
/// RIP/RFLAGS, non-register state, PDPTEs). An empty result means VM entry
/// would accept the guest state as far as this model covers it.
pub fn check_guest_state(gs: &GuestState, env: &CheckEnv) -> Vec<Violation> {
    let mut c = Checker {
        gs,
        env,
        out: Vec::new(),
    };
    c.control_registers();
    c.segments();
    c.descriptor_tables();
    c.rip_rflags();
    c.non_register_state();
    c.pdptes();
    c.out
}
