//! The PCI bus on a real VM: a guest finds the host bridge through
//! configuration mechanism #1, and the address latch and what was written
//! into the bridge's configuration space survive a save and a restore.

mod common;

use std::time::Duration;

use common::{guest_vm, run_save_restore};
use hm_vmx::testing::kvm_available;
use vmm_core::RunOutcome;
use vmm_core::bus::IoBus;

const ADDRESS: u16 = 0xcf8;
const DATA: u16 = 0xcfc;

fn outl(io: &IoBus, port: u16, value: u32) {
    io.write(port, &value.to_le_bytes());
}

fn inl(io: &IoBus, port: u16) -> u32 {
    let mut b = [0; 4];
    io.read(port, &mut b);
    u32::from_le_bytes(b)
}

/// Far more than the pci-scan guest needs (milliseconds); a hang ends in a
/// power-off at this bound, which fails the test.
const BOUND: Duration = Duration::from_secs(60);

#[test]
fn a_guest_finds_the_host_bridge_alone_on_bus_0() {
    if !kvm_available("a_guest_finds_the_host_bridge_alone_on_bus_0") {
        return;
    }
    let (mut vm, serial) = guest_vm("pci-scan");
    let handle = vm.handle();
    std::thread::spawn(move || {
        std::thread::sleep(BOUND);
        let _ = handle.power_off();
    });
    let outcome = vm.run().expect("the guest runs");
    let text = serial.text();
    assert_eq!(outcome, RunOutcome::GuestExit(0), "{text}");
    assert!(
        text.contains("vmm pci-scan: 00:00.0 1b36:0008, alone on bus 0"),
        "{text}"
    );
}

#[test]
fn the_host_bridge_and_its_settings_survive_save_and_restore() {
    if !kvm_available("the_host_bridge_and_its_settings_survive_save_and_restore") {
        return;
    }
    let (vm, serial) = guest_vm("counter");
    let io = vm.io_bus();
    outl(io, ADDRESS, 0x8000_0000);
    assert_eq!(
        inl(io, DATA),
        0x0008_1b36,
        "Red Hat's host bridge at 00:00.0"
    );
    outl(io, ADDRESS, 0x8000_0800);
    assert_eq!(inl(io, DATA), !0, "nothing at 00:01.0");
    // Command: memory space and bus master; then the latch left on the
    // interrupt line register, which holds 0x0b.
    outl(io, ADDRESS, 0x8000_0004);
    io.write(DATA, &[0x06, 0x00]);
    outl(io, ADDRESS, 0x8000_003c);
    io.write(DATA, &[0x0b]);

    let restored = run_save_restore(vm, &serial, "vmm counter: tick 0x");
    let io = restored.io_bus();
    assert_eq!(inl(io, ADDRESS), 0x8000_003c, "the latch");
    assert_eq!(inl(io, DATA) & 0xff, 0x0b, "the interrupt line");
    outl(io, ADDRESS, 0x8000_0004);
    assert_eq!(inl(io, DATA) & 0xffff, 0x0006, "the command register");
}
