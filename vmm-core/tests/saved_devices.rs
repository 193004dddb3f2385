//! The PC devices' state survives a save and a restore: the CMOS's RAM and
//! the clock the guest set, the i8042's command byte and an answer the
//! guest had only half read.

mod common;

use common::{guest_vm, run_save_restore};
use hm_vmx::testing::kvm_available;
use vmm_core::bus::IoBus;

fn out(io: &IoBus, port: u16, value: u8) {
    io.write(port, &[value]);
}

fn inb(io: &IoBus, port: u16) -> u8 {
    let mut b = [0];
    io.read(port, &mut b);
    b[0]
}

fn cmos(io: &IoBus, index: u8) -> u8 {
    out(io, 0x70, index);
    inb(io, 0x71)
}

#[test]
fn cmos_and_i8042_state_survive_save_and_restore() {
    if !kvm_available("cmos_and_i8042_state_survive_save_and_restore") {
        return;
    }
    let (vm, serial) = guest_vm("counter");
    let io = vm.io_bus();
    // A CMOS RAM byte, and the clock set to 2099-12-31 23:00:00.
    out(io, 0x70, 0x40);
    out(io, 0x71, 0x5a);
    out(io, 0x70, 0x0b);
    out(io, 0x71, 0x82);
    for (index, value) in [(0, 0), (2, 0), (4, 0x23), (7, 0x31), (8, 0x12), (9, 0x99)] {
        out(io, 0x70, index);
        out(io, 0x71, value);
    }
    out(io, 0x70, 0x0b);
    out(io, 0x71, 0x02);
    // The i8042: a command byte, and the keyboard's identity half read.
    out(io, 0x64, 0x60);
    out(io, 0x60, 0x44);
    out(io, 0x60, 0xf2);
    assert_eq!(inb(io, 0x60), 0xfa);

    let restored = run_save_restore(vm, &serial, "tick 0x0020");
    let io = restored.io_bus();
    assert_eq!(cmos(io, 0x40), 0x5a);
    assert_eq!([4, 9, 0x32].map(|i| cmos(io, i)), [0x23, 0x99, 0x20]);
    assert_eq!(inb(io, 0x64) & 0x01, 0x01, "the identity's rest is waiting");
    assert_eq!([inb(io, 0x60), inb(io, 0x60)], [0xab, 0x41]);
    out(io, 0x64, 0x20);
    assert_eq!(inb(io, 0x60), 0x44);
}
