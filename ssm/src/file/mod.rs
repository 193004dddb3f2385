//! Crash-safe file output: write to a temporary name, sync, rename into place.

mod target;
mod temp;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use target::Target;

/// A file that only appears under its final name once complete.
///
/// Data goes to `.<name>.tmp-<pid>-<n>` beside the target, created with
/// mode 0600 (a saved state holds all of guest RAM). [`AtomicFile::commit`]
/// flushes, fsyncs, renames over the target and fsyncs the directory, so a
/// save that fails or is killed half way never destroys the previous file.
/// Dropping an uncommitted `AtomicFile`, or a failed commit, removes the
/// temporary file; temporaries that killed processes left beside the same
/// target are removed by the next [`AtomicFile::create`].
///
/// Only regular files are written: a target that is a directory, device
/// node, FIFO or socket is refused with [`Error::Target`]. A symbolic link
/// is followed and the regular file it leads to is replaced (the link
/// stays); a link that leads nowhere is refused. Replacing an existing file
/// keeps its mode, and its owner and group when run as root.
///
/// ```
/// use std::io::Write;
/// # fn main() -> ssm::Result<()> {
/// let dir = std::env::temp_dir().join(format!("ssm-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("vm.sav");
/// let mut f = ssm::AtomicFile::create(&path)?;
/// f.write_all(b"state")?;
/// assert!(!path.exists());
/// f.commit()?;
/// assert_eq!(std::fs::read(&path)?, b"state");
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
pub struct AtomicFile {
    target: Target,
    temp: PathBuf,
    file: Option<BufWriter<File>>,
    stale_removed: Vec<PathBuf>,
}

impl AtomicFile {
    /// Creates the temporary file for `target`, after checking that
    /// `target` is a regular file, a symbolic link to one, or absent, and
    /// removing temporaries of `target` left by processes that are gone.
    pub fn create(target: &Path) -> Result<Self> {
        let target = Target::resolve(target)?;
        let stale_removed = temp::remove_stale(&target.path);
        let (temp, file) = temp::create(&target.path)?;
        if let Err(e) = target.hand_over(&file) {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        Ok(Self {
            target,
            temp,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            stale_removed,
        })
    }

    /// The temporaries of killed saves to the same target that
    /// [`create`](Self::create) removed.
    pub fn stale_removed(&self) -> &[PathBuf] {
        &self.stale_removed
    }

    /// The temporary path being written.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Flushes and syncs the data, renames it over the target (checked
    /// again to be a regular file or absent), syncs the directory.
    pub fn commit(mut self) -> Result<()> {
        let Some(buffered) = self.file.take() else {
            return Err(Error::InvalidState("file already committed".into()));
        };
        let renamed = buffered
            .into_inner()
            .map_err(|e| Error::from(e.into_error()))
            .and_then(|file| Ok(file.sync_all()?))
            .and_then(|()| self.target.recheck())
            .and_then(|()| Ok(std::fs::rename(&self.temp, &self.target.path)?));
        if let Err(e) = renamed {
            // Best effort: the previous file is untouched; drop the partial one.
            let _ = std::fs::remove_file(&self.temp);
            return Err(e);
        }
        let dir = temp::parent(&self.target.path).unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()?;
        Ok(())
    }

    fn file(&mut self) -> std::io::Result<&mut BufWriter<File>> {
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("file already committed"))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file()?.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file()?.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file()?.flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Best effort: an unfinished save leaves no temporary behind.
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
