//! Crash-safe file output: write to a temporary name, sync, rename into place.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A file that only appears under its final name once complete.
///
/// Data goes to `.<name>.tmp-<pid>` beside the target. [`AtomicFile::commit`]
/// flushes, fsyncs, renames over the target and fsyncs the directory, so a
/// save that fails or is killed half way never destroys the previous file.
/// Dropping an uncommitted `AtomicFile` removes the temporary file.
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
    target: PathBuf,
    temp: PathBuf,
    file: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Creates the temporary file for `target`.
    pub fn create(target: &Path) -> Result<Self> {
        let name = target
            .file_name()
            .ok_or_else(|| Error::InvalidState(format!("{} names no file", target.display())))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".tmp-{}", std::process::id()));
        let temp = target.with_file_name(temp_name);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        Ok(Self {
            target: target.to_path_buf(),
            temp,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// The temporary path being written.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Flushes and syncs the data, renames it over the target, syncs the directory.
    pub fn commit(mut self) -> Result<()> {
        let Some(buffered) = self.file.take() else {
            return Err(Error::InvalidState("file already committed".into()));
        };
        let synced = buffered
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|file| file.sync_all());
        if let Err(e) = synced.and_then(|()| std::fs::rename(&self.temp, &self.target)) {
            // Best effort: the previous file is untouched; drop the partial one.
            let _ = std::fs::remove_file(&self.temp);
            return Err(e.into());
        }
        let dir = match self.target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
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
