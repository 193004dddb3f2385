//! `loom` models of the rendezvous core: every interleaving of 2–3 EMTs.
//!
//! Not part of the normal test run (the file is empty without `--cfg loom`).
//! Run it with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p vmm-core --release --test sync_loom
//! ```
//!
//! (about 3 minutes on 2 cores; add `CARGO_TARGET_DIR=target/loom` to keep
//! the normal build cache). 2-thread models explore every interleaving with
//! up to 6 preemptions, 3-thread models up to 3; `LOOM_MAX_PREEMPTIONS`
//! overrides both.
#![cfg(loom)]

use std::sync::Arc;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Condvar, Mutex};
use vmm_core::sync::ffs::CpuId;
use vmm_core::sync::rendezvous::{Callback, EmStatus, RendezvousCore, RendezvousType};

/// Checks every interleaving with at most `bound` preemptions per execution
/// (`LOOM_MAX_PREEMPTIONS` overrides it). Unbounded runs of these models
/// take far too long; bugs in such protocols need few preemptions to show.
fn bounded(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(bound);
    }
    builder.check(f);
}

/// A 2-thread model.
fn model(f: impl Fn() + Sync + Send + 'static) {
    bounded(6, f);
}

/// A 3-thread model.
fn model3(f: impl Fn() + Sync + Send + 'static) {
    bounded(3, f);
}

/// What the EMTs wait for: the "rendezvous pending" signal (counted, so a
/// raise is never missed) and the number of returned rendezvous calls.
#[derive(Default)]
struct Events {
    raises: usize,
    finished: usize,
}

struct Vm {
    core: RendezvousCore,
    events: Arc<(Mutex<Events>, Condvar)>,
}

fn vm(n: u32) -> Arc<Vm> {
    let events = Arc::new((Mutex::new(Events::default()), Condvar::new()));
    let ev = events.clone();
    let core = RendezvousCore::new(
        n,
        Box::new(move |raise| {
            if raise {
                ev.0.lock().unwrap().raises += 1;
                ev.1.notify_all();
            }
        }),
    );
    Arc::new(Vm { core, events })
}

/// The EMT loop: join pending rendezvous, otherwise sleep until the signal
/// is raised again, until `calls` rendezvous calls have returned.
fn emt_loop(vm: &Vm, cpu: CpuId, calls: usize) {
    let (lock, cv) = &*vm.events;
    loop {
        let raises = {
            let ev = lock.lock().unwrap();
            if ev.finished >= calls {
                return;
            }
            ev.raises
        };
        if vm.core.is_pending_for(cpu) {
            vm.core.participate(cpu).unwrap();
            continue;
        }
        let mut ev = lock.lock().unwrap();
        while ev.raises == raises && ev.finished < calls {
            ev = cv.wait(ev).unwrap();
        }
    }
}

fn finish(vm: &Vm) {
    vm.events.0.lock().unwrap().finished += 1;
    vm.events.1.notify_all();
}

fn counting(count: Arc<AtomicUsize>) -> Callback {
    Arc::new(move |_cpu| {
        count.fetch_add(1, Ordering::SeqCst);
        Ok(Some(EmStatus::Reschedule))
    })
}

fn call_and_finish(vm: &Vm, cpu: CpuId, kind: RendezvousType, cb: Callback) -> Option<EmStatus> {
    let r = vm.core.call(cpu, kind, false, cb).unwrap();
    finish(vm);
    r
}

fn one_caller(n: u32, kind: RendezvousType, expected_runs: usize) {
    let check = if n > 2 { model3 } else { model };
    check(move || {
        let vm = vm(n);
        let count = Arc::new(AtomicUsize::new(0));
        let others: Vec<_> = (1..n)
            .map(|cpu| {
                let vm = vm.clone();
                loom::thread::spawn(move || emt_loop(&vm, cpu, 1))
            })
            .collect();
        let status = call_and_finish(&vm, 0, kind, counting(count.clone()));
        for t in others {
            t.join().unwrap();
        }
        assert_eq!(status, Some(EmStatus::Reschedule));
        assert_eq!(count.load(Ordering::SeqCst), expected_runs);
        assert!(!vm.core.is_pending_for(0));
    });
}

#[test]
fn all_at_once_2() {
    one_caller(2, RendezvousType::AllAtOnce, 2);
}

#[test]
fn all_at_once_3() {
    one_caller(3, RendezvousType::AllAtOnce, 3);
}

#[test]
fn once_3() {
    one_caller(3, RendezvousType::Once, 1);
}

#[test]
fn one_by_one_3() {
    one_caller(3, RendezvousType::OneByOne, 3);
}

#[test]
fn descending_3_keeps_order() {
    model3(|| {
        let vm = vm(3);
        let next = Arc::new(AtomicUsize::new(2));
        let n2 = next.clone();
        let cb: Callback = Arc::new(move |cpu| {
            // Each EMT must find the counter at its own index.
            if n2.load(Ordering::SeqCst) != cpu as usize {
                return Err("out of order".into());
            }
            n2.store((cpu as usize).wrapping_sub(1), Ordering::SeqCst);
            Ok(None)
        });
        let others: Vec<_> = [0, 2]
            .into_iter()
            .map(|cpu| {
                let vm = vm.clone();
                loom::thread::spawn(move || emt_loop(&vm, cpu, 1))
            })
            .collect();
        let r = vm.core.call(1, RendezvousType::Descending, true, cb);
        finish(&vm);
        for t in others {
            t.join().unwrap();
        }
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(next.load(Ordering::SeqCst), usize::MAX);
    });
}

#[test]
fn two_concurrent_callers_2() {
    model(|| {
        let vm = vm(2);
        let count = Arc::new(AtomicUsize::new(0));
        let (vm2, c2) = (vm.clone(), count.clone());
        let t = loom::thread::spawn(move || {
            call_and_finish(&vm2, 1, RendezvousType::OneByOne, counting(c2));
            emt_loop(&vm2, 1, 2);
        });
        call_and_finish(&vm, 0, RendezvousType::AllAtOnce, counting(count.clone()));
        emt_loop(&vm, 0, 2);
        t.join().unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 4);
    });
}

#[test]
fn recursion_from_ascending_2() {
    model(|| {
        let vm = vm(2);
        let count = Arc::new(AtomicUsize::new(0));
        let (vm2, c2) = (vm.clone(), count.clone());
        let cb: Callback = Arc::new(move |cpu| {
            if cpu == 1 {
                // Nested all-at-once: EMT 0 joins it while waiting for the end.
                vm2.core
                    .call(1, RendezvousType::AllAtOnce, false, counting(c2.clone()))
                    .map_err(|e| e.to_string())?;
            }
            Ok(None)
        });
        let other = {
            let vm = vm.clone();
            loom::thread::spawn(move || emt_loop(&vm, 1, 1))
        };
        let status = call_and_finish(&vm, 0, RendezvousType::Ascending, cb);
        other.join().unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert_eq!(status, Some(EmStatus::Reschedule));
    });
}
