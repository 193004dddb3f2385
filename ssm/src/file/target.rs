//! What a save's target path is, and what the new file takes over from it.
//!
//! A save writes only regular files. A path naming a directory, a device
//! node, a FIFO or a socket is refused: renaming a file over it would
//! replace the node (`/dev/null` turned into a regular file) instead of
//! writing to it. A symbolic link is followed to the regular file it names,
//! which is then replaced; the link stays. A link that names nothing is
//! refused (where the file should go is the link's business, not the save's).

use std::fs::{File, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The file a save replaces, resolved from the path it was given.
#[derive(Debug)]
pub(super) struct Target {
    /// The regular file's path (a symbolic link's destination).
    pub(super) path: PathBuf,
    /// The existing file's metadata, if there is one.
    pub(super) existing: Option<Metadata>,
}

impl Target {
    /// Resolves `path`: refuses anything but a regular file, a missing
    /// file, or a symbolic link to a regular file.
    pub(super) fn resolve(path: &Path) -> Result<Self> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Target {
                    path: path.to_path_buf(),
                    existing: None,
                });
            }
            Err(e) => return Err(refused(path, format!("cannot look at it: {e}"))),
        };
        if !meta.file_type().is_symlink() {
            check_regular(path, &meta)?;
            return Ok(Target {
                path: path.to_path_buf(),
                existing: Some(meta),
            });
        }
        let dest = std::fs::canonicalize(path).map_err(|e| {
            refused(
                path,
                format!("it is a symbolic link that leads to no file ({e})"),
            )
        })?;
        let meta = std::fs::metadata(&dest).map_err(|e| refused(path, e.to_string()))?;
        check_regular(path, &meta)?;
        Ok(Target {
            path: dest,
            existing: Some(meta),
        })
    }

    /// Checks, just before the rename, that the target is still a regular
    /// file or absent (it may have been replaced while the save ran).
    pub(super) fn recheck(&self) -> Result<()> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.file_type().is_symlink() => Err(refused(
                &self.path,
                "it became a symbolic link during the save".to_string(),
            )),
            Ok(meta) => check_regular(&self.path, &meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(refused(&self.path, format!("cannot look at it: {e}"))),
        }
    }

    /// Gives `file` (the new file) the existing file's mode, and its owner
    /// and group where this process may (root may; others keep their own).
    /// A new file keeps the mode it was created with.
    pub(super) fn hand_over(&self, file: &File) -> Result<()> {
        let Some(old) = &self.existing else {
            return Ok(());
        };
        let new = file.metadata()?;
        if (new.uid(), new.gid()) != (old.uid(), old.gid()) {
            match std::os::unix::fs::fchown(file, Some(old.uid()), Some(old.gid())) {
                // Only root gives files away: anyone else's save owns the file.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                other => other?,
            }
        }
        // After the chown, which clears set-id bits.
        let mode = old.permissions().mode() & 0o7777;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        Ok(())
    }
}

/// Refuses anything but a regular file, naming what it is.
fn check_regular(path: &Path, meta: &Metadata) -> Result<()> {
    let t = meta.file_type();
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(refused(
        path,
        format!("it is {kind}; a saved state is written only to a regular file"),
    ))
}

fn refused(path: &Path, reason: String) -> Error {
    Error::Target {
        path: path.to_path_buf(),
        reason,
    }
}
