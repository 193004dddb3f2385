//! Saving 256 MiB of guest RAM, half of it zero, through the `pgm` saved-state
//! unit, against a plain `memcpy` of 256 MiB in the same run.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use parking_lot::RwLock;
use pgm::phys::{PgmUnit, PhysMap};
use ssm::{Manager, SaveOptions};

const RAM: u64 = 256 << 20;

fn setup() -> (Manager, Vec<u8>) {
    let mut map = PhysMap::with_defaults();
    map.add_ram(0, RAM, "ram").unwrap();
    // every other page written with non-zero data
    let page: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 1) as u8).collect();
    for p in (0..RAM / 4096).step_by(2) {
        map.write(p * 4096, &page).unwrap();
    }
    let mut m = Manager::new();
    m.register(Box::new(PgmUnit::new(Arc::new(RwLock::new(map)), None)))
        .unwrap();
    (m, Vec::with_capacity(RAM as usize + (16 << 20)))
}

fn save(m: &mut Manager, out: &mut Vec<u8>) {
    out.clear();
    m.save(&mut *out, &SaveOptions::default()).unwrap();
    black_box(out.len());
}

fn save_bench(c: &mut Criterion) {
    let (mut m, mut out) = setup();
    let src = vec![0x5au8; RAM as usize];
    let mut dst = vec![0u8; RAM as usize];
    let mut g = c.benchmark_group("save_256mib_half_zero");
    g.sample_size(10);
    g.bench_function("memcpy_baseline", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(dst[4096]);
        })
    });
    g.bench_function("pgm_unit", |b| b.iter(|| save(&mut m, &mut out)));
    g.finish();

    let mut copy = Vec::new();
    let mut saved = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(black_box(&src));
        black_box(dst[4096]);
        copy.push(t.elapsed());
        let t = Instant::now();
        save(&mut m, &mut out);
        saved.push(t.elapsed());
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    let (copy, saved) = (median(&mut copy), median(&mut saved));
    println!(
        "save 256 MiB half zero: memcpy {:.1} ms, pgm unit {:.1} ms ({} bytes), speed ratio {:.2} (target >= 0.5)",
        copy * 1e3,
        saved * 1e3,
        out.len(),
        copy / saved
    );
}

criterion_group!(benches, save_bench);
criterion_main!(benches);
