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
///
/// Writing and making durable are two steps where that matters: a VMM
/// stops the guest while it writes the last bytes, and lets it run on
/// while the file is synced ([`finish_writes`](Self::finish_writes), then
/// [`WrittenFile::commit`]).
pub struct AtomicFile {
    file: BufWriter<File>,
    temp: TempFile,
    stale_removed: Vec<PathBuf>,
}

impl AtomicFile {
    /// Creates the temporary file for `target`, after checking that
    /// `target` is a regular file, a symbolic link to one, or absent, and
    /// removing temporaries of `target` left by processes that are gone.
    pub fn create(target: &Path) -> Result<Self> {
        let target = Target::resolve(target)?;
        let stale_removed = temp::remove_stale(&target.path);
        let (path, file) = temp::create(&target.path)?;
        let temp = TempFile {
            path,
            target,
            renamed: false,
        };
        // On failure, dropping `temp` removes the file just created.
        temp.target.hand_over(&file)?;
        Ok(Self {
            file: BufWriter::with_capacity(1 << 20, file),
            temp,
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
        &self.temp.path
    }

    /// Writes out what is still buffered: every byte is then in the
    /// temporary file (in the kernel's page cache), none of it durable yet
    /// and nothing under the target's name. On failure the temporary file
    /// is removed.
    pub fn finish_writes(self) -> Result<WrittenFile> {
        let file = self
            .file
            .into_inner()
            .map_err(|e| Error::from(e.into_error()))?;
        Ok(WrittenFile {
            file,
            temp: self.temp,
        })
    }

    /// Flushes and syncs the data, renames it over the target (checked
    /// again to be a regular file or absent), syncs the directory:
    /// [`finish_writes`](Self::finish_writes), then
    /// [`WrittenFile::commit`].
    pub fn commit(self) -> Result<()> {
        self.finish_writes()?.commit()
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// An [`AtomicFile`] whose bytes are all written but not yet durable, and
/// not yet under the target's name: [`commit`](Self::commit) makes it
/// both. Dropping it uncommitted, or a failed commit, removes the
/// temporary file and leaves the target as it was.
///
/// ```
/// use std::io::Write;
/// # fn main() -> ssm::Result<()> {
/// let dir = std::env::temp_dir().join(format!("ssm-doc-written-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("vm.sav");
/// let mut f = ssm::AtomicFile::create(&path)?;
/// f.write_all(b"state")?;
/// let written = f.finish_writes()?;
/// // Every byte is in the temporary file; the guest could run again here.
/// assert_eq!(std::fs::read(written.temp_path())?, b"state");
/// assert!(!path.exists());
/// written.commit()?;
/// assert_eq!(std::fs::read(&path)?, b"state");
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
pub struct WrittenFile {
    file: File,
    temp: TempFile,
}

impl WrittenFile {
    /// The temporary path written.
    pub fn temp_path(&self) -> &Path {
        &self.temp.path
    }

    /// Syncs the data, renames it over the target (checked again to be a
    /// regular file or absent), syncs the directory. On failure the
    /// temporary file is removed and the target left as it was.
    pub fn commit(mut self) -> Result<()> {
        self.file.sync_all()?;
        self.temp.target.recheck()?;
        std::fs::rename(&self.temp.path, &self.temp.target.path)?;
        self.temp.renamed = true;
        let dir = temp::parent(&self.temp.target.path).unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()?;
        Ok(())
    }
}

/// The temporary file of a save and the target it replaces; removed when
/// dropped unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    target: Target,
    renamed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.renamed {
            // Best effort: an unfinished save leaves no temporary behind.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
