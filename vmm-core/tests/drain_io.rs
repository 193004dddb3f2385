//! A guest that does nothing but port I/O, saved and restored again and
//! again (plain and live saves): no access may happen twice. KVM completes
//! an `in` or `out` (the value into AL, RIP past it) only on the next entry;
//! a save that read the registers before it would make the restored guest
//! execute the instruction again.
//!
//! The guest asks the keyboard for its identity (`out 0x60, 0xf2`) and
//! reads the answer, which the controller queues and every read of port
//! 0x60 takes: `0xfa`, `0xab`, and one more byte, after which the output
//! buffer must be empty. An `in` executed twice takes the next byte (the
//! check fails), an `out` executed twice queues a second answer (the
//! buffer is not empty). The guest then prints `FAIL` and exits with 1.

mod common;

use std::time::{Duration, Instant};

use common::Capture;
use hm_vmx::testing::kvm_available;
use iced_x86::code_asm::*;
use vm_memory::{Bytes, GuestAddress};
use vmm_core::devices::{COM1_PORT, DEBUG_EXIT_PORT};
use vmm_core::guests::rom::RomImage;
use vmm_core::saved_state::{AfterSave, SaveRequest};
use vmm_core::{RunOutcome, Vm, VmConfig, VmHandle};

/// Where the guest counts its rounds of questions and answers.
const ROUNDS_AT: u64 = 0x500;

/// The guest (see the module), 16-bit real mode with interrupts off.
fn firmware() -> Vec<u8> {
    let mut a = CodeAssembler::new(16).unwrap();
    let (mut ask, mut fail) = (a.create_label(), a.create_label());
    a.cli().unwrap();
    a.xor(ax, ax).unwrap();
    a.mov(ds, ax).unwrap();
    a.mov(dword_ptr(ROUNDS_AT), 0).unwrap();
    a.set_label(&mut ask).unwrap();
    a.mov(al, 0xf2u32).unwrap();
    a.out(0x60, al).unwrap();
    for expected in [0xfau32, 0xab] {
        a.in_(al, 0x60).unwrap();
        a.cmp(al, expected).unwrap();
        a.jne(fail).unwrap();
    }
    a.in_(al, 0x60).unwrap();
    a.in_(al, 0x64).unwrap();
    a.test(al, 1).unwrap(); // output buffer full: a second answer
    a.jnz(fail).unwrap();
    a.inc(dword_ptr(ROUNDS_AT)).unwrap();
    a.jmp(ask).unwrap();
    a.set_label(&mut fail).unwrap();
    a.mov(dx, u32::from(COM1_PORT)).unwrap();
    for &b in b"FAIL\n" {
        a.mov(al, u32::from(b)).unwrap();
        a.out(dx, al).unwrap();
    }
    a.mov(dx, u32::from(DEBUG_EXIT_PORT)).unwrap();
    a.mov(al, 1u32).unwrap();
    a.out(dx, al).unwrap();
    let mut rom = RomImage::new(64 * 1024).unwrap();
    rom.place(0x1000, &a.assemble(0x1000).unwrap()).unwrap();
    rom.reset_jump(0x1000).unwrap();
    rom.into_bytes()
}

fn rounds(handle: &VmHandle) -> u32 {
    handle
        .memory()
        .ram()
        .read_obj(GuestAddress(ROUNDS_AT))
        .unwrap()
}

type Run = std::thread::JoinHandle<vmm_core::Result<RunOutcome>>;

/// Runs `vm` on a thread until the guest did `more` rounds more (or the
/// run ended).
fn run_for(mut vm: Vm, serial: &Capture, more: u32) -> (VmHandle, Run) {
    let handle = vm.handle();
    let start = rounds(&handle);
    let run = std::thread::spawn(move || vm.run());
    let deadline = Instant::now() + Duration::from_secs(30);
    while rounds(&handle) < start + more && !run.is_finished() {
        assert!(Instant::now() < deadline, "no progress: {}", serial.text());
        std::thread::sleep(Duration::from_millis(1));
    }
    (handle, run)
}

#[test]
fn port_io_is_never_repeated_across_saves_and_restores() {
    if !kvm_available("port_io_is_never_repeated_across_saves_and_restores") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("io.sav");
    let serial = Capture::default();
    let mut config = VmConfig::new(16 << 20, firmware());
    config.serial = Box::new(serial.clone());
    let mut vm = Vm::new(config).expect("VM builds");
    for save in 0..30 {
        let (handle, run) = run_for(vm, &serial, 50);
        let request = SaveRequest {
            live: save % 2 == 1,
            then: AfterSave::PowerOff,
        };
        let saved = handle.save(&path, request);
        let outcome = run.join().unwrap();
        assert!(
            saved.is_ok() && matches!(outcome, Ok(RunOutcome::PoweredOff)),
            "run {save} (then {request:?}): save {saved:?}, run {outcome:?}, after {} rounds; \
             serial: {}",
            rounds(&handle),
            serial.text()
        );
        vm = Vm::restore(&path, Box::new(serial.clone()), false).expect("restore");
    }
    let (handle, run) = run_for(vm, &serial, 50);
    let off = handle.power_off();
    let outcome = run.join().unwrap();
    assert!(
        off.is_ok() && matches!(outcome, Ok(RunOutcome::PoweredOff)),
        "{off:?}, {outcome:?}: {}",
        serial.text()
    );
    assert!(!serial.text().contains("FAIL"), "{}", serial.text());
}
