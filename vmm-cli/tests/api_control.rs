//! The control API end to end: `vmm run --guest idle --api-socket PATH` in a
//! child process, driven by the `vmm` client subcommands and by `curl
//! --unix-socket` (a client this project did not write).

#[allow(dead_code)] // shared by the end-to-end tests; this one uses a few
mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use hm_vmx::testing::kvm_available;
use serde_json::Value;

const VMM: &str = env!("CARGO_BIN_EXE_vmm");
/// Generous: the test host is shared and slow; polls end as soon as they succeed.
const DEADLINE: Duration = Duration::from_secs(20);

/// Whether curl is there (see [`support::tool_available`]).
fn curl_available(test: &str) -> bool {
    support::tool_available("curl", &["--version"], test)
}

/// Polls `probe` until it gives a value; panics with `what` after the deadline.
fn poll<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `vmm run` child serving the API; killed on drop if still running.
struct VmProcess {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl VmProcess {
    /// Starts the idle guest with its API at `dir/api.sock` and waits until
    /// the API answers and the VM is powered on (the API serves from
    /// before power-on: the VM is `CREATED` for a moment).
    fn start(dir: tempfile::TempDir) -> Self {
        Self::start_with(dir, &[])
    }

    /// Like [`start`](Self::start), with more `vmm run` options.
    fn start_with(dir: tempfile::TempDir, options: &[&str]) -> Self {
        let socket = dir.path().join("api.sock");
        let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
        let child = Command::new(VMM)
            .args(["run", "--guest", "idle", "--api-socket"])
            .arg(&socket)
            .arg("--serial")
            .arg(dir.path().join("serial"))
            .args(options)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("vmm starts");
        let mut vm = VmProcess { child, socket, dir };
        poll("the API socket to accept connections", || {
            if let Some(status) = vm.child.try_wait().unwrap() {
                panic!("vmm run exited early ({status}): {}", vm.stderr());
            }
            UnixStream::connect(&vm.socket).ok().map(drop)
        });
        // A connection can succeed before `vmm run` listens (a test that
        // left a stale socket behind had a listener whose descriptor a child
        // another test thread forked held until its exec), so a refused
        // status request here only means "not yet".
        poll("the VM to run", || {
            if let Some(status) = vm.child.try_wait().unwrap() {
                panic!("vmm run exited early ({status}): {}", vm.stderr());
            }
            let out = vm.vmm(&["status", "--json"]);
            let status = String::from_utf8_lossy(&out.stdout);
            (out.status.success() && json(&status)["state"] == "RUNNING").then_some(())
        });
        vm
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Runs `vmm ARGS --api-socket SOCKET`.
    fn vmm(&self, args: &[&str]) -> Output {
        Command::new(VMM)
            .args(args)
            .arg("--api-socket")
            .arg(&self.socket)
            .output()
            .expect("vmm client starts")
    }

    /// Runs a client subcommand that must succeed; returns its stdout.
    fn vmm_ok(&self, args: &[&str]) -> String {
        let out = self.vmm(args);
        assert!(
            out.status.success(),
            "vmm {args:?} failed: {}\nserver: {}",
            String::from_utf8_lossy(&out.stderr),
            self.stderr()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn curl(&self, method: &str, target: &str, body: Option<&[u8]>) -> (u16, String) {
        curl(&self.socket, method, target, body)
    }

    fn state(&self) -> String {
        let (status, body) = self.curl("GET", "/v1/vm", None);
        assert_eq!(status, 200, "{body}");
        json(&body)["state"].as_str().unwrap().to_owned()
    }

    fn uart_writes(&self) -> u64 {
        let out = self.vmm_ok(&["stats", "/IOM/Port/uart/Writes", "--json"]);
        json(&out)["samples"][0]["value"].as_u64().unwrap()
    }

    /// Waits for `vmm run` to exit.
    fn wait_exit(&mut self) -> ExitStatus {
        poll("vmm run to exit", || self.child.try_wait().unwrap())
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `curl --unix-socket`: the status code and the body.
fn curl(socket: &Path, method: &str, target: &str, body: Option<&[u8]>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "20",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ])
    .arg("--unix-socket")
    .arg(socket)
    .arg(format!("http://localhost{target}"));
    if body.is_some() {
        cmd.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl starts");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(body.unwrap_or_default()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "curl {method} {target} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

#[test]
fn control_a_running_vm_with_the_vmm_client_and_curl() {
    const TEST: &str = "control_a_running_vm_with_the_vmm_client_and_curl";
    if !kvm_available(TEST) || !curl_available(TEST) {
        return;
    }
    // A stale socket (nobody listening) in the way is replaced.
    let dir = tempfile::tempdir().unwrap();
    drop(UnixListener::bind(dir.path().join("api.sock")).unwrap());
    let mut vm = VmProcess::start(dir);

    let mode = std::fs::metadata(&vm.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    let status = json(&vm.vmm_ok(&["status", "--json"]));
    assert_eq!(status["state"], "RUNNING");
    assert_eq!(status["config"]["cpus"], 1);
    assert_eq!(status["config"]["boot"], "guest idle");
    assert!(vm.vmm_ok(&["status"]).contains("state:    RUNNING"));

    // Pause: the state says so and the guest's heartbeats stop.
    assert!(vm.vmm_ok(&["pause"]).contains("SUSPENDED"));
    assert_eq!(vm.state(), "SUSPENDED");
    let paused_at = vm.uart_writes();
    std::thread::sleep(Duration::from_millis(700)); // more than one heartbeat
    assert_eq!(
        vm.uart_writes(),
        paused_at,
        "a paused guest wrote to the UART"
    );

    // Resume: heartbeats go on, the counters advance.
    assert!(vm.vmm_ok(&["resume"]).contains("RUNNING"));
    assert_eq!(vm.state(), "RUNNING");
    let first = vm.uart_writes();
    poll("UART writes to grow after resume", || {
        (vm.uart_writes() > first).then_some(())
    });

    // Reset: the UART's counters start again from zero (the guest writes
    // one heartbeat in about half a second, far fewer than it has so far).
    let before = vm.uart_writes();
    let said = json(&vm.vmm_ok(&["stats", "--reset", "/IOM/Port/uart/*", "--json"]));
    assert!(said["reset"].as_u64().unwrap() >= 2, "{said}");
    let after = vm.uart_writes();
    assert!(
        after < before,
        "{after} UART writes after a reset, {before} before"
    );
    assert!(
        vm.vmm_ok(&["stats", "--reset", "/NoSuch/*"])
            .contains("reset 0 statistics")
    );
    let (status, body) = vm.curl("GET", "/v1/stats?pattern=/HM/Exit/*", None);
    assert_eq!(status, 200);
    let exits = json(&body)["samples"].as_array().unwrap().len();
    assert!(exits > 0, "{body}");

    // Every statistics format, through curl and through the client.
    for (format, needle) in [
        ("text", "/IOM/Port/uart/Writes"),
        ("prometheus", "stam_IOM__Port__uart__Writes_total"),
        ("xml", "name=\"/IOM/Port/uart/Writes\""),
        ("json", "\"/IOM/Port/uart/Writes\""),
    ] {
        let (status, body) = vm.curl(
            "GET",
            &format!("/v1/stats?pattern=/IOM/Port/uart/*&format={format}"),
            None,
        );
        assert_eq!(status, 200, "{format}: {body}");
        assert!(body.contains(needle), "{format}: {body}");
        let out = vm.vmm_ok(&["stats", "/IOM/Port/uart/*", "--format", format]);
        assert!(out.contains(needle), "vmm stats --format {format}: {out}");
    }

    // Info handlers.
    let help = vm.vmm_ok(&["info", "help"]);
    assert!(
        help.contains("fflags") && help.contains("cpumguest"),
        "{help}"
    );
    assert!(vm.vmm_ok(&["info", "fflags"]).contains("CPU 0"));
    let (status, body) = vm.curl("GET", "/v1/info/fflags", None);
    assert_eq!(status, 200);
    assert!(json(&body)["output"].as_str().unwrap().contains("CPU 0"));
    let (status, body) = vm.curl("GET", "/v1/info/exits?args=all", None);
    assert_eq!(status, 200, "{body}");
    let (_, body) = vm.curl("GET", "/v1/info", None);
    assert!(
        json(&body)["handlers"]
            .as_array()
            .unwrap()
            .contains(&Value::from("fflags"))
    );

    // Several clients at once.
    std::thread::scope(|scope| {
        let clients: Vec<_> = (0..6)
            .map(|i| {
                let vm = &vm;
                scope.spawn(move || {
                    if i % 2 == 0 {
                        vm.curl("GET", "/v1/info/fflags", None).0
                    } else {
                        vm.curl("GET", "/v1/vm", None).0
                    }
                })
            })
            .collect();
        for client in clients {
            assert_eq!(client.join().unwrap(), 200);
        }
    });

    // Reset keeps the VM running; the guest starts over.
    assert!(vm.vmm_ok(&["reset"]).contains("RUNNING"));
    assert_eq!(vm.state(), "RUNNING");

    // Power off ends `vmm run` cleanly and removes the socket.
    assert!(vm.vmm_ok(&["poweroff"]).contains("OFF"));
    let exit = vm.wait_exit();
    assert!(exit.success(), "vmm run: {exit}: {}", vm.stderr());
    assert!(!vm.socket.exists(), "the socket file is still there");
}

/// Method, target, body, expected status, expected error code.
type BadRequest<'a> = (&'a str, &'a str, Option<&'a [u8]>, u16, &'a str);

#[test]
fn malformed_requests_get_4xx_json_errors_and_the_vm_keeps_running() {
    const TEST: &str = "malformed_requests_get_4xx_json_errors_and_the_vm_keeps_running";
    if !kvm_available(TEST) || !curl_available(TEST) {
        return;
    }
    let mut vm = VmProcess::start(tempfile::tempdir().unwrap());
    let big = vec![b' '; 100 * 1024];
    let cases: [BadRequest; 13] = [
        ("PUT", "/v1/vm/state", Some(b"{nope"), 400, "bad_request"),
        ("PUT", "/v1/vm/state", Some(b""), 400, "bad_request"),
        (
            "PUT",
            "/v1/vm/state",
            Some(br#"{"action":"explode"}"#),
            400,
            "bad_request",
        ),
        ("GET", "/v1/nope", None, 404, "not_found"),
        ("GET", "/", None, 404, "not_found"),
        ("DELETE", "/v1/vm", None, 405, "method_not_allowed"),
        ("POST", "/v1/stats", Some(b"{}"), 405, "method_not_allowed"),
        ("GET", "/v1/info/nosuch", None, 404, "not_found"),
        ("GET", "/v1/stats?format=yaml", None, 400, "bad_request"),
        (
            "PUT",
            "/v1/vm/state",
            Some(br#"{"action":"resume"}"#),
            409,
            "conflict",
        ),
        (
            "PUT",
            "/v1/vm/save",
            Some(br#"{"path":"relative.sav"}"#),
            400,
            "bad_request",
        ),
        (
            "PUT",
            "/v1/balloon",
            Some(br#"{"size_mib":-1}"#),
            400,
            "bad_request",
        ),
        ("PUT", "/v1/vm/state", Some(&big), 413, "payload_too_large"),
    ];
    for (method, target, body, status, code) in cases {
        let (got, answer) = vm.curl(method, target, body);
        assert_eq!(got, status, "{method} {target}: {answer}");
        let error = &json(&answer)["error"];
        assert_eq!(error["code"], code, "{method} {target}: {answer}");
        assert!(!error["message"].as_str().unwrap().is_empty());
        assert_eq!(vm.state(), "RUNNING", "after {method} {target}");
    }

    // Not HTTP at all: the server answers 400 (or hangs up) and keeps serving.
    let mut raw = UnixStream::connect(&vm.socket).unwrap();
    raw.set_read_timeout(Some(DEADLINE)).unwrap();
    raw.write_all(b"\x00\x01garbage\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    // A client that connects and hangs up without a word.
    drop(UnixStream::connect(&vm.socket).unwrap());
    assert_eq!(vm.state(), "RUNNING");

    // The client reports refusals on stderr with a failing exit status.
    for (args, needle) in [
        (&["resume"][..], "cannot resume"),
        (&["info", "nosuch"][..], "unknown info handler"),
        (&["save", "/nonexistent-dir/vm.sav"][..], "cannot save"),
    ] {
        let out = vm.vmm(args);
        assert!(!out.status.success(), "vmm {args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "vmm {args:?}: {stderr}");
    }
    // ... and with --json prints the API's error object.
    let out = vm.vmm(&["save", "/nonexistent-dir/vm.sav", "--json"]);
    assert!(!out.status.success());
    let error = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(error["error"]["status"], 500);

    // Power off through curl: `vmm run` exits 0 and the socket is gone.
    let (status, body) = vm.curl("PUT", "/v1/vm/state", Some(br#"{"action":"power_off"}"#));
    assert_eq!((status, json(&body)["state"].as_str()), (200, Some("OFF")));
    let exit = vm.wait_exit();
    assert!(exit.success(), "vmm run: {exit}: {}", vm.stderr());
    assert!(!vm.socket.exists());
}

#[test]
fn a_socket_in_use_or_a_file_in_the_way_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let _live = UnixListener::bind(&socket).unwrap();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"keep me").unwrap();
    for (path, needle) in [(&socket, "in use"), (&plain, "not a socket")] {
        let out = Command::new(VMM)
            .args(["run", "--guest", "idle", "--api-socket"])
            .arg(path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{stderr}");
        assert!(path.exists(), "{} was removed", path.display());
    }
    assert_eq!(std::fs::read(&plain).unwrap(), b"keep me");
}

#[test]
fn client_without_a_server_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(VMM)
        .args(["status", "--api-socket"])
        .arg(dir.path().join("nobody.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot connect to the API socket"),
        "{stderr}"
    );
}

#[test]
fn page_sharing_scans_run_while_the_vm_runs() {
    if !kvm_available("page_sharing_scans_run_while_the_vm_runs") {
        return;
    }
    let mut vm = VmProcess::start_with(tempfile::tempdir().unwrap(), &["--page-sharing", "1"]);
    poll("a page-sharing scan", || {
        let out = vm.vmm_ok(&["stats", "/GMM/cShareScans", "--json"]);
        (json(&out)["samples"][0]["value"].as_u64().unwrap_or(0) >= 1).then_some(())
    });
    vm.vmm_ok(&["poweroff"]);
    assert!(vm.wait_exit().success(), "{}", vm.stderr());
}

#[test]
fn the_balloon_follows_its_target_through_the_api() {
    const TEST: &str = "the_balloon_follows_its_target_through_the_api";
    if !kvm_available(TEST) || !curl_available(TEST) {
        return;
    }
    let mut vm = VmProcess::start(tempfile::tempdir().unwrap());
    let (status, body) = vm.curl("PUT", "/v1/balloon", Some(br#"{"size_mib":4}"#));
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["target_mib"], 4, "{body}");
    // The idle guest's balloon driver gives the pages at its next heartbeat.
    poll("a 4 MiB balloon", || {
        let (_, body) = vm.curl("GET", "/v1/balloon", None);
        (json(&body)["size_mib"] == 4).then_some(())
    });
    let out = vm.vmm_ok(&["stats", "/PGM/Page/cBalloonedPages", "--json"]);
    assert_eq!(json(&out)["samples"][0]["value"], 1024, "{out}");
    vm.vmm_ok(&["poweroff"]);
    assert!(vm.wait_exit().success(), "{}", vm.stderr());
}

#[test]
fn the_vm_lists_its_virtio_devices_and_info_virtio_shows_them() {
    const TEST: &str = "the_vm_lists_its_virtio_devices_and_info_virtio_shows_them";
    if !kvm_available(TEST) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let vsock = dir.path().join("v.sock");
    let disk_arg = format!("{},ro", disk.display());
    let vsock_arg = format!("cid=5,socket={}", vsock.display());
    let vm = VmProcess::start_with(dir, &["--disk", &disk_arg, "--vsock", &vsock_arg, "--rng"]);
    let status = json(&vm.vmm_ok(&["status", "--json"]));
    let devices = status["config"]["devices"].as_array().unwrap();
    let listed: Vec<(&str, &str, &str)> = devices
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap(),
                d["kind"].as_str().unwrap(),
                d["pci"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("blk0", "block", "0000:00:01.0"),
            ("vsock0", "vsock", "0000:00:02.0"),
            ("rng0", "rng", "0000:00:03.0"),
        ]
    );
    assert_eq!(devices[0]["backend"], disk_arg.as_str());
    assert_eq!(devices[1]["backend"], vsock_arg.as_str());
    // The devices are on the bus, with their statistics.
    let info = vm.vmm_ok(&["info", "virtio"]);
    for name in ["blk0", "vsock0", "rng0"] {
        assert!(info.contains(name), "info virtio lacks {name}:\n{info}");
    }
    let stats = vm.vmm_ok(&["stats", "/Devices/blk0/*"]);
    assert!(stats.contains("/Devices/blk0/cReads"), "{stats}");
}
