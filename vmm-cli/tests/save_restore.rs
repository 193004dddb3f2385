//! `vmm save` and `vmm run --restore` end to end: the counter guest runs in
//! one `vmm run` process, is saved through the control API (plain and
//! live) and continues in a new process, where its own checks decide.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hm_vmx::testing::kvm_available;
use support::{Vmm, client, client_ok, incoming_address, read};

/// Generous: the test host is shared and slow; polls end as soon as they succeed.
const DEADLINE: Duration = Duration::from_secs(40);

/// Runs the counter guest on `cpus` vCPUs, saves it at tick 0x40 with
/// `vmm save FILE --poweroff [--live]`, restores it in a new process (its
/// RAM mapped from FILE, or copied with `copy`) and checks the guest's
/// verdict.
fn save_in_one_process_restore_in_another(dir: &Path, cpus: u32, live: bool, copy: bool) {
    let (socket, serial, stderr) = (dir.join("api.sock"), dir.join("serial"), dir.join("stderr"));
    let state = dir.join("vm.sav");
    let cpus = cpus.to_string();
    let mut vm = Vmm::spawn(
        "vmm run --guest counter",
        &[
            "run",
            "--guest",
            "counter",
            "--mem",
            "16M",
            "--cpus",
            &cpus,
            "--api-socket",
            socket.to_str().unwrap(),
            "--serial",
            serial.to_str().unwrap(),
        ],
        &stderr,
        DEADLINE,
    );
    vm.wait_for_text(&serial, "tick 0x0040");
    let mut save = vec![
        "save",
        state.to_str().unwrap(),
        "--poweroff",
        "--api-socket",
    ];
    save.push(socket.to_str().unwrap());
    if live {
        save.push("--live");
    }
    let said = client_ok(&save);
    assert!(said.contains("VM state saved"), "{said}");
    assert_eq!(live, said.contains("live passes"), "{said}");
    let status = vm.wait(|| read(&stderr));
    assert!(status.success(), "{status}: {}", read(&stderr));
    let before = read(&serial);

    let (serial2, stderr2) = (dir.join("serial2"), dir.join("stderr2"));
    let mut args = vec![
        "run",
        "--restore",
        state.to_str().unwrap(),
        "--serial",
        serial2.to_str().unwrap(),
    ];
    if copy {
        args.push("--restore-copy");
    }
    let mut restored = Vmm::spawn("vmm run --restore", &args, &stderr2, DEADLINE);
    let status = restored.wait(|| read(&serial2) + &read(&stderr2));
    let after = read(&serial2);
    assert!(
        status.success(),
        "restored run: {status}\nserial:\n{after}\nstderr:\n{}",
        read(&stderr2)
    );
    assert!(after.contains("vmm counter: ok"), "{after}");
    assert!(!after.contains("started"), "{after}");
    // The guest's 1 MiB buffer was mapped from the file unless copied.
    let said = read(&stderr2);
    let mapped: u64 = said
        .split("RAM pages mapped from the file: ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no restore report in: {said}"));
    if copy {
        assert_eq!(mapped, 0, "{said}");
    } else {
        assert!(mapped >= 256, "{said}");
    }
    let last_before = before.lines().rfind(|l| l.contains("tick 0x")).unwrap();
    let first_after = after.lines().find(|l| l.contains("tick 0x")).unwrap();
    assert!(
        first_after > last_before,
        "{last_before} then {first_after}"
    );
}

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn saved_counter_guest_continues_in_a_new_process_on_one_and_two_vcpus() {
    if !kvm_available("saved_counter_guest_continues_in_a_new_process_on_one_and_two_vcpus") {
        return;
    }
    for (cpus, copy) in [(1, false), (2, true)] {
        save_in_one_process_restore_in_another(temp().path(), cpus, false, copy);
    }
}

#[test]
fn live_saved_counter_guest_continues_in_a_new_process() {
    if !kvm_available("live_saved_counter_guest_continues_in_a_new_process") {
        return;
    }
    save_in_one_process_restore_in_another(temp().path(), 2, true, false);
}

#[test]
fn restore_refuses_a_missing_or_truncated_file_before_building_the_vm() {
    let dir = temp();
    let missing: PathBuf = dir.path().join("nothing.sav");
    let out = client(&["run", "--restore", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("cannot restore"), "{err}");

    let junk = dir.path().join("junk.sav");
    std::fs::write(&junk, b"not a saved state at all").unwrap();
    let out = client(&["run", "--restore", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("cannot restore"), "{err}");
    assert!(
        !err.contains("KVM"),
        "refused before the VM was built: {err}"
    );
}

#[test]
fn counter_guest_teleports_between_processes_over_loopback() {
    if !kvm_available("counter_guest_teleports_between_processes_over_loopback") {
        return;
    }
    let dir = temp();
    let dir = dir.path();
    let (target_serial, target_stderr) = (dir.join("target-serial"), dir.join("target-stderr"));
    let mut target = Vmm::spawn(
        "vmm run --incoming",
        &[
            "run",
            "--guest",
            "counter",
            "--mem",
            "16M",
            "--cpus",
            "2",
            "--incoming",
            "127.0.0.1:0",
            "--serial",
            target_serial.to_str().unwrap(),
        ],
        &target_stderr,
        DEADLINE,
    );
    let address = incoming_address(&mut target, &target_stderr);

    let (socket, serial, stderr) = (dir.join("api.sock"), dir.join("serial"), dir.join("stderr"));
    let mut source = Vmm::spawn(
        "vmm run --guest counter",
        &[
            "run",
            "--guest",
            "counter",
            "--mem",
            "16M",
            "--cpus",
            "2",
            "--api-socket",
            socket.to_str().unwrap(),
            "--serial",
            serial.to_str().unwrap(),
        ],
        &stderr,
        DEADLINE,
    );
    source.wait_for_text(&serial, "tick 0x0040");
    let said = client_ok(&[
        "teleport",
        &address,
        "--api-socket",
        socket.to_str().unwrap(),
    ]);
    assert!(said.contains("VM teleported"), "{said}");
    let status = source.wait(|| read(&stderr));
    assert!(status.success(), "source: {status}: {}", read(&stderr));
    let status = target.wait(|| read(&target_serial) + &read(&target_stderr));
    let after = read(&target_serial);
    assert!(
        status.success(),
        "target: {status}\nserial:\n{after}\nstderr:\n{}",
        read(&target_stderr)
    );
    assert!(after.contains("vmm counter: ok"), "{after}");
    assert!(!after.contains("started"), "{after}");
}
