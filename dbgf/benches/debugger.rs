//! Debugger hot paths: the I/O-port breakpoint check every port exit pays and the
//! page-trap watchpoint check every MMIO exit pays, next to a
//! baseline (one atomic load, the least any "is debugging on?" check costs) measured in
//! the same run, and the interpretation of a breakpoint stop. Ratios are printed at the
//! end.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use dbgf::debugger::{
    Debugger, IoAccess, MemAccess, MemTarget, StopCause, VcpuStop, WatchMode, stop_channel,
};

static MEANS: Mutex<BTreeMap<&'static str, (Duration, u64)>> = Mutex::new(BTreeMap::new());

fn timed(name: &'static str, iters: u64, mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    let d = t.elapsed();
    if let Ok(mut m) = MEANS.lock() {
        let e = m.entry(name).or_default();
        e.0 += d;
        e.1 += iters;
    }
    d
}

fn mean_ns(name: &str) -> Option<f64> {
    let m = MEANS.lock().ok()?;
    m.get(name)
        .filter(|e| e.1 > 0)
        .map(|e| e.0.as_nanos() as f64 / e.1 as f64)
}

fn io_watch(c: &mut Criterion) {
    let flag = AtomicBool::new(false);
    c.bench_function("baseline: atomic load", |b| {
        b.iter_custom(|n| {
            timed("baseline", n, || {
                black_box(flag.load(Ordering::Acquire));
            })
        })
    });

    let mut dbg = Debugger::new();
    let watch = dbg.io_watch();
    c.bench_function("io_watch: no I/O breakpoints", |b| {
        b.iter_custom(|n| {
            timed("disarmed", n, || {
                black_box(watch.matches(black_box(0x3f8), 1, true));
            })
        })
    });

    for (first, last) in [(0x60, 0x64), (0x70, 0x71), (0x1f0, 0x1f7), (0xcf8, 0xcff)] {
        if dbg
            .add_io_breakpoint(first, last, IoAccess::ReadWrite)
            .is_err()
        {
            return;
        }
    }
    c.bench_function("io_watch: 4 ranges, miss", |b| {
        b.iter_custom(|n| {
            timed("armed miss", n, || {
                black_box(watch.matches(black_box(0x3f8), 1, true));
            })
        })
    });
}

fn mem_watch(c: &mut Criterion) {
    let (tx, _rx) = stop_channel();
    let mut vm = MemTarget::new(1, 0x10000, tx);
    let mut dbg = Debugger::new().with_watch_mode(WatchMode::PageTraps);
    let watch = dbg.mem_watch();
    c.bench_function("mem_watch: no watchpoints", |b| {
        b.iter_custom(|n| {
            timed("mem disarmed", n, || {
                black_box(watch.matches(black_box(0xfee0_0000), 4, true));
            })
        })
    });
    for page in 1..5u64 {
        let added = dbg.add_data_watch(&mut vm, 0, page * 0x1000 + 8, 8, MemAccess::Write);
        if added.is_err() {
            return;
        }
    }
    c.bench_function("mem_watch: 4 ranges, miss on a trapped page", |b| {
        b.iter_custom(|n| {
            timed("mem armed miss", n, || {
                black_box(watch.matches(black_box(0x2000), 4, true));
            })
        })
    });
}

fn handle_stop(c: &mut Criterion) {
    let (tx, _rx) = stop_channel();
    let mut vm = MemTarget::new(1, 0x2000, tx);
    let mut dbg = Debugger::new();
    let Ok(_) = dbg.add_hw_breakpoint(0x1000) else {
        return;
    };
    let Ok(_) = dbg.add_sw_breakpoint(&mut vm, 0, 0x1800) else {
        return;
    };
    let stop = VcpuStop {
        cpu: 0,
        cause: StopCause::Debug {
            exception: 1,
            dr6: 0xffff_0ff1,
            pc: 0x1000,
        },
    };
    c.bench_function("handle_stop: hardware breakpoint", |b| {
        b.iter_custom(|n| {
            timed("handle_stop", n, || {
                black_box(dbg.handle_stop(&mut vm, black_box(stop)).ok());
            })
        })
    });
}

fn summary(_: &mut Criterion) {
    let Some(base) = mean_ns("baseline") else {
        return;
    };
    println!("\nratios against the baseline (atomic load, {base:.2} ns):");
    for name in [
        "disarmed",
        "armed miss",
        "mem disarmed",
        "mem armed miss",
        "handle_stop",
    ] {
        if let Some(ns) = mean_ns(name) {
            println!("  {name:<14} {ns:>9.2} ns  = {:>7.1} x baseline", ns / base);
        }
    }
}

criterion_group!(benches, io_watch, mem_watch, handle_stop, summary);
criterion_main!(benches);
