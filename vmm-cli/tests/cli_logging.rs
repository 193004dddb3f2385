//! Diagnostics: `RUST_LOG`, `-v`/`-q` and `--log-file` decide what of the
//! VMM's `tracing` events is written, always to stderr or the log file and
//! never to stdout, where the guest's serial output goes.

use std::process::{Command, Output};

use hm_vmx::testing::kvm_available;

/// The event vmm-core logs (at info) on every VM state change.
const STATE_EVENT: &str = "vmm_core::sync::vmstate: changing the VM state";

/// `vmm ARGS` with `RUST_LOG` set to `rust_log` (or removed).
fn vmm(args: &[&str], rust_log: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm"));
    cmd.args(args);
    match rust_log {
        Some(v) => cmd.env("RUST_LOG", v),
        None => cmd.env_remove("RUST_LOG"),
    };
    let out = cmd.output().expect("vmm starts");
    assert_eq!(
        out.status.code(),
        Some(0),
        "vmm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn rust_log_debug_shows_vmm_core_events_on_stderr_only() {
    if !kvm_available("rust_log_debug_shows_vmm_core_events_on_stderr_only") {
        return;
    }
    let out = vmm(&["run"], Some("debug"));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stderr.contains(STATE_EVENT), "{stderr}");
    assert!(stderr.contains("to=\"RUNNING\""), "{stderr}");
    assert!(
        !stdout.contains("vmm_core"),
        "a log line on stdout: {stdout}"
    );
    assert!(stdout.contains("vmm demo: real mode"), "{stdout}");
}

#[test]
fn flags_pick_the_level_and_rust_log_overrides_them() {
    if !kvm_available("flags_pick_the_level_and_rust_log_overrides_them") {
        return;
    }
    assert!(!text(&vmm(&["run"], None).stderr).contains(STATE_EVENT));
    assert!(text(&vmm(&["-v", "run"], None).stderr).contains(STATE_EVENT));
    assert!(text(&vmm(&["run", "-vv"], None).stderr).contains(STATE_EVENT));
    assert!(!text(&vmm(&["-q", "run"], Some("")).stderr).contains(STATE_EVENT));
    let filtered = vmm(&["-v", "run"], Some("vmm_core::sync=warn"));
    assert!(!text(&filtered.stderr).contains(STATE_EVENT));
}

#[test]
fn log_file_takes_the_events_instead_of_stderr() {
    if !kvm_available("log_file_takes_the_events_instead_of_stderr") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("vmm.log");
    let out = vmm(&["run", "--log-file", log.to_str().unwrap()], Some("info"));
    assert!(!text(&out.stderr).contains(STATE_EVENT));
    let written = std::fs::read_to_string(&log).unwrap();
    assert!(written.contains(STATE_EVENT), "{written}");
    assert!(!written.contains('\u{1b}'), "colour codes in the file");
}

#[test]
fn bad_rust_log_and_unwritable_log_file_are_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["doctor"])
        .env("RUST_LOG", "vmm_core=nonsense")
        .output()
        .unwrap();
    // A usage error (the README's exit-status table).
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("RUST_LOG"),
        "{}",
        text(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["--log-file", "/nonexistent/dir/vmm.log", "doctor"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("log file"),
        "{}",
        text(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["-q", "-v", "doctor"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "-q and -v together are accepted");
}
