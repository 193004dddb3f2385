//! Page-walk and TLB-hit costs: a 4-level walk (target under 100 ns) and a
//! software-TLB hit (target under 10 ns), plus the ratio between the two
//! measured in the same run.
//!
//! The build hosts are shared by several jobs on two cores, so criterion
//! measures this thread's CPU time (time spent descheduled is not the
//! walker's cost); the closing line also prints wall-clock figures.

use std::hint::black_box;
use std::time::Instant;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pgm::paging::{
    Access, CpuFeatures, FlatMemory, GuestPaging, P, PS, PagingState, PhysAccess, RW, cr0, cr4,
    efer, walk,
};

const VA: u64 = 0x7f12_3456_7000;

/// 4-level tables mapping `VA` with a 4 KiB page and `VA + 2 MiB` with a
/// 2 MiB page.
fn setup() -> (FlatMemory, PagingState) {
    let mem = FlatMemory::new(0x40_0000);
    let idx = |va: u64, l: u32| (va >> (12 + 9 * (l - 1))) & 0x1ff;
    let (pml4, pdpt, pd, pt) = (0x1000, 0x2000, 0x3000, 0x4000);
    mem.write_u64(pml4 + idx(VA, 4) * 8, pdpt | P | RW).unwrap();
    mem.write_u64(pdpt + idx(VA, 3) * 8, pd | P | RW).unwrap();
    mem.write_u64(pd + idx(VA, 2) * 8, pt | P | RW).unwrap();
    mem.write_u64(pt + idx(VA, 1) * 8, 0x10_0000 | P | RW)
        .unwrap();
    mem.write_u64(pd + idx(VA + 0x20_0000, 2) * 8, 0x20_0000 | P | RW | PS)
        .unwrap();
    let st = PagingState::new(CpuFeatures::new(48).unwrap())
        .with_cr0(cr0::PE | cr0::PG | cr0::WP)
        .with_cr4(cr4::PAE)
        .with_efer(efer::LME | efer::LMA | efer::NXE)
        .with_cr3(pml4);
    (mem, st)
}

/// Criterion measurement: CPU time of the benchmarking thread.
struct CpuTime;

impl Measurement for CpuTime {
    type Intermediate = u128;
    type Value = u128;

    fn start(&self) -> u128 {
        thread_cpu_ns()
    }

    fn end(&self, start: u128) -> u128 {
        thread_cpu_ns() - start
    }

    fn add(&self, a: &u128, b: &u128) -> u128 {
        a + b
    }

    fn zero(&self) -> u128 {
        0
    }

    fn to_f64(&self, v: &u128) -> f64 {
        *v as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuTimeFormat
    }
}

/// Formats nanoseconds of CPU time.
struct CpuTimeFormat;

impl ValueFormatter for CpuTimeFormat {
    fn scale_values(&self, typical_ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = match typical_ns {
            t if t < 1e3 => (1.0, "ns (CPU)"),
            t if t < 1e6 => (1e-3, "µs (CPU)"),
            t if t < 1e9 => (1e-6, "ms (CPU)"),
            _ => (1e-9, "s (CPU)"),
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let (count, unit) = match *t {
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) => (n, "bytes/s (CPU)"),
            Throughput::Bits(n) => (n, "bits/s (CPU)"),
            Throughput::Elements(n) | Throughput::ElementsAndBytes { elements: n, .. } => {
                (n, "elem/s (CPU)")
            }
        };
        values.iter_mut().for_each(|v| *v = count as f64 * 1e9 / *v);
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn benches(c: &mut Criterion<CpuTime>) {
    let (mem, st) = setup();
    let read = Access::supervisor_read();
    c.bench_function("walk_4level_4k", |b| {
        b.iter(|| walk(&st, &mem, black_box(VA + 0x123), read))
    });
    c.bench_function("walk_4level_2m", |b| {
        b.iter(|| walk(&st, &mem, black_box(VA + 0x20_0123), read))
    });
    let mut paging = GuestPaging::new(st);
    paging.translate(&mem, VA, read).unwrap();
    c.bench_function("tlb_hit", |b| {
        b.iter(|| paging.translate(&mem, black_box(VA + 0x123), read))
    });
    ratio(&mem, &st);
}

/// CPU time this thread has used, in nanoseconds. The build host is
/// shared, so wall time includes time spent descheduled; CPU time does not.
fn thread_cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is a
    // constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// Average cost of `f` over `n` calls: (wall ns, thread CPU ns).
fn time(n: u32, mut f: impl FnMut()) -> (f64, f64) {
    let (wall, cpu) = (Instant::now(), thread_cpu_ns());
    for _ in 0..n {
        f();
    }
    let cpu = (thread_cpu_ns() - cpu) as f64 / f64::from(n);
    (wall.elapsed().as_nanos() as f64 / f64::from(n), cpu)
}

/// Walk cost and TLB-hit cost timed back to back in this run, with their
/// ratio, in wall and in thread CPU time.
fn ratio(mem: &FlatMemory, st: &PagingState) {
    const N: u32 = 2_000_000;
    let read = Access::supervisor_read();
    let walk_t = time(N, || {
        let _ = black_box(walk(st, mem, black_box(VA + 0x123), read));
    });
    let mut paging = GuestPaging::new(*st);
    let hit_t = time(N, || {
        let _ = black_box(paging.translate(mem, black_box(VA + 0x123), read));
    });
    println!(
        "wall: 4-level walk {:.1} ns, TLB hit {:.1} ns (walk/hit = {:.1})",
        walk_t.0,
        hit_t.0,
        walk_t.0 / hit_t.0
    );
    println!(
        "CPU:  4-level walk {:.1} ns, TLB hit {:.1} ns (walk/hit = {:.1})",
        walk_t.1,
        hit_t.1,
        walk_t.1 / hit_t.1
    );
    // No paired baseline for these two: '-' (null in the summary).
    println!("metric pgm_walk_ns {:.2} ns -", walk_t.1);
    println!("metric pgm_tlb_hit_ns {:.2} ns -", hit_t.1);
}

criterion_group! {
    name = paging;
    config = Criterion::default().with_measurement(CpuTime);
    targets = benches
}
criterion_main!(paging);
