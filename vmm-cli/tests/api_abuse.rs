//! The control API under abuse: clients that never finish their requests,
//! floods of idle connections, and a client command against a server that
//! never answers. `vmm run --guest idle --api-socket PATH` runs in a child
//! process; its descriptors and memory are read from `/proc/PID`.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hm_vmx::testing::kvm_available;
use vmm_cli::api::{BODY_TIMEOUT, HEADER_TIMEOUT, MAX_CONNECTIONS};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");
/// Generous: the test host is shared and slow; polls end as soon as they succeed.
const DEADLINE: Duration = Duration::from_secs(30);
/// Abusive connections opened at once: several times what the API keeps.
const ABUSERS: usize = 2000;

/// `vmm run --guest idle` serving its API at `dir/api.sock`; killed on drop.
struct IdleVm {
    child: Child,
    socket: PathBuf,
}

impl Drop for IdleVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl IdleVm {
    fn start(dir: &Path) -> IdleVm {
        let socket = dir.join("api.sock");
        let child = Command::new(VMM)
            .args(["run", "--guest", "idle", "--api-socket"])
            .arg(&socket)
            .arg("--serial")
            .arg(dir.join("serial"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("vmm starts");
        let mut vm = IdleVm { child, socket };
        poll("the API to answer", || {
            if let Some(status) = vm.child.try_wait().unwrap() {
                panic!("vmm run exited early ({status})");
            }
            vm.client(&["status"]).status.success()
        });
        vm
    }

    /// Runs `vmm ARGS --api-socket SOCKET`.
    fn client(&self, args: &[&str]) -> Output {
        Command::new(VMM)
            .args(args)
            .arg("--api-socket")
            .arg(&self.socket)
            .output()
            .expect("vmm client starts")
    }

    /// Runs a client command that must succeed; its stdout.
    fn client_ok(&self, args: &[&str]) -> String {
        let out = self.client(args);
        assert!(
            out.status.success(),
            "vmm {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The number of open descriptors of `vmm run`.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .expect("/proc/PID/fd of vmm run")
            .count()
    }

    /// The resident memory of `vmm run`, KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// A connection with its read timeout set.
    fn connect(&self, timeout: Duration) -> UnixStream {
        let stream = UnixStream::connect(&self.socket).expect("the API accepts");
        stream.set_read_timeout(Some(timeout)).unwrap();
        stream
    }
}

/// Polls `probe` until it is true; panics with `what` after the deadline.
fn poll(what: &str, mut probe: impl FnMut() -> bool) {
    let start = Instant::now();
    while !probe() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads until the server closes the connection (or the read timeout
/// passes, which fails the test): what the server said.
fn read_until_closed(stream: &mut UnixStream, what: &str) -> String {
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => String::from_utf8_lossy(&answer).into_owned(),
        Err(e) => panic!(
            "{what}: the server kept the connection open ({e}); it said {:?}",
            String::from_utf8_lossy(&answer)
        ),
    }
}

#[test]
fn requests_that_never_finish_are_closed_after_their_timeouts() {
    const TEST: &str = "requests_that_never_finish_are_closed_after_their_timeouts";
    if !kvm_available(TEST) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vm = IdleVm::start(dir.path());
    let patience = HEADER_TIMEOUT + BODY_TIMEOUT + Duration::from_secs(10);
    let start = Instant::now();
    let mut slow_body = vm.connect(patience);
    slow_body
        .write_all(b"PUT /v1/vm/state HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    let mut slow_headers = vm.connect(patience);
    slow_headers
        .write_all(b"GET /v1/vm HTTP/1.1\r\nHost: loc")
        .unwrap();
    let mut silent = vm.connect(patience);

    let answer = read_until_closed(&mut slow_body, "a body that never arrives");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    read_until_closed(&mut slow_headers, "headers that never end");
    read_until_closed(&mut silent, "a client that never says anything");
    assert!(
        start.elapsed() >= BODY_TIMEOUT.min(HEADER_TIMEOUT),
        "closed before the timeouts: {:?}",
        start.elapsed()
    );
    // The VM and its API are unharmed.
    assert!(vm.client_ok(&["status"]).contains("state:"));
}

#[test]
fn a_flood_of_idle_connections_neither_locks_out_clients_nor_keeps_descriptors() {
    const TEST: &str =
        "a_flood_of_idle_connections_neither_locks_out_clients_nor_keeps_descriptors";
    if !kvm_available(TEST) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vm = IdleVm::start(dir.path());
    vm.client_ok(&["status"]);
    let fds = vm.fds();
    let rss = vm.rss_kib();

    // Half the abusers only connect, half send headers and the start of a
    // body that never ends.
    let abusers: Vec<UnixStream> = (0..ABUSERS)
        .map(|i| {
            let mut stream = vm.connect(DEADLINE);
            if i % 2 == 1 {
                stream
                    .write_all(
                        b"PUT /v1/balloon HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n{",
                    )
                    .unwrap();
            }
            stream
        })
        .collect();
    // A client with a real request is served all the same, promptly.
    let start = Instant::now();
    assert!(vm.client_ok(&["status"]).contains("state:"));
    assert!(
        start.elapsed() < HEADER_TIMEOUT,
        "served only after {:?}: it waited for abusers to time out",
        start.elapsed()
    );
    let held = vm.fds();
    assert!(
        held <= fds + MAX_CONNECTIONS + 8,
        "{held} descriptors open with {ABUSERS} abusers connected (baseline {fds})"
    );

    drop(abusers);
    poll("the abusers' descriptors to be closed", || {
        vm.fds() <= fds + 2
    });
    vm.client_ok(&["status"]);
    let after = vm.rss_kib();
    eprintln!("{TEST}: RSS {rss} KiB before, {after} KiB after; descriptors {fds}, {held} at peak");
    assert!(
        after <= rss + 8 * 1024,
        "RSS grew from {rss} KiB to {after} KiB after the abuse"
    );
}

#[test]
fn a_client_command_gives_up_on_a_server_that_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("mute.sock");
    // Connections complete in the kernel's backlog; nobody ever reads them.
    let _mute = UnixListener::bind(&socket).unwrap();
    let socket = socket.to_str().unwrap();
    let file = dir.path().join("vm.sav");
    for args in [
        &["status", "--api-socket", socket, "--timeout", "1"][..],
        &["pause", "--api-socket", socket, "--timeout", "1", "--json"],
        &[
            "save",
            file.to_str().unwrap(),
            "--api-socket",
            socket,
            "--timeout",
            "1",
        ],
    ] {
        let start = Instant::now();
        let out = Command::new(VMM).args(args).output().expect("vmm starts");
        let took = start.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "vmm {args:?} succeeded");
        assert!(
            stderr.contains("did not answer within 1s"),
            "vmm {args:?}: {stderr}"
        );
        assert!(took < Duration::from_secs(8), "vmm {args:?} took {took:?}");
    }
    let out = Command::new(VMM)
        .args(["status", "--api-socket", socket, "--timeout", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("more than 0 seconds"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
