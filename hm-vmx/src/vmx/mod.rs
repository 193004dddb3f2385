//! The VT-x architecture model: what a VMX VMM sees, as the Intel SDM names it.
//!
//! Pure data and logic, no KVM: VMCS field encodings, exit reasons and exit
//! qualifications, the capability MSRs and control adjustment, the VM-entry
//! checks on the guest-state area, multi-processor consistency and the text
//! of the `hm` info handler. The KVM backend feeds it plain values.
//!
//! The usual flow: build the capability profile (from the host's VMX MSRs,
//! or the documented baseline), derive the controls a KVM-like VMM would
//! program, and check a guest state against both.
//!
//! ```
//! use hm_vmx::vmx::{
//!     check_guest_state, format_hm_info, CheckEnv, GuestState, HostVendor, ProgrammedControls,
//!     VmxCapabilities,
//! };
//!
//! // The backend passes what KVM reports; an empty map falls back to the baseline.
//! let caps = VmxCapabilities::from_msrs_or_baseline(Vec::new()).unwrap();
//! let programmed = ProgrammedControls::kvm_like(&caps).unwrap();
//! let env = CheckEnv::from_caps(&caps, 48);
//!
//! let mut gs = GuestState::long_mode_flat();
//! gs.controls = programmed.guest_controls(true);
//! assert!(check_guest_state(&gs, &env).is_empty());
//!
//! gs.tr.selector |= 4; // TR selector must not point into the LDT
//! for v in check_guest_state(&gs, &env) {
//!     println!("{v}"); // [GS-TR-TI] SDM 28.3.1.2: The TI flag ... (TR selector 0x1c)
//! }
//! let text = format_hm_info("kvm", &HostVendor::Intel, &caps);
//! assert!(text.contains("baseline"));
//! ```

mod caps;
mod controls;
mod exit_info;
mod exit_qual;
mod exit_reason;
mod from_kvm;
mod guest_checks;
mod guest_state;
mod info;
mod mp;
mod programmed;
mod vmcs_field;

pub use caps::{
    ActivityStates, CapsError, EptVpidCap, ProfileSource, VmxBasic, VmxCapabilities, VmxMisc, msr,
};
pub use controls::{Control, ControlCaps, ControlError, ControlKind};
pub use exit_info::{ExitReasonField, InterruptionInfo};
pub use exit_qual::{
    CrAccessQualification, CrAccessType, DebugQualification, DrDirection,
    EptViolationQualification, IoDirection, IoQualification, MovDrQualification, QualError,
    TaskSwitchQualification, TaskSwitchSource,
};
pub use exit_reason::ExitReason;
pub use from_kvm::{
    KvmDtableFields, KvmRegsFields, KvmSregsFields, activity_from_kvm_mp_state,
    interruptibility_from_kvm,
};
pub use guest_checks::{CheckEnv, Rule, Violation, check_guest_state};
pub use guest_state::{
    AccessRights, DescriptorTable, EventKind, GuestControls, GuestState, InjectedEvent,
    KvmSegmentFields, SegReg, Segment, activity, cr0, cr4, efer, interruptibility, pending_debug,
};
pub use info::{HostVendor, format_hm_info};
pub use mp::{Difference, VcpuView, ViewItem, compare_vcpus};
pub use programmed::ProgrammedControls;
pub use vmcs_field::{FieldAccess, FieldType, FieldWidth, VmcsField, VmcsFieldError};
