//! Firmware images: the one size limit that building a VM, reading
//! `--bios`, saving and restoring all check, and reading an image from a
//! file without reading more than that limit.

use std::io::Read;
use std::path::Path;

/// The largest firmware image a VM takes: 16 MiB, the size of the largest
/// flash chips PC firmware ships in (OVMF builds are 2 to 4 MiB). A saved
/// state stores the image, so a VM with more firmware than this could be
/// saved but never restored; it is refused when the VM is built instead.
pub const MAX_FIRMWARE: u64 = 16 << 20;

/// The granularity of a firmware image (it is mapped as ROM pages).
const FIRMWARE_ALIGN: u64 = 4096;

/// Why a firmware image is refused.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// The image's size is not one a VM can map.
    #[error(
        "firmware of {size} bytes: must be a non-empty multiple of 4 KiB, at most {} MiB",
        MAX_FIRMWARE >> 20
    )]
    Size {
        /// The image's size in bytes.
        size: u64,
    },
    /// A stream (a device, a FIFO) gave more bytes than any image has.
    #[error("firmware larger than {} MiB (read stopped there)", MAX_FIRMWARE >> 20)]
    StreamTooLarge,
    /// The file could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Checks that `size` bytes of firmware can be mapped, saved and restored.
///
/// ```
/// use vmm_core::firmware::{MAX_FIRMWARE, check_size};
/// assert!(check_size(MAX_FIRMWARE).is_ok());
/// assert!(check_size(MAX_FIRMWARE + 4096).is_err());
/// assert!(check_size(0).is_err());
/// ```
pub fn check_size(size: u64) -> Result<(), FirmwareError> {
    if size == 0 || !size.is_multiple_of(FIRMWARE_ALIGN) || size > MAX_FIRMWARE {
        return Err(FirmwareError::Size { size });
    }
    Ok(())
}

/// Reads a firmware image from `path`. A regular file's size is checked
/// before anything is read; anything else (a device, a FIFO) is read up to
/// one byte past [`MAX_FIRMWARE`] at most.
///
/// ```no_run
/// let image = vmm_core::firmware::read(std::path::Path::new("bios.bin"))?;
/// let config = vmm_core::VmConfig::new(64 << 20, image);
/// # Ok::<(), vmm_core::firmware::FirmwareError>(())
/// ```
pub fn read(path: &Path) -> Result<Vec<u8>, FirmwareError> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if meta.is_file() {
        check_size(meta.len())?;
    }
    let mut image = Vec::new();
    file.take(MAX_FIRMWARE + 1).read_to_end(&mut image)?;
    if image.len() as u64 > MAX_FIRMWARE {
        return Err(FirmwareError::StreamTooLarge);
    }
    check_size(image.len() as u64)?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_up_to_the_limit_in_pages_are_accepted() {
        for ok in [FIRMWARE_ALIGN, 128 << 10, MAX_FIRMWARE] {
            assert!(check_size(ok).is_ok(), "{ok}");
        }
        for bad in [
            0,
            1,
            FIRMWARE_ALIGN + 1,
            MAX_FIRMWARE + 1,
            MAX_FIRMWARE + 4096,
            1 << 30,
        ] {
            let msg = check_size(bad).unwrap_err().to_string();
            assert!(msg.contains("at most 16 MiB"), "{bad}: {msg}");
        }
    }

    #[test]
    fn a_file_over_the_limit_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.bin");
        // Sparse: 5 GiB of holes. Reading it would take seconds and 5 GiB.
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(5 << 30).unwrap();
        let start = std::time::Instant::now();
        let err = read(&path).unwrap_err();
        assert!(
            matches!(err, FirmwareError::Size { size } if size == 5 << 30),
            "{err}"
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(1));

        file.set_len(MAX_FIRMWARE).unwrap();
        assert_eq!(read(&path).unwrap().len() as u64, MAX_FIRMWARE);
        file.set_len(MAX_FIRMWARE + 4096).unwrap();
        assert!(matches!(read(&path), Err(FirmwareError::Size { .. })));
    }

    #[test]
    fn an_endless_stream_is_read_only_up_to_the_limit() {
        let err = read(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(err, FirmwareError::StreamTooLarge), "{err}");
        assert!(err.to_string().contains("larger than 16 MiB"), "{err}");
    }
}
