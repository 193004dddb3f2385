//! `AtomicFile` writes only regular files, with safe modes, and cleans up
//! the temporaries of saves that died half way.
//!
//! Device nodes are made in a temporary directory (these tests run as
//! root, as the project's test machines do); no test touches a real one.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use ssm::{AtomicFile, Error};

fn run(program: &str, args: &[&Path]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?} failed");
}

fn save(path: &Path, data: &[u8]) -> ssm::Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(data)?;
    f.commit()
}

/// Every file in `dir` (temporaries are hidden files).
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn assert_refused(path: &Path, what: &str) {
    let err = save(path, b"state").unwrap_err();
    assert!(matches!(err, Error::Target { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(what) && msg.contains("regular file"), "{msg}");
}

#[test]
fn a_save_refuses_device_nodes_fifos_sockets_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    run("mkfifo", &[&fifo]);
    let null = dir.path().join("null");
    let status = Command::new("mknod")
        .arg(&null)
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(status.success(), "mknod failed (these tests run as root)");
    let socket = dir.path().join("socket");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();

    assert_refused(&fifo, "a FIFO");
    assert_refused(&null, "a character device");
    assert_refused(&socket, "a socket");
    assert_refused(&sub, "a directory");
    // Through a symbolic link too: the node is what the link leads to.
    let link = dir.path().join("link-to-null");
    std::os::unix::fs::symlink(&null, &link).unwrap();
    assert_refused(&link, "a character device");

    // Every node is still what it was, and no temporary is left.
    let t = |p: &Path| std::fs::symlink_metadata(p).unwrap().file_type();
    assert!(t(&fifo).is_fifo());
    assert!(t(&null).is_char_device());
    assert_eq!(std::fs::metadata(&null).unwrap().rdev(), (1 << 8) | 3);
    assert!(t(&socket).is_socket());
    assert!(t(&sub).is_dir());
    assert!(t(&link).is_symlink());
    assert_eq!(entries(dir.path()), [fifo, link, null, socket, sub]);
}

#[test]
fn a_save_through_a_symbolic_link_writes_the_file_it_leads_to() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.sav");
    std::fs::write(&real, b"old").unwrap();
    let link = dir.path().join("vm.sav");
    std::os::unix::fs::symlink("real.sav", &link).unwrap();

    save(&link, b"new").unwrap();
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&real).unwrap(), b"new");
    assert_eq!(entries(dir.path()), [real, link.clone()]);

    // A link that leads nowhere is refused, and stays as it was.
    let dangling = dir.path().join("dangling.sav");
    std::os::unix::fs::symlink("nowhere/x.sav", &dangling).unwrap();
    let msg = save(&dangling, b"new").unwrap_err().to_string();
    assert!(msg.contains("symbolic link"), "{msg}");
    assert!(
        std::fs::symlink_metadata(&dangling)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn a_new_save_is_private_and_a_resave_keeps_the_mode_and_owner() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.sav");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;

    save(&path, b"one").unwrap();
    assert_eq!(mode(&path), 0o600);

    // A 0600 file used to become 0644 here; any mode is kept.
    for wanted in [0o600, 0o640, 0o444] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(wanted)).unwrap();
        save(&path, b"again").unwrap();
        assert_eq!(mode(&path), wanted, "re-save of a {wanted:o} file");
    }

    // Root's re-save of someone else's file leaves it theirs.
    std::os::unix::fs::chown(&path, Some(4321), Some(8765)).expect("chown (runs as root)");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    save(&path, b"root's").unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4321, 8765));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(std::fs::read(&path).unwrap(), b"root's");
}

/// A pid no process has: a child that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert!(!Path::new("/proc").join(pid.to_string()).exists());
    pid
}

#[test]
fn the_next_save_removes_temporaries_of_killed_saves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.sav");
    let dead = dir.path().join(format!(".vm.sav.tmp-{}-0", dead_pid()));
    let dead_old_name = dir.path().join(format!(".vm.sav.tmp-{}", dead_pid()));
    // pid 1 always lives: its save may still be running.
    let live = dir.path().join(".vm.sav.tmp-1-0");
    // A temporary of another target is not this save's business.
    let other = dir.path().join(format!(".other.sav.tmp-{}-0", dead_pid()));
    for p in [&dead, &dead_old_name, &live, &other] {
        std::fs::write(p, vec![0u8; 4096]).unwrap();
    }

    let f = AtomicFile::create(&path).unwrap();
    let mut removed = f.stale_removed().to_vec();
    removed.sort();
    let mut expected = vec![dead.clone(), dead_old_name.clone()];
    expected.sort();
    assert_eq!(removed, expected);
    f.commit().unwrap();
    assert!(!dead.exists() && !dead_old_name.exists());
    assert!(live.exists() && other.exists());
    assert_eq!(entries(dir.path()), [other, live, path]);
}

#[test]
fn a_target_replaced_during_the_save_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.sav");
    let mut f = AtomicFile::create(&path).unwrap();
    f.write_all(b"state").unwrap();
    let fifo = path.clone();
    run("mkfifo", &[&fifo]);
    let err = f.commit().unwrap_err();
    assert!(err.to_string().contains("a FIFO"), "{err}");
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // The temporary went with the failed commit.
    assert_eq!(entries(dir.path()), [path]);
}

#[test]
fn finished_writes_are_all_in_the_temporary_and_show_up_only_on_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.sav");
    std::fs::write(&path, b"old").unwrap();
    let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut f = AtomicFile::create(&path).unwrap();
    f.write_all(&data).unwrap();
    let written = f.finish_writes().unwrap();
    // Beyond the 1 MiB buffer and its tail: every byte is in the file...
    assert_eq!(std::fs::read(written.temp_path()).unwrap(), data);
    // ... and the target is still the previous file.
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    let temp = written.temp_path().to_path_buf();
    written.commit().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert!(!temp.exists());
    assert_eq!(entries(dir.path()), [path]);
}

#[test]
fn a_written_file_dropped_uncommitted_leaves_the_target_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.sav");
    std::fs::write(&path, b"old").unwrap();
    let mut f = AtomicFile::create(&path).unwrap();
    f.write_all(b"new").unwrap();
    drop(f.finish_writes().unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert_eq!(entries(dir.path()), [path]);
}

#[test]
fn a_commit_that_fails_after_the_writes_leaves_no_file() {
    // The directory goes away between the writes and the commit.
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("saves");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("vm.sav");
    let mut f = AtomicFile::create(&path).unwrap();
    f.write_all(b"state").unwrap();
    let written = f.finish_writes().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let err = written.commit().unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err:?}");
    assert!(!path.exists() && !dir.exists());

    // The target becomes a directory between the writes and the commit.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.sav");
    let mut f = AtomicFile::create(&path).unwrap();
    f.write_all(b"state").unwrap();
    let written = f.finish_writes().unwrap();
    std::fs::create_dir(&path).unwrap();
    let err = written.commit().unwrap_err();
    assert!(err.to_string().contains("a directory"), "{err}");
    assert!(path.is_dir());
    assert_eq!(entries(dir.path()), [path]);
}
