//! VM-entry guest-state checks against a real KVM vCPU: a long-mode guest
//! whose CS the VMM corrupts on purpose (CS.L = 1 and CS.D = 1 with
//! EFER.LMA) must be reported with the broken rule, whether the backend's
//! pre-entry check catches it or KVM refuses or fails the state first.

use hm_vmx::vmx::Rule;
use hm_vmx::{EntryStage, Error, Exit, Hypervisor, MemorySlot, Sregs, Vcpu, VcpuState, Vm};

const MEM_SIZE: usize = 0x10_0000;
const CODE: u64 = 0x4000;
/// `mov al, 0x42; out 0x10, al; hlt`
const GUEST: [u8; 5] = [0xb0, 0x42, 0xe6, 0x10, 0xf4];

/// Guest RAM: an anonymous mapping that lives as long as the VM using it.
struct Ram {
    ptr: *mut u8,
}

impl Ram {
    fn new() -> Ram {
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // touched. The result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap guest RAM");
        Ram { ptr: ptr.cast() }
    }

    fn write(&mut self, addr: u64, bytes: &[u8]) {
        let addr = usize::try_from(addr).unwrap();
        assert!(addr + bytes.len() <= MEM_SIZE);
        // SAFETY: the range is inside the mapping (checked above) and
        // nothing else holds a reference into it.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(addr), bytes.len()) };
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; the VM that
        // used it is dropped first (field order in `Guest`).
        unsafe { libc::munmap(self.ptr.cast(), MEM_SIZE) };
    }
}

/// A vCPU in 64-bit mode with identity-mapped low memory and a tiny program.
struct Guest {
    vcpu: Vcpu,
    _vm: Vm,
    ram: Ram,
}

fn long_mode_sregs(mut s: Sregs) -> Sregs {
    let code = hm_vmx::Segment {
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
    let data = hm_vmx::Segment {
        selector: 0x10,
        type_: 3,
        l: 0,
        db: 1,
        ..code
    };
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = hm_vmx::Segment {
        selector: 0x18,
        limit: 0x67,
        type_: 11,
        s: 0,
        l: 0,
        db: 0,
        g: 0,
        ..code
    };
    s.gdt.base = 0x500;
    s.gdt.limit = 0x1f;
    s.cr3 = 0x1000;
    s.cr4 = 0x20; // PAE
    s.cr0 = 0x8000_0011; // PG, ET, PE
    s.efer = 0x500; // LME, LMA
    s
}

fn guest(entry_checks: bool) -> Guest {
    let hv = Hypervisor::open().unwrap();
    let vm = hv.create_vm().unwrap();
    let mut ram = Ram::new();
    ram.write(0x1000, &(0x2000u64 | 3).to_le_bytes()); // PML4[0] -> PDPT
    ram.write(0x2000, &(0x3000u64 | 3).to_le_bytes()); // PDPT[0] -> PD
    ram.write(0x3000, &0x83u64.to_le_bytes()); // PD[0]: 2 MiB page at 0
    ram.write(CODE, &GUEST);
    let slot = MemorySlot {
        slot: 0,
        guest_addr: 0,
        size: MEM_SIZE as u64,
        host_addr: ram.ptr as u64,
        read_only: false,
        log_dirty: false,
    };
    // SAFETY: `ram` lives in the returned `Guest`, which drops the VM first.
    unsafe { vm.set_memory_slot(&slot) }.unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.set_entry_checks(entry_checks);
    let state = vcpu.state();
    let sregs = long_mode_sregs(state.sregs().unwrap());
    state.set_sregs(&sregs).unwrap();
    let mut regs = state.regs().unwrap();
    regs.rip = CODE;
    regs.rflags = 2;
    regs.rsp = 0x8000;
    state.set_regs(&regs).unwrap();
    Guest { vcpu, _vm: vm, ram }
}

fn corrupt_cs(vcpu: &Vcpu) -> Sregs {
    let mut s = vcpu.state().sregs().unwrap();
    s.cs.db = 1;
    s
}

fn names_cs_rule(violations: &[hm_vmx::vmx::Violation]) -> bool {
    violations
        .iter()
        .any(|v| v.rule == Rule::CsLongAndDefaultSize)
}

/// Runs until the program's `out`, tolerating interruptions.
fn expect_out(vcpu: &mut Vcpu) {
    for _ in 0..16 {
        match vcpu.run().unwrap() {
            Exit::Io(io) => {
                assert_eq!(io.port, 0x10);
                assert!(matches!(io.data, iom::Data::Write(&[0x42])));
                return;
            }
            Exit::Interrupted => continue,
            other => panic!("unexpected exit {other:?}"),
        }
    }
    panic!("the guest never reached its OUT");
}

#[test]
fn valid_long_mode_state_passes_the_check_and_runs() {
    if !hm_vmx::testing::kvm_available("valid_long_mode_state_passes_the_check_and_runs") {
        return;
    }
    let mut g = guest(true);
    assert!(g.vcpu.entry_checks());
    let v = g.vcpu.check_entry_state().unwrap();
    assert!(v.is_empty(), "false positives: {v:?}");
    expect_out(&mut g.vcpu);
    let d = g.vcpu.diagnose_entry_failure();
    assert!(d.violations().is_empty() && d.state_read());
    assert!(
        d.to_string().contains("no guest-state rule is broken"),
        "{d}"
    );
}

#[test]
fn check_on_names_the_broken_rule_instead_of_entering() {
    if !hm_vmx::testing::kvm_available("check_on_names_the_broken_rule_instead_of_entering") {
        return;
    }
    let mut g = guest(true);
    let bad = corrupt_cs(&g.vcpu);
    let failure = match g.vcpu.state().set_sregs(&bad) {
        // KVM refused the state at KVM_SET_SREGS: the error names the rule.
        Err(Error::EntryState(f)) => {
            assert_eq!(f.stage, EntryStage::SetSregs);
            assert!(f.kvm_error.is_some());
            f
        }
        Err(e) => panic!("KVM_SET_SREGS failed without naming the rule: {e}"),
        // KVM took it: the pre-entry check must stop the entry.
        Ok(()) => match g.vcpu.run() {
            Err(Error::EntryState(f)) => {
                assert_eq!(f.stage, EntryStage::BeforeEntry);
                assert!(f.kvm_error.is_none());
                f
            }
            Err(e) => panic!("run failed without naming the rule: {e}"),
            Ok(exit) => panic!("the guest was entered with a broken CS: {exit:?}"),
        },
    };
    assert!(names_cs_rule(&failure.violations), "{failure}");
    let text = Error::EntryState(failure).to_string();
    assert!(
        text.contains(&format!("{}", Rule::CsLongAndDefaultSize)),
        "{text}"
    );
    assert!(text.contains("[GS-CS-L-D] SDM 28.3.1.2"), "{text}");

    // The check stays due until the state is fixed; fixing it lets the
    // guest run.
    if g.vcpu.state().sregs().unwrap().cs.db == 1 {
        assert!(matches!(g.vcpu.run(), Err(Error::EntryState(_))));
    }
    let mut good = g.vcpu.state().sregs().unwrap();
    good.cs.db = 0;
    g.vcpu.state().set_sregs(&good).unwrap();
    expect_out(&mut g.vcpu);
}

#[test]
fn failed_entry_is_diagnosed_with_the_broken_rule() {
    if !hm_vmx::testing::kvm_available("failed_entry_is_diagnosed_with_the_broken_rule") {
        return;
    }
    let mut g = guest(false);
    let bad = corrupt_cs(&g.vcpu);
    match g.vcpu.state().set_sregs(&bad) {
        Err(Error::EntryState(f)) => {
            eprintln!("host refused at KVM_SET_SREGS: {f}");
            assert_eq!(f.stage, EntryStage::SetSregs);
            assert!(names_cs_rule(&f.violations), "{f}");
            return;
        }
        Err(e) => panic!("KVM_SET_SREGS failed without naming the rule: {e}"),
        Ok(()) => {}
    }
    let outcome = match g.vcpu.run() {
        Err(Error::EntryState(f)) => {
            assert_eq!(f.stage, EntryStage::Run);
            assert!(names_cs_rule(&f.violations), "{f}");
            format!("KVM_RUN failed: {f}")
        }
        Err(e) => panic!("KVM_RUN failed without naming the rule: {e}"),
        Ok(exit @ (Exit::FailEntry { .. } | Exit::InternalError(_))) => exit.name().to_string(),
        // A host may run the guest anyway (not VT-x); the diagnosis must
        // still name the rule a VT-x entry would have broken.
        Ok(exit) => format!("host entered anyway, exit {}", exit.name()),
    };
    eprintln!("outcome on this host: {outcome}");
    // From another thread's handle, as vmm-core's error path would.
    let state = g.vcpu.state().clone();
    let d = std::thread::spawn(move || state.diagnose_entry_failure())
        .join()
        .unwrap();
    assert!(names_cs_rule(d.violations()), "{d}");
    let text = d.to_string();
    assert!(text.contains("broken guest-state rules:"), "{text}");
    assert!(text.contains("[GS-CS-L-D] SDM 28.3.1.2"), "{text}");
    assert!(text.contains("KVM state:"), "{text}");
}

#[test]
fn reset_state_passes_and_vcpus_are_consistent() {
    if !hm_vmx::testing::kvm_available("reset_state_passes_and_vcpus_are_consistent") {
        return;
    }
    let hv = Hypervisor::open().unwrap();
    let vm = hv.create_vm().unwrap();
    let vcpus = vm.create_vcpus(2).unwrap();
    for v in &vcpus {
        let violations = v.check_entry_state().unwrap();
        assert!(violations.is_empty(), "reset state: {violations:?}");
    }
    let states: Vec<VcpuState> = vcpus.iter().map(|v| v.state().clone()).collect();
    let diffs = vm.check_mp_consistency(&states).unwrap();
    assert!(diffs.is_empty(), "{diffs:?}");
    let view = states[1].vcpu_view().unwrap();
    assert!(view.cpuid.contains_key(&(0, 0)));
    assert!(
        view.vmx_msrs
            .contains_key(&hm_vmx::vmx::msr::IA32_VMX_BASIC)
    );
}

#[test]
fn differing_cpuid_between_vcpus_is_reported() {
    if !hm_vmx::testing::kvm_available("differing_cpuid_between_vcpus_is_reported") {
        return;
    }
    let hv = Hypervisor::open().unwrap();
    let vm = hv.create_vm().unwrap();
    let vcpus = vm.create_vcpus(2).unwrap();
    let states: Vec<VcpuState> = vcpus.iter().map(|v| v.state().clone()).collect();
    // Hide a feature from vCPU 1 only: CPUID.1:ECX bit 1 (PCLMULQDQ), or
    // show it when the host lacks it.
    let mut cpuid = vcpus[1].state().cpuid().unwrap();
    let leaf1 = cpuid
        .as_mut_slice()
        .iter_mut()
        .find(|e| e.function == 1)
        .unwrap();
    let ecx = leaf1.ecx;
    leaf1.ecx ^= 1 << 1;
    vcpus[1].state().set_cpuid(&cpuid).unwrap();
    let diffs = vm.check_mp_consistency(&states).unwrap();
    let applied = states[1]
        .vcpu_view()
        .unwrap()
        .cpuid
        .get(&(1, 0))
        .map(|r| r[2])
        != Some(ecx);
    if !applied {
        // Seen on kvm_pvm: a second KVM_SET_CPUID2 succeeds but changes nothing.
        eprintln!("!!! this host ignored the second KVM_SET_CPUID2: no difference to find !!!");
        assert!(diffs.is_empty(), "{diffs:?}");
        return;
    }
    let text: Vec<String> = diffs.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [format!(
            "vCPU 1: CPUID 0x1.0 ECX = {:#x}, vCPU 0 has {ecx:#x}",
            ecx ^ (1 << 1)
        )]
    );
}

#[test]
fn pae_guest_pdptes_are_read_and_checked() {
    if !hm_vmx::testing::kvm_available("pae_guest_pdptes_are_read_and_checked") {
        return;
    }
    let mut g = guest(true);
    // 32-bit PAE paging: PDPT at 0x5000, entry 0 -> the PD at 0x3000.
    g.ram.write(0x5000, &(0x3000u64 | 1).to_le_bytes());
    let mut s = g.vcpu.state().sregs().unwrap();
    s.efer = 0;
    s.cs.l = 0;
    s.cs.db = 1;
    s.cr3 = 0x5000;
    s.cr0 = 0x8000_0011;
    s.cr4 = 0x20;
    g.vcpu.state().set_sregs(&s).unwrap();
    let v = g.vcpu.check_entry_state().unwrap();
    assert!(v.is_empty(), "{v:?}");
    let text = g.vcpu.diagnose_entry_failure().to_string();
    if g.vcpu.state().sregs().unwrap().cr0 & (1 << 31) == 0 {
        eprintln!("!!! this host's KVM drops CR0.PG outside long mode: PDPTEs not exercised !!!");
        assert!(text.contains("  PDPTEs: not reported"), "{text}");
        return;
    }
    assert!(
        text.contains("CR0=0x80000011 CR2=0x0 CR3=0x5000 CR4=0x20"),
        "{text}"
    );
    if text.contains("  PDPTEs: not reported") {
        eprintln!("!!! this host has no KVM_GET_SREGS2: PDPTEs cannot be checked !!!");
    } else {
        assert!(text.contains("  PDPTEs: 0x3001 0x0 0x0 0x0"), "{text}");
    }
}
