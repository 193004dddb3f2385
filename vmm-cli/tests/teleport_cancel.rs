//! `vmm teleport` to a target that accepts the connection and never reads
//! or answers: the VM waits, stopped, for the target's confirmation;
//! `vmm teleport --cancel` ends that wait and the VM runs on, and
//! `vmm poweroff` during a teleport powers the VM off.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hm_vmx::testing::kvm_available;
use support::{Vmm, client, client_ok, incoming_address, read};

/// Generous: the test host is shared and slow; polls end as soon as they succeed.
const DEADLINE: Duration = Duration::from_secs(40);
/// Well below the teleport's own stall timeout (30 s): only a cancel or a
/// power-off ends a stalled teleport this soon.
const PROMPT: Duration = Duration::from_secs(10);

/// A teleport target that accepts connections and holds them without
/// reading a byte until dropped.
struct SilentTarget {
    address: String,
    release: mpsc::Sender<()>,
}

impl SilentTarget {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (release, released) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            let until = Instant::now() + Duration::from_secs(120);
            while released.try_recv() == Err(mpsc::TryRecvError::Empty) && Instant::now() < until {
                if let Ok((stream, _)) = listener.accept() {
                    held.push(stream);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        SilentTarget { address, release }
    }
}

impl Drop for SilentTarget {
    fn drop(&mut self) {
        let _ = self.release.send(());
    }
}

fn api(socket: &Path) -> [&str; 2] {
    ["--api-socket", socket.to_str().unwrap()]
}

fn state(socket: &Path) -> String {
    let out = client_ok(&["status", "--json", api(socket)[0], api(socket)[1]]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("status is JSON");
    v["state"].as_str().unwrap_or("?").to_owned()
}

fn wait_for_state(socket: &Path, wanted: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = state(socket);
        if now == wanted {
            return;
        }
        assert!(Instant::now() < deadline, "still {now}, never {wanted}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn teleport_in_background(socket: &Path, address: &str) -> JoinHandle<Output> {
    let (socket, address) = (socket.to_str().unwrap().to_owned(), address.to_owned());
    std::thread::spawn(move || client(&["teleport", &address, "--api-socket", &socket]))
}

fn heartbeats(serial: &Path) -> usize {
    read(serial).matches("heartbeat").count()
}

/// `vmm run --guest idle --mem 16M --api-socket DIR/NAME.sock` (plus
/// `extra`), past its first heartbeat; its serial output and stderr go to
/// DIR/NAME.serial and DIR/NAME.stderr.
fn idle_vm(dir: &Path, name: &str, extra: &[&str]) -> (Vmm, PathBuf, PathBuf, PathBuf) {
    let socket = dir.join(format!("{name}.sock"));
    let serial = dir.join(format!("{name}.serial"));
    let stderr = dir.join(format!("{name}.stderr"));
    let mut args = vec![
        "run",
        "--guest",
        "idle",
        "--mem",
        "16M",
        "--api-socket",
        socket.to_str().unwrap(),
        "--serial",
        serial.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let vm = Vmm::spawn(&format!("vmm run ({name})"), &args, &stderr, DEADLINE);
    (vm, socket, serial, stderr)
}

fn wait_for_heartbeats(serial: &Path, n: usize) {
    let deadline = Instant::now() + DEADLINE;
    while heartbeats(serial) < n {
        assert!(Instant::now() < deadline, "{}", read(serial));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_cancelled_teleport_lets_the_vm_run_on_and_teleport_again() {
    if !kvm_available("a_cancelled_teleport_lets_the_vm_run_on_and_teleport_again") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (mut vm, socket, serial, stderr) = idle_vm(dir, "source", &[]);
    vm.wait_for_text(&serial, "heartbeat");
    let silent = SilentTarget::start();

    // The state fits in the socket buffers: the VM waits, stopped, for a
    // confirmation that never comes.
    let teleport = teleport_in_background(&socket, &silent.address);
    wait_for_state(&socket, "SUSPENDED_LS");
    let paused = client(&["pause", api(&socket)[0], api(&socket)[1]]);
    let said = String::from_utf8_lossy(&paused.stderr);
    assert!(
        !paused.status.success() && said.contains("teleport is in progress"),
        "{said}"
    );
    let start = Instant::now();
    let said = client_ok(&["teleport", "--cancel", api(&socket)[0], api(&socket)[1]]);
    assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
    assert!(said.contains("teleport cancelled; state RUNNING"), "{said}");
    let out = teleport.join().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("cancelled"),
        "{said}"
    );
    wait_for_heartbeats(&serial, heartbeats(&serial) + 2);
    let again = client(&["teleport", "--cancel", api(&socket)[0], api(&socket)[1]]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no teleport is in progress"),
        "{again:?}"
    );

    // Intact: it teleports to a real target, where it runs on.
    let (mut target, target_socket, target_serial, target_stderr) =
        idle_vm(dir, "target", &["--incoming", "127.0.0.1:0"]);
    let address = incoming_address(&mut target, &target_stderr);
    let said = client_ok(&["teleport", &address, api(&socket)[0], api(&socket)[1]]);
    assert!(said.contains("VM teleported"), "{said}");
    let status = vm.wait(|| read(&stderr));
    assert!(status.success(), "source: {status}: {}", read(&stderr));
    target.wait_for_text(&target_serial, "heartbeat");
    assert!(!read(&target_serial).contains("started"));
    client_ok(&["poweroff", api(&target_socket)[0], api(&target_socket)[1]]);
    let status = target.wait(|| read(&target_stderr));
    assert!(
        status.success(),
        "target: {status}: {}",
        read(&target_stderr)
    );
}

#[test]
fn power_off_during_a_stalled_teleport_powers_the_vm_off() {
    if !kvm_available("power_off_during_a_stalled_teleport_powers_the_vm_off") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut vm, socket, serial, stderr) = idle_vm(dir.path(), "source", &[]);
    vm.wait_for_text(&serial, "heartbeat");
    let silent = SilentTarget::start();
    let teleport = teleport_in_background(&socket, &silent.address);
    wait_for_state(&socket, "SUSPENDED_LS");
    let start = Instant::now();
    let said = client_ok(&["poweroff", api(&socket)[0], api(&socket)[1]]);
    assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
    assert!(said.contains("powered off"), "{said}");
    let status = vm.wait(|| read(&stderr));
    assert!(status.success(), "{status}: {}", read(&stderr));
    assert!(!teleport.join().unwrap().status.success());
}
