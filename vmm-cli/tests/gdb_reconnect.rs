//! `vmm run --guest idle --gdb 127.0.0.1:0` end to end: the stub survives packets a
//! hostile client sends (a read of the whole address space, a bad checksum) and serves
//! one gdb after another, by hand and with the real gdb.

#[allow(dead_code)] // shared by the end-to-end tests; this one needs part of it
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dbgf::gdb::MAX_MEM_READ;
use dbgf::gdb::testing::GdbClient;
use hm_vmx::testing::kvm_available;
use support::{Vmm, read};

/// Generous: the test host is shared and slow; polls end as soon as they succeed.
const DEADLINE: Duration = Duration::from_secs(60);

/// Starts the idle guest behind the gdb stub; returns it with the stub's address.
fn start(test: &str, log: &Path) -> (Vmm, SocketAddr) {
    let mut vmm = Vmm::spawn(
        test,
        &["run", "--guest", "idle", "--gdb", "127.0.0.1:0"],
        log,
        DEADLINE,
    );
    let line = vmm.wait_for_line(log, "(target remote ");
    let addr = line
        .trim_end_matches(')')
        .parse()
        .expect("a socket address");
    (vmm, addr)
}

/// A client that fails the test on any error.
fn client(addr: SocketAddr) -> GdbClient {
    GdbClient::connect(addr, DEADLINE).expect("the stub accepts")
}

#[test]
fn the_gdb_stub_survives_hostile_packets_and_serves_one_gdb_after_another() {
    let test = "the_gdb_stub_survives_hostile_packets_and_serves_one_gdb_after_another";
    if !kvm_available(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("vmm.log");
    let (mut vmm, addr) = start(test, &log);

    let mut gdb = client(addr);
    let all = gdb.ask("m0,ffffffffffffffff").unwrap();
    assert_eq!(
        all.len() as u64,
        2 * MAX_MEM_READ,
        "one packet, a short read"
    );
    gdb.send_raw(b"$m0,2#00").unwrap();
    gdb.expect(b'-').unwrap();
    assert_eq!(gdb.ask("m0,2").unwrap().len(), 4);
    assert_eq!(gdb.ask("D").unwrap(), "OK");
    drop(gdb);
    vmm.wait_for_text(&log, "gdb detached");

    // The guest ran on; the next gdb finds it halted.
    let mut gdb = client(addr);
    assert!(gdb.ask("?").unwrap().starts_with('T'));
    assert_eq!(gdb.ask("m0,2").unwrap().len(), 4);
    drop(gdb); // hangs up without a word
    vmm.wait_for_text(&log, "gdb session ended");

    let mut gdb = client(addr);
    assert!(gdb.ask("?").unwrap().starts_with('T'));
    gdb.tell("k").unwrap();
    let status = vmm.wait(|| read(&log));
    assert!(status.success(), "{status:?}\n{}", read(&log));
    assert!(read(&log).contains("gdb killed the VM"), "{}", read(&log));
}

/// The gdb binary, or `None` (after saying so loudly) when the test must be skipped;
/// under CI=true a missing gdb is a failure.
fn gdb_or_skip(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("gdb"))
            .find(|g| g.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: gdb not found in PATH and CI=true"
        );
        eprintln!("!!! SKIPPED {test}: gdb not found in PATH !!!");
    }
    found
}

/// Runs `gdb -batch` with `cmds` against `addr`; returns what it printed.
fn gdb_batch(gdb: &Path, addr: SocketAddr, cmds: &[&str], log: &Path) -> String {
    let mut cmd = Command::new(gdb);
    cmd.args(["-nx", "-batch", "-ex", "set confirm off", "-ex"])
        .arg(format!("target remote {addr}"));
    for c in cmds {
        cmd.args(["-ex", c]);
    }
    let file = std::fs::File::create(log).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("gdb starts");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("gdb did not finish:\n{}", read(log));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    read(log)
}

#[test]
fn the_real_gdb_attaches_twice_to_one_vm() {
    let test = "the_real_gdb_attaches_twice_to_one_vm";
    if !kvm_available(test) {
        return;
    }
    let Some(gdb) = gdb_or_skip(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("vmm.log");
    let (mut vmm, addr) = start(test, &log);
    let first = gdb_batch(
        &gdb,
        addr,
        &["info registers rip", "x/2xb 0xffff0", "detach"],
        &dir.path().join("gdb1.log"),
    );
    assert!(first.contains("rip            0xfff0"), "{first}");
    assert!(first.contains("detached]"), "{first}");
    vmm.wait_for_text(&log, "gdb detached");
    let second = gdb_batch(
        &gdb,
        addr,
        &["info registers rip", "x/2xb 0xffff0", "kill"],
        &dir.path().join("gdb2.log"),
    );
    assert!(second.contains("rip            0x"), "{second}");
    assert!(second.contains("0xffff0:"), "{second}");
    let status = vmm.wait(|| read(&log));
    assert!(status.success(), "{status:?}\n{}", read(&log));
}
