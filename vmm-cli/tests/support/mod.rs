//! What the end-to-end tests that drive `vmm` as a child process share: a
//! child that is killed on drop, waits with deadlines, and the client calls.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Whether `program` runs (`program PROBE_ARGS` succeeds); says so loudly
/// when not, naming `what` it leaves unchecked, and fails under `CI=true`
/// (`.ci/run` installs it).
#[allow(dead_code)] // not every test binary needs a tool
pub fn tool_available(program: &str, probe_args: &[&str], what: &str) -> bool {
    let found = Command::new(program)
        .args(probe_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{what}: {program} is required under CI=true (.ci/run installs it) but is not installed"
        );
        eprintln!(
            "!!! NOT CHECKED {what}: {program} is not installed (apt-get install {program}) !!!"
        );
    }
    found
}

/// The `vmm` binary under test.
pub const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// A `vmm` child; killed on drop if still running.
pub struct Vmm {
    /// The process (to send it signals).
    pub child: Child,
    what: String,
    deadline: Duration,
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
    /// Starts `vmm ARGS` with its stdout and stderr both in `output` and
    /// no stdin (the console would take the terminal the tests run in);
    /// every wait on it gives up after `deadline`.
    pub fn spawn(what: &str, args: &[&str], output: &Path, deadline: Duration) -> Vmm {
        let file = std::fs::File::create(output).unwrap();
        let mut command = Command::new(VMM);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap());
        Vmm::start(what, command.stderr(file), deadline)
    }

    /// Starts `command` (`vmm` with its arguments and output set up).
    pub fn start(what: &str, command: &mut Command, deadline: Duration) -> Vmm {
        Vmm {
            child: command.spawn().expect("vmm starts"),
            what: what.to_owned(),
            deadline,
        }
    }

    /// Waits for the child to exit (killing it after the deadline and
    /// panicking with `diagnostics`).
    pub fn wait(&mut self, diagnostics: impl Fn() -> String) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > self.deadline {
                let _ = self.child.kill();
                panic!("{} did not exit in time:\n{}", self.what, diagnostics());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until `path` contains `needle`; panics if the child exits
    /// first or after the deadline.
    pub fn wait_for_text(&mut self, path: &Path, needle: &str) {
        self.wait_until(path, needle, |text| text.contains(needle));
    }

    /// Polls until `path` holds a whole line that starts with `prefix`
    /// (the child may write a line in several pieces) and returns the rest
    /// of that line.
    pub fn wait_for_line(&mut self, path: &Path, prefix: &str) -> String {
        let rest_of_line = |text: &str| {
            let (_, rest) = text.split_once(prefix)?;
            rest.split_once('\n').map(|(line, _)| line.to_owned())
        };
        self.wait_until(path, prefix, |text| rest_of_line(text).is_some());
        rest_of_line(&read(path)).expect("the line stays in the file")
    }

    /// Polls until `done` holds for the text of `path` (`what`, for the
    /// message); panics if the child exits first or after the deadline.
    pub fn wait_until(&mut self, path: &Path, what: &str, done: impl Fn(&str) -> bool) {
        let start = Instant::now();
        while !done(&read(path)) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited early ({status}); output:\n{}",
                    self.what,
                    read(path)
                );
            }
            assert!(
                start.elapsed() < self.deadline,
                "{}: timed out waiting for {what:?}; output:\n{}",
                self.what,
                read(path)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The file's text, or nothing if it cannot be read (yet).
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Runs `vmm ARGS` to completion (a client call: `vmm save`, `vmm teleport`).
pub fn client(args: &[&str]) -> Output {
    Command::new(VMM)
        .args(args)
        .output()
        .expect("vmm client runs")
}

/// Runs a client call that must succeed and returns its stdout.
pub fn client_ok(args: &[&str]) -> String {
    let out = client(args);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "vmm {} failed: {said}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    said
}

/// Where a `vmm run --incoming 127.0.0.1:0` target listens, read from its
/// output once it has said so in a whole line.
pub fn incoming_address(target: &mut Vmm, output: &Path) -> String {
    target.wait_for_line(output, "waiting for a teleport on ")
}
