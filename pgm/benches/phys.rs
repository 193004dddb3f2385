//! Hot paths of the guest-physical map: handler lookup, RAM reads, and an
//! MMIO exit dispatched through `pgm` compared with a bare `kvm-ioctls` exit
//! loop in the same run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use iced_x86::code_asm::*;
use kvm_bindings::{KVM_MEM_READONLY, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use pgm::phys::{HandlerAction, HandlerKind, PhysMap};

const HANDLERS: u64 = 6144;

fn handler_map() -> PhysMap {
    let mut map = PhysMap::with_defaults();
    map.add_ram(0, HANDLERS * 0x2000, "ram").unwrap();
    let t = map.register_handler_type(HandlerKind::Write, "bench", |_| Ok(HandlerAction::Default));
    for i in 0..HANDLERS {
        map.register_handler(t, i * 0x2000, i * 0x2000 + 0xfff, i, "h")
            .unwrap();
    }
    map
}

fn lookup(c: &mut Criterion) {
    let map = handler_map();
    // a fixed pseudo-random probe sequence over the whole range
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let probes: Vec<u64> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % (HANDLERS * 0x2000)
        })
        .collect();
    let mut i = 0;
    c.bench_function("handler_lookup_6144", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(map.lookup_handler(black_box(probes[i])).is_some())
        })
    });
    // baseline in the same run: the same ranges in a std BTreeMap
    let tree: std::collections::BTreeMap<u64, u64> = (0..HANDLERS)
        .map(|i| (i * 0x2000, i * 0x2000 + 0xfff))
        .collect();
    c.bench_function("btreemap_lookup_6144_baseline", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            let a = black_box(probes[i]);
            black_box(tree.range(..=a).next_back().is_some_and(|(_, &l)| l >= a))
        })
    });
    let mut buf = [0u8; 8];
    c.bench_function("read_8_bytes_ram", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            map.read(black_box(probes[i] & !7 | 0x1000), &mut buf)
                .unwrap();
            black_box(buf[0])
        })
    });
}

const CODE: u64 = 0x1000;
const MMIO: u64 = 0xd_0000;

fn mmio_vm(kvm: &Kvm, map: &PhysMap) -> (VmFd, VcpuFd) {
    let vm = kvm.create_vm().unwrap();
    for s in &map.kvm_slots().slots {
        let region = kvm_userspace_memory_region {
            slot: s.slot,
            flags: if s.read_only { KVM_MEM_READONLY } else { 0 },
            guest_phys_addr: s.guest_addr,
            memory_size: s.size,
            userspace_addr: s.host_addr,
        };
        // SAFETY: `map` owns the host range and outlives the VM.
        unsafe { vm.set_user_memory_region(region) }.unwrap();
    }
    let vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = MMIO;
    sregs.ds.selector = (MMIO >> 4) as u16;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    (vm, vcpu)
}

fn exit_bare(vcpu: &mut VcpuFd) {
    match vcpu.run() {
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            black_box((addr, data[0]));
        }
        other => panic!("unexpected exit {other:?}"),
    }
}

fn exit_pgm(vcpu: &mut VcpuFd, map: &PhysMap) {
    match vcpu.run() {
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            map.mmio_exit(addr, iom::Data::Write(data)).unwrap();
        }
        other => panic!("unexpected exit {other:?}"),
    }
}

/// Median ns per exit of `batch` exits, over `rounds` interleaved rounds.
fn interleaved(vcpu: &mut VcpuFd, map: &PhysMap, rounds: usize, batch: usize) -> (f64, f64) {
    let mut bare = Vec::new();
    let mut via = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        (0..batch).for_each(|_| exit_bare(vcpu));
        bare.push(t.elapsed());
        let t = Instant::now();
        (0..batch).for_each(|_| exit_pgm(vcpu, map));
        via.push(t.elapsed());
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_nanos() as f64 / batch as f64
    };
    (median(&mut bare), median(&mut via))
}

fn mmio_exit(c: &mut Criterion) {
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "/dev/kvm unavailable under CI: {e}"
            );
            eprintln!("!!! SKIPPING MMIO exit bench: /dev/kvm unavailable ({e}) !!!");
            return;
        }
    };
    let mut map = PhysMap::with_defaults();
    map.add_ram(0, 0xa_0000, "ram").unwrap();
    let t = map.register_handler_type(HandlerKind::Mmio, "no-op", |_| Ok(HandlerAction::Handled));
    map.map_mmio(MMIO, 0x1000, t, 0, "no-op device").unwrap();
    let mut a = CodeAssembler::new(16).unwrap();
    let mut top = a.create_label();
    a.set_label(&mut top).unwrap();
    a.mov(byte_ptr(0x10), al).unwrap();
    a.jmp(top).unwrap();
    map.write(CODE, &a.assemble(CODE).unwrap()).unwrap();
    let (_vm, mut vcpu) = mmio_vm(&kvm, &map);

    let mut g = c.benchmark_group("mmio_exit");
    g.bench_function("bare_kvm_ioctls", |b| b.iter(|| exit_bare(&mut vcpu)));
    g.bench_function("via_pgm", |b| b.iter(|| exit_pgm(&mut vcpu, &map)));
    g.finish();

    // Exit cost on this host drifts over seconds (the group's second
    // function tends to look slower whichever it is), so the ratio compares
    // interleaved batches rather than the two criterion runs above.
    let (bare, via) = interleaved(&mut vcpu, &map, 21, 200);
    println!(
        "mmio_exit: bare {bare:.0} ns/exit, via pgm {via:.0} ns/exit, ratio {:.3} (target <= 1.05)",
        via / bare
    );
}

criterion_group!(benches, lookup, mmio_exit);
criterion_main!(benches);
