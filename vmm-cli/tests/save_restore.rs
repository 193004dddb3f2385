//! `vmm save` and `vmm run --restore` end to end: the counter guest runs in
//! one `vmm run` process, is saved through the control API (plain and
//! live) and continues in a new process, where its own checks decide.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use hm_vmx::testing::kvm_available;

const VMM: &str = env!("CARGO_BIN_EXE_vmm");
/// Generous: the test host is shared and slow; polls end as soon as they succeed.
const DEADLINE: Duration = Duration::from_secs(40);

/// A `vmm` child; killed on drop if still running.
struct Vmm {
    child: Child,
    what: String,
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Vmm {
    fn spawn(what: &str, args: &[&str], stderr: &Path) -> Vmm {
        let child = Command::new(VMM)
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(stderr).unwrap())
            .spawn()
            .expect("vmm starts");
        Vmm {
            child,
            what: what.to_owned(),
        }
    }

    /// Waits for the child to exit (killing it after the deadline).
    fn wait(&mut self, diagnostics: impl Fn() -> String) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!("{} did not exit in time:\n{}", self.what, diagnostics());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Polls until `path` contains `needle`; panics with `what` after the deadline.
fn wait_for_text(path: &Path, needle: &str, child: &mut Vmm) {
    let start = Instant::now();
    while !read(path).contains(needle) {
        if let Some(status) = child.child.try_wait().unwrap() {
            panic!("vmm exited early ({status}); output:\n{}", read(path));
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {needle:?}; output:\n{}",
            read(path)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn client(args: &[&str]) -> Output {
    Command::new(VMM)
        .args(args)
        .output()
        .expect("vmm client runs")
}

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
    );
    wait_for_text(&serial, "tick 0x0040", &mut vm);
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
    let saved = client(&save);
    let said = String::from_utf8_lossy(&saved.stdout).into_owned();
    assert!(
        saved.status.success(),
        "vmm save failed: {said}{}",
        String::from_utf8_lossy(&saved.stderr)
    );
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
    let mut restored = Vmm::spawn("vmm run --restore", &args, &stderr2);
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
    );
    wait_for_text(&target_stderr, "waiting for a teleport on ", &mut target);
    let text = read(&target_stderr);
    let address = text
        .split("waiting for a teleport on ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap()
        .to_owned();

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
    );
    wait_for_text(&serial, "tick 0x0040", &mut source);
    let sent = client(&[
        "teleport",
        &address,
        "--api-socket",
        socket.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&sent.stdout).into_owned();
    assert!(
        sent.status.success(),
        "vmm teleport failed: {said}{}",
        String::from_utf8_lossy(&sent.stderr)
    );
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
