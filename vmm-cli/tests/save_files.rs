//! What `vmm` writes and reads as files: saves go only to regular files,
//! private and keeping an existing file's mode, and clean up after killed
//! saves; firmware is limited to what a saved state can hold, checked
//! before it is read, and `vmm state verify` checks that limit as a restore
//! does. Device nodes and FIFOs are made in a temporary directory.

// The helpers every end-to-end test shares; this file needs only some.
#[allow(dead_code)]
mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hm_vmx::testing::kvm_available;
use ssm::{Manager, SaveOptions, Unit, UnitReader, UnitWriter};
use support::{Vmm, client, client_ok, read};
use vmm_core::firmware::MAX_FIRMWARE;

/// Generous: the test host is shared and slow; polls end as soon as they succeed.
const DEADLINE: Duration = Duration::from_secs(40);

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `vmm run --bios FILE`, which must fail (no KVM needed: the firmware is
/// refused before any VM is built); returns what it said.
fn run_bios_fails(dir: &Path, bios: &Path) -> String {
    let output = dir.join("out");
    let bios = bios.to_str().unwrap();
    let mut vm = Vmm::spawn(
        "vmm run --bios",
        &["run", "--bios", bios],
        &output,
        DEADLINE,
    );
    let status = vm.wait(|| read(&output));
    assert!(!status.success(), "{status}: {}", read(&output));
    read(&output)
}

#[test]
fn firmware_over_the_limit_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    let file = std::fs::File::create(&big).unwrap();
    for size in [MAX_FIRMWARE + 1, MAX_FIRMWARE + 4096, 5 << 30] {
        // Sparse, so the 5 GiB file costs nothing, and reading it would show.
        file.set_len(size).unwrap();
        let said = run_bios_fails(dir.path(), &big);
        assert!(
            said.contains(&format!("cannot read firmware {}", big.display())),
            "{said}"
        );
        assert!(
            said.contains(&format!("firmware of {size} bytes")),
            "{said}"
        );
        assert!(said.contains("at most 16 MiB"), "{said}");
    }
}

#[test]
fn firmware_from_an_endless_stream_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Only ever read: /dev/zero has no end, so only a bounded read ends.
    let said = run_bios_fails(dir.path(), Path::new("/dev/zero"));
    assert!(said.contains("firmware larger than 16 MiB"), "{said}");
}

/// A `vmm` unit as an older VMM without the firmware limit wrote it.
struct OldVmmUnit {
    firmware_bytes: usize,
}

impl Unit for OldVmmUnit {
    fn name(&self) -> &str {
        "vmm"
    }
    fn version(&self) -> u32 {
        1
    }
    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        w.put_u64(16 << 20)?;
        w.put_u32(1)?;
        w.put_buf(&vec![0xf4; self.firmware_bytes])
    }
    fn load_exec(&mut self, _: &mut UnitReader<'_>, _: u32, _: u32) -> ssm::Result<()> {
        Err(ssm::Error::callback("a unit that only writes"))
    }
}

#[test]
fn state_verify_refuses_a_state_no_restore_accepts() {
    let dir = tempfile::tempdir().unwrap();
    for (firmware_bytes, restorable) in [(4096, true), (17 << 20, false)] {
        let path = dir.path().join(format!("fw-{firmware_bytes}.sav"));
        let mut m = Manager::new();
        m.register(Box::new(OldVmmUnit { firmware_bytes })).unwrap();
        m.save_to_file(&path, &SaveOptions::default()).unwrap();
        let out = client(&["state", "verify", path.to_str().unwrap()]);
        assert_eq!(out.status.success(), restorable, "{}", stderr(&out));
        if !restorable {
            let said = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(4), "{said}");
            assert!(said.contains(": DAMAGED: "), "{said}");
            let out = client(&["run", "--restore", path.to_str().unwrap()]);
            assert!(!out.status.success());
            // Refused from the file's `vmm` unit, before a VM is built.
            assert!(!stderr(&out).contains("KVM"), "{}", stderr(&out));
        }
    }
}

/// `vmm save FILE` through the VM's API socket.
fn save(socket: &Path, file: &Path) -> std::process::Output {
    client(&[
        "save",
        file.to_str().unwrap(),
        "--api-socket",
        socket.to_str().unwrap(),
    ])
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn vmm_save_writes_only_regular_files_keeps_modes_and_cleans_up() {
    if !kvm_available("vmm_save_writes_only_regular_files_keeps_modes_and_cleans_up") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (socket, serial, output) = (dir.join("api.sock"), dir.join("serial"), dir.join("out"));
    let mut vm = Vmm::spawn(
        "vmm run --guest idle",
        &[
            "run",
            "--guest",
            "idle",
            "--mem",
            "16M",
            "--api-socket",
            socket.to_str().unwrap(),
            "--serial",
            serial.to_str().unwrap(),
        ],
        &output,
        DEADLINE,
    );
    vm.wait_for_text(&serial, "vmm idle: started");

    // A FIFO and a character device (made here, never a real one) are refused
    // and stay what they were; the VM runs on.
    let fifo = dir.join("fifo");
    let null = dir.join("null");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let made = Command::new("mknod")
        .arg(&null)
        .args(["c", "1", "3"])
        .status();
    assert!(made.unwrap().success(), "mknod (these tests run as root)");
    for (node, kind) in [(&fifo, "a FIFO"), (&null, "a character device")] {
        let out = save(&socket, node);
        assert!(!out.status.success());
        let said = stderr(&out);
        assert!(
            said.contains(kind) && said.contains("regular file"),
            "{said}"
        );
    }
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(
        std::fs::symlink_metadata(&null)
            .unwrap()
            .file_type()
            .is_char_device()
    );
    let status = client_ok(&["status", "--api-socket", socket.to_str().unwrap()]);
    assert!(status.contains("state:    RUNNING"), "{status}");

    // A new state is 0600; a re-save keeps the mode the user gave it. A
    // killed save's temporary (its process is gone) goes with the next save.
    let state = dir.join("vm.sav");
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = dir.join(format!(".vm.sav.tmp-{dead}-0"));
    std::fs::write(&stale, vec![0u8; 1 << 20]).unwrap();
    let out = save(&socket, &state);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&state), 0o600);
    assert!(!stale.exists());
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = save(&socket, &state);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&state), 0o640);

    let mut left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();
    left.sort();
    assert!(left.is_empty(), "temporaries left: {left:?}");
    client_ok(&["poweroff", "--api-socket", socket.to_str().unwrap()]);
    let status = vm.wait(|| read(&output));
    assert!(status.success(), "{status}: {}", read(&output));
}
