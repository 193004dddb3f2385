//! The guest-physical map under real KVM: slots reported by `pgm`, tiny
//! real-mode guests, MMIO exits dispatched to `pgm`.

use std::sync::{Arc, Mutex};

use iced_x86::code_asm::*;
use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use pgm::phys::{HandlerAction, HandlerKind, PageState, PhysMap, RomProtection};

const CODE: u64 = 0x1000;
const RESULT: u64 = 0x500;

/// Opens KVM, or reports loudly that it is missing (a failure under CI).
fn kvm() -> Option<Kvm> {
    match Kvm::new() {
        Ok(k) => Some(k),
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "/dev/kvm unavailable under CI: {e}"
            );
            eprintln!("!!! SKIPPING KVM test: /dev/kvm unavailable ({e}) !!!");
            None
        }
    }
}

/// A VM with the slots `map` reports and one vCPU in real mode at CS:IP
/// 0:CODE.
fn vm(kvm: &Kvm, map: &PhysMap) -> (VmFd, VcpuFd) {
    let vm = kvm.create_vm().unwrap();
    for s in &map.kvm_slots().slots {
        let region = kvm_userspace_memory_region {
            slot: s.slot,
            flags: if s.read_only { KVM_MEM_READONLY } else { 0 }
                | if s.log_dirty {
                    KVM_MEM_LOG_DIRTY_PAGES
                } else {
                    0
                },
            guest_phys_addr: s.guest_addr,
            memory_size: s.size,
            userspace_addr: s.host_addr,
        };
        // SAFETY: the host range belongs to `map`, which outlives the VM in
        // every test.
        unsafe { vm.set_user_memory_region(region) }.unwrap();
    }
    let vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    for seg in [&mut sregs.cs, &mut sregs.ds, &mut sregs.es, &mut sregs.ss] {
        seg.base = 0;
        seg.selector = 0;
    }
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    (vm, vcpu)
}

/// Runs until `hlt`, dispatching MMIO exits to `map`.
fn run(vcpu: &mut VcpuFd, map: &PhysMap) {
    for _ in 0..100 {
        match vcpu.run().unwrap() {
            VcpuExit::Hlt => return,
            VcpuExit::MmioRead(addr, data) => map.mmio_exit(addr, iom::Data::Read(data)).unwrap(),
            VcpuExit::MmioWrite(addr, data) => map.mmio_exit(addr, iom::Data::Write(data)).unwrap(),
            other => panic!("unexpected exit {other:?}"),
        }
    }
    panic!("guest did not halt");
}

/// Assembles 16-bit code and loads it at CODE.
fn load(map: &PhysMap, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) {
    let mut a = CodeAssembler::new(16).unwrap();
    f(&mut a).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(CODE).unwrap();
    map.write(CODE, &code).unwrap();
}

/// Guest: `seg:off` <- `value`; then reads `seg:off` and stores the byte at
/// 0:RESULT.
fn poke_and_peek(a: &mut CodeAssembler, seg: u16, off: u16, value: u8) -> Result<(), IcedError> {
    a.mov(ax, seg as u32)?;
    a.mov(ds, ax)?;
    a.mov(byte_ptr(off as u64), value as u32)?;
    a.mov(bl, byte_ptr(off as u64))?;
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    a.mov(byte_ptr(RESULT), bl)
}

fn base_map() -> PhysMap {
    let mut map = PhysMap::with_defaults();
    map.add_ram(0, 0xa_0000, "low RAM").unwrap();
    map
}

fn byte(map: &PhysMap, gpa: u64) -> u8 {
    let mut b = [0u8];
    map.read(gpa, &mut b).unwrap();
    b[0]
}

#[test]
fn guest_rom_writes_follow_protection() {
    let Some(kvm) = kvm() else { return };
    // (mode, byte the guest reads back, byte left in the shadow)
    let cases = [
        (RomProtection::ReadRomWriteIgnore, 0xaa, 0xaa),
        (RomProtection::ReadRomWriteRam, 0xaa, 0x55),
        (RomProtection::ReadRamWriteIgnore, 0xaa, 0xaa),
        (RomProtection::ReadRamWriteRam, 0x55, 0x55),
    ];
    for (prot, seen, shadow) in cases {
        let mut map = base_map();
        map.add_rom(0xe_0000, 0x1000, &[0xaa; 0x1000], prot, "ROM")
            .unwrap();
        load(&map, |a| poke_and_peek(a, 0xe000, 0x10, 0x55));
        let (_vm, mut vcpu) = vm(&kvm, &map);
        run(&mut vcpu, &map);
        assert_eq!(byte(&map, RESULT), seen, "{prot:?}: guest read");
        map.set_rom_protection(0xe_0000, RomProtection::ReadRamWriteIgnore)
            .unwrap();
        assert_eq!(byte(&map, 0xe_0010), shadow, "{prot:?}: shadow");
        map.set_rom_protection(0xe_0000, RomProtection::ReadRomWriteIgnore)
            .unwrap();
        assert_eq!(byte(&map, 0xe_0010), 0xaa, "{prot:?}: ROM image");
    }
}

#[test]
fn guest_mmio_goes_to_handler() {
    let Some(kvm) = kvm() else { return };
    let mut map = base_map();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let t = map.register_handler_type(HandlerKind::Mmio, "test device", move |acc| {
        let written = match &acc.data {
            iom::Data::Write(bytes) => bytes.to_vec(),
            iom::Data::Read(_) => Vec::new(),
        };
        l.lock()
            .unwrap()
            .push((acc.offset, acc.data.is_write(), written));
        acc.data.fill_read(0x3c);
        Ok(HandlerAction::Handled)
    });
    map.map_mmio(0xd_0000, 0x1000, t, 0, "test device").unwrap();
    load(&map, |a| poke_and_peek(a, 0xd000, 0x20, 0x42));
    let (_vm, mut vcpu) = vm(&kvm, &map);
    run(&mut vcpu, &map);
    assert_eq!(byte(&map, RESULT), 0x3c);
    let log = log.lock().unwrap();
    assert_eq!(*log, vec![(0x20, true, vec![0x42]), (0x20, false, vec![])]);
}

#[test]
fn guest_reads_unassigned_as_ff() {
    let Some(kvm) = kvm() else { return };
    let map = base_map();
    load(&map, |a| poke_and_peek(a, 0xc000, 0x0, 0x12));
    let (_vm, mut vcpu) = vm(&kvm, &map);
    run(&mut vcpu, &map);
    assert_eq!(byte(&map, RESULT), 0xff);
}

#[test]
fn zero_scan_returns_guest_zeroed_pages_to_host() {
    let Some(kvm) = kvm() else { return };
    let map = base_map();
    load(&map, |a| {
        a.mov(ax, 0x1000u32)?;
        a.mov(ds, ax)?;
        a.mov(byte_ptr(0), 1u32)?;
        a.mov(ax, 0x2000u32)?;
        a.mov(ds, ax)?;
        a.mov(byte_ptr(0), 0u32)?;
        a.mov(ax, 0x3000u32)?;
        a.mov(ds, ax)?;
        a.mov(byte_ptr(0), 0u32)
    });
    let (_vm, mut vcpu) = vm(&kvm, &map);
    run(&mut vcpu, &map);
    let before = map.resident_ram_pages().unwrap();
    assert_eq!(map.page_info(0x1_0000).state, PageState::Zero);
    let report = map.scan_zero_pages().unwrap();
    let after = map.resident_ram_pages().unwrap();
    assert!(report.freed >= 2, "{report:?}");
    assert_eq!(before - after, report.freed);
    assert_eq!(map.page_info(0x1_0000).state, PageState::Allocated);
    assert_eq!(map.page_info(0x2_0000).state, PageState::Zero);
    assert_eq!(map.page_info(0x3_0000).state, PageState::Zero);
    assert_eq!(byte(&map, 0x1_0000), 1);
}

/// `DirtyLog` over the VM's `KVM_GET_DIRTY_LOG`.
struct KvmDirtyLog<'a>(&'a VmFd);

impl pgm::phys::DirtyLog for KvmDirtyLog<'_> {
    fn dirty_bitmap(&mut self, slot: &pgm::phys::KvmSlot) -> Result<Vec<u64>, String> {
        self.0
            .get_dirty_log(slot.slot, slot.size as usize)
            .map_err(|e| e.to_string())
    }
}

#[test]
fn guest_writes_show_up_through_the_dirty_log() {
    let Some(kvm) = kvm() else { return };
    let mut map = base_map();
    load(&map, |a| {
        a.mov(ax, 0x4000u32)?;
        a.mov(ds, ax)?;
        a.mov(byte_ptr(0x123), 9u32)
    });
    map.set_write_monitoring(true);
    assert!(map.kvm_slots().slots.iter().all(|s| s.log_dirty));
    let (vm, mut vcpu) = vm(&kvm, &map);
    run(&mut vcpu, &map);
    map.sync_dirty_log(&mut KvmDirtyLog(&vm)).unwrap();
    let mut dirty = Vec::new();
    map.take_dirty_pages(&mut dirty);
    assert!(dirty.contains(&0x4_0000), "{dirty:x?}");
    assert!(!dirty.contains(&0x5_0000), "{dirty:x?}");
    assert_eq!(map.page_info(0x4_0000).state, PageState::WriteMonitored);
}
