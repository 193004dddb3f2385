//! Firmware whose GDT lies in ROM with the accessed bits clear: the CPU's
//! write of the accessed bit goes nowhere and the guest runs on, as on a
//! PC, on either KVM (the development host's KVM faults on that write
//! forever unless the VMM frees the vCPU).

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Capture;
use hm_vmx::testing::kvm_available;
use vmm_core::{RunOutcome, Vm, VmConfig, guests};

/// Far more than the guests need (under a second each); a hang fails the
/// test at this bound instead of blocking it.
const BOUND: Duration = Duration::from_secs(60);

/// Runs embedded guest `name` on another thread; its outcome and serial
/// output, or a failure once [`BOUND`] passed.
fn run_bounded(name: &str) -> (RunOutcome, String, Duration) {
    let firmware = guests::find(name).unwrap().firmware().unwrap();
    let capture = Capture::default();
    let serial = capture.clone();
    let (done, outcome) = mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let mut config = VmConfig::new(16 << 20, firmware);
        config.serial = Box::new(serial);
        let result = Vm::new(config).and_then(|mut vm| vm.run());
        let _ = done.send(result.map_err(|e| e.to_string()));
    });
    match outcome.recv_timeout(BOUND) {
        Ok(result) => (
            result.unwrap_or_else(|e| panic!("{name}: {e}\nserial:\n{}", capture.text())),
            capture.text(),
            started.elapsed(),
        ),
        Err(_) => panic!(
            "{name}: still running after {BOUND:?} (the vCPU hangs)\nserial:\n{}",
            capture.text()
        ),
    }
}

fn check(name: &str) {
    if !kvm_available(name) {
        return;
    }
    let (outcome, serial, took) = run_bounded(name);
    assert_eq!(outcome, RunOutcome::GuestExit(0), "{name}:\n{serial}");
    for line in [
        "far jump to protected mode done",
        "data segments loaded (twice)",
        "the GDT in ROM is unchanged; all checks passed",
    ] {
        assert!(serial.contains(line), "{name}: no {line:?} in:\n{serial}");
    }
    assert!(took < Duration::from_secs(20), "{name} took {took:?}");
}

#[test]
fn a_far_jump_through_a_rom_gdt_with_accessed_bits_clear_runs_on() {
    check("rom-gdt");
}

#[test]
fn a_data_segment_load_from_a_rom_gdt_with_accessed_bit_clear_runs_on() {
    check("rom-gdt-data");
}
