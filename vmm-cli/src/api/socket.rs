//! The API's Unix socket file: created with mode 0600, a stale socket in the
//! way is replaced, a live one or any other file is an error, and the file
//! is removed again when the server goes away.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The socket file; removed on drop if it is still the one we created.
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Someone may have replaced the file since (another VMM after
        // deleting ours): only remove the socket we created. (Inode numbers
        // are reused at once, hence the file type check too.)
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            eprintln!("vmm: cannot remove API socket {}: {e}", self.path.display());
        }
    }
}

/// Clears the way for a socket at `path`: nothing there is fine, a socket
/// nobody listens on is removed, anything else is an error.
fn clear_stale(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot examine {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        );
    }
    match UnixStream::connect(path) {
        Ok(_) => bail!(
            "API socket {} is in use: another process is listening on it",
            path.display()
        ),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale API socket {}", path.display())),
        Err(e) => Err(e)
            .with_context(|| format!("cannot tell whether API socket {} is stale", path.display())),
    }
}

/// Restores the process umask when dropped.
struct UmaskGuard(libc::mode_t);

impl UmaskGuard {
    fn set(mask: libc::mode_t) -> Self {
        // SAFETY: umask only swaps the process's file-creation mask; it has
        // no memory-safety preconditions.
        UmaskGuard(unsafe { libc::umask(mask) })
    }
}

impl Drop for UmaskGuard {
    fn drop(&mut self) {
        // SAFETY: as in `set`, restoring the previous mask.
        unsafe { libc::umask(self.0) };
    }
}

/// Creates the listening socket at `path`, mode 0600.
pub fn bind(path: &Path) -> anyhow::Result<(UnixListener, SocketFile)> {
    clear_stale(path)?;
    // The umask makes the socket 0600 from the start (no window in which
    // another user could connect); this runs before any other thread of
    // `vmm run` starts, so the process-wide mask is not a race.
    let listener = {
        let _umask = UmaskGuard::set(0o177);
        UnixListener::bind(path)
            .with_context(|| format!("cannot create API socket {}", path.display()))?
    };
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot examine API socket {}", path.display()))?;
    let file = SocketFile {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set the mode of API socket {}", path.display()))?;
    Ok((listener, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_is_0600_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let (listener, file) = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(listener);
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn stale_socket_is_replaced_live_one_and_other_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a dropped listener leaves its file behind");
        let (live, _file) = bind(&path).expect("stale socket is replaced");
        let err = bind(&path).err().unwrap();
        assert!(format!("{err:#}").contains("in use"), "{err:#}");
        drop(live);

        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"data").unwrap();
        let err = bind(&plain).err().unwrap();
        assert!(format!("{err:#}").contains("not a socket"), "{err:#}");
        assert_eq!(std::fs::read(&plain).unwrap(), b"data");
    }

    #[test]
    fn a_replaced_file_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let (listener, file) = bind(&path).unwrap();
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"someone else's").unwrap();
        drop(file);
        assert!(path.exists());
    }
}
