//! `vmm run`'s device options given what cannot work: each is refused with
//! an error naming the option and the cause, before the VM is built (no
//! guest output), with the usage status for malformed text and 1 for
//! host resources that are missing or taken.

use std::os::unix::net::UnixListener;
use std::process::{Command, Output};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

fn run(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(VMM)
        .args(["run", "--serial"])
        .arg(dir.join("serial"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `vmm run ARGS`, checks it failed with `code` and said `needle`
/// without the guest having started.
fn refused(args: &[&str], code: i32, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{args:?}: no {needle:?} in {stderr}"
        );
    }
    let serial = std::fs::read(dir.path().join("serial")).unwrap_or_default();
    assert!(serial.is_empty(), "{args:?}: the guest ran");
}

#[test]
fn a_missing_or_unusable_disk_image_is_refused() {
    refused(
        &["--disk", "/no/such/disk.img"],
        1,
        &["--disk /no/such/disk.img", "No such file"],
    );
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("odd.img");
    std::fs::write(&odd, [0u8; 1000]).unwrap();
    let odd = odd.display().to_string();
    refused(&["--disk", &odd], 1, &[&odd, "512"]);
    refused(&["--disk", "/tmp"], 1, &["/tmp"]);
    refused(&["--disk", "x.img,rw,ro"], 2, &["--disk"]);
}

#[test]
fn a_tap_that_does_not_exist_is_refused() {
    refused(
        &["--net", "tap=vmmnotap0"],
        1,
        &["vmmnotap0", "ip tuntap add"],
    );
    refused(&["--net", "mac=02:00:00:00:00:01"], 2, &["--net"]);
}

#[test]
fn a_vsock_socket_in_use_is_refused_and_a_reserved_cid_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let _live = UnixListener::bind(&path).unwrap();
    let arg = format!("cid=3,socket={}", path.display());
    refused(&["--vsock", &arg], 1, &[&path.display().to_string()]);
    // The live socket is left alone.
    assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
    refused(&["--vsock", "cid=2,socket=/tmp/x"], 2, &["cid"]);
}
