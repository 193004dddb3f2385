//! VM-entry guest-state checks on a live vCPU: the VT-x model's
//! [`check_guest_state`] applied to what KVM reports, before entering the
//! guest (opt-in) and when KVM refuses a state or fails an entry.
//!
//! ```no_run
//! use hm_vmx::{Error, Exit, Hypervisor};
//!
//! let hv = Hypervisor::open()?;
//! let vm = hv.create_vm()?;
//! let mut vcpu = vm.create_vcpu(0)?;
//! vcpu.set_entry_checks(true); // the default in debug builds
//! for v in vcpu.check_entry_state()? {
//!     println!("{v}"); // [GS-...] SDM 28.3.1.x: rule (offending values)
//! }
//! let state = vcpu.state().clone(); // usable from any thread
//! match vcpu.run() {
//!     Err(Error::EntryState(failure)) => eprintln!("{failure}"),
//!     Ok(Exit::FailEntry { .. } | Exit::InternalError(_)) => {
//!         eprintln!("{}", state.diagnose_entry_failure());
//!     }
//!     _ => {}
//! }
//! # Ok::<(), hm_vmx::Error>(())
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kvm_bindings::CpuId;
use kvm_ioctls::Error as KvmError;

use crate::error::{Error, Result, ioctl};
use crate::kvm_state::KvmVcpuState;
use crate::vcpu::{Vcpu, VcpuState};
use crate::vmx::{
    CheckEnv, ProfileSource, ProgrammedControls, Violation, VmxCapabilities, check_guest_state,
};

/// The capability profile, the controls a KVM-like VT-x VMM would program
/// under it, and the processor facts the checks need: everything required
/// to check a vCPU's state against the VM-entry rules.
///
/// ```
/// use hm_vmx::EntryChecker;
/// use hm_vmx::vmx::{Control, VmxCapabilities};
///
/// let checker = EntryChecker::new(VmxCapabilities::baseline(), 48, false)?;
/// assert!(checker.programmed().is_set(Control::UNRESTRICTED_GUEST));
/// assert_eq!(checker.env().maxphyaddr, 48);
/// # Ok::<(), hm_vmx::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct EntryChecker {
    caps: VmxCapabilities,
    programmed: ProgrammedControls,
    env: CheckEnv,
}

impl EntryChecker {
    /// Builds the checker for a profile, the guest's physical-address width
    /// and whether it has 5-level paging (57-bit canonical addresses).
    pub fn new(caps: VmxCapabilities, maxphyaddr: u8, la57: bool) -> Result<EntryChecker> {
        let programmed = ProgrammedControls::kvm_like(&caps).map_err(Error::VmxControls)?;
        let mut env = CheckEnv::from_caps(&caps, maxphyaddr.clamp(32, 52));
        if la57 {
            env.linear_address_bits = 57;
        }
        Ok(EntryChecker {
            caps,
            programmed,
            env,
        })
    }

    /// Builds the checker for a guest with the given CPUID: MAXPHYADDR from
    /// leaf 0x80000008 (36 when absent, as the SDM defines), LA57 from leaf
    /// 7.0 ECX[16].
    pub(crate) fn for_cpuid(caps: VmxCapabilities, cpuid: &CpuId) -> Result<EntryChecker> {
        let leaf = |f: u32| {
            cpuid
                .as_slice()
                .iter()
                .find(|e| e.function == f && e.index == 0)
        };
        let maxphyaddr = leaf(0x8000_0008).map_or(36, |e| (e.eax & 0xff) as u8);
        let la57 = leaf(7).is_some_and(|e| e.ecx & (1 << 16) != 0);
        EntryChecker::new(caps, maxphyaddr, la57)
    }

    /// The capability profile in force.
    pub fn caps(&self) -> &VmxCapabilities {
        &self.caps
    }

    /// The controls the checks assume ("IA-32e mode guest" follows the
    /// guest's EFER.LMA).
    pub fn programmed(&self) -> &ProgrammedControls {
        &self.programmed
    }

    /// The processor facts the checks use.
    pub fn env(&self) -> &CheckEnv {
        &self.env
    }

    fn check(&self, state: &KvmVcpuState) -> Vec<Violation> {
        check_guest_state(&state.guest_state(&self.programmed, &self.env), &self.env)
    }
}

/// When the broken rules were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryStage {
    /// By the backend's own check before `KVM_RUN`.
    BeforeEntry,
    /// After `KVM_SET_REGS` refused the new registers.
    SetRegs,
    /// After `KVM_SET_SREGS` refused the new registers.
    SetSregs,
    /// After `KVM_RUN` failed.
    Run,
}

impl fmt::Display for EntryStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryStage::BeforeEntry => "found by the pre-entry check; the guest was not entered",
            EntryStage::SetRegs => "KVM_SET_REGS refused the new state",
            EntryStage::SetSregs => "KVM_SET_SREGS refused the new state",
            EntryStage::Run => "KVM_RUN failed",
        })
    }
}

/// A guest state that breaks VM-entry rules (the payload of
/// [`Error::EntryState`]): which vCPU, when it was found, every broken rule
/// with its SDM section, and the KVM error if KVM refused first.
#[derive(Debug, thiserror::Error)]
pub struct EntryCheckFailure {
    /// The vCPU.
    pub vcpu: u32,
    /// When the rules were found broken.
    pub stage: EntryStage,
    /// The broken rules, never empty.
    pub violations: Vec<Violation>,
    /// What KVM returned, when KVM refused the state.
    #[source]
    pub kvm_error: Option<KvmError>,
}

impl fmt::Display for EntryCheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.violations.len();
        write!(
            f,
            "vCPU {}: the guest state breaks {n} VM-entry rule{} ({}",
            self.vcpu,
            if n == 1 { "" } else { "s" },
            self.stage
        )?;
        if let Some(e) = &self.kvm_error {
            write!(f, ": {e}")?;
        }
        write!(f, "):")?;
        for v in &self.violations {
            write!(f, "\n  {v}")?;
        }
        Ok(())
    }
}

/// Why a VM entry failed, as far as the VT-x model can tell: the broken
/// guest-state rules (if any) and the raw state KVM reports.
///
/// Built by [`Vcpu::diagnose_entry_failure`]; its `Display` is the report.
#[derive(Debug, Clone)]
pub struct EntryDiagnosis {
    vcpu: u32,
    profile: ProfileSource,
    violations: Vec<Violation>,
    state: std::result::Result<KvmVcpuState, String>,
    vmcs_cr: Option<(u64, u64)>,
}

impl EntryDiagnosis {
    fn new(vcpu: u32, checker: &EntryChecker, state: Result<KvmVcpuState>) -> EntryDiagnosis {
        let (violations, vmcs_cr) = match &state {
            Ok(st) => {
                let gs = st.guest_state(&checker.programmed, &checker.env);
                (check_guest_state(&gs, &checker.env), Some((gs.cr0, gs.cr4)))
            }
            Err(_) => (Vec::new(), None),
        };
        EntryDiagnosis {
            vcpu,
            profile: checker.caps.source(),
            violations,
            state: state.map_err(|e| e.to_string()),
            vmcs_cr,
        }
    }

    /// The vCPU diagnosed.
    pub fn vcpu(&self) -> u32 {
        self.vcpu
    }

    /// The broken rules; empty when none is broken or the state could not
    /// be read.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Whether KVM's state could be read (otherwise the report says why not).
    pub fn state_read(&self) -> bool {
        self.state.is_ok()
    }
}

impl fmt::Display for EntryDiagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "VM-entry diagnosis for vCPU {} (VMX profile: {}):",
            self.vcpu, self.profile
        )?;
        match &self.state {
            Err(e) => return writeln!(f, "  the vCPU state could not be read: {e}"),
            Ok(_) if self.violations.is_empty() => writeln!(
                f,
                "  no guest-state rule is broken (as far as the VT-x model covers the state)"
            )?,
            Ok(_) => {
                writeln!(f, "  broken guest-state rules:")?;
                for v in &self.violations {
                    writeln!(f, "    {v}")?;
                }
            }
        }
        if let Some((cr0, cr4)) = self.vmcs_cr {
            writeln!(
                f,
                "  as the VMCS would hold it: CR0={cr0:#x} CR4={cr4:#x} (fixed bits forced)"
            )?;
        }
        if let Ok(st) = &self.state {
            writeln!(f, "KVM state:")?;
            write!(f, "{st}")?;
        }
        Ok(())
    }
}

/// A vCPU's entry-check switch, its checker and whether the state changed
/// since the last check; shared by the vCPU and its [`VcpuState`] handles.
#[derive(Debug)]
pub(crate) struct EntryGate {
    checker: Arc<EntryChecker>,
    enabled: AtomicBool,
    due: AtomicBool,
}

impl EntryGate {
    /// Checks start enabled in debug builds, so the first entry is checked.
    pub(crate) fn new(checker: Arc<EntryChecker>) -> EntryGate {
        let enabled = cfg!(debug_assertions);
        EntryGate {
            checker,
            enabled: AtomicBool::new(enabled),
            due: AtomicBool::new(enabled),
        }
    }

    /// Whether the next `run` must check first.
    #[inline]
    pub(crate) fn due(&self) -> bool {
        self.due.load(Ordering::Relaxed)
    }

    /// The VMM wrote state: check again before the next entry.
    pub(crate) fn state_written(&self) {
        if self.enabled.load(Ordering::Relaxed) {
            self.due.store(true, Ordering::Relaxed);
        }
    }
}

impl Vcpu {
    /// Turns the VM-entry guest-state check on or off (on by default in
    /// debug builds). While on, the first [`run`](Vcpu::run) and the first
    /// `run` after [`VcpuState::set_regs`] or [`VcpuState::set_sregs`]
    /// check the state KVM holds against the VT-x entry rules and return
    /// [`Error::EntryState`] instead of entering when a rule is broken. The
    /// check costs five or six vCPU ioctls and runs only after such writes
    /// (and after [`CpuState::write`](crate::CpuState::write)); the other
    /// setters write nothing the check looks at.
    pub fn set_entry_checks(&mut self, on: bool) {
        let gate = &self.state().entry;
        gate.enabled.store(on, Ordering::Relaxed);
        gate.due.store(on, Ordering::Relaxed);
    }

    /// Whether the VM-entry guest-state check is on.
    pub fn entry_checks(&self) -> bool {
        self.state().entry.enabled.load(Ordering::Relaxed)
    }

    /// See [`VcpuState::check_entry_state`].
    pub fn check_entry_state(&self) -> Result<Vec<Violation>> {
        self.state().check_entry_state()
    }

    /// See [`VcpuState::diagnose_entry_failure`].
    pub fn diagnose_entry_failure(&self) -> EntryDiagnosis {
        self.state().diagnose_entry_failure()
    }
}

impl VcpuState {
    /// The profile and controls this vCPU's state is checked against.
    pub fn entry_checker(&self) -> &EntryChecker {
        &self.entry.checker
    }

    /// Checks the vCPU's current state against the VM-entry rules, under
    /// the VM's capability profile; empty means VM entry would accept it
    /// as far as the model covers.
    pub fn check_entry_state(&self) -> Result<Vec<Violation>> {
        self.check_entry_state_with(&self.entry.checker)
    }

    /// Like [`check_entry_state`](VcpuState::check_entry_state), under
    /// another profile (for example a stricter CPU the VM may migrate to).
    pub fn check_entry_state_with(&self, checker: &EntryChecker) -> Result<Vec<Violation>> {
        Ok(checker.check(&KvmVcpuState::read(self.kvm_fd())?))
    }

    /// Explains a failed entry ([`Exit::FailEntry`](crate::Exit::FailEntry),
    /// [`Exit::InternalError`](crate::Exit::InternalError) or a failing
    /// `KVM_RUN`): the broken guest-state rules, or that none is broken,
    /// and the raw state KVM reports. Never fails: an unreadable state is
    /// part of the report.
    pub fn diagnose_entry_failure(&self) -> EntryDiagnosis {
        EntryDiagnosis::new(
            self.id(),
            &self.entry.checker,
            KvmVcpuState::read(self.kvm_fd()),
        )
    }

    /// The pre-entry check `run` makes while one is due.
    #[cold]
    pub(crate) fn pre_entry_check(&self) -> Result<()> {
        let violations = self.check_entry_state()?;
        if violations.is_empty() {
            self.entry.due.store(false, Ordering::Relaxed);
            return Ok(());
        }
        Err(self.failure(EntryStage::BeforeEntry, violations, None))
    }

    /// The error for a refused `KVM_SET_REGS`/`KVM_SET_SREGS`: the broken
    /// rules if the state the VMM tried to write breaks any, otherwise the
    /// bare KVM error.
    #[cold]
    pub(crate) fn explain_write_failure(
        &self,
        stage: EntryStage,
        op: &'static str,
        write: impl FnOnce(&mut KvmVcpuState),
        err: KvmError,
    ) -> Error {
        let Ok(mut state) = KvmVcpuState::read(self.kvm_fd()) else {
            return ioctl(op)(err);
        };
        write(&mut state);
        let violations = self.entry.checker.check(&state);
        if violations.is_empty() {
            return ioctl(op)(err);
        }
        self.failure(stage, violations, Some(err))
    }

    /// The error for a failed `KVM_RUN`: the broken rules if the current
    /// state breaks any, otherwise the bare KVM error.
    #[cold]
    pub(crate) fn explain_run_failure(&self, err: KvmError) -> Error {
        let diag = self.diagnose_entry_failure();
        if diag.violations.is_empty() {
            return ioctl("KVM_RUN")(err);
        }
        self.failure(EntryStage::Run, diag.violations, Some(err))
    }

    fn failure(
        &self,
        stage: EntryStage,
        violations: Vec<Violation>,
        kvm_error: Option<KvmError>,
    ) -> Error {
        Error::EntryState(Box::new(EntryCheckFailure {
            vcpu: self.id(),
            stage,
            violations,
            kvm_error,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvm_state::tests::long_mode_state;
    use crate::vmx::Rule;

    fn checker() -> EntryChecker {
        EntryChecker::new(VmxCapabilities::baseline(), 48, false).unwrap()
    }

    #[test]
    fn checker_takes_cpu_facts_from_cpuid() {
        let mut cpuid = CpuId::new(2).unwrap();
        cpuid.as_mut_slice()[0].function = 0x8000_0008;
        cpuid.as_mut_slice()[0].eax = 0x3927; // 57 linear (0x39), 39 physical (0x27)
        cpuid.as_mut_slice()[1].function = 7;
        cpuid.as_mut_slice()[1].ecx = 1 << 16;
        let c = EntryChecker::for_cpuid(VmxCapabilities::baseline(), &cpuid).unwrap();
        assert_eq!((c.env().maxphyaddr, c.env().linear_address_bits), (39, 57));
        let empty = CpuId::new(0).unwrap();
        let c = EntryChecker::for_cpuid(VmxCapabilities::baseline(), &empty).unwrap();
        assert_eq!((c.env().maxphyaddr, c.env().linear_address_bits), (36, 48));
    }

    #[test]
    fn diagnosis_names_broken_rules_and_shows_kvm_state() {
        let mut st = long_mode_state();
        st.sregs.cs.db = 1; // CS.L and CS.D together in IA-32e mode
        let d = EntryDiagnosis::new(3, &checker(), Ok(st));
        let rules: Vec<Rule> = d.violations().iter().map(|v| v.rule).collect();
        assert_eq!(rules, [Rule::CsLongAndDefaultSize]);
        let t = d.to_string();
        for want in [
            "VM-entry diagnosis for vCPU 3 (VMX profile: baseline",
            "  broken guest-state rules:\n    [GS-CS-L-D] SDM 28.3.1.2: ",
            "  as the VMCS would hold it: CR0=0x80000031 CR4=0x2020",
            "KVM state:\n  RIP=0x0000000000004000",
            "  CS   sel=0x0008 base=0x0000000000000000 limit=0xffffffff type=0xb s=1 dpl=0 p=1 db=1 l=1",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        assert!(!t.contains("no guest-state rule is broken"));
    }

    #[test]
    fn diagnosis_of_a_valid_or_unreadable_state() {
        let d = EntryDiagnosis::new(0, &checker(), Ok(long_mode_state()));
        assert!(d.violations().is_empty() && d.state_read());
        let t = d.to_string();
        assert!(t.contains("  no guest-state rule is broken"), "{t}");
        assert!(t.contains("KVM state:\n  RIP="), "{t}");
        let err = ioctl("KVM_GET_REGS")(KvmError::new(libc::EBADF));
        let d = EntryDiagnosis::new(1, &checker(), Err(err));
        assert!(!d.state_read() && d.violations().is_empty());
        let t = d.to_string();
        assert!(
            t.contains("  the vCPU state could not be read: KVM KVM_GET_REGS failed"),
            "{t}"
        );
        assert!(!t.contains("KVM state:"));
    }

    #[test]
    fn failure_text_lists_every_rule() {
        let mut st = long_mode_state();
        st.sregs.cs.db = 1;
        st.regs.rflags = 0;
        let violations = checker().check(&st);
        assert_eq!(violations.len(), 2);
        let f = EntryCheckFailure {
            vcpu: 1,
            stage: EntryStage::SetSregs,
            violations,
            kvm_error: Some(KvmError::new(libc::EINVAL)),
        };
        let t = f.to_string();
        assert!(
            t.starts_with(
                "vCPU 1: the guest state breaks 2 VM-entry rules (KVM_SET_SREGS refused the new state: "
            ),
            "{t}"
        );
        assert!(t.contains("\n  [GS-CS-L-D] SDM 28.3.1.2: "), "{t}");
        assert!(t.contains("\n  [GS-RFLAGS-RSVD] SDM 28.3.1.4: "), "{t}");
        assert!(std::error::Error::source(&f).is_some());
        let err = Error::EntryState(Box::new(f));
        assert_eq!(err.to_string(), t);
    }
}
