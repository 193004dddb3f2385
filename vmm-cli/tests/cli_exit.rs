//! The exit statuses of the README's table, one test each: 0 success, 1
//! VMM error, 2 usage error, 3 the guest failed, 4 a check failed, 128 + N
//! on signal N, and the guest's own status under `--exit-code guest`.

#[allow(dead_code)]
mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use hm_vmx::testing::kvm_available;
use support::{VMM, Vmm, read};

fn vmm(args: &[&str]) -> Output {
    Command::new(VMM)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("VMM_API_SOCKET")
        .output()
        .expect("vmm starts")
}

/// Runs `vmm ARGS` and checks its status is `status` and stderr says `needle`.
fn exits(args: &[&str], status: i32, needle: &str) {
    let out = vmm(args);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(status), "vmm {args:?}: {said}");
    assert!(
        said.contains(needle),
        "vmm {args:?}: no {needle:?} in {said}"
    );
}

/// Firmware whose reset vector writes `status` to the debug-exit port.
fn exiting_firmware(dir: &Path, status: u8) -> String {
    let mut image = vec![0xf4u8; 4096];
    image[4096 - 16..4096 - 16 + 6].copy_from_slice(&[0xb0, status, 0xba, 0x01, 0x05, 0xee]);
    let path = dir.join(format!("exit{status}.bin"));
    std::fs::write(&path, &image).unwrap();
    path.display().to_string()
}

#[test]
fn status_0_success() {
    exits(&["run", "--list-guests"], 0, "");
    if !kvm_available("status_0_success") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    exits(&["run", "--bios", &exiting_firmware(dir.path(), 0)], 0, "");
    exits(
        &["run", "--guest", "halt", "--console", "none"],
        0,
        "halted",
    );
}

#[test]
fn status_1_vmm_error() {
    exits(
        &["run", "--bios", "/no/such/firmware"],
        1,
        "cannot read firmware",
    );
    exits(
        &["status", "--api-socket", "/no/such/api.sock"],
        1,
        "cannot connect",
    );
    exits(&["state", "inspect", "/no/such/vm.sav"], 1, "No such file");
}

#[test]
fn status_2_usage_error() {
    exits(&["run", "--cpus", "0"], 2, "at least one vCPU");
    exits(&["run", "--mem", "0"], 2, "guest RAM cannot be 0");
    exits(&["run", "--no-such-option"], 2, "unexpected argument");
    exits(&["run", "--guest", "nope"], 2, "no embedded guest");
    exits(
        &["balloon", "1536K", "--api-socket", "x"],
        2,
        "whole number of MiB",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vm.toml");
    std::fs::write(&config, "cpus = 0\n").unwrap();
    exits(
        &["run", "--config", config.to_str().unwrap()],
        2,
        "at least one vCPU",
    );
    std::fs::write(&config, "memory = \"1G\"\n").unwrap();
    exits(
        &["run", "--config", config.to_str().unwrap()],
        2,
        "\"memory\" is not an option of `vmm run`",
    );
    let out = Command::new(VMM)
        .args(["run", "--list-guests"])
        .env("RUST_LOG", "vmm_core=nonsense")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn status_3_the_guest_failed_and_its_own_status_on_request() {
    if !kvm_available("status_3_the_guest_failed_and_its_own_status_on_request") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Guest statuses that would look like the VMM's own are all status 3.
    for status in [1, 2, 4, 130] {
        let firmware = exiting_firmware(dir.path(), status);
        exits(
            &["run", "--bios", &firmware],
            3,
            &format!("the guest exited with status {status}"),
        );
        exits(
            &["run", "--bios", &firmware, "--exit-code", "guest"],
            i32::from(status),
            "",
        );
    }
}

#[test]
fn status_4_a_check_failed() {
    let dir = tempfile::tempdir().unwrap();
    let damaged = dir.path().join("damaged.sav");
    std::fs::write(&damaged, b"this is not a saved state").unwrap();
    let out = vmm(&["state", "verify", damaged.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{said}");
    assert!(said.contains("DAMAGED"), "{said}");
    let out = vmm(&["state", "verify", "--json", damaged.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false, "{v}");
}

#[test]
fn status_128_plus_the_signal() {
    if !kvm_available("status_128_plus_the_signal") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (serial, output) = (dir.path().join("serial"), dir.path().join("output"));
    let serial_arg = serial.display().to_string();
    let args = ["run", "--guest", "idle", "--console", "none", "--serial"];
    let mut vm = Vmm::spawn(
        "vmm run --guest idle",
        &[&args[..], &[serial_arg.as_str()]].concat(),
        &output,
        Duration::from_secs(30),
    );
    vm.wait_for_text(&serial, "heartbeat");
    let pid = libc::pid_t::try_from(vm.child.id()).unwrap();
    // SAFETY: sends a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = vm.wait(|| read(&output));
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        read(&output)
    );
}
