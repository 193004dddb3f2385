//! `vmm run` under the signals and broken outputs users hand it: SIGINT,
//! SIGTERM and SIGHUP power the VM off in order (exit-time reports
//! written, API socket removed), a second signal ends `vmm` at once, and a
//! serial output or stdout that fails loses output, never the VM.

#[allow(
    dead_code,
    reason = "shared with the other end-to-end tests; the client calls are not used here"
)]
mod support;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hm_vmx::testing::kvm_available;
use support::{VMM, Vmm, read};

/// Generous: the test host is shared and slow; polls end as soon as they succeed.
const DEADLINE: Duration = Duration::from_secs(40);

/// Sends `signal` to the `vmm` child.
fn send(vm: &Vmm, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(vm.child.id()).expect("a pid fits pid_t");
    // SAFETY: kill has no memory-safety preconditions; the child is not
    // reaped yet, so the pid is still its own.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid}");
}

/// Runs the idle guest with the control API and every exit-time report,
/// sends `signal` once it runs, and checks the orderly end: exit status
/// `status`, reports written, socket gone.
fn signal_powers_off_in_order(test: &str, signal: libc::c_int, name: &str, status: i32) {
    if !kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (socket, output, dump) = (
        dir.path().join("api.sock"),
        dir.path().join("output"),
        dir.path().join("mem.img"),
    );
    let mut vm = Vmm::spawn(
        "vmm run --guest idle",
        &[
            "run",
            "--guest",
            "idle",
            "--api-socket",
            socket.to_str().unwrap(),
            "--stats=/VMM/State",
            "--info",
            "fflags",
            "--dump-phys",
            dump.to_str().unwrap(),
        ],
        &output,
        DEADLINE,
    );
    vm.wait_for_text(&output, "vmm idle: heartbeat");
    assert!(socket.exists(), "the API socket is there while the VM runs");
    send(&vm, signal);
    let exit = vm.wait(|| read(&output));
    let said = read(&output);
    assert_eq!(exit.code(), Some(status), "{exit}:\n{said}");
    assert!(
        said.contains(&format!("vmm: {name}: powering the VM off")),
        "{said}"
    );
    assert!(said.contains("/VMM/State"), "--stats printed:\n{said}");
    assert!(
        said.contains("Global FFs"),
        "--info fflags printed:\n{said}"
    );
    assert!(
        said.contains("guest-physical memory written to"),
        "--dump-phys written:\n{said}"
    );
    assert!(!socket.exists(), "the API socket is removed:\n{said}");
}

#[test]
fn sigterm_powers_the_vm_off_in_order() {
    signal_powers_off_in_order(
        "sigterm_powers_the_vm_off_in_order",
        libc::SIGTERM,
        "SIGTERM",
        143,
    );
}

#[test]
fn sigint_powers_the_vm_off_in_order() {
    signal_powers_off_in_order(
        "sigint_powers_the_vm_off_in_order",
        libc::SIGINT,
        "SIGINT",
        130,
    );
}

#[test]
fn sighup_powers_the_vm_off_in_order() {
    signal_powers_off_in_order(
        "sighup_powers_the_vm_off_in_order",
        libc::SIGHUP,
        "SIGHUP",
        129,
    );
}

/// Creates a FIFO at `path`.
fn mkfifo(path: &Path) {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c_path` is a NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
}

#[test]
fn a_second_signal_ends_vmm_at_once() {
    if !kvm_available("a_second_signal_ends_vmm_at_once") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (output, fifo) = (dir.path().join("output"), dir.path().join("fifo"));
    // --dump-phys into a FIFO nobody reads: after the first signal's
    // power-off, `vmm` hangs opening it.
    mkfifo(&fifo);
    let mut vm = Vmm::spawn(
        "vmm run --guest idle --dump-phys FIFO",
        &[
            "run",
            "--guest",
            "idle",
            "--dump-phys",
            fifo.to_str().unwrap(),
        ],
        &output,
        DEADLINE,
    );
    vm.wait_for_text(&output, "vmm idle: heartbeat");
    send(&vm, libc::SIGINT);
    vm.wait_for_text(&output, "vmm: SIGINT: powering the VM off");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        vm.child.try_wait().unwrap().is_none(),
        "vmm waits for the FIFO's reader:\n{}",
        read(&output)
    );
    send(&vm, libc::SIGINT);
    let exit = vm.wait(|| read(&output));
    assert_eq!(
        exit.signal(),
        Some(libc::SIGINT),
        "{exit}:\n{}",
        read(&output)
    );
    assert!(
        read(&output).contains("vmm: SIGINT again: ending at once"),
        "{}",
        read(&output)
    );
}

#[test]
fn full_serial_output_is_reported_once_and_the_guest_runs_on() {
    if !kvm_available("full_serial_output_is_reported_once_and_the_guest_runs_on") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("output");
    // /dev/full: every write fails with ENOSPC, as on a full disk.
    let mut vm = Vmm::spawn(
        "vmm run --serial /dev/full",
        &[
            "run",
            "--guest",
            "demo",
            "--serial",
            "/dev/full",
            "--stats=/Devices/Serial0/cbDropped",
        ],
        &output,
        DEADLINE,
    );
    let exit = vm.wait(|| read(&output));
    let said = read(&output);
    // The demo guest checks its work and exits 0: it ran to the end.
    assert_eq!(exit.code(), Some(0), "{exit}:\n{said}");
    let warning = "vmm: serial output to /dev/full failed: No space left on device";
    assert_eq!(said.matches(warning).count(), 1, "warned once:\n{said}");
    assert!(said.contains("further output dropped"), "{said}");
    let dropped: u64 = said
        .lines()
        .find_map(|l| l.strip_prefix("/Devices/Serial0/cbDropped"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the counter is reported:\n{said}"));
    assert!(dropped > 0, "dropped bytes counted:\n{said}");
}

#[test]
fn a_closed_stdout_loses_output_not_the_vm() {
    if !kvm_available("a_closed_stdout_loses_output_not_the_vm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut vm = Vmm::start(
        "vmm run with a closed stdout",
        Command::new(VMM)
            .args(["run", "--guest", "demo"])
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(std::fs::File::create(&stderr).unwrap()),
        DEADLINE,
    );
    let exit = vm.wait(|| read(&stderr));
    let said = read(&stderr);
    assert_eq!(exit.code(), Some(0), "{exit}:\n{said}");
    let warning = "vmm: serial output to stdout failed: Broken pipe";
    assert_eq!(said.matches(warning).count(), 1, "warned once:\n{said}");
    assert!(!said.contains("panicked"), "{said}");
}

#[test]
fn a_signal_before_the_vm_runs_ends_vmm_at_once() {
    if !kvm_available("a_signal_before_the_vm_runs_ends_vmm_at_once") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("output");
    // Waiting for a teleport: there is no running VM to power off.
    let mut vm = Vmm::spawn(
        "vmm run --incoming",
        &["run", "--guest", "idle", "--incoming", "127.0.0.1:0"],
        &output,
        DEADLINE,
    );
    vm.wait_for_text(&output, "waiting for a teleport on");
    send(&vm, libc::SIGTERM);
    let exit = vm.wait(|| read(&output));
    assert_eq!(
        exit.signal(),
        Some(libc::SIGTERM),
        "{exit}:\n{}",
        read(&output)
    );
    assert!(
        read(&output).contains("vmm: SIGTERM: the VM is not running; ending at once"),
        "{}",
        read(&output)
    );
}
