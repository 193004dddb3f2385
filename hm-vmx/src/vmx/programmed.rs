//! The controls our backend "would program" into a VMCS, as a KVM-like VMM
//! does, adjusted against a capability profile.
//!
//! ```
//! use hm_vmx::vmx::{Control, ProgrammedControls, VmxCapabilities};
//!
//! let caps = VmxCapabilities::baseline();
//! let p = ProgrammedControls::kvm_like(&caps).unwrap();
//! assert!(p.is_set(Control::HLT_EXITING));
//! assert!(p.is_set(Control::ENABLE_EPT) && p.is_set(Control::UNRESTRICTED_GUEST));
//! // With EPT, guest CR3 accesses and INVLPG need not exit.
//! assert!(!p.is_set(Control::CR3_LOAD_EXITING) && !p.is_set(Control::INVLPG_EXITING));
//! println!("{p}");
//! ```

use std::fmt;

use super::caps::VmxCapabilities;
use super::controls::{Control, ControlError, ControlKind};
use super::guest_state::GuestControls;

/// Adjusted values of the five control fields, plus the optional controls
/// the profile made us go without.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgrammedControls {
    values: [u32; 5],
    /// Controls we would have liked but the profile does not allow.
    pub dropped: Vec<Control>,
}

fn masks(cs: &[Control]) -> u32 {
    cs.iter().fold(0, |m, c| m | c.mask())
}

impl ProgrammedControls {
    /// The set a KVM-like VMM programs:
    ///
    /// * pin-based: external-interrupt and NMI exiting (required), virtual
    ///   NMIs and the preemption timer (optional);
    /// * primary: HLT, MOV-DR, MWAIT and MONITOR exiting (required), I/O
    ///   bitmaps if available else unconditional I/O exiting, TSC
    ///   offsetting, TPR shadow, MSR bitmaps and secondary controls
    ///   (optional); CR3-load/-store and INVLPG exiting only without EPT;
    /// * secondary: EPT, VPID, RDTSCP, INVPCID, XSAVES, WBINVD and PAUSE-loop
    ///   exiting (optional), unrestricted guest only with EPT;
    /// * VM-exit: 64-bit host (required), acknowledge interrupt on exit,
    ///   save/load IA32_PAT and IA32_EFER (optional);
    /// * VM-entry: load IA32_PAT and IA32_EFER (optional). "IA-32e mode
    ///   guest" follows the guest and is not part of the base set.
    pub fn kvm_like(caps: &VmxCapabilities) -> Result<ProgrammedControls, ControlError> {
        let mut dropped = Vec::new();
        let mut field = |kind: ControlKind, req: &[Control], opt: &[Control]| {
            let v = caps.adjust(kind, masks(req), masks(opt))?;
            dropped.extend(opt.iter().filter(|c| v & c.mask() == 0));
            Ok::<u32, ControlError>(v)
        };
        let pin = field(
            ControlKind::PinBased,
            &[Control::EXTERNAL_INTERRUPT_EXITING, Control::NMI_EXITING],
            &[Control::VIRTUAL_NMIS, Control::PREEMPTION_TIMER],
        )?;
        // Secondary controls first: whether EPT is available decides which
        // primary controls are required.
        let proc_caps = caps.controls(ControlKind::ProcBased);
        let has_secondary = proc_caps.can_set(Control::ACTIVATE_SECONDARY_CONTROLS.mask());
        let proc2 = if has_secondary {
            let ept_ok = caps
                .controls(ControlKind::ProcBased2)
                .can_set(Control::ENABLE_EPT.mask());
            let mut opt = vec![
                Control::ENABLE_EPT,
                Control::ENABLE_VPID,
                Control::ENABLE_RDTSCP,
                Control::ENABLE_INVPCID,
                Control::ENABLE_XSAVES,
                Control::WBINVD_EXITING,
                Control::PAUSE_LOOP_EXITING,
            ];
            if ept_ok {
                opt.push(Control::UNRESTRICTED_GUEST);
            }
            field(ControlKind::ProcBased2, &[], &opt)?
        } else {
            0
        };
        let ept = proc2 & Control::ENABLE_EPT.mask() != 0;
        let mut req = vec![
            Control::HLT_EXITING,
            Control::MOV_DR_EXITING,
            Control::MWAIT_EXITING,
            Control::MONITOR_EXITING,
        ];
        if !ept {
            req.extend([
                Control::CR3_LOAD_EXITING,
                Control::CR3_STORE_EXITING,
                Control::INVLPG_EXITING,
            ]);
        }
        let io = if proc_caps.can_set(Control::USE_IO_BITMAPS.mask()) {
            Control::USE_IO_BITMAPS
        } else {
            Control::UNCONDITIONAL_IO_EXITING
        };
        req.push(io);
        let mut opt = vec![
            Control::USE_TSC_OFFSETTING,
            Control::USE_TPR_SHADOW,
            Control::USE_MSR_BITMAPS,
        ];
        if has_secondary {
            req.push(Control::ACTIVATE_SECONDARY_CONTROLS);
        } else {
            opt.push(Control::ACTIVATE_SECONDARY_CONTROLS);
        }
        let proc = field(ControlKind::ProcBased, &req, &opt)?;
        let exit = field(
            ControlKind::Exit,
            &[Control::HOST_ADDRESS_SPACE_SIZE],
            &[
                Control::ACK_INTERRUPT_ON_EXIT,
                Control::EXIT_SAVE_PAT,
                Control::EXIT_LOAD_PAT,
                Control::EXIT_SAVE_EFER,
                Control::EXIT_LOAD_EFER,
            ],
        )?;
        let entry = field(
            ControlKind::Entry,
            &[],
            &[Control::ENTRY_LOAD_PAT, Control::ENTRY_LOAD_EFER],
        )?;
        Ok(ProgrammedControls {
            values: [pin, proc, proc2, exit, entry],
            dropped,
        })
    }

    /// The adjusted value of one control field.
    pub fn value(&self, kind: ControlKind) -> u32 {
        self.values[kind as usize]
    }

    /// Whether a control is set.
    pub fn is_set(&self, c: Control) -> bool {
        self.value(c.kind) & c.mask() != 0
    }

    /// The control bits the guest-state checks need, for a guest that is
    /// (`ia32e_mode_guest = true`) or is not in IA-32e mode; "IA-32e mode
    /// guest" is the one entry control that follows the guest.
    pub fn guest_controls(&self, ia32e_mode_guest: bool) -> GuestControls {
        let ia32e = if ia32e_mode_guest {
            Control::IA32E_MODE_GUEST.mask()
        } else {
            0
        };
        GuestControls::from_values(
            self.value(ControlKind::PinBased),
            self.value(ControlKind::ProcBased),
            self.value(ControlKind::ProcBased2),
            self.value(ControlKind::Entry) | ia32e,
        )
    }
}

impl fmt::Display for ProgrammedControls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for kind in ControlKind::ALL {
            let v = self.value(kind);
            let named: Vec<String> = (0..32u8)
                .filter(|b| v & (1 << b) != 0)
                .filter_map(|b| kind.bit_name(b).map(str::to_string))
                .collect();
            writeln!(f, "  {:<40} {v:#010x}", format!("{kind} controls:"))?;
            for n in named {
                writeln!(f, "    {n}")?;
            }
        }
        if !self.dropped.is_empty() {
            let names: Vec<&str> = self.dropped.iter().map(|c| c.name()).collect();
            writeln!(f, "  not available: {}", names.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::msr;

    #[test]
    fn baseline_set() {
        let caps = VmxCapabilities::baseline();
        let p = ProgrammedControls::kvm_like(&caps).unwrap();
        for c in [
            Control::EXTERNAL_INTERRUPT_EXITING,
            Control::NMI_EXITING,
            Control::VIRTUAL_NMIS,
            Control::HLT_EXITING,
            Control::USE_IO_BITMAPS,
            Control::ACTIVATE_SECONDARY_CONTROLS,
            Control::ENABLE_EPT,
            Control::ENABLE_VPID,
            Control::UNRESTRICTED_GUEST,
            Control::HOST_ADDRESS_SPACE_SIZE,
            Control::ENTRY_LOAD_EFER,
        ] {
            assert!(p.is_set(c), "{c} not set");
        }
        assert!(!p.is_set(Control::UNCONDITIONAL_IO_EXITING));
        assert!(!p.is_set(Control::IA32E_MODE_GUEST));
        assert!(p.dropped.is_empty(), "{:?}", p.dropped);
        // default1 bits are still there.
        assert_eq!(p.value(ControlKind::PinBased) & 0x16, 0x16);
        let text = p.to_string();
        assert!(
            text.contains("HLT exiting") && text.contains("Unrestricted guest"),
            "{text}"
        );
        let g = p.guest_controls(true);
        assert!(g.ia32e_mode_guest && g.load_efer && g.unrestricted_guest && g.enable_ept);
        assert!(g.virtual_nmis && !g.load_debug_controls);
        assert!(!p.guest_controls(false).ia32e_mode_guest);
    }

    #[test]
    fn without_secondary_controls_falls_back() {
        let mut m = VmxCapabilities::baseline_msrs();
        // No secondary controls and no I/O bitmaps.
        m.insert(msr::IA32_VMX_TRUE_PROCBASED_CTLS, 0x7df9_fffe_0400_6172);
        let caps = VmxCapabilities::from_msrs(m).unwrap();
        let p = ProgrammedControls::kvm_like(&caps).unwrap();
        assert!(p.is_set(Control::UNCONDITIONAL_IO_EXITING));
        assert!(p.is_set(Control::CR3_LOAD_EXITING) && p.is_set(Control::INVLPG_EXITING));
        assert_eq!(p.value(ControlKind::ProcBased2), 0);
        assert_eq!(p.dropped, vec![Control::ACTIVATE_SECONDARY_CONTROLS]);
        assert!(
            p.to_string()
                .contains("not available: Activate secondary controls")
        );
    }

    #[test]
    fn missing_required_control_is_an_error() {
        let mut m = VmxCapabilities::baseline_msrs();
        // HLT exiting (bit 7) not allowed.
        m.insert(msr::IA32_VMX_TRUE_PROCBASED_CTLS, 0xfff9_ff7e_0400_6172);
        let caps = VmxCapabilities::from_msrs(m).unwrap();
        let err = ProgrammedControls::kvm_like(&caps).unwrap_err();
        assert_eq!(
            err,
            ControlError::Unsupported {
                kind: ControlKind::ProcBased,
                bits: Control::HLT_EXITING.mask()
            }
        );
        assert_eq!(
            err.to_string(),
            "primary processor-based VM-execution controls: the CPU does not allow required HLT exiting"
        );
    }
}
