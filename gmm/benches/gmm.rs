//! GMM hot paths: single-page allocate+free, the sharing scan's throughput,
//! and inflating a 1 GiB balloon, each next to a baseline measured in the same
//! run; the ratios are printed at the end.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gmm::{Account, Gmm, GmmConfig, PAGE_SIZE, RamRegion, Reservation, ScanReport, Vm};
use xxhash_rust::xxh3::xxh3_64;

const GIB_PAGES: u64 = (1 << 30) / PAGE_SIZE as u64;
const SCAN_PAGES: u64 = 8192; // 32 MiB per VM, 64 MiB scanned

/// Mean time per iteration of the custom-timed benchmarks, by name.
static MEANS: Mutex<BTreeMap<&'static str, (Duration, u64)>> = Mutex::new(BTreeMap::new());

fn record(name: &'static str, total: Duration, iters: u64) {
    let mut m = MEANS.lock().unwrap();
    let e = m.entry(name).or_default();
    e.0 += total;
    e.1 += iters;
}

fn mean(name: &str) -> Option<Duration> {
    let m = MEANS.lock().unwrap();
    m.get(name).filter(|e| e.1 > 0).map(|e| e.0 / e.1 as u32)
}

/// CPU time of this thread: the machine these benches run on is shared, so
/// the summary reports CPU time next to criterion's wall-clock numbers.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: FFI writing into a valid timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn reservation(pages: u64) -> Reservation {
    Reservation {
        base: pages,
        shadow: pages,
        fixed: 0,
    }
}

fn alloc_free(c: &mut Criterion) {
    let g = Gmm::new(GmmConfig::new(1 << 16)).unwrap();
    let vm = g.register_vm("bench", reservation(1 << 15)).unwrap();
    // Some pages already held, so the VM's chunk is partly used.
    let _held = vm.alloc_pages(Account::Shadow, 100).unwrap();
    c.bench_function("alloc+free single page", |b| {
        b.iter_custom(|iters| {
            let (t, cpu) = (Instant::now(), thread_cpu());
            for _ in 0..iters {
                let p = vm.alloc_page(Account::Base).unwrap();
                vm.free_page(black_box(p.id)).unwrap();
            }
            let d = t.elapsed();
            record("alloc+free", d, iters);
            record("alloc+free cpu", thread_cpu() - cpu, iters);
            d
        })
    });
}

fn filled_pair(g: &Gmm, pages: u64, salt_b: u64) -> (Vm, Vm, RamRegion, RamRegion) {
    let a = g.register_vm("a", reservation(pages)).unwrap();
    let b = g.register_vm("b", reservation(pages)).unwrap();
    let ra = a.create_ram_region(pages).unwrap();
    let rb = b.create_ram_region(pages).unwrap();
    ra.alloc(0, pages).unwrap();
    rb.alloc(0, pages).unwrap();
    for i in 0..pages {
        let word = |salt: u64| ((i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt).to_le_bytes();
        ra.write(i * PAGE_SIZE as u64, &word(0).repeat(PAGE_SIZE / 8))
            .unwrap();
        rb.write(i * PAGE_SIZE as u64, &word(salt_b).repeat(PAGE_SIZE / 8))
            .unwrap();
    }
    (a, b, ra, rb)
}

/// Times `iters` scans over fresh VM pairs; `pick` chooses which part counts.
fn timed_scans(iters: u64, salt: u64, pick: fn(&ScanReport, Duration) -> Duration) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let g = Gmm::new(GmmConfig::new(4 * SCAN_PAGES)).unwrap();
        let set = filled_pair(&g, SCAN_PAGES, salt);
        let t = Instant::now();
        let r = g.share_scan().unwrap();
        total += pick(&r, t.elapsed());
        assert_eq!(r.pages_scanned, 2 * SCAN_PAGES);
        drop(set);
    }
    total
}

fn sharing_scan(c: &mut Criterion) {
    let bytes = 2 * SCAN_PAGES * PAGE_SIZE as u64;
    let mut group = c.benchmark_group("share scan 64 MiB");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes));
    // Baseline: xxh3 of every page plus a full compare with its twin, on
    // plain heap memory.
    let heap: Vec<u8> = (0..bytes).map(|i| (i / 8 % 251) as u8).collect();
    group.bench_function("baseline xxh3+memcmp on heap", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                let (x, y) = heap.split_at(heap.len() / 2);
                let mut eq = 0u64;
                for (p, q) in x.chunks_exact(PAGE_SIZE).zip(y.chunks_exact(PAGE_SIZE)) {
                    eq += u64::from(xxh3_64(p) == xxh3_64(q) && p == q);
                }
                black_box(eq);
            }
            let d = t.elapsed();
            record("scan baseline", d, iters);
            d
        })
    });
    group.bench_function("identical VMs: hash+compare", |b| {
        b.iter_custom(|iters| {
            let d = timed_scans(iters, 0, |r, _| r.detect_time);
            record("scan identical detect", d, iters);
            d
        })
    });
    group.bench_function("identical VMs: whole scan incl. remap+release", |b| {
        b.iter_custom(|iters| timed_scans(iters, 0, |_, all| all))
    });
    group.bench_function("distinct VMs: hash", |b| {
        b.iter_custom(|iters| {
            let d = timed_scans(iters, 1, |r, _| r.detect_time);
            record("scan distinct detect", d, iters);
            d
        })
    });
    group.finish();
}

fn touched_region(vm: &Vm) -> RamRegion {
    let ram = vm.create_ram_region(GIB_PAGES).unwrap();
    ram.alloc(0, GIB_PAGES).unwrap();
    for i in 0..GIB_PAGES {
        ram.write(i * PAGE_SIZE as u64, &[1]).unwrap();
    }
    ram
}

/// The kernel work an inflate cannot avoid: a touched 1 GiB `MAP_SHARED`
/// memfd mapping is replaced by anonymous memory and the file is punched.
struct KernelBaseline {
    fd: libc::c_int,
    addr: *mut libc::c_void,
}

const GIB: usize = 1 << 30;

impl KernelBaseline {
    fn new() -> Self {
        // SAFETY: plain FFI; failures are checked.
        unsafe {
            let fd = libc::memfd_create(c"baseline".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0 && libc::ftruncate(fd, GIB as libc::off_t) == 0);
            let addr = libc::mmap(
                std::ptr::null_mut(),
                GIB,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert!(addr != libc::MAP_FAILED);
            for i in (0..GIB).step_by(PAGE_SIZE) {
                addr.cast::<u8>().add(i).write_volatile(1);
            }
            KernelBaseline { fd, addr }
        }
    }

    fn release(&self) {
        // SAFETY: replaces our own mapping and punches our own file.
        unsafe {
            let r = libc::mmap(
                self.addr,
                GIB,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            );
            assert!(r != libc::MAP_FAILED);
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            assert_eq!(libc::fallocate(self.fd, mode, 0, GIB as libc::off_t), 0);
        }
    }
}

impl Drop for KernelBaseline {
    fn drop(&mut self) {
        // SAFETY: our mapping and descriptor.
        unsafe {
            libc::munmap(self.addr, GIB);
            libc::close(self.fd);
        }
    }
}

fn balloon(c: &mut Criterion) {
    let mut group = c.benchmark_group("balloon 1 GiB");
    group.sample_size(10);
    let g = Gmm::new(GmmConfig::new(2 * GIB_PAGES)).unwrap();
    let vm = g.register_vm("vm", reservation(GIB_PAGES)).unwrap();
    group.bench_function("baseline: kernel remap+punch of touched memfd", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let k = KernelBaseline::new();
                let t = Instant::now();
                k.release();
                total += t.elapsed();
            }
            record("balloon kernel", total, iters);
            total
        })
    });
    group.bench_function("inflate, pages touched", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut returned = Duration::ZERO;
            for _ in 0..iters {
                let ram = touched_region(&vm);
                let t = Instant::now();
                ram.balloon_inflate(0, GIB_PAGES).unwrap();
                total += t.elapsed();
                // The worker gives the memory back; wait until the host has it.
                g.return_freed_pages().unwrap();
                returned += t.elapsed();
                assert_eq!(g.stats().backing_bytes, 0);
            }
            record("balloon touched", total, iters);
            record("balloon touched returned", returned, iters);
            total
        })
    });
    group.bench_function("inflate, pages allocated but never written", |b| {
        b.iter_batched(
            || {
                let ram = vm.create_ram_region(GIB_PAGES).unwrap();
                ram.alloc(0, GIB_PAGES).unwrap();
                ram
            },
            |ram| {
                ram.balloon_inflate(0, GIB_PAGES).unwrap();
                ram
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn ratios(_: &mut Criterion) {
    let gib_s = |d: Duration| {
        (2 * SCAN_PAGES * PAGE_SIZE as u64) as f64 / d.as_secs_f64() / f64::from(1 << 30)
    };
    println!("\n=== gmm summary ===");
    if let (Some(d), Some(cpu)) = (mean("alloc+free"), mean("alloc+free cpu")) {
        println!(
            "alloc+free single page: {} ns wall, {} ns thread CPU time (target < 100 ns)",
            d.as_nanos(),
            cpu.as_nanos()
        );
    }
    if let (Some(base), Some(same), Some(diff)) = (
        mean("scan baseline"),
        mean("scan identical detect"),
        mean("scan distinct detect"),
    ) {
        println!(
            "scan hash+compare: identical {:.2} GiB/s, distinct {:.2} GiB/s, heap baseline {:.2} GiB/s \
             (ratio to baseline {:.2} / {:.2}; target >= 1 GiB/s)",
            gib_s(same),
            gib_s(diff),
            gib_s(base),
            gib_s(same) / gib_s(base),
            gib_s(diff) / gib_s(base)
        );
        println!(
            "metric gmm_scan_gib_s {:.3} GiB/s {:.3}",
            gib_s(same),
            gib_s(base)
        );
    }
    if let (Some(k), Some(t), Some(r)) = (
        mean("balloon kernel"),
        mean("balloon touched"),
        mean("balloon touched returned"),
    ) {
        println!(
            "inflate 1 GiB touched: {:.1} ms (target < 50 ms); memory back with the host after \
             {:.1} ms; kernel-only baseline (remap + punch) {:.1} ms, ratios {:.2} / {:.2}",
            t.as_secs_f64() * 1e3,
            r.as_secs_f64() * 1e3,
            k.as_secs_f64() * 1e3,
            t.as_secs_f64() / k.as_secs_f64(),
            r.as_secs_f64() / k.as_secs_f64()
        );
    }
}

criterion_group!(benches, alloc_free, sharing_scan, balloon, ratios);
criterion_main!(benches);
