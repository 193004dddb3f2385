//! All-at-once EMT rendezvous of 2 EMTs, round trip, against the cost of a
//! futex wake-and-wait round trip between two threads, measured in the same
//! run. Prints the median ratio of paired rounds whose order alternates
//! (target: at most 4x).
//!
//! The bench thread is EMT 0 and calls the rendezvous; EMT 1 runs the EMT
//! loop (flags, then halt) in its own thread, as the real EMT does when its
//! vCPU is halted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::Criterion;
use vmm_core::sync::ffs::{CpuFf, ForcedActions, Kick, VmFf};
use vmm_core::sync::rendezvous::{Rendezvous, RendezvousFlags, RendezvousType};
use vmm_core::sync::request::RequestQueue;

/// The EMTs here never run a guest, so there is nothing to kick.
struct NoGuest;
impl Kick for NoGuest {
    fn kick(&self, _cpu: u32) {}
}

/// Two threads handing a token back and forth with park/unpark (one futex
/// wake and one futex wait per direction). Returns the time of `iters`
/// round trips.
fn futex_ping_pong(iters: u64) -> Duration {
    let turn = Arc::new(AtomicU32::new(0)); // 0: main's turn, 1: partner's
    let main = std::thread::current();
    let t = turn.clone();
    let partner = std::thread::spawn(move || {
        for _ in 0..iters {
            while t.load(Ordering::Acquire) != 1 {
                std::thread::park();
            }
            t.store(0, Ordering::Release);
            main.unpark();
        }
    });
    let me = partner.thread().clone();
    let start = Instant::now();
    for _ in 0..iters {
        turn.store(1, Ordering::Release);
        me.unpark();
        while turn.load(Ordering::Acquire) != 0 {
            std::thread::park();
        }
    }
    let elapsed = start.elapsed();
    let _ = partner.join();
    elapsed
}

struct TwoEmts {
    rv: Rendezvous,
    ffs: ForcedActions,
    stop: Arc<AtomicBool>,
    emt1: Option<JoinHandle<()>>,
}

impl TwoEmts {
    fn new() -> TwoEmts {
        let ffs = ForcedActions::new(2, Arc::new(NoGuest)).expect("2 vCPUs");
        let rq = RequestQueue::new(ffs.clone());
        let rv = Rendezvous::new(rq.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let (f, r, s) = (ffs.clone(), rv.clone(), stop.clone());
        let emt1 = std::thread::spawn(move || {
            let _emt = f.register_emt(1).expect("EMT 1");
            while !s.load(Ordering::SeqCst) {
                if f.vm().contains(VmFf::EMT_RENDEZVOUS) {
                    let _ = r.on_ff(1);
                }
                if f.vm().contains(VmFf::REQUEST)
                    || f.cpu(1).is_ok_and(|c| c.contains(CpuFf::REQUEST))
                {
                    let _ = rq.process_requests(1);
                }
                let _ = f.halt_wait(1, Some(Duration::from_millis(100)));
            }
        });
        TwoEmts {
            rv,
            ffs,
            stop,
            emt1: Some(emt1),
        }
    }
}

impl Drop for TwoEmts {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.ffs.set_vm(VmFf::TERMINATE);
        if let Some(t) = self.emt1.take() {
            let _ = t.join();
        }
    }
}

/// `iters` all-at-once rendezvous round trips called from EMT 0.
fn rendezvous_round_trips(vm: &TwoEmts, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let status = vm.rv.call(
            RendezvousType::AllAtOnce,
            RendezvousFlags::default(),
            |_| Ok(None),
        );
        assert!(status.is_ok());
    }
    start.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Paired rounds of `block` round trips of each, the one run first
/// alternating, so drift on a shared host hits both alike: (median ns per
/// rendezvous, median ns per futex round trip, median per-round ratio).
fn paired(vm: &TwoEmts, rounds: usize, block: u64) -> (f64, f64, f64) {
    let ns = |d: Duration| d.as_nanos() as f64 / block as f64;
    let (mut rv, mut base, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (r, b) = if round % 2 == 0 {
            let r = ns(rendezvous_round_trips(vm, block));
            (r, ns(futex_ping_pong(block)))
        } else {
            let b = ns(futex_ping_pong(block));
            (ns(rendezvous_round_trips(vm, block)), b)
        };
        rv.push(r);
        base.push(b);
        ratio.push(r / b);
    }
    (median(rv), median(base), median(ratio))
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let vm = TwoEmts::new();
    let _emt0 = vm.ffs.register_emt(0).expect("bench thread as EMT 0");
    let mut group = c.benchmark_group("rendezvous");
    group.bench_function("futex_wake_wait_round_trip", |bench| {
        bench.iter_custom(futex_ping_pong)
    });
    group.bench_function("all_at_once_2_emts_round_trip", |bench| {
        bench.iter_custom(|iters| rendezvous_round_trips(&vm, iters))
    });
    group.finish();

    // The ratio comes from paired rounds, not from the two criterion runs
    // above: those run minutes apart on a shared host and drift apart.
    const ROUNDS: usize = 21;
    let (rv, base, ratio) = paired(&vm, ROUNDS, 2000);
    drop(_emt0);
    drop(vm);
    println!(
        "rendezvous: all-at-once 2 EMTs round trip {rv:.0} ns, futex wake+wait round trip \
         {base:.0} ns, median ratio of {ROUNDS} paired rounds {ratio:.2}x (target <= 4x)"
    );
    println!("metric rendezvous_ratio {ratio:.3} ratio {base:.0}");
    c.final_summary();
}
