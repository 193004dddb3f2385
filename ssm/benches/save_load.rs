//! Saving and loading 256 MiB of guest RAM (half zero pages, half random),
//! against a baseline of a plain copy plus CRC32C of the non-zero half.
//!
//! Run: `cargo bench -p ssm -- --warm-up-time 1 --measurement-time 2`.
//!
//! Criterion measures each case. Then, because the machine may be shared and
//! noisy, the ratios are taken from paired rounds: each round times the
//! baseline, a save and a load back to back (the baseline first in even
//! rounds, last in odd ones), and the median over the rounds of (baseline
//! time / ssm time) is printed (1.0: as fast as the baseline).
//! All buffers are allocated and touched up front.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group};
use ssm::{Manager, PAGE_SIZE, SaveOptions, StreamReader, Unit, UnitReader, UnitWriter};

const RAM: usize = 256 << 20;
const RATIO_ROUNDS: usize = 9;

/// Guest RAM where about half the pages are zero and the rest random.
fn guest_ram() -> Vec<u8> {
    let mut ram = vec![0u8; RAM];
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for page in ram.chunks_exact_mut(PAGE_SIZE) {
        if next() & 1 == 1 {
            for w in page.chunks_exact_mut(8) {
                w.copy_from_slice(&next().to_le_bytes());
            }
        }
    }
    ram
}

fn pages(ram: &[u8]) -> impl Iterator<Item = &[u8; PAGE_SIZE]> {
    ram.chunks_exact(PAGE_SIZE)
        .filter_map(|p| <&[u8; PAGE_SIZE]>::try_from(p).ok())
}

/// A buffer of `len` bytes whose pages are already faulted in.
fn touched(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.resize(len, 1);
    v
}

/// The RAM unit: saves every page of `src`; loads every page into `dest`.
struct Ram {
    src: Arc<Vec<u8>>,
    dest: Vec<u8>,
}

impl Unit for Ram {
    fn name(&self) -> &str {
        "pgm"
    }
    fn version(&self) -> u32 {
        1
    }
    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        pages(&self.src).try_for_each(|p| w.put_page(p))
    }
    fn load_exec(&mut self, r: &mut UnitReader<'_>, _v: u32, _pass: u32) -> ssm::Result<()> {
        for page in self.dest.chunks_exact_mut(PAGE_SIZE) {
            let page = <&mut [u8; PAGE_SIZE]>::try_from(page).map_err(ssm::Error::callback)?;
            r.get_page()?.copy_to(page);
        }
        Ok(())
    }
}

fn manager(src: Arc<Vec<u8>>, dest: usize) -> Manager {
    let mut m = Manager::new();
    m.register(Box::new(Ram {
        src,
        dest: touched(dest),
    }))
    .expect("register");
    m
}

/// Everything the three measured operations work on.
struct Work {
    ram: Arc<Vec<u8>>,
    nonzero: Vec<usize>,
    copy: Vec<u8>,
    saver: Manager,
    out: Vec<u8>,
    saved: Vec<u8>,
    loader: Manager,
}

impl Work {
    fn new() -> Self {
        let ram = Arc::new(guest_ram());
        let nonzero: Vec<usize> = pages(&ram)
            .enumerate()
            .filter(|(_, p)| !ssm::is_zero(&p[..]))
            .map(|(i, _)| i)
            .collect();
        let mut saver = manager(ram.clone(), 0);
        let mut saved = Vec::new();
        saver
            .save(&mut saved, &SaveOptions::default())
            .expect("save");
        println!(
            "256 MiB guest RAM, {} of {} pages non-zero, saved state {} bytes",
            nonzero.len(),
            RAM / PAGE_SIZE,
            saved.len()
        );
        Self {
            copy: touched(nonzero.len() * PAGE_SIZE),
            out: touched(saved.len()),
            loader: manager(Arc::new(Vec::new()), RAM),
            ram,
            nonzero,
            saver,
            saved,
        }
    }

    /// Copy plus CRC32C of the non-zero pages.
    fn baseline(&mut self) {
        self.copy.clear();
        let mut crc = 0;
        for &i in &self.nonzero {
            let p = &self.ram[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
            self.copy.extend_from_slice(p);
            crc = crc32c::crc32c_append(crc, p);
        }
        black_box((&self.copy, crc));
    }

    fn save(&mut self, opts: &SaveOptions) {
        self.out.clear();
        self.saver.save(&mut self.out, opts).expect("save");
        black_box(&self.out);
    }

    fn load(&mut self) {
        let r = StreamReader::from_slice(&self.saved).expect("header");
        self.loader.load(r).expect("load");
    }
}

fn seconds(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn benches(c: &mut Criterion) {
    let mut w = Work::new();
    let mut lz4 = SaveOptions::default();
    lz4.compress = true;
    let plain = SaveOptions::default();

    let mut g = c.benchmark_group("ssm_256mib");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(RAM as u64));
    g.bench_function("baseline_memcpy_crc_nonzero_half", |b| {
        b.iter(|| w.baseline())
    });
    g.bench_function("save", |b| b.iter(|| w.save(&plain)));
    g.bench_function("save_lz4", |b| b.iter(|| w.save(&lz4)));
    g.bench_function("load", |b| b.iter(|| w.load()));
    g.finish();

    let (mut save, mut save_lz4, mut load) = (Vec::new(), Vec::new(), Vec::new());
    let mut bases = Vec::new();
    for round in 0..RATIO_ROUNDS {
        // The baseline runs first in even rounds and last in odd ones.
        let first = round % 2 == 0;
        let mut base = if first { seconds(|| w.baseline()) } else { 0.0 };
        let s = seconds(|| w.save(&plain));
        let z = seconds(|| w.save(&lz4));
        let l = seconds(|| w.load());
        if !first {
            base = seconds(|| w.baseline());
        }
        save.push(base / s);
        save_lz4.push(base / z);
        load.push(base / l);
        bases.push(base);
    }
    let save = median(save);
    println!(
        "ratios to baseline (copy + CRC32C of the non-zero half), median of {RATIO_ROUNDS} paired rounds:"
    );
    println!("  save     {save:.2}  (target >= 0.5)");
    println!("  load     {:.2}  (target >= 0.5)", median(load));
    println!(
        "  save_lz4 {:.2}  (compression on, for information)",
        median(save_lz4)
    );
    let base_ms = median(bases) * 1e3;
    println!("metric ssm_save_speed_ratio {save:.3} ratio {base_ms:.1}");
}

criterion_group!(group, benches);

fn main() {
    group();
    Criterion::default().configure_from_args().final_summary();
}
