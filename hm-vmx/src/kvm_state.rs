//! A vCPU's architectural state as KVM reports it, gathered for the VM-entry
//! guest-state checks, and its conversion into the VT-x model.
//!
//! KVM keeps no VMCS the VMM can read, so the state a VT-x VMM would load
//! into the guest-state area is rebuilt from `kvm_regs`, `kvm_sregs`,
//! `kvm_vcpu_events` (interrupt shadow, NMI masking, injected event),
//! `kvm_mp_state` (activity state), `kvm_debugregs` (DR7) and, where the
//! host has `KVM_CAP_SREGS2`, the PAE PDPTEs of `kvm_sregs2`.

use std::fmt;
use std::os::fd::AsRawFd;

use kvm_bindings::{
    KVM_SREGS2_FLAGS_PDPTRS_VALID, kvm_regs, kvm_segment, kvm_sregs, kvm_sregs2, kvm_vcpu_events,
};
use kvm_ioctls::VcpuFd;

use crate::error::{Result, ioctl};
use crate::mp_state::MpState;
use crate::vmx::{
    CheckEnv, EventKind, GuestState, InjectedEvent, KvmDtableFields, KvmRegsFields,
    KvmSegmentFields, KvmSregsFields, ProgrammedControls, activity_from_kvm_mp_state, efer,
    interruptibility_from_kvm,
};

/// `KVM_GET_SREGS2`: `_IOR(KVMIO, 0xcc, struct kvm_sregs2)`.
const KVM_GET_SREGS2: u64 =
    (2 << 30) | ((std::mem::size_of::<kvm_sregs2>() as u64) << 16) | (0xae << 8) | 0xcc;

/// Everything KVM reports that the guest-state checks look at.
#[derive(Debug, Clone, Default)]
pub(crate) struct KvmVcpuState {
    /// `KVM_GET_REGS`.
    pub regs: kvm_regs,
    /// `KVM_GET_SREGS`.
    pub sregs: kvm_sregs,
    /// `KVM_GET_VCPU_EVENTS`.
    pub events: kvm_vcpu_events,
    /// `KVM_GET_MP_STATE`.
    pub mp_state: u32,
    /// DR7 from `KVM_GET_DEBUGREGS`.
    pub dr7: u64,
    /// PDPTE0-3 from `KVM_GET_SREGS2`, when the host has it and KVM marks
    /// them valid (PAE paging outside long mode).
    pub pdptes: Option<[u64; 4]>,
}

impl KvmVcpuState {
    /// Reads the state with five or six vCPU ioctls.
    pub(crate) fn read(fd: &VcpuFd) -> Result<KvmVcpuState> {
        Ok(KvmVcpuState {
            regs: fd.get_regs().map_err(ioctl("KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?,
            events: fd.get_vcpu_events().map_err(ioctl("KVM_GET_VCPU_EVENTS"))?,
            mp_state: fd
                .get_mp_state()
                .map_err(ioctl("KVM_GET_MP_STATE"))?
                .mp_state,
            dr7: fd.get_debug_regs().map_err(ioctl("KVM_GET_DEBUGREGS"))?.dr7,
            pdptes: read_pdptes(fd),
        })
    }

    /// The guest-state area a VT-x VMM would load for this state, with the
    /// controls `programmed` says (and "IA-32e mode guest" = EFER.LMA), CR0
    /// and CR4 as the VMCS would hold them (fixed bits forced).
    pub(crate) fn guest_state(
        &self,
        programmed: &ProgrammedControls,
        env: &CheckEnv,
    ) -> GuestState {
        let s = &self.sregs;
        let controls = programmed.guest_controls(s.efer & efer::LMA != 0);
        let regs = KvmRegsFields {
            rip: self.regs.rip,
            rsp: self.regs.rsp,
            rflags: self.regs.rflags,
        };
        let mut gs = GuestState::from_kvm(&sregs_fields(s), &regs, controls);
        gs.dr7 = self.dr7;
        gs.interruptibility =
            interruptibility_from_kvm(self.events.interrupt.shadow, self.events.nmi.masked != 0);
        gs.activity_state = activity_from_kvm_mp_state(self.mp_state);
        gs.pdptes = self.pdptes.unwrap_or_default();
        gs.injected_event = injected_event(&self.events);
        gs.as_programmed(env)
    }
}

/// Reads the PDPTEs through `KVM_GET_SREGS2`; `None` when the host lacks
/// the ioctl or KVM does not hold valid PDPTEs (no PAE paging).
fn read_pdptes(fd: &VcpuFd) -> Option<[u64; 4]> {
    let mut sregs2 = kvm_sregs2::default();
    // SAFETY: KVM_GET_SREGS2 writes exactly one `kvm_sregs2` (its size is
    // encoded in the request number) into the buffer we own for the
    // duration of the call; the fd is a live vCPU fd. An unknown request
    // fails with ENOTTY/EINVAL and writes nothing.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            KVM_GET_SREGS2 as _,
            std::ptr::from_mut(&mut sregs2),
        )
    };
    (ret == 0 && sregs2.flags & u64::from(KVM_SREGS2_FLAGS_PDPTRS_VALID) != 0)
        .then_some(sregs2.pdptrs)
}

/// `kvm_segment` as the model's plain fields.
pub(crate) fn segment_fields(s: &kvm_segment) -> KvmSegmentFields {
    KvmSegmentFields {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present,
        dpl: s.dpl,
        db: s.db,
        s: s.s,
        l: s.l,
        g: s.g,
        avl: s.avl,
        unusable: s.unusable,
    }
}

/// `kvm_sregs` as the model's plain fields.
pub(crate) fn sregs_fields(s: &kvm_sregs) -> KvmSregsFields {
    let dt = |d: &kvm_bindings::kvm_dtable| KvmDtableFields {
        base: d.base,
        limit: d.limit,
    };
    KvmSregsFields {
        cs: segment_fields(&s.cs),
        ds: segment_fields(&s.ds),
        es: segment_fields(&s.es),
        fs: segment_fields(&s.fs),
        gs: segment_fields(&s.gs),
        ss: segment_fields(&s.ss),
        tr: segment_fields(&s.tr),
        ldt: segment_fields(&s.ldt),
        gdt: dt(&s.gdt),
        idt: dt(&s.idt),
        cr0: s.cr0,
        cr3: s.cr3,
        cr4: s.cr4,
        efer: s.efer,
    }
}

/// The event the next entry injects, as VT-x would describe it. VT-x
/// injects one event per entry; KVM re-injects an exception before an NMI
/// before an interrupt. `#BP` (3) and `#OF` (4) are software exceptions.
pub(crate) fn injected_event(ev: &kvm_vcpu_events) -> Option<InjectedEvent> {
    if ev.exception.injected != 0 {
        let vector = ev.exception.nr;
        let kind = if matches!(vector, 3 | 4) {
            EventKind::SoftwareException
        } else {
            EventKind::HardwareException
        };
        Some(InjectedEvent { kind, vector })
    } else if ev.nmi.injected != 0 {
        Some(InjectedEvent {
            kind: EventKind::Nmi,
            vector: 2,
        })
    } else if ev.interrupt.injected != 0 {
        let kind = if ev.interrupt.soft != 0 {
            EventKind::SoftwareInterrupt
        } else {
            EventKind::ExternalInterrupt
        };
        Some(InjectedEvent {
            kind,
            vector: ev.interrupt.nr,
        })
    } else {
        None
    }
}

/// One segment register as a line of text: `NAME sel=... base=... limit=...
/// type=... s= dpl= p= db= l= g= avl= unusable=`, for diagnoses and info
/// handlers.
pub struct SegmentLine<'a>(pub &'a str, pub &'a kvm_segment);

impl fmt::Display for SegmentLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SegmentLine(name, s) = self;
        write!(
            f,
            "{name:<4} sel={:#06x} base={:#018x} limit={:#010x} type={:#x} s={} dpl={} p={} db={} l={} g={} avl={} unusable={}",
            s.selector,
            s.base,
            s.limit,
            s.type_,
            s.s,
            s.dpl,
            s.present,
            s.db,
            s.l,
            s.g,
            s.avl,
            s.unusable
        )
    }
}

/// The raw KVM data, one item per line, indented by two spaces.
impl fmt::Display for KvmVcpuState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (r, s, e) = (&self.regs, &self.sregs, &self.events);
        writeln!(
            f,
            "  RIP={:#018x} RSP={:#018x} RFLAGS={:#010x}",
            r.rip, r.rsp, r.rflags
        )?;
        for (name, seg) in [
            ("CS", &s.cs),
            ("SS", &s.ss),
            ("DS", &s.ds),
            ("ES", &s.es),
            ("FS", &s.fs),
            ("GS", &s.gs),
            ("LDTR", &s.ldt),
            ("TR", &s.tr),
        ] {
            writeln!(f, "  {}", SegmentLine(name, seg))?;
        }
        writeln!(
            f,
            "  GDTR base={:#018x} limit={:#06x}  IDTR base={:#018x} limit={:#06x}",
            s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit
        )?;
        writeln!(
            f,
            "  CR0={:#x} CR2={:#x} CR3={:#x} CR4={:#x} CR8={:#x} EFER={:#x} APIC_BASE={:#x}",
            s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer, s.apic_base
        )?;
        writeln!(
            f,
            "  events: interrupt shadow={:#x}, NMI masked={} pending={} injected={}, exception injected={} pending={} vector={}, interrupt injected={} vector={} soft={}",
            e.interrupt.shadow,
            e.nmi.masked,
            e.nmi.pending,
            e.nmi.injected,
            e.exception.injected,
            e.exception.pending,
            e.exception.nr,
            e.interrupt.injected,
            e.interrupt.nr,
            e.interrupt.soft
        )?;
        writeln!(
            f,
            "  MP state: {} ({}), DR7={:#x}",
            self.mp_state,
            MpState::from_kvm(self.mp_state),
            self.dr7
        )?;
        match self.pdptes {
            Some(p) => writeln!(
                f,
                "  PDPTEs: {:#x} {:#x} {:#x} {:#x}",
                p[0], p[1], p[2], p[3]
            ),
            None => writeln!(
                f,
                "  PDPTEs: not reported (no KVM_GET_SREGS2 or no PAE paging)"
            ),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vmx::{SegReg, VmxCapabilities, activity, check_guest_state, interruptibility};

    /// A flat 64-bit state as a VMM writes it with KVM_SET_SREGS.
    pub(crate) fn long_mode_state() -> KvmVcpuState {
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 8,
            type_: 11,
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        let data = kvm_segment {
            selector: 0x10,
            type_: 3,
            l: 0,
            db: 1,
            ..code
        };
        let mut st = KvmVcpuState::default();
        st.sregs.cs = code;
        for s in [
            &mut st.sregs.ds,
            &mut st.sregs.es,
            &mut st.sregs.fs,
            &mut st.sregs.gs,
            &mut st.sregs.ss,
        ] {
            *s = data;
        }
        st.sregs.tr = kvm_segment {
            selector: 0x18,
            limit: 0x67,
            type_: 11,
            s: 0,
            l: 0,
            g: 0,
            ..code
        };
        st.sregs.ldt = kvm_segment {
            unusable: 1,
            present: 0,
            ..Default::default()
        };
        st.sregs.gdt.limit = 0x1f;
        st.sregs.idt.limit = 0xfff;
        st.sregs.cr0 = 0x8000_0011;
        st.sregs.cr3 = 0x1000;
        st.sregs.cr4 = 0x20;
        st.sregs.efer = efer::LME | efer::LMA;
        st.regs.rip = 0x4000;
        st.regs.rflags = 2;
        st.dr7 = 0x400;
        st
    }

    fn env() -> (ProgrammedControls, CheckEnv) {
        let caps = VmxCapabilities::baseline();
        (
            ProgrammedControls::kvm_like(&caps).unwrap(),
            CheckEnv::from_caps(&caps, 48),
        )
    }

    #[test]
    fn segment_conversion_keeps_every_field() {
        let s = kvm_segment {
            base: 0x1234_5678_9abc,
            limit: 0xfffff,
            selector: 0x2b,
            type_: 0xa,
            present: 1,
            dpl: 3,
            db: 1,
            s: 1,
            l: 0,
            g: 1,
            avl: 1,
            unusable: 0,
            padding: 0,
        };
        let f = segment_fields(&s);
        assert_eq!(
            (f.base, f.limit, f.selector, f.type_, f.dpl),
            (0x1234_5678_9abc, 0xfffff, 0x2b, 0xa, 3)
        );
        assert_eq!(
            f.access_rights().raw(),
            0xa | 0x10 | 0x60 | 0x80 | 0x1000 | 0x4000 | 0x8000
        );
        let mut st = long_mode_state();
        st.sregs.gs = s;
        st.sregs.gdt.base = 0x5000;
        let sf = sregs_fields(&st.sregs);
        assert_eq!(sf.gs, f);
        assert_eq!(
            (sf.gdt.base, sf.gdt.limit, sf.idt.limit),
            (0x5000, 0x1f, 0xfff)
        );
        assert_eq!(sf.efer, efer::LME | efer::LMA);
    }

    #[test]
    fn long_mode_state_converts_and_passes() {
        let (p, env) = env();
        let st = long_mode_state();
        let gs = st.guest_state(&p, &env);
        assert!(gs.controls.ia32e_mode_guest && gs.controls.unrestricted_guest);
        // NE (and VMXE) forced as the VMCS would hold them.
        assert_eq!(gs.cr0, 0x8000_0031);
        assert_eq!(gs.cr4, 0x2020);
        assert_eq!(gs.segment(SegReg::Cs).access_rights.raw(), 0xa09b);
        assert!(
            check_guest_state(&gs, &env).is_empty(),
            "{:?}",
            check_guest_state(&gs, &env)
        );
        // Without LMA the "IA-32e mode guest" control follows.
        let mut pm = st.clone();
        pm.sregs.efer = 0;
        assert!(!pm.guest_state(&p, &env).controls.ia32e_mode_guest);
    }

    #[test]
    fn events_mp_state_and_debug_registers_convert() {
        let (p, env) = env();
        let mut st = long_mode_state();
        st.events.interrupt.shadow = 2;
        st.events.nmi.masked = 1;
        st.mp_state = 3;
        st.dr7 = 0x4_0000_0400;
        st.pdptes = Some([1, 2, 3, 4]);
        let gs = st.guest_state(&p, &env);
        assert_eq!(
            gs.interruptibility,
            interruptibility::STI | interruptibility::NMI
        );
        assert_eq!(gs.activity_state, activity::HLT);
        assert_eq!(gs.dr7, 0x4_0000_0400);
        assert_eq!(gs.pdptes, [1, 2, 3, 4]);
        assert_eq!(gs.injected_event, None);
    }

    #[test]
    fn injected_events_follow_kvm_priority() {
        let mut ev = kvm_vcpu_events::default();
        assert_eq!(injected_event(&ev), None);
        ev.interrupt.injected = 1;
        ev.interrupt.nr = 0x20;
        assert_eq!(
            injected_event(&ev),
            Some(InjectedEvent {
                kind: EventKind::ExternalInterrupt,
                vector: 0x20
            })
        );
        ev.interrupt.soft = 1;
        assert_eq!(
            injected_event(&ev).map(|e| e.kind),
            Some(EventKind::SoftwareInterrupt)
        );
        ev.nmi.injected = 1;
        assert_eq!(
            injected_event(&ev),
            Some(InjectedEvent {
                kind: EventKind::Nmi,
                vector: 2
            })
        );
        ev.exception.injected = 1;
        ev.exception.nr = 14;
        assert_eq!(
            injected_event(&ev),
            Some(InjectedEvent {
                kind: EventKind::HardwareException,
                vector: 14
            })
        );
        ev.exception.nr = 3;
        assert_eq!(
            injected_event(&ev).map(|e| e.kind),
            Some(EventKind::SoftwareException)
        );
    }

    #[test]
    fn raw_state_text() {
        let mut st = long_mode_state();
        st.mp_state = 3;
        let t = st.to_string();
        for want in [
            "  RIP=0x0000000000004000 RSP=0x0000000000000000 RFLAGS=0x00000002",
            "  CS   sel=0x0008 base=0x0000000000000000 limit=0xffffffff type=0xb s=1 dpl=0 p=1 db=0 l=1 g=1 avl=0 unusable=0",
            "  LDTR sel=0x0000",
            "EFER=0x500",
            "  MP state: 3 (halted), DR7=0x400",
            "  PDPTEs: not reported",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        st.pdptes = Some([0x1001, 0, 0, 0]);
        assert!(st.to_string().contains("  PDPTEs: 0x1001 0x0 0x0 0x0"));
    }

    fn any_segment() -> impl proptest::strategy::Strategy<Value = kvm_segment> {
        use proptest::prelude::*;
        (any::<u64>(), any::<u32>(), any::<u16>(), any::<[u8; 9]>()).prop_map(
            |(base, limit, selector, b)| kvm_segment {
                base,
                limit,
                selector,
                type_: b[0],
                present: b[1],
                dpl: b[2],
                db: b[3],
                s: b[4],
                l: b[5],
                g: b[6],
                avl: b[7],
                unusable: b[8],
                padding: 0,
            },
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever a guest or the VMM leaves in the registers, conversion,
        /// checking and the report never panic; the access rights mirror
        /// the segment flags; "IA-32e mode guest" mirrors EFER.LMA; the
        /// VMCS view keeps the fixed bits.
        #[test]
        fn any_kvm_state_converts_and_checks(
            segs in proptest::collection::vec(any_segment(), 8),
            crs in proptest::prelude::any::<[u64; 4]>(),
            regs in proptest::prelude::any::<[u64; 3]>(),
            ev in proptest::prelude::any::<[u8; 8]>(),
            mp_state in 0u32..12,
            pdptes in proptest::prelude::any::<Option<[u64; 4]>>(),
        ) {
            let (p, env) = env();
            let mut st = KvmVcpuState::default();
            let s = &mut st.sregs;
            for (dst, src) in [
                &mut s.cs, &mut s.ds, &mut s.es, &mut s.fs, &mut s.gs, &mut s.ss, &mut s.tr,
                &mut s.ldt,
            ]
            .into_iter()
            .zip(&segs)
            {
                *dst = *src;
            }
            (s.cr0, s.cr3, s.cr4, s.efer) = (crs[0], crs[1], crs[2], crs[3]);
            (st.regs.rip, st.regs.rsp, st.regs.rflags) = (regs[0], regs[1], regs[2]);
            st.events.interrupt.shadow = ev[0];
            st.events.nmi.masked = ev[1];
            st.events.exception.injected = ev[2] & 1;
            st.events.exception.nr = ev[3];
            st.events.nmi.injected = ev[4] & 1;
            st.events.interrupt.injected = ev[5] & 1;
            st.events.interrupt.nr = ev[6];
            st.events.interrupt.soft = ev[7];
            st.mp_state = mp_state;
            st.pdptes = pdptes;
            let gs = st.guest_state(&p, &env);
            proptest::prop_assert_eq!(gs.controls.ia32e_mode_guest, crs[3] & efer::LMA != 0);
            proptest::prop_assert_eq!(gs.cr4 & env.cr4_fixed0, env.cr4_fixed0);
            proptest::prop_assert_eq!(gs.as_programmed(&env), gs.clone());
            let cs = gs.segment(SegReg::Cs).access_rights;
            proptest::prop_assert_eq!(cs.l(), segs[0].l != 0);
            proptest::prop_assert_eq!(cs.db(), segs[0].db != 0);
            proptest::prop_assert_eq!(cs.unusable(), segs[0].unusable != 0);
            let _ = check_guest_state(&gs, &env);
            proptest::prop_assert!(st.to_string().lines().count() >= 14);
        }
    }
}
