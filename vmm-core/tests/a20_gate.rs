//! The A20 gate through KVM: a real-mode guest closes and opens it with
//! port 0x92 and sees the wrap at FFFF:0010 only while it is closed; the
//! gate survives a save and restore; port 0x92's bit 0 resets the machine.

mod common;

use common::{Capture, stat};
use hm_vmx::testing::kvm_available;
use iced_x86::code_asm::*;
use vmm_core::guests::rom::RomImage;
use vmm_core::{RunOutcome, Vm, VmConfig};

/// Where the guest writes below 1 MiB, and the offset in segment 0xFFFF
/// that reaches it (linear 0x10_0500) with the gate closed.
const LOW: u32 = 0x500;
const WRAP: u32 = 0x510;
/// Where the guest stores what it read back: closed, open, after restore.
const SEEN: u64 = 0x600;

/// What the guest does after closing the gate the first time.
enum Then {
    /// Open it, close it again, say "closed", spin (a save happens), and
    /// check the wrap once more.
    Reopen,
    /// Pulse port 0x92's reset bit.
    FastReset,
}

/// 16-bit code: ES = 0, FS = 0xFFFF, the keyboard controller's A20 bit
/// low (so that port 0x92 alone drives the gate), then port 0x92 closes
/// the gate and the guest writes 0x11 at 0000:0500 and stores what
/// FFFF:0510 reads at 0x600; see [`Then`]. Exit status 0.
fn firmware(then: Then) -> Vec<u8> {
    let mut a = CodeAssembler::new(16).unwrap();
    let mut spin = a.create_label();
    let low = || byte_ptr(LOW).es();
    let wrap = || byte_ptr(WRAP).fs();
    let seen = |i: u32| byte_ptr(SEEN as u32 + i).es();
    a.xor(ax, ax).unwrap();
    a.mov(es, ax).unwrap();
    a.mov(ax, 0xffff_u32).unwrap();
    a.mov(fs, ax).unwrap();
    a.mov(al, 0xdd).unwrap();
    a.out(0x64, al).unwrap();
    a.mov(al, 0).unwrap();
    a.out(0x92, al).unwrap();
    a.mov(low(), 0x11_u32).unwrap();
    a.mov(al, wrap()).unwrap();
    a.mov(seen(0), al).unwrap();
    match then {
        Then::FastReset => {
            a.mov(al, 1).unwrap();
            a.out(0x92, al).unwrap();
            a.hlt().unwrap();
        }
        Then::Reopen => {
            // Open: FFFF:0510 is its own byte.
            a.mov(al, 2).unwrap();
            a.out(0x92, al).unwrap();
            a.mov(wrap(), 0x22_u32).unwrap();
            a.mov(al, low()).unwrap();
            a.mov(seen(1), al).unwrap();
            a.mov(al, 0).unwrap();
            a.out(0x92, al).unwrap();
            a.mov(dx, 0x3f8_u32).unwrap();
            for b in b"closed\n" {
                a.mov(al, u32::from(*b)).unwrap();
                a.out(dx, al).unwrap();
            }
            a.mov(ecx, 1_500_000_u32).unwrap();
            a.set_label(&mut spin).unwrap();
            a.dec(ecx).unwrap();
            a.jnz(spin).unwrap();
            a.mov(low(), 0x77_u32).unwrap();
            a.mov(al, wrap()).unwrap();
            a.mov(seen(2), al).unwrap();
            a.mov(dx, 0x501_u32).unwrap();
            a.xor(al, al).unwrap();
            a.out(dx, al).unwrap();
        }
    }
    let mut rom = RomImage::new(64 * 1024).unwrap();
    rom.place(0x1000, &a.assemble(0x1000).unwrap()).unwrap();
    rom.reset_jump(0x1000).unwrap();
    rom.into_bytes()
}

fn vm(then: Then) -> (Vm, Capture) {
    let serial = Capture::default();
    let mut config = VmConfig::new(16 << 20, firmware(then));
    config.serial = Box::new(serial.clone());
    (Vm::new(config).expect("VM builds"), serial)
}

fn seen(vm: &Vm) -> [u8; 3] {
    let mut b = [0; 3];
    vm.memory().phys().read().read(SEEN, &mut b).unwrap();
    b
}

#[test]
fn port_92_closes_the_gate_for_kvm_and_a_restore_keeps_it_closed() {
    if !kvm_available("port_92_closes_the_gate_for_kvm_and_a_restore_keeps_it_closed") {
        return;
    }
    let (vm, serial) = vm(Then::Reopen);
    let dir = tempfile::tempdir().unwrap();
    let path = common::run_and_save(vm, &serial, "closed", dir.path());
    let mut vm = Vm::restore(&path, Box::new(std::io::sink()), false).expect("restore");
    assert!(!vm.memory().phys().read().a20_enabled());
    assert_eq!(vm.run().unwrap(), RunOutcome::GuestExit(0));
    // closed: the wrap; open: 0x22 went to 0x10_0500, not to 0x500;
    // restored closed: the wrap again, through the restored KVM alias
    assert_eq!(seen(&vm), [0x11, 0x11, 0x77]);
    assert!(!vm.memory().phys().read().a20_enabled());
    // the restored VM counts its own changes only
    assert_eq!(stat(&vm.handle(), "/PGM/CPU0/cA20Changes"), 0);
}

#[test]
fn the_gate_changes_are_counted_and_port_92_bit_0_resets() {
    if !kvm_available("the_gate_changes_are_counted_and_port_92_bit_0_resets") {
        return;
    }
    let (mut vm, serial) = vm(Then::FastReset);
    assert_eq!(
        vm.run().unwrap(),
        RunOutcome::Reboot,
        "serial: {}",
        serial.text()
    );
    assert_eq!(seen(&vm)[0], 0x11);
    // the i8042's 0xdd closed the gate once (port 0x92 kept it closed)
    assert_eq!(stat(&vm.handle(), "/PGM/CPU0/cA20Changes"), 1);
}
