use super::*;
use proptest::prelude::*;
use std::sync::atomic::AtomicU32;

#[derive(Default)]
struct Counter(AtomicU32);
impl Kick for Counter {
    fn kick(&self, _cpu: CpuId) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn ffs(n: u32) -> (ForcedActions, Arc<Counter>) {
    let k = Arc::new(Counter::default());
    (ForcedActions::new(n, k.clone()).unwrap(), k)
}

#[test]
fn rejects_bad_counts_and_cpus() {
    let k: Arc<dyn Kick> = Arc::new(Counter::default());
    assert_eq!(
        ForcedActions::new(0, k.clone()).unwrap_err(),
        FfError::InvalidCpuCount(0)
    );
    assert!(ForcedActions::new(MAX_CPUS + 1, k).is_err());
    let (f, _) = ffs(2);
    assert_eq!(
        f.set_cpu(2, CpuFf::REQUEST),
        Err(FfError::InvalidCpu { cpu: 2, count: 2 })
    );
}

#[test]
fn names_and_display() {
    let f = VmFf::RESET | VmFf::EMT_RENDEZVOUS;
    assert_eq!(f.to_string(), "VM_FF_RESET VM_FF_EMT_RENDEZVOUS");
    assert_eq!(CpuFf::NONE.to_string(), "-");
    assert_eq!(CpuFf::ALL.names().count(), 13);
    assert_eq!(VmFf::ALL.names().count(), 15);
    assert_eq!((!VmFf::RESET) & VmFf::RESET, VmFf::NONE);
}

#[test]
fn kick_only_when_in_guest() {
    let (f, k) = ffs(1);
    f.set_cpu(0, CpuFf::TIMER).unwrap();
    assert_eq!(k.0.load(Ordering::SeqCst), 0);
    f.clear_cpu(0, CpuFf::TIMER).unwrap();
    let g = f.enter_guest(0).unwrap().unwrap();
    assert_eq!(f.exec_state(0).unwrap(), ExecState::InGuest);
    f.set_vm(VmFf::RESET);
    assert_eq!(k.0.load(Ordering::SeqCst), 1);
    drop(g);
    assert_eq!(f.exec_state(0).unwrap(), ExecState::Busy);
    assert!(f.enter_guest(0).unwrap().is_none());
    assert_eq!(f.exec_state(0).unwrap(), ExecState::Busy);
}

#[test]
fn halt_is_woken_by_a_flag_from_another_thread() {
    let (f, _) = ffs(2);
    let f2 = f.clone();
    let t = std::thread::spawn(move || f2.halt_wait(1, Some(Duration::from_secs(30))));
    while f.exec_state(1).unwrap() != ExecState::Halted {
        std::thread::yield_now();
    }
    f.set_cpu(1, CpuFf::INTERRUPT_PIC).unwrap();
    assert_eq!(t.join().unwrap(), Ok(HaltOutcome::ForcedAction));
    // A flag outside the wake mask does not end a halt.
    f.clear_cpu(1, CpuFf::ALL).unwrap();
    f.set_cpu(1, CpuFf::TLB_FLUSH).unwrap();
    assert_eq!(
        f.halt_wait(1, Some(Duration::from_millis(1))),
        Ok(HaltOutcome::TimedOut)
    );
}

#[test]
fn emt_registration_is_exclusive_and_scoped() {
    let (f, _) = ffs(2);
    assert_eq!(f.current_cpu(), None);
    let r = f.register_emt(1).unwrap();
    assert_eq!(f.current_cpu(), Some(1));
    assert_eq!(
        f.register_emt(0).unwrap_err(),
        FfError::AlreadyEmt { cpu: 1 }
    );
    let f2 = f.clone();
    let other = std::thread::spawn(move || f2.register_emt(1).map(|_| ()));
    assert_eq!(other.join().unwrap(), Err(FfError::CpuTaken(1)));
    // Another VM does not see this thread as its EMT.
    let (g, _) = ffs(1);
    assert_eq!(g.current_cpu(), None);
    drop(r);
    assert_eq!(f.current_cpu(), None);
}

#[test]
fn fflags_text_lists_every_cpu() {
    let (f, _) = ffs(2);
    f.set_cpu(1, CpuFf::REQUEST | CpuFf::TIMER).unwrap();
    let mut s = String::new();
    f.format_fflags(&mut s).unwrap();
    assert_eq!(
        s,
        "Global FFs: 0x00000000 -\nCPU 0 (busy): 0x00000000 -\n\
         CPU 1 (busy): 0x00000084 VMCPU_FF_TIMER VMCPU_FF_REQUEST\n"
    );
}

proptest! {
    #[test]
    fn set_and_clear_behave_like_a_bitset(ops in proptest::collection::vec((any::<bool>(), 0u64..(1 << 13)), 0..40)) {
        let (f, _) = ffs(1);
        let mut model = 0u64;
        for (set, bits) in ops {
            let flags = CpuFf::from_bits_truncate(bits);
            if set {
                f.set_cpu(0, flags).unwrap();
                model |= flags.bits();
            } else {
                let was = f.test_and_clear_cpu(0, flags).unwrap();
                prop_assert_eq!(was, model & flags.bits() != 0);
                model &= !flags.bits();
            }
            prop_assert_eq!(f.cpu(0).unwrap().bits(), model);
        }
    }
}
