//! `vmm run` when the guest halts: a guest that halts every CPU with
//! interrupts off (`cli; hlt`, Linux's `poweroff` without ACPI) ends the
//! run with status 0, and one that halts with interrupts on (waiting for
//! its timer) runs on.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hm_vmx::testing::kvm_available;

/// Generous: the test host is shared and slow; polls end as soon as they succeed.
const DEADLINE: Duration = Duration::from_secs(20);

/// `vmm run --guest GUEST` with its serial output in `serial`.
fn spawn(guest: &str, serial: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["run", "--guest", guest, "--serial"])
        .arg(serial)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmm starts")
}

/// Waits for `child` to end within `deadline`; kills it if it does not.
fn wait_at_most(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    None
}

/// What `child` wrote on stderr (it has ended).
fn stderr(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        std::io::Read::read_to_string(&mut err, &mut text).expect("stderr");
    }
    text
}

#[test]
fn a_guest_halted_with_interrupts_off_ends_the_run_with_status_0() {
    if !kvm_available("a_guest_halted_with_interrupts_off_ends_the_run_with_status_0") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial");
    let mut child = spawn("halt", &serial);
    let status = wait_at_most(&mut child, DEADLINE);
    let err = stderr(&mut child);
    let out = std::fs::read_to_string(&serial).unwrap_or_default();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{out}\n{err}");
    assert!(
        out.contains("vmm halt: halting with interrupts off"),
        "{out}"
    );
    assert!(
        err.contains(
            "vmm: the guest halted every CPU with interrupts off (nothing can wake it): the run ends"
        ),
        "{err}"
    );
}

#[test]
fn a_guest_halted_with_interrupts_on_runs_on() {
    if !kvm_available("a_guest_halted_with_interrupts_on_runs_on") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial");
    let mut child = spawn("idle", &serial);
    let start = Instant::now();
    let started =
        || std::fs::read_to_string(&serial).is_ok_and(|t| t.contains("vmm idle: started"));
    while !started() && start.elapsed() < DEADLINE {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(started(), "the idle guest did not start");
    // Many watch periods with the vCPU halted between timer ticks.
    std::thread::sleep(Duration::from_secs(2));
    if let Some(status) = child.try_wait().expect("try_wait") {
        panic!(
            "the idle guest's run ended ({status}): {}",
            stderr(&mut child)
        );
    }
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: kill has no memory-safety preconditions; the child is not
    // reaped yet, so the pid is still its own.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill {pid}");
    let status = wait_at_most(&mut child, DEADLINE);
    let err = stderr(&mut child);
    assert_eq!(status.and_then(|s| s.code()), Some(143), "{err}");
    assert!(!err.contains("halted every CPU"), "{err}");
}
