//! GMM page sharing under a running guest: identical guest pages are backed
//! by one host page, and a guest write afterwards gets its own copy.

mod common;

use std::time::{Duration, Instant};

use common::{Capture, stat};
use hm_vmx::testing::kvm_available;
use iced_x86::code_asm::*;
use vmm_core::guests::rom::RomImage;
use vmm_core::{RunOutcome, Vm, VmConfig};

/// Real mode: fill 16 pages at 0x10000 with 0x5a, say "filled" on COM1,
/// spin a while (the test shares pages meanwhile), then write page 3 and
/// check that page 3 changed and page 4 did not. Exit status 0 on success.
fn firmware() -> Vec<u8> {
    let mut a = CodeAssembler::new(16).unwrap();
    let (mut spin, mut fail) = (a.create_label(), a.create_label());
    a.mov(ax, 0x1000u32).unwrap();
    a.mov(es, ax).unwrap();
    a.mov(ds, ax).unwrap();
    a.xor(di, di).unwrap();
    a.mov(ax, 0x5a5au32).unwrap();
    a.mov(cx, 0x8000u32).unwrap(); // 64 KiB in words
    a.cld().unwrap();
    a.rep().stosw().unwrap();
    a.mov(dx, 0x3f8u32).unwrap();
    for b in b"filled\n" {
        a.mov(al, u32::from(*b)).unwrap();
        a.out(dx, al).unwrap();
    }
    a.mov(ecx, 1_500_000u32).unwrap();
    a.set_label(&mut spin).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(spin).unwrap();
    a.mov(byte_ptr(0x3000), 0x11u32).unwrap();
    a.cmp(byte_ptr(0x3000), 0x11).unwrap();
    a.jne(fail).unwrap();
    a.cmp(byte_ptr(0x4000), 0x5a).unwrap();
    a.jne(fail).unwrap();
    a.mov(dx, 0x501u32).unwrap();
    a.xor(al, al).unwrap();
    a.out(dx, al).unwrap();
    a.set_label(&mut fail).unwrap();
    a.mov(dx, 0x501u32).unwrap();
    a.mov(al, 1).unwrap();
    a.out(dx, al).unwrap();
    let mut rom = RomImage::new(64 * 1024).unwrap();
    rom.place(0x1000, &a.assemble(0x1000).unwrap()).unwrap();
    rom.reset_jump(0x1000).unwrap();
    rom.into_bytes()
}

#[test]
fn identical_guest_pages_are_shared_and_unshared_on_write() {
    if !kvm_available("identical_guest_pages_are_shared_and_unshared_on_write") {
        return;
    }
    let serial = Capture::default();
    let mut config = VmConfig::new(16 << 20, firmware());
    config.serial = Box::new(serial.clone());
    let mut vm = Vm::new(config).unwrap();
    let handle = vm.handle();
    let run = std::thread::spawn(move || vm.run());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !serial.text().contains("filled") {
        assert!(
            Instant::now() < deadline,
            "the guest never filled its pages"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let report = handle.share_pages().unwrap();
    // 16 identical pages: one master copy, the rest deduplicated (the
    // guest's code and stack pages are unique, its other RAM is zero).
    assert!(report.pages_deduplicated >= 14, "{report:?}");
    let saved = stat(&handle, "/GMM/cSavedPages");
    assert!(saved >= 14, "{saved}");
    // PGM's page states follow: the deduplicated pages are shared.
    let shared = stat(&handle, "/PGM/Page/cSharedPages");
    assert!((15..=16).contains(&shared), "{shared}");
    assert_eq!(
        run.join().unwrap().unwrap(),
        RunOutcome::GuestExit(0),
        "{}",
        serial.text()
    );
}
