//! `vmm state inspect` and `vmm state verify` on files written by `ssm`.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Output, Stdio};

use ssm::{Manager, SaveOptions, Unit, UnitReader, UnitWriter};

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .expect("vmm starts")
}

/// A unit holding a few pages: some zero, some data.
struct Pages;

impl Unit for Pages {
    fn name(&self) -> &str {
        "testpages"
    }

    fn version(&self) -> u32 {
        3
    }

    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        w.put_str("four pages")?;
        for i in 0..4u8 {
            let page = [if i % 2 == 0 { 0 } else { i }; 4096];
            w.put_page(&page)?;
        }
        Ok(())
    }

    fn load_exec(&mut self, _: &mut UnitReader<'_>, _: u32, _: u32) -> ssm::Result<()> {
        Ok(())
    }
}

#[test]
fn inspect_lists_units_and_verify_finds_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.sav");
    let mut manager = Manager::new();
    manager.register(Box::new(Pages)).unwrap();
    manager
        .save_to_file(&path, &SaveOptions::default())
        .unwrap();
    let file = path.to_str().unwrap();

    let out = vmm(&["state", "inspect", file]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("testpages"), "{text}");
    let out = vmm(&["state", "inspect", "--json", file]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert!(json.to_string().contains("testpages"), "{json}");

    let out = vmm(&["state", "verify", file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));

    // Flip one byte in the middle: verify must say the file is damaged.
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    // The verdict is the command's output; status 4: a check failed.
    let out = vmm(&["state", "verify", file]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(": DAMAGED: "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Runs `vmm ARGS` with its stdout a pipe whose reading end is already
/// closed (what `vmm ... | head` comes to once `head` has exited).
fn vmm_into_closed_pipe(args: &[&str]) -> Output {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two descriptors for pipe(2) to fill.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe(2) failed");
    // SAFETY: pipe(2) succeeded: both descriptors are open and nothing else
    // owns them.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("vmm starts")
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.sav");
    let mut manager = Manager::new();
    manager.register(Box::new(Pages)).unwrap();
    manager
        .save_to_file(&path, &SaveOptions::default())
        .unwrap();
    let file = path.to_str().unwrap();
    for args in [
        &["state", "inspect", file][..],
        &["state", "inspect", "--json", file],
        &["state", "verify", file],
        &["doctor"],
    ] {
        let out = vmm_into_closed_pipe(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "vmm {args:?}: {stderr}");
        assert!(stderr.is_empty(), "vmm {args:?} complained: {stderr}");
        // `doctor` exits 1 on a host without KVM; the others succeed.
        if args[0] == "state" {
            assert!(out.status.success(), "vmm {args:?}: {}", out.status);
        }
    }
}
