//! [`DiskImage`]: the raw image file behind a block device, accessed at
//! offsets (`preadv` / `pwritev`) so that no file position is shared.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::super::DeviceError;
use super::dma::GuestBuffers;

/// The size of a virtio block sector, whatever the image's own block size.
pub const SECTOR_SIZE: u64 = 512;

/// An open raw disk image of a whole number of sectors.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    path: PathBuf,
    sectors: u64,
    read_only: bool,
}

impl DiskImage {
    /// Opens `path` (read-only when `read_only`); refuses a missing file,
    /// anything but a regular file, an empty image and one whose size is
    /// not a multiple of [`SECTOR_SIZE`]. Errors name `device` and the path.
    pub fn open(path: &Path, read_only: bool, device: &str) -> Result<DiskImage, DeviceError> {
        let host = |what: String, source| DeviceError::Host {
            device: device.to_owned(),
            what,
            source,
        };
        let setup = |reason: String| DeviceError::Setup {
            device: device.to_owned(),
            reason,
        };
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| host(format!("cannot open disk image {shown}"), e))?;
        if meta.is_dir() {
            return Err(setup(format!("disk image {shown} is a directory")));
        }
        if !meta.is_file() {
            return Err(setup(format!("disk image {shown} is not a regular file")));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| host(format!("cannot open disk image {shown}"), e))?;
        let bytes = file
            .metadata()
            .map_err(|e| host(format!("cannot read the size of disk image {shown}"), e))?
            .len();
        if bytes == 0 {
            return Err(setup(format!("disk image {shown} is empty")));
        }
        if bytes % SECTOR_SIZE != 0 {
            return Err(setup(format!(
                "disk image {shown} is {bytes} bytes, not a multiple of {SECTOR_SIZE}"
            )));
        }
        Ok(DiskImage {
            file,
            path: path.to_owned(),
            sectors: bytes / SECTOR_SIZE,
            read_only,
        })
    }

    /// The image file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size in [`SECTOR_SIZE`] sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether the guest may only read.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The byte offset of `sector` when `bytes` bytes from there lie on
    /// the disk (no arithmetic overflow, nothing past the end).
    pub fn offset_of(&self, sector: u64, bytes: u64) -> Option<u64> {
        let start = sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(bytes)?;
        (end <= self.sectors.checked_mul(SECTOR_SIZE)?).then_some(start)
    }

    /// Fills the guest's `buffers` from byte `offset`.
    pub fn read_into(&self, buffers: &GuestBuffers<'_>, offset: u64) -> io::Result<()> {
        buffers.read_from(self.file.as_raw_fd(), offset)
    }

    /// Writes the guest's `buffers` at byte `offset`.
    pub fn write_from(&self, buffers: &GuestBuffers<'_>, offset: u64) -> io::Result<()> {
        buffers.write_to(self.file.as_raw_fd(), offset)
    }

    /// Writes `buf` at byte `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Makes written data durable (`fdatasync`).
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Gives the host the blocks of `len` bytes at `offset` back (the range
    /// then reads as zeros). `Ok(false)` when the file system cannot.
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Zeroes `len` bytes at `offset`: a punched hole when `unmap` (the
    /// guest allows the blocks to go), else `fallocate`'s zero range (the
    /// blocks stay allocated), else, where the file system offers
    /// neither, written zeros.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if unmap && self.punch_hole(offset, len)? {
            return Ok(());
        }
        let zero_range = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        if self.fallocate(zero_range, offset, len)? {
            return Ok(());
        }
        self.fill_zeros(offset, len)
    }

    /// Writes `len` zero bytes at `offset`.
    fn fill_zeros(&self, offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: u64 = 64 * 1024;
        let zeros = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK) as usize;
            self.write_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// `fallocate(mode)` on the range; `Ok(false)` when the file system
    /// does not support the mode.
    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<bool> {
        let too_big = || io::Error::from(io::ErrorKind::InvalidInput);
        let offset = libc::off_t::try_from(offset).map_err(|_| too_big())?;
        let len = libc::off_t::try_from(len).map_err(|_| too_big())?;
        // SAFETY: fallocate only reads its integer arguments; the descriptor
        // is owned by `self.file` and open for the call's duration.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset, len) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EOPNOTSUPP | libc::ENOSYS) => Ok(false),
            _ => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(bytes: usize) -> (tempfile::NamedTempFile, DiskImage) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), vec![0xa5u8; bytes]).unwrap();
        let disk = DiskImage::open(file.path(), false, "blk0").unwrap();
        (file, disk)
    }

    #[test]
    fn offsets_are_checked_against_the_end_and_overflow() {
        let (_file, disk) = image(4096);
        assert_eq!(disk.sectors(), 8);
        assert_eq!(disk.offset_of(0, 4096), Some(0));
        assert_eq!(disk.offset_of(7, 512), Some(3584));
        assert_eq!(disk.offset_of(8, 0), Some(4096));
        assert_eq!(disk.offset_of(7, 513), None);
        assert_eq!(disk.offset_of(9, 0), None);
        assert_eq!(disk.offset_of(u64::MAX / 512, 512), None);
        assert_eq!(disk.offset_of(u64::MAX, 0), None);
    }

    #[test]
    fn the_written_zeros_fallback_covers_exactly_its_range() {
        let (file, disk) = image(256 * 1024);
        disk.fill_zeros(512, 130 * 1024).unwrap();
        let bytes = std::fs::read(file.path()).unwrap();
        assert!(bytes[..512].iter().all(|b| *b == 0xa5));
        assert!(bytes[512..512 + 130 * 1024].iter().all(|b| *b == 0));
        assert!(bytes[512 + 130 * 1024..].iter().all(|b| *b == 0xa5));
        assert_eq!(bytes.len(), 256 * 1024);
    }
}
