//! Save a running guest, restore it into a new VM, and let the guest's own
//! checks decide: the `counter` guest verifies its tick counter (register
//! against memory) and its 1 MiB buffer on every tick, on 1 and 2 vCPUs,
//! with plain and live saves.

mod common;

use std::path::Path;

use common::{Capture, wait_until};
use hm_vmx::testing::kvm_available;
use vmm_core::saved_state::{AfterSave, RamLoad, RestoreOptions, SaveRequest};
use vmm_core::sync::vmstate::VmState;
use vmm_core::{RunOutcome, Vm, VmConfig, guests};

/// A running VM of the counter guest on `cpus` vCPUs that has printed tick
/// 0x40: its handle, serial output and run thread.
fn counter_at_tick_0x40(
    cpus: u32,
) -> (
    vmm_core::VmHandle,
    Capture,
    std::thread::JoinHandle<vmm_core::Result<RunOutcome>>,
) {
    let serial = Capture::default();
    let mut config = VmConfig::new(
        16 << 20,
        guests::find("counter").unwrap().firmware().unwrap(),
    );
    config.cpus = cpus;
    config.serial = Box::new(serial.clone());
    let mut vm = Vm::new(config).expect("VM builds");
    let handle = vm.handle();
    let run = std::thread::spawn(move || vm.run());
    wait_until("tick 0x0040", &serial, || {
        serial.text().contains("tick 0x0040")
    });
    (handle, serial, run)
}

/// Runs the counter guest on `cpus` vCPUs until it printed tick 0x40,
/// saves it to `path` (powering it off), restores the file into a new VM
/// (its RAM mapped from the file or copied, as `ram` says) and runs that
/// to the guest's verdict.
fn save_and_restore(cpus: u32, live: bool, ram: RamLoad, path: &Path) {
    let (handle, serial, run) = counter_at_tick_0x40(cpus);
    let report = handle
        .save(
            path,
            SaveRequest {
                live,
                then: AfterSave::PowerOff,
            },
        )
        .expect("save");
    assert_eq!(run.join().unwrap().unwrap(), RunOutcome::PoweredOff);
    let before = serial.text();
    assert!(!before.contains("FAIL"), "{before}");
    assert!(report.bytes > 0);
    if live {
        assert!(report.live_passes >= 1, "{report:?}");
    } else {
        assert_eq!(report.live_passes, 0);
    }

    let restored_serial = Capture::default();
    let options = RestoreOptions {
        ram,
        ..RestoreOptions::default()
    };
    let mut restored =
        Vm::restore_with(path, Box::new(restored_serial.clone()), options).expect("restore");
    assert_eq!(restored.handle().state(), VmState::Suspended);
    // The guest's 1 MiB buffer is saved as a page run: mapped from the
    // file, or copied.
    let mapped = restored
        .restore_report()
        .expect("a restore report")
        .pages_mapped;
    let handle = restored.handle();
    let pgm_mapped = common::stat(&handle, "/PGM/SavedState/cMappedPages");
    let gmm_mapped = common::stat(&handle, "/GMM/cFileMappedPages");
    assert_eq!(pgm_mapped, mapped);
    match ram {
        RamLoad::Map => {
            assert!(mapped >= 256, "{mapped} pages mapped");
            assert!(gmm_mapped > 0 && gmm_mapped <= mapped, "{gmm_mapped}");
        }
        RamLoad::Copy => assert_eq!((mapped, gmm_mapped), (0, 0)),
    }
    // Before its EMTs exist, per-vCPU info handlers run on this thread and
    // show the restored state.
    let mut cpu = String::new();
    restored.run_info("cpumguest", "", &mut cpu).unwrap();
    assert!(cpu.contains("rip="), "{cpu}");
    let outcome = restored.run().expect("restored run");
    let after = restored_serial.text();
    assert_eq!(
        outcome,
        RunOutcome::GuestExit(0),
        "restored output:\n{after}"
    );
    assert!(after.contains("vmm counter: ok"), "{after}");
    // The guest continued: no new start, and its first progress line comes
    // after the last one printed before the save.
    assert!(!after.contains("started"), "{after}");
    let last_before = before.lines().rfind(|l| l.contains("tick 0x")).unwrap();
    let first_after = after.lines().find(|l| l.contains("tick 0x")).unwrap();
    assert!(
        first_after > last_before,
        "{last_before} then {first_after}"
    );
}

#[test]
fn counter_guest_survives_save_and_restore_on_one_and_two_vcpus() {
    if !kvm_available("counter_guest_survives_save_and_restore_on_one_and_two_vcpus") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (cpus, ram) in [(1, RamLoad::Map), (2, RamLoad::Copy)] {
        save_and_restore(
            cpus,
            false,
            ram,
            &dir.path().join(format!("counter-{cpus}.sav")),
        );
    }
}

#[test]
fn counter_guest_survives_a_live_save() {
    if !kvm_available("counter_guest_survives_a_live_save") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    save_and_restore(2, true, RamLoad::Map, &dir.path().join("counter-live.sav"));
}

#[test]
fn counter_guest_teleports_over_loopback_tcp() {
    if !kvm_available("counter_guest_teleports_over_loopback_tcp") {
        return;
    }
    let firmware = guests::find("counter").unwrap().firmware().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let target_serial = Capture::default();
    let mut target_config = VmConfig::new(16 << 20, firmware);
    target_config.cpus = 2;
    target_config.serial = Box::new(target_serial.clone());
    let target = std::thread::spawn(move || {
        let mut vm = Vm::incoming(target_config, &listener)?;
        // A socket cannot be mapped: the RAM was copied.
        assert_eq!(
            common::stat(&vm.handle(), "/PGM/SavedState/cMappedPages"),
            0
        );
        vm.run()
    });

    let (handle, _serial, run) = counter_at_tick_0x40(2);
    let report = handle.teleport(&address).expect("teleport");
    assert!(report.live_passes >= 1, "{report:?}");
    assert_eq!(run.join().unwrap().unwrap(), RunOutcome::PoweredOff);
    let outcome = target.join().unwrap().expect("target run");
    let after = target_serial.text();
    assert_eq!(outcome, RunOutcome::GuestExit(0), "target output:\n{after}");
    assert!(
        after.contains("vmm counter: ok") && !after.contains("started"),
        "{after}"
    );
}

/// Saves the running `vm` to `path`, powering it off.
fn save_off(handle: &vmm_core::VmHandle, path: &Path) {
    handle
        .save(
            path,
            SaveRequest {
                live: false,
                then: AfterSave::PowerOff,
            },
        )
        .expect("save");
}

#[test]
fn a_vm_running_from_its_saved_state_saves_over_that_file() {
    if !kvm_available("a_vm_running_from_its_saved_state_saves_over_that_file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("counter.sav");
    let (handle, _serial, run) = counter_at_tick_0x40(1);
    save_off(&handle, &path);
    assert_eq!(run.join().unwrap().unwrap(), RunOutcome::PoweredOff);

    // Restored with its RAM mapped from `path`, the VM runs on and is saved
    // to `path` again: the save writes a new file and renames it over the
    // one the VM maps, which stays intact underneath.
    let second = Capture::default();
    let vm = Vm::restore(&path, Box::new(second.clone()), false).expect("restore");
    assert!(vm.restore_report().unwrap().pages_mapped > 0);
    let handle = vm.handle();
    let mut vm = vm;
    let run = std::thread::spawn(move || vm.run());
    wait_until("a tick after the restore", &second, || {
        second.text().contains("tick 0x")
    });
    save_off(&handle, &path);
    assert_eq!(run.join().unwrap().unwrap(), RunOutcome::PoweredOff);
    let text = second.text();
    assert!(
        !text.contains("FAIL") && !text.contains("started"),
        "{text}"
    );

    let third = Capture::default();
    let mut vm = Vm::restore(&path, Box::new(third.clone()), false).expect("restore");
    let outcome = vm.run().expect("run");
    let after = third.text();
    assert_eq!(outcome, RunOutcome::GuestExit(0), "output:\n{after}");
    assert!(after.contains("vmm counter: ok"), "{after}");
    let last_before = text.lines().rfind(|l| l.contains("tick 0x")).unwrap();
    let first_after = after.lines().find(|l| l.contains("tick 0x")).unwrap();
    assert!(
        first_after > last_before,
        "{last_before} then {first_after}"
    );
}
