//! Steering running multi-vCPU guests from another thread: pause, resume,
//! reset, power off, and info handlers run on the EMTs.

mod common;

use std::time::{Duration, Instant};

use common::{Capture, ballooned_idle_vm, stat, wait_until};
use hm_vmx::testing::kvm_available;
use vmm_core::saved_state::{AfterSave, SaveRequest};
use vmm_core::sync::vmstate::VmState;
use vmm_core::{RunOutcome, Vm, VmConfig, VmHandle, guests};

fn start(
    guest: &str,
    cpus: u32,
) -> (
    VmHandle,
    Capture,
    std::thread::JoinHandle<vmm_core::Result<RunOutcome>>,
) {
    let serial = Capture::default();
    let mut config = VmConfig::new(16 << 20, guests::find(guest).unwrap().firmware().unwrap());
    config.cpus = cpus;
    config.serial = Box::new(serial.clone());
    let mut vm = Vm::new(config).expect("VM builds");
    let handle = vm.handle();
    let run = std::thread::spawn(move || vm.run());
    (handle, serial, run)
}

fn heartbeats(serial: &Capture) -> usize {
    serial.text().matches("heartbeat").count()
}

#[test]
fn smp_guest_brings_up_every_ap() {
    if !kvm_available("smp_guest_brings_up_every_ap") {
        return;
    }
    for cpus in [2, 4] {
        let (_, serial, run) = start("smp", cpus);
        assert_eq!(
            run.join().unwrap().unwrap(),
            RunOutcome::GuestExit(0),
            "{}",
            serial.text()
        );
        let text = serial.text();
        for ap in 1..cpus {
            assert!(
                text.contains(&format!("AP with APIC id 0x{ap:02x} checked in")),
                "{text}"
            );
        }
        assert!(
            text.contains(&format!("all 0x{:02x} APs checked in", cpus - 1)),
            "{text}"
        );
    }
}

#[test]
fn pause_resume_reset_and_power_off_a_running_two_vcpu_guest() {
    if !kvm_available("pause_resume_reset_and_power_off_a_running_two_vcpu_guest") {
        return;
    }
    let (vm, serial, run) = start("idle", 2);
    wait_until("the first heartbeat", &serial, || heartbeats(&serial) >= 1);
    assert_eq!(vm.state(), VmState::Running);

    vm.pause().unwrap();
    assert_eq!(vm.state(), VmState::Suspended);
    let frozen = heartbeats(&serial);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        heartbeats(&serial),
        frozen,
        "a paused guest printed:\n{}",
        serial.text()
    );
    // Pausing twice is refused with a clear error; the VM stays suspended.
    let again = vm.pause().unwrap_err().to_string();
    assert!(again.to_lowercase().contains("suspended"), "{again}");

    vm.resume().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    wait_until("a heartbeat after resume", &serial, || {
        heartbeats(&serial) > frozen
    });

    // Info handlers run on the EMTs of the running VM.
    let mut text = String::new();
    vm.run_info("cpumguest", "", &mut text).unwrap();
    assert!(
        text.contains("Guest CPUM (VCPU 0)") && text.contains("Guest CPUM (VCPU 1)"),
        "{text}"
    );
    text.clear();
    vm.run_info("fflags", "", &mut text).unwrap();
    assert!(
        text.contains("Global FFs") && text.contains("CPU 1"),
        "{text}"
    );

    vm.reset().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    wait_until("the guest starting over", &serial, || {
        serial.text().matches("vmm idle: started").count() == 2
    });

    vm.power_off().unwrap();
    assert_eq!(run.join().unwrap().unwrap(), RunOutcome::PoweredOff);
    assert_eq!(vm.state(), VmState::Off);
    assert!(vm.resume().is_err());
}

#[test]
fn a_guest_exiting_during_pause_and_resume_does_not_hang_the_vmm() {
    if !kvm_available("a_guest_exiting_during_pause_and_resume_does_not_hang_the_vmm") {
        return;
    }
    // The SMP guest ends the run on its own after a short while; meanwhile
    // another thread keeps pausing and resuming it.
    let (vm, serial, run) = start("smp", 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the run did not end:\n{}",
            serial.text()
        );
        if vm.pause().is_ok() {
            let _ = vm.resume();
        }
    }
    assert_eq!(
        run.join().unwrap().unwrap(),
        RunOutcome::GuestExit(0),
        "{}",
        serial.text()
    );
}

#[test]
fn the_idle_guest_inflates_and_deflates_its_balloon_on_request() {
    if !kvm_available("the_idle_guest_inflates_and_deflates_its_balloon_on_request") {
        return;
    }
    let (handle, serial, run) = ballooned_idle_vm(8 << 20);
    assert_eq!(stat(&handle, "/PGM/Page/cBalloonedPages"), 2048);
    assert_eq!(stat(&handle, "/GMM/cBalloonedPages"), 2048);
    handle.set_balloon(2 << 20);
    wait_until("a 2 MiB balloon", &serial, || {
        handle.balloon() == (2 << 20, 2 << 20)
    });
    assert_eq!(stat(&handle, "/PGM/Page/cBalloonedPages"), 512);
    assert_eq!(stat(&handle, "/GMM/cBalloonedPages"), 512);
    // More than the guest has: it gives what it can, the rest is refused.
    handle.set_balloon(1 << 30);
    wait_until("a full balloon", &serial, || {
        stat(&handle, "/VMM/Balloon/Refused") > 0
    });
    let (_, given) = handle.balloon();
    assert!(given > 2 << 20 && given < 16 << 20, "{given}");
    handle.power_off().unwrap();
    assert_eq!(run.join().unwrap().unwrap(), RunOutcome::PoweredOff);
}

#[test]
fn a_balloon_survives_save_and_restore() {
    if !kvm_available("a_balloon_survives_save_and_restore") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("balloon.sav");
    let serial = Capture::default();
    let mut config = VmConfig::new(16 << 20, guests::find("idle").unwrap().firmware().unwrap());
    config.serial = Box::new(serial.clone());
    config.balloon_bytes = 4 << 20;
    let mut vm = Vm::new(config).unwrap();
    let handle = vm.handle();
    let run = std::thread::spawn(move || vm.run());
    wait_until("a 4 MiB balloon", &serial, || {
        handle.balloon() == (4 << 20, 4 << 20)
    });
    let request = SaveRequest {
        live: false,
        then: AfterSave::PowerOff,
    };
    handle.save(&path, request).unwrap();
    assert_eq!(run.join().unwrap().unwrap(), RunOutcome::PoweredOff);

    let serial = Capture::default();
    let mut vm = Vm::restore(&path, Box::new(serial.clone()), false).unwrap();
    let handle = vm.handle();
    // The device, pgm and GMM all still know what the guest gave.
    assert_eq!(handle.balloon(), (4 << 20, 4 << 20));
    assert_eq!(stat(&handle, "/PGM/Page/cBalloonedPages"), 1024);
    assert_eq!(stat(&handle, "/GMM/cBalloonedPages"), 1024);
    let run = std::thread::spawn(move || vm.run());
    // The restored guest's driver takes pages back without a refusal.
    handle.set_balloon(1 << 20);
    wait_until("a 1 MiB balloon", &serial, || {
        handle.balloon() == (1 << 20, 1 << 20)
    });
    assert_eq!(stat(&handle, "/GMM/cBalloonedPages"), 256);
    assert_eq!(stat(&handle, "/VMM/Balloon/Refused"), 0);
    handle.power_off().unwrap();
    assert_eq!(run.join().unwrap().unwrap(), RunOutcome::PoweredOff);
}
