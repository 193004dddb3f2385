//! Backing a whole guest RAM region at 1, 16 and 64 GiB, as a VMM does when
//! it builds a VM: the work must grow linearly with the RAM size (no host
//! memory is touched, only GMM's bookkeeping and the region's mappings), so
//! the summary prints the time per GiB of each size and its ratio to the
//! 1 GiB figure.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gmm::{Gmm, GmmConfig, PAGE_SIZE, Reservation};

const GIB_PAGES: u64 = (1 << 30) / PAGE_SIZE as u64;
const SIZES_GIB: [u64; 3] = [1, 16, 64];

/// Mean time of one allocation per size in GiB.
static MEANS: Mutex<BTreeMap<u64, (Duration, u64)>> = Mutex::new(BTreeMap::new());

/// Times backing every page of a fresh `gib` GiB region, `iters` times; the
/// GMM, its VM and the region are made and dropped outside the clock.
fn timed_allocs(gib: u64, iters: u64) -> Duration {
    let pages = gib * GIB_PAGES;
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let gmm = Gmm::new(GmmConfig::new(pages)).unwrap();
        let reservation = Reservation {
            base: pages,
            ..Default::default()
        };
        let vm = gmm.register_vm("bench", reservation).unwrap();
        let ram = vm.create_ram_region(pages).unwrap();
        let start = Instant::now();
        ram.alloc(0, pages).unwrap();
        total += start.elapsed();
    }
    let mut means = MEANS.lock().unwrap();
    let entry = means.entry(gib).or_default();
    entry.0 += total;
    entry.1 += iters;
    total
}

fn ram_alloc(c: &mut Criterion) {
    let mut group = c.benchmark_group("back a RAM region");
    group.sample_size(10);
    for gib in SIZES_GIB {
        group.throughput(Throughput::Bytes(gib << 30));
        group.bench_function(BenchmarkId::from_parameter(format!("{gib} GiB")), |b| {
            b.iter_custom(|iters| timed_allocs(gib, iters))
        });
    }
    group.finish();
}

fn summary(_: &mut Criterion) {
    let means = MEANS.lock().unwrap();
    let per_gib = |gib: u64| {
        means
            .get(&gib)
            .filter(|e| e.1 > 0)
            .map(|e| e.0.as_secs_f64() / e.1 as f64 / gib as f64)
    };
    println!("\n=== RAM region allocation (linear in the size: ratios near 1) ===");
    let Some(base) = per_gib(1) else { return };
    for gib in SIZES_GIB {
        if let Some(t) = per_gib(gib) {
            println!(
                "{gib:>3} GiB: {:8.1} ms in all, {:6.2} ms per GiB, {:.2} x the 1 GiB rate",
                t * gib as f64 * 1e3,
                t * 1e3,
                t / base
            );
        }
    }
}

criterion_group!(benches, ram_alloc, summary);
criterion_main!(benches);
