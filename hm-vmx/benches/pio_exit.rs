//! Port-I/O exit round trip: through the `hm-vmx` backend and through a bare
//! `kvm-ioctls` loop, on the same guest in the same run, with their ratio.
//!
//! The guest is two real-mode instructions, `out dx, al; jmp $-1`, so every
//! iteration is one `KVM_RUN` that exits for port I/O.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use hm_vmx::{Exit, Hypervisor, MemorySlot, Vcpu};
use kvm_ioctls::{VcpuExit, VcpuFd};

const GUEST: [u8; 3] = [0xee, 0xeb, 0xfd]; // out dx, al; jmp short -3

/// One page holding the guest code, leaked for the benchmark's lifetime.
fn guest_page() -> u64 {
    // SAFETY: a fresh private anonymous mapping; checked below.
    let memory = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(memory, libc::MAP_FAILED);
    // SAFETY: the mapping is 4096 bytes long and writable.
    unsafe { std::ptr::copy_nonoverlapping(GUEST.as_ptr(), memory.cast::<u8>(), GUEST.len()) };
    memory as u64
}

/// Real mode, CS base 0, RIP 0, DX = port 0x80.
fn start_at_zero(sregs: &mut hm_vmx::Sregs, regs: &mut hm_vmx::Regs) {
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    regs.rip = 0;
    regs.rdx = 0x80;
}

/// The guest through the backend.
fn backend_guest() -> (hm_vmx::Vm, Vcpu) {
    let vm = Hypervisor::open().unwrap().create_vm().unwrap();
    let slot = MemorySlot {
        slot: 0,
        guest_addr: 0,
        size: 4096,
        host_addr: guest_page(),
        read_only: false,
        log_dirty: false,
    };
    // SAFETY: the page is leaked, so it outlives the VM.
    unsafe { vm.set_memory_slot(&slot) }.unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let state = vcpu.state();
    let (mut sregs, mut regs) = (state.sregs().unwrap(), state.regs().unwrap());
    start_at_zero(&mut sregs, &mut regs);
    state.set_sregs(&sregs).unwrap();
    state.set_regs(&regs).unwrap();
    (vm, vcpu)
}

/// The same guest with nothing but kvm-ioctls.
fn bare_guest() -> (kvm_ioctls::VmFd, VcpuFd) {
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: 4096,
        userspace_addr: guest_page(),
    };
    // SAFETY: the page is leaked, so it outlives the VM.
    unsafe { vm.set_user_memory_region(region) }.unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let (mut sregs, mut regs) = (vcpu.get_sregs().unwrap(), vcpu.get_regs().unwrap());
    start_at_zero(&mut sregs, &mut regs);
    vcpu.set_sregs(&sregs).unwrap();
    vcpu.set_regs(&regs).unwrap();
    (vm, vcpu)
}

fn backend_exits(vcpu: &mut Vcpu, n: u64) {
    for _ in 0..n {
        match vcpu.run().unwrap() {
            Exit::Io(io) => {
                black_box(io.port);
            }
            other => panic!("unexpected exit {}", other.name()),
        }
    }
}

fn bare_exits(fd: &mut VcpuFd, n: u64) {
    for _ in 0..n {
        match fd.run().unwrap() {
            VcpuExit::IoOut(port, _) => {
                black_box(port);
            }
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

/// Interleaves blocks of both loops, alternating which goes first, so
/// that drift on a shared machine hits both alike. Returns the median of
/// the per-round time ratios (backend / bare) and the mean time per exit of
/// each.
fn paired(
    backend: &mut Vcpu,
    bare: &mut VcpuFd,
    rounds: u32,
    block: u64,
) -> (f64, Duration, Duration) {
    let mut ratios = Vec::new();
    let (mut total_backend, mut total_bare) = (Duration::ZERO, Duration::ZERO);
    for round in 0..rounds {
        let mut time_backend = || {
            let t = Instant::now();
            backend_exits(backend, block);
            t.elapsed()
        };
        let mut time_bare = || {
            let t = Instant::now();
            bare_exits(bare, block);
            t.elapsed()
        };
        let (tb, tk) = if round % 2 == 0 {
            let tb = time_backend();
            (tb, time_bare())
        } else {
            let tk = time_bare();
            (time_backend(), tk)
        };
        ratios.push(tb.as_secs_f64() / tk.as_secs_f64());
        total_backend += tb;
        total_bare += tk;
    }
    ratios.sort_by(f64::total_cmp);
    let n = u32::try_from(u64::from(rounds) * block).unwrap();
    (ratios[ratios.len() / 2], total_backend / n, total_bare / n)
}

fn pio_exit(c: &mut Criterion) {
    if !hm_vmx::testing::kvm_available("pio_exit bench") {
        return;
    }
    let (_backend_vm, mut backend) = backend_guest();
    let (_bare_vm, mut bare_fd) = bare_guest();
    let mut group = c.benchmark_group("pio_exit_round_trip");
    group.bench_function("hm_vmx_backend", |b| {
        b.iter_custom(|n| {
            let t = Instant::now();
            backend_exits(&mut backend, n);
            t.elapsed()
        })
    });
    group.bench_function("bare_kvm_ioctls", |b| {
        b.iter_custom(|n| {
            let t = Instant::now();
            bare_exits(&mut bare_fd, n);
            t.elapsed()
        })
    });
    group.finish();
    let (ratio, tb, tk) = paired(&mut backend, &mut bare_fd, 41, 1000);
    println!(
        "pio exit round trip: backend {tb:?}, bare kvm-ioctls {tk:?}, median ratio of 41 paired rounds {ratio:.3} (target <= 1.05)"
    );
    println!("metric pio_exit_ratio {ratio:.3} ratio {}", tk.as_nanos());
}

criterion_group!(benches, pio_exit);
criterion_main!(benches);
