//! A real guest on KVM runs in GMM memory: its writes land in the RAM region,
//! and after a sharing scan remaps the region under the live memory slot, a
//! guest write gives the guest its own copy while the other VM keeps its data.

use gmm::{Gmm, GmmConfig, PAGE_SIZE, RamRegion, Reservation};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};

const PAGES: u64 = 4;
const CODE: u64 = 0x1000;
const DATA: u64 = 0x2000;

/// Real mode at CODE: `mov al,[DATA]; out 0x10,al; inc al; mov [DATA],al; hlt`.
const GUEST: [u8; 11] = [
    0xa0, 0x00, 0x20, 0xe6, 0x10, 0xfe, 0xc0, 0xa2, 0x00, 0x20, 0xf4,
];

fn kvm() -> Option<Kvm> {
    match Kvm::new() {
        Ok(k) => Some(k),
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("!!! /dev/kvm unavailable ({e}): SKIPPING the GMM-on-KVM test !!!");
            None
        }
        Err(e) => panic!("/dev/kvm unavailable under CI=true: {e}"),
    }
}

/// Runs the guest from CODE; returns the byte it read (the `out`).
fn run_once(vcpu: &mut VcpuFd) -> u8 {
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    let mut seen = None;
    loop {
        match vcpu.run().unwrap() {
            VcpuExit::IoOut(0x10, data) => seen = data.first().copied(),
            VcpuExit::Hlt => break,
            other => panic!("unexpected exit {other:?}"),
        }
    }
    seen.expect("guest did the out")
}

fn byte(r: &RamRegion, at: u64) -> u8 {
    let mut b = [0u8];
    r.read(at, &mut b).unwrap();
    b[0]
}

#[test]
fn kvm_guest_writes_follow_gmm_remapping() {
    let Some(kvm) = kvm() else { return };
    let g = Gmm::new(GmmConfig::new(1024)).unwrap();
    let res = Reservation {
        base: PAGES,
        ..Default::default()
    };
    let (a, b) = (
        g.register_vm("a", res).unwrap(),
        g.register_vm("b", res).unwrap(),
    );
    let (ra, rb) = (
        a.create_ram_region(PAGES).unwrap(),
        b.create_ram_region(PAGES).unwrap(),
    );
    for r in [&ra, &rb] {
        r.alloc(0, PAGES).unwrap();
        for i in 0..PAGES {
            r.write(i * PAGE_SIZE as u64, &[0x30 + i as u8; PAGE_SIZE])
                .unwrap();
        }
        r.write(CODE, &GUEST).unwrap();
    }

    let vm = kvm.create_vm().unwrap();
    let slot = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: rb.len_bytes(),
        userspace_addr: rb.host_addr(),
    };
    // SAFETY: the region stays mapped (and is never unmapped, only remapped)
    // until `rb` drops, which is after the VM fd below.
    unsafe { vm.set_user_memory_region(slot) }.unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = 0;
    sregs.ds.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();

    // Run 1 in B's private GMM pages.
    assert_eq!(run_once(&mut vcpu), 0x32);
    assert_eq!(byte(&rb, DATA), 0x33);

    // Make A identical and share: B's pages become copy-on-write views of
    // A's while the slot stays registered.
    ra.write(DATA, &[0x33]).unwrap();
    let report = g.share_scan().unwrap();
    assert_eq!(report.pages_deduplicated, PAGES);
    assert_eq!(g.stats().allocated_pages, PAGES);

    // Run 2: the guest reads the shared page and writes its own copy.
    assert_eq!(run_once(&mut vcpu), 0x33);
    assert_eq!(
        byte(&rb, DATA),
        0x34,
        "the guest's write reached B's mapping"
    );
    assert_eq!(byte(&ra, DATA), 0x33, "A did not see B's guest write");
    assert_eq!(g.reconcile_shared().unwrap(), 1);
    assert_eq!(b.stats().private, 1);
    drop(vcpu);
    drop(vm);
}
