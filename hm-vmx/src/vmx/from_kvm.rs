//! Filling the guest-state model from KVM's register structures, given as
//! plain integers (no kvm-bindings dependency): `kvm_sregs`, the `rip`,
//! `rsp` and `rflags` of `kvm_regs`, `kvm_vcpu_events` interrupt shadow and
//! NMI mask, and `kvm_mp_state`.
//!
//! KVM reports the guest-visible (architectural) CR0 and CR4. A VT-x VMM
//! loads the VMCS with the bits IA32_VMX_CR0/CR4_FIXED0 demand forced on and
//! hides them behind the guest/host masks and read shadows;
//! [`GuestState::as_programmed`] applies that step before checking.
//!
//! ```
//! use hm_vmx::vmx::{
//!     check_guest_state, CheckEnv, GuestState, KvmRegsFields, KvmSregsFields,
//!     ProgrammedControls, VmxCapabilities,
//! };
//!
//! let caps = VmxCapabilities::baseline();
//! let env = CheckEnv::from_caps(&caps, 48);
//! let controls = ProgrammedControls::kvm_like(&caps).unwrap().guest_controls(false);
//! // A real-mode guest right after reset, as KVM_GET_SREGS reports it.
//! let sregs = KvmSregsFields::reset();
//! let regs = KvmRegsFields { rip: 0xfff0, rsp: 0, rflags: 2 };
//! let gs = GuestState::from_kvm(&sregs, &regs, controls);
//! // KVM shows CR0 = 0x60000010 (no NE); the VMCS would carry NE.
//! assert!(!check_guest_state(&gs, &env).is_empty());
//! assert!(check_guest_state(&gs.as_programmed(&env), &env).is_empty());
//! ```

use super::guest_checks::CheckEnv;
use super::guest_state::{
    DescriptorTable, GuestControls, GuestState, KvmSegmentFields, Segment, activity, cr0,
    interruptibility,
};

/// `kvm_dtable` (GDTR/IDTR) fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvmDtableFields {
    /// Base address.
    pub base: u64,
    /// Limit.
    pub limit: u16,
}

/// The `kvm_sregs` fields the guest-state checks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvmSregsFields {
    /// CS.
    pub cs: KvmSegmentFields,
    /// DS.
    pub ds: KvmSegmentFields,
    /// ES.
    pub es: KvmSegmentFields,
    /// FS.
    pub fs: KvmSegmentFields,
    /// GS.
    pub gs: KvmSegmentFields,
    /// SS.
    pub ss: KvmSegmentFields,
    /// TR.
    pub tr: KvmSegmentFields,
    /// LDTR (`ldt` in `kvm_sregs`).
    pub ldt: KvmSegmentFields,
    /// GDTR.
    pub gdt: KvmDtableFields,
    /// IDTR.
    pub idt: KvmDtableFields,
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// IA32_EFER.
    pub efer: u64,
}

/// The `kvm_regs` fields the guest-state checks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvmRegsFields {
    /// RIP.
    pub rip: u64,
    /// RSP.
    pub rsp: u64,
    /// RFLAGS.
    pub rflags: u64,
}

impl KvmSregsFields {
    /// The values KVM reports for a vCPU after RESET: real mode, CS
    /// selector 0xF000 with base 0xFFFF0000, CR0 = 0x60000010.
    pub fn reset() -> KvmSregsFields {
        let data = KvmSegmentFields {
            limit: 0xffff,
            type_: 3,
            present: 1,
            s: 1,
            ..Default::default()
        };
        KvmSregsFields {
            cs: KvmSegmentFields {
                base: 0xffff_0000,
                selector: 0xf000,
                type_: 11,
                ..data
            },
            ds: data,
            es: data,
            fs: data,
            gs: data,
            ss: data,
            tr: KvmSegmentFields {
                limit: 0xffff,
                type_: 11,
                present: 1,
                ..Default::default()
            },
            ldt: KvmSegmentFields {
                limit: 0xffff,
                type_: 2,
                present: 1,
                ..Default::default()
            },
            gdt: KvmDtableFields {
                base: 0,
                limit: 0xffff,
            },
            idt: KvmDtableFields {
                base: 0,
                limit: 0xffff,
            },
            cr0: 0x6000_0010,
            cr3: 0,
            cr4: 0,
            efer: 0,
        }
    }
}

/// VMX interruptibility state from `kvm_vcpu_events`: `shadow` holds
/// KVM_X86_SHADOW_INT_MOV_SS (1) and KVM_X86_SHADOW_INT_STI (2), the
/// reverse of the VMX bit order; `nmi_masked` is `nmi.masked`.
pub fn interruptibility_from_kvm(shadow: u8, nmi_masked: bool) -> u32 {
    let mut i = 0;
    if shadow & 1 != 0 {
        i |= interruptibility::MOV_SS;
    }
    if shadow & 2 != 0 {
        i |= interruptibility::STI;
    }
    if nmi_masked {
        i |= interruptibility::NMI;
    }
    i
}

/// VMX activity state for a `kvm_mp_state`: HALTED (3) is HLT,
/// INIT_RECEIVED (2) is wait-for-SIPI, everything else is active.
pub fn activity_from_kvm_mp_state(mp_state: u32) -> u32 {
    match mp_state {
        3 => activity::HLT,
        2 => activity::WAIT_FOR_SIPI,
        _ => activity::ACTIVE,
    }
}

impl GuestState {
    /// Builds the guest state from KVM's registers. DR7 starts at its reset
    /// value 0x400, IA32_DEBUGCTL, pending debug exceptions and PDPTEs at
    /// 0, the activity state active with no blocking and no injected
    /// event; set those fields from `kvm_debugregs`, `kvm_vcpu_events`
    /// (see [`interruptibility_from_kvm`]), `kvm_mp_state` (see
    /// [`activity_from_kvm_mp_state`]) and `kvm_sregs2` where available.
    pub fn from_kvm(
        sregs: &KvmSregsFields,
        regs: &KvmRegsFields,
        controls: GuestControls,
    ) -> GuestState {
        let dt = |d: KvmDtableFields| DescriptorTable {
            base: d.base,
            limit: u32::from(d.limit),
        };
        GuestState {
            cr0: sregs.cr0,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            dr7: 0x400,
            debugctl: 0,
            efer: sregs.efer,
            rsp: regs.rsp,
            rip: regs.rip,
            rflags: regs.rflags,
            es: Segment::from(sregs.es),
            cs: Segment::from(sregs.cs),
            ss: Segment::from(sregs.ss),
            ds: Segment::from(sregs.ds),
            fs: Segment::from(sregs.fs),
            gs: Segment::from(sregs.gs),
            ldtr: Segment::from(sregs.ldt),
            tr: Segment::from(sregs.tr),
            gdtr: dt(sregs.gdt),
            idtr: dt(sregs.idt),
            activity_state: activity::ACTIVE,
            interruptibility: 0,
            pending_debug_exceptions: 0,
            pdptes: [0; 4],
            controls,
            injected_event: None,
        }
    }

    /// The state a VT-x VMM would load into the VMCS for this architectural
    /// state: every IA32_VMX_CR0_FIXED0 bit (PE and PG excepted under
    /// unrestricted guest) forced into CR0 and every IA32_VMX_CR4_FIXED0
    /// bit into CR4. The guest keeps seeing its own values through the CR0
    /// and CR4 read shadows.
    pub fn as_programmed(&self, env: &CheckEnv) -> GuestState {
        let mut cr0_fixed = env.cr0_fixed0;
        if self.controls.unrestricted_guest {
            cr0_fixed &= !(cr0::PE | cr0::PG);
        }
        GuestState {
            cr0: self.cr0 | cr0_fixed,
            cr4: self.cr4 | env.cr4_fixed0,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::{VmxCapabilities, check_guest_state, interruptibility as intr};

    #[test]
    fn kvm_event_conversions() {
        assert_eq!(interruptibility_from_kvm(0, false), 0);
        assert_eq!(interruptibility_from_kvm(1, false), intr::MOV_SS);
        assert_eq!(interruptibility_from_kvm(2, true), intr::STI | intr::NMI);
        assert_eq!(activity_from_kvm_mp_state(0), activity::ACTIVE);
        assert_eq!(activity_from_kvm_mp_state(2), activity::WAIT_FOR_SIPI);
        assert_eq!(activity_from_kvm_mp_state(3), activity::HLT);
        assert_eq!(activity_from_kvm_mp_state(4), activity::ACTIVE);
    }

    #[test]
    fn reset_state_matches_model() {
        let caps = VmxCapabilities::baseline();
        let env = CheckEnv::from_caps(&caps, 48);
        let regs = KvmRegsFields {
            rip: 0xfff0,
            rsp: 0,
            rflags: 2,
        };
        let controls = GuestState::real_mode_reset().controls;
        let gs =
            GuestState::from_kvm(&KvmSregsFields::reset(), &regs, controls).as_programmed(&env);
        assert!(check_guest_state(&gs, &env).is_empty());
        // CD/NW stay as the guest set them; NE and VMXE are forced.
        assert_eq!(gs.cr0, 0x6000_0030);
        assert_eq!(gs.cr4, 0x2000);
        assert_eq!(gs.cs, GuestState::real_mode_reset().cs);
        // Without unrestricted guest PE and PG are forced too. The reset
        // segments happen to be valid protected-mode segments, so entry
        // would succeed, but into paged protected mode: why VMMs without
        // unrestricted guest must emulate real mode instead.
        let mut strict = gs.clone();
        strict.controls.unrestricted_guest = false;
        let strict = strict.as_programmed(&env);
        assert_eq!(strict.cr0 & 0x8000_0001, 0x8000_0001);
        assert!(check_guest_state(&strict, &env).is_empty());
        // Forcing is idempotent.
        assert_eq!(strict.as_programmed(&env), strict);
    }
}
