//! Temporary files beside a save's target: their names, their creation
//! (mode 0600, never through an existing name), and the removal of those
//! that saves killed half way (`kill -9`, a crash, a power cut) left behind.
//!
//! A temporary file is `.<name>.tmp-<pid>-<seq>`: `pid` is the saving
//! process, `seq` counts the saves of that process. A process that no
//! longer exists never finishes its save, so the next save to the same
//! target removes its temporaries. Those of live processes (other saves
//! running now) are left alone, and so are those of this process.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Saves started by this process: makes every temporary name unique.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// The mode a new saved state gets (it holds all of guest RAM).
const NEW_FILE_MODE: u32 = 0o600;

/// The prefix of every temporary file of `name`.
fn prefix(name: &OsStr) -> OsString {
    let mut p = OsString::from(".");
    p.push(name);
    p.push(".tmp-");
    p
}

/// The pid in a temporary file name of `name` (`None`: not one of its).
fn owner_pid(prefix: &OsStr, file_name: &OsStr) -> Option<u32> {
    let rest = file_name
        .as_encoded_bytes()
        .strip_prefix(prefix.as_encoded_bytes())?;
    let rest = std::str::from_utf8(rest).ok()?;
    let (pid, seq) = rest.split_once('-').unwrap_or((rest, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(seq)).then(|| pid.parse().ok())?
}

/// Whether process `pid` exists (in this process's pid namespace).
fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes the temporaries of `target` whose processes are gone; returns
/// the paths removed. Does nothing where `/proc` cannot tell which
/// processes live.
pub(super) fn remove_stale(target: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (parent(target), target.file_name()) else {
        return Vec::new();
    };
    if !Path::new("/proc/self").exists() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let prefix = prefix(name);
    let me = std::process::id();
    entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
        .filter(|entry| {
            owner_pid(&prefix, &entry.file_name()).is_some_and(|p| p != me && !alive(p))
        })
        .map(|entry| entry.path())
        .filter(|path| std::fs::remove_file(path).is_ok())
        .collect()
}

/// The directory `target` is in.
pub(super) fn parent(target: &Path) -> Option<&Path> {
    match target.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(Path::new(".")),
        other => other,
    }
}

/// Creates a new temporary file for `target` (mode 0600; never opens an
/// existing file or follows a link planted under its name).
pub(super) fn create(target: &Path) -> Result<(PathBuf, File)> {
    let name = target
        .file_name()
        .ok_or_else(|| Error::InvalidState(format!("{} names no file", target.display())))?;
    let prefix = prefix(name);
    loop {
        let mut temp_name = prefix.clone();
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        temp_name.push(format!("{}-{seq}", std::process::id()));
        let temp = target.with_file_name(temp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(NEW_FILE_MODE)
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            // Left by an earlier process that had this pid: take the next name.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(Error::Target {
                    path: target.to_path_buf(),
                    reason: format!("cannot create {}: {e}", temp.display()),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_give_their_pid() {
        let p = prefix(OsStr::new("vm.sav"));
        let pid = |n: &str| owner_pid(&p, OsStr::new(n));
        assert_eq!(pid(".vm.sav.tmp-42-7"), Some(42));
        assert_eq!(pid(".vm.sav.tmp-42"), Some(42)); // older name, without seq
        assert_eq!(pid(".vm.sav.tmp-"), None);
        assert_eq!(pid(".vm.sav.tmp-42-"), None);
        assert_eq!(pid(".vm.sav.tmp-4x2"), None);
        assert_eq!(pid(".other.sav.tmp-42-1"), None);
        assert_eq!(pid("vm.sav"), None);
    }
}
