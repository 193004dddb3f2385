//! EMT rendezvous with 1–8 EMT threads running a small EMT loop that polls
//! the forced-action flags the way the real loop does: handle rendezvous and
//! requests, then either "run the guest" (until kicked) or halt.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use vmm_core::sync::ffs::{CpuFf, CpuId, ForcedActions, Kick, VmFf};
use vmm_core::sync::rendezvous::{
    CallbackError, EmStatus, MAX_RECURSION, Rendezvous, RendezvousError, RendezvousFlags,
    RendezvousType,
};
use vmm_core::sync::request::{RequestQueue, Target};

const ALL_TYPES: [RendezvousType; 5] = [
    RendezvousType::Once,
    RendezvousType::OneByOne,
    RendezvousType::AllAtOnce,
    RendezvousType::Ascending,
    RendezvousType::Descending,
];

/// A simulated guest: "runs" until kicked. The kick is sticky like KVM's
/// `immediate_exit`, so a kick that lands before the run is not lost.
struct FakeGuest {
    kicked: Vec<Mutex<bool>>,
    cv: Vec<Condvar>,
}

impl Kick for FakeGuest {
    fn kick(&self, cpu: CpuId) {
        *self.kicked[cpu as usize].lock() = true;
        self.cv[cpu as usize].notify_one();
    }
}

impl FakeGuest {
    /// Returns false if no kick came in time although a flag is pending.
    fn run(&self, cpu: CpuId, ffs: &ForcedActions) -> bool {
        let mut kicked = self.kicked[cpu as usize].lock();
        while !*kicked {
            if self.cv[cpu as usize]
                .wait_for(&mut kicked, Duration::from_secs(5))
                .timed_out()
                && ffs
                    .is_pending(cpu, VmFf::GUEST_EXIT_MASK, CpuFf::GUEST_EXIT_MASK)
                    .unwrap_or(false)
            {
                return false;
            }
        }
        *kicked = false;
        true
    }
}

struct Vm {
    ffs: ForcedActions,
    requests: RequestQueue,
    rv: Rendezvous,
    emts: Vec<JoinHandle<()>>,
    lost_kicks: Arc<AtomicU32>,
    /// Statuses the EMTs got from `on_ff`.
    ff_statuses: Arc<Mutex<Vec<EmStatus>>>,
}

impl Vm {
    fn new(n: u32) -> Vm {
        let guest = Arc::new(FakeGuest {
            kicked: (0..n).map(|_| Mutex::new(false)).collect(),
            cv: (0..n).map(|_| Condvar::new()).collect(),
        });
        let ffs = ForcedActions::new(n, guest.clone()).unwrap();
        let requests = RequestQueue::new(ffs.clone());
        let rv = Rendezvous::new(requests.clone());
        let lost_kicks = Arc::new(AtomicU32::new(0));
        let ff_statuses = Arc::new(Mutex::new(Vec::new()));
        let emts = (0..n)
            .map(|cpu| {
                let (ffs, rq, rv, guest) =
                    (ffs.clone(), requests.clone(), rv.clone(), guest.clone());
                let (lost, statuses) = (lost_kicks.clone(), ff_statuses.clone());
                std::thread::spawn(move || {
                    let _emt = ffs.register_emt(cpu).unwrap();
                    for round in 0u64.. {
                        let vm = ffs.vm();
                        if vm.contains(VmFf::TERMINATE) {
                            break;
                        }
                        if vm.contains(VmFf::EMT_RENDEZVOUS)
                            && let Some(s) = rv.on_ff(cpu).unwrap()
                        {
                            statuses.lock().push(s);
                        }
                        if vm.contains(VmFf::REQUEST)
                            || ffs.cpu(cpu).unwrap().contains(CpuFf::REQUEST)
                        {
                            rq.process_requests(cpu).unwrap();
                        }
                        if (round + cpu as u64).is_multiple_of(2) {
                            if let Some(in_guest) = ffs.enter_guest(cpu).unwrap() {
                                if !guest.run(cpu, &ffs) {
                                    lost.fetch_add(1, Ordering::SeqCst);
                                }
                                drop(in_guest);
                            }
                        } else {
                            ffs.halt_wait(cpu, Some(Duration::from_secs(5))).unwrap();
                        }
                    }
                })
            })
            .collect();
        Vm {
            ffs,
            requests,
            rv,
            emts,
            lost_kicks,
            ff_statuses,
        }
    }

    fn stop(self) {
        self.ffs.set_vm(VmFf::TERMINATE);
        for t in self.emts {
            t.join().unwrap();
        }
        assert_eq!(self.lost_kicks.load(Ordering::SeqCst), 0, "a kick was lost");
    }
}

fn err(msg: &str) -> CallbackError {
    msg.to_string().into()
}

/// Runs one rendezvous of `kind` and checks who ran the callback, in which
/// order and with how much concurrency.
fn check_type(vm: &Vm, n: u32, kind: RendezvousType, caller_emt: Option<CpuId>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let inside = Arc::new(AtomicU32::new(0));
    let arrived = Arc::new(AtomicU32::new(0));
    let (l, i, a) = (log.clone(), inside.clone(), arrived.clone());
    let callback = move |cpu: CpuId| {
        let now = i.fetch_add(1, Ordering::SeqCst) + 1;
        if kind != RendezvousType::AllAtOnce && now != 1 {
            return Err(err("two callbacks at once"));
        }
        if kind == RendezvousType::AllAtOnce {
            // Every EMT must be inside at the same time.
            a.fetch_add(1, Ordering::SeqCst);
            let start = Instant::now();
            while a.load(Ordering::SeqCst) < n {
                if start.elapsed() > Duration::from_secs(10) {
                    return Err(err("all-at-once callbacks did not overlap"));
                }
                std::thread::yield_now();
            }
        }
        l.lock().push(cpu);
        i.fetch_sub(1, Ordering::SeqCst);
        Ok(None)
    };
    let rv = vm.rv.clone();
    let result = match caller_emt {
        None => rv.call(kind, RendezvousFlags::default(), callback),
        Some(cpu) => vm
            .requests
            .call_wait(Target::Cpu(cpu), move |_| {
                rv.call(kind, RendezvousFlags::default(), callback)
            })
            .unwrap(),
    };
    assert!(result.is_ok(), "{kind:?} with {n} EMTs: {result:?}");
    let log = log.lock().clone();
    let mut sorted = log.clone();
    sorted.sort_unstable();
    match kind {
        RendezvousType::Once => {
            assert_eq!(log.len(), 1);
            if let Some(cpu) = caller_emt {
                assert_eq!(log, vec![cpu], "once runs on the calling EMT");
            }
        }
        RendezvousType::Ascending => assert_eq!(log, (0..n).collect::<Vec<_>>()),
        RendezvousType::Descending => assert_eq!(log, (0..n).rev().collect::<Vec<_>>()),
        RendezvousType::OneByOne | RendezvousType::AllAtOnce => {
            assert_eq!(sorted, (0..n).collect::<Vec<_>>())
        }
    }
}

#[test]
fn every_type_with_2_to_8_emts_from_any_thread() {
    for n in [1, 2, 3, 5, 8] {
        let vm = Vm::new(n);
        for kind in ALL_TYPES {
            check_type(&vm, n, kind, None);
            check_type(&vm, n, kind, Some(n - 1));
        }
        vm.stop();
    }
}

#[test]
fn statuses_merge_to_the_most_important_for_caller_and_emts() {
    let n = 4;
    let vm = Vm::new(n);
    let status = |cpu: CpuId| match cpu {
        0 => Some(EmStatus::Reschedule),
        1 => Some(EmStatus::Suspend),
        2 => None,
        _ => Some(EmStatus::Halt),
    };
    let got = vm
        .rv
        .call(
            RendezvousType::AllAtOnce,
            RendezvousFlags::default(),
            move |cpu| Ok(status(cpu)),
        )
        .unwrap();
    assert_eq!(got, Some(EmStatus::Suspend));
    // The caller is one EMT (forwarded); the other three got the status
    // through their flag handling.
    // The EMTs may still be on their way out of the rendezvous.
    let start = Instant::now();
    while vm.ff_statuses.lock().len() < 3 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let seen = vm.ff_statuses.lock().clone();
    assert_eq!(seen, vec![EmStatus::Suspend; 3]);
    vm.stop();
}

#[test]
fn first_failure_wins_and_stop_on_error_skips_the_rest() {
    let n = 4;
    let vm = Vm::new(n);
    let run = |kind, stop_on_error, failing: &'static [CpuId]| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let flags = RendezvousFlags {
            stop_on_error,
            priority: false,
        };
        let r = vm.rv.call(kind, flags, move |cpu| {
            l.lock().push(cpu);
            if failing.contains(&cpu) {
                Err(err("boom"))
            } else {
                Ok(Some(EmStatus::Reset))
            }
        });
        let failed_cpu = match r {
            Err(RendezvousError::Callback { cpu, .. }) => cpu,
            other => panic!("expected a callback failure, got {other:?}"),
        };
        let log = log.lock().clone();
        (failed_cpu, log)
    };
    assert_eq!(
        run(RendezvousType::Ascending, false, &[1, 3]),
        (1, vec![0, 1, 2, 3])
    );
    assert_eq!(
        run(RendezvousType::Ascending, true, &[1, 3]),
        (1, vec![0, 1])
    );
    assert_eq!(run(RendezvousType::Descending, true, &[2]), (2, vec![3, 2]));
    let (cpu, log) = run(RendezvousType::OneByOne, true, &[0, 1, 2, 3]);
    assert_eq!(log, vec![cpu], "one-by-one stops after the first failure");
    // EMTs do not get a status from a failed rendezvous.
    assert!(vm.ff_statuses.lock().is_empty());

    // A panicking callback is a failure, not a hang.
    let r = vm.rv.call(
        RendezvousType::AllAtOnce,
        RendezvousFlags::default(),
        |cpu| {
            if cpu == 2 {
                panic!("callback bug");
            }
            Ok(None)
        },
    );
    assert!(
        matches!(r, Err(RendezvousError::Callback { cpu: 2, .. })),
        "{r:?}"
    );
    vm.stop();
}

#[test]
fn invalid_requests_are_refused() {
    let vm = Vm::new(2);
    let stop = RendezvousFlags {
        stop_on_error: true,
        priority: false,
    };
    for kind in [RendezvousType::Once, RendezvousType::AllAtOnce] {
        assert!(matches!(
            vm.rv.call(kind, stop, |_| Ok(None)),
            Err(RendezvousError::InvalidFlags(k)) if k == kind
        ));
    }
    assert!(matches!(
        vm.rv.on_ff(7),
        Err(RendezvousError::InvalidCpu { cpu: 7, count: 2 })
    ));
    vm.stop();
}

#[test]
fn priority_rendezvous_from_a_non_emt() {
    let vm = Vm::new(3);
    let count = Arc::new(AtomicU32::new(0));
    let c = count.clone();
    let flags = RendezvousFlags {
        stop_on_error: false,
        priority: true,
    };
    vm.rv
        .call(RendezvousType::OneByOne, flags, move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(None)
        })
        .unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 3);
    vm.stop();
}

#[test]
fn recursion_from_ordered_types_joins_every_emt() {
    for n in [1, 3] {
        let vm = Vm::new(n);
        for parent in [
            RendezvousType::Once,
            RendezvousType::OneByOne,
            RendezvousType::Ascending,
            RendezvousType::Descending,
        ] {
            let nested_log = Arc::new(Mutex::new(Vec::new()));
            let (rv, nl) = (vm.rv.clone(), nested_log.clone());
            let got = vm
                .rv
                .call(parent, RendezvousFlags::default(), move |cpu| {
                    if parent != RendezvousType::Once && cpu != n - 1 {
                        return Ok(None);
                    }
                    let nl = nl.clone();
                    rv.call(
                        RendezvousType::AllAtOnce,
                        RendezvousFlags::default(),
                        move |c| {
                            nl.lock().push(c);
                            Ok(Some(EmStatus::Halt))
                        },
                    )
                    .map_err(|e| e.to_string().into())
                })
                .unwrap();
            assert_eq!(got, Some(EmStatus::Halt), "{parent:?}");
            let mut log = nested_log.lock().clone();
            log.sort_unstable();
            assert_eq!(log, (0..n).collect::<Vec<_>>(), "{parent:?}");
        }
        vm.stop();
    }
}

/// Nests `Once` rendezvous until one is refused; records the depth (number
/// of rendezvous already running) and the error of the refused one.
fn nest(rv: Rendezvous, depth: usize, refused: Arc<Mutex<Option<(usize, String)>>>) {
    let (rv2, r2) = (rv.clone(), refused.clone());
    let result = rv.call(
        RendezvousType::Once,
        RendezvousFlags::default(),
        move |_| {
            nest(rv2.clone(), depth + 1, r2.clone());
            Ok(None)
        },
    );
    if let Err(e) = result {
        *refused.lock() = Some((depth, e.to_string()));
    }
}

#[test]
fn recursion_depth_is_limited_and_all_at_once_refuses_it() {
    let vm = Vm::new(2);
    let refused = Arc::new(Mutex::new(None));
    let (rv, r) = (vm.rv.clone(), refused.clone());
    vm.requests
        .call_wait(Target::Cpu(0), move |_| nest(rv, 0, r))
        .unwrap();
    let (depth, msg) = refused
        .lock()
        .clone()
        .expect("a nested rendezvous was refused");
    assert_eq!(depth, MAX_RECURSION + 1, "{msg}");
    assert!(msg.contains("too deep"), "{msg}");

    let rv = vm.rv.clone();
    let refused = Arc::new(AtomicU32::new(0));
    let r2 = refused.clone();
    vm.rv
        .call(
            RendezvousType::AllAtOnce,
            RendezvousFlags::default(),
            move |_| match rv.call(RendezvousType::Once, RendezvousFlags::default(), |_| {
                Ok(None)
            }) {
                Err(RendezvousError::Deadlock(_)) => {
                    r2.fetch_add(1, Ordering::SeqCst);
                    Ok(None)
                }
                other => Err(format!("nested call gave {other:?}").into()),
            },
        )
        .unwrap();
    assert_eq!(refused.load(Ordering::SeqCst), 2);
    vm.stop();
}

/// A small deterministic generator for the stress test.
fn next(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

#[test]
fn stress_thousands_of_mixed_rendezvous() {
    let n = 4;
    let per_driver = 700;
    let vm = Vm::new(n);
    let executed = Arc::new(AtomicU64::new(0));
    let expected = Arc::new(AtomicU64::new(0));
    let drivers: Vec<_> = (0..3u64)
        .map(|d| {
            let (rv, rq) = (vm.rv.clone(), vm.requests.clone());
            let (executed, expected) = (executed.clone(), expected.clone());
            std::thread::spawn(move || {
                let mut seed = d + 1;
                for _ in 0..per_driver {
                    let kind = ALL_TYPES[next(&mut seed) as usize % ALL_TYPES.len()];
                    let nested =
                        next(&mut seed).is_multiple_of(8) && kind != RendezvousType::AllAtOnce;
                    let runs = if kind == RendezvousType::Once {
                        1
                    } else {
                        n as u64
                    };
                    expected.fetch_add(runs + if nested { n as u64 } else { 0 }, Ordering::SeqCst);
                    let (e, rv2) = (executed.clone(), rv.clone());
                    let callback = move |cpu: CpuId| {
                        e.fetch_add(1, Ordering::SeqCst);
                        if nested && (cpu == 0 || kind == RendezvousType::Once) {
                            let e = e.clone();
                            rv2.call(
                                RendezvousType::OneByOne,
                                RendezvousFlags::default(),
                                move |_| {
                                    e.fetch_add(1, Ordering::SeqCst);
                                    Ok(None)
                                },
                            )
                            .map_err(|e| e.to_string())?;
                        }
                        Ok(Some(EmStatus::Reschedule))
                    };
                    let r = if next(&mut seed).is_multiple_of(2) {
                        rv.call(kind, RendezvousFlags::default(), callback)
                    } else {
                        let target = Target::Cpu((next(&mut seed) % n as u64) as CpuId);
                        let rv = rv.clone();
                        rq.call_wait(target, move |_| {
                            rv.call(kind, RendezvousFlags::default(), callback)
                        })
                        .unwrap()
                    };
                    assert_eq!(r.unwrap(), Some(EmStatus::Reschedule));
                }
            })
        })
        .collect();
    for d in drivers {
        d.join().unwrap();
    }
    assert_eq!(
        executed.load(Ordering::SeqCst),
        expected.load(Ordering::SeqCst)
    );
    vm.stop();
}

#[test]
fn a_stale_flag_is_lowered_when_nothing_waits() {
    let ffs = ForcedActions::new(
        2,
        Arc::new(FakeGuest {
            kicked: (0..2).map(|_| Mutex::new(false)).collect(),
            cv: (0..2).map(|_| Condvar::new()).collect(),
        }),
    )
    .unwrap();
    let rv = Rendezvous::new(RequestQueue::new(ffs.clone()));
    ffs.set_vm(VmFf::EMT_RENDEZVOUS);
    assert!(!rv.is_pending_for(1));
    assert_eq!(rv.on_ff(1).unwrap(), None);
    assert!(!ffs.vm().contains(VmFf::EMT_RENDEZVOUS));
}

/// One vCPU's callback outcome in the property test below.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Fail,
    Status(Option<EmStatus>),
}

fn outcome() -> impl proptest::strategy::Strategy<Value = Outcome> {
    use proptest::prelude::*;
    prop_oneof![
        1 => Just(Outcome::Fail),
        3 => prop_oneof![
            Just(None),
            Just(Some(EmStatus::Reset)),
            Just(Some(EmStatus::Halt)),
            Just(Some(EmStatus::Reschedule)),
            Just(Some(EmStatus::Suspend)),
        ]
        .prop_map(Outcome::Status),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

    /// Ordered rendezvous: the first failure in execution order wins,
    /// otherwise the most important status; with stop-on-error exactly the
    /// prefix up to the first failure runs.
    #[test]
    fn ordered_rendezvous_merge_like_virtualbox(
        outcomes in proptest::collection::vec(outcome(), 2..6),
        descending in proptest::bool::ANY,
        stop_on_error in proptest::bool::ANY,
    ) {
        let n = outcomes.len() as u32;
        let vm = Vm::new(n);
        let (kind, order): (_, Vec<CpuId>) = if descending {
            (RendezvousType::Descending, (0..n).rev().collect())
        } else {
            (RendezvousType::Ascending, (0..n).collect())
        };
        let ran = Arc::new(Mutex::new(Vec::new()));
        let (r, o) = (ran.clone(), outcomes.clone());
        let flags = RendezvousFlags { stop_on_error, priority: false };
        let result = vm.rv.call(kind, flags, move |cpu| {
            r.lock().push(cpu);
            match o[cpu as usize] {
                Outcome::Fail => Err(err("fail")),
                Outcome::Status(s) => Ok(s),
            }
        });
        let first_fail = order
            .iter()
            .copied()
            .find(|&c| matches!(outcomes[c as usize], Outcome::Fail));
        let expected_ran: Vec<CpuId> = match (stop_on_error, first_fail) {
            (true, Some(f)) => order.iter().copied().take_while(|&c| c != f).chain([f]).collect(),
            _ => order.clone(),
        };
        let ran = ran.lock().clone();
        vm.stop();
        proptest::prop_assert_eq!(ran, expected_ran);
        match (first_fail, result) {
            (Some(f), Err(RendezvousError::Callback { cpu, .. })) => proptest::prop_assert_eq!(cpu, f),
            (None, Ok(status)) => {
                let best = outcomes.iter().fold(None, |acc, o| match o {
                    Outcome::Status(s) => EmStatus::merge(acc, *s),
                    Outcome::Fail => acc,
                });
                proptest::prop_assert_eq!(status, best);
            }
            (f, r) => proptest::prop_assert!(false, "first failure {:?}, result {:?}", f, r),
        }
    }
}
