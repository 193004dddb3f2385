//! The guest-physical memory access the page walker needs, and a plain
//! in-memory implementation of it.

use std::sync::atomic::{AtomicU8, Ordering};

/// Why a guest-physical access failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhysAccessError {
    /// No memory backs (part of) the range.
    #[error("no guest memory at {gpa:#x} (+{len:#x})")]
    Unmapped {
        /// First guest-physical address of the failed access.
        gpa: u64,
        /// Length of the failed access in bytes.
        len: usize,
    },
    /// The range is backed by read-only memory and a write was attempted.
    #[error("guest memory at {gpa:#x} is read-only")]
    ReadOnly {
        /// First guest-physical address of the failed access.
        gpa: u64,
    },
}

/// Reads and writes guest-physical memory for the page walker.
///
/// Only [`read`](Self::read) and [`write`](Self::write) are required; the
/// fixed-size helpers are little-endian and default to those two.
/// The walker writes page-table entries only to set accessed and dirty
/// flags, and only when asked to (see [`WalkOptions`](super::WalkOptions)).
pub trait PhysAccess {
    /// Fills `buf` from guest-physical memory at `gpa`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), PhysAccessError>;

    /// Writes `data` to guest-physical memory at `gpa`.
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), PhysAccessError>;

    /// Reads a little-endian `u32` at `gpa`.
    fn read_u32(&self, gpa: u64) -> Result<u32, PhysAccessError> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a little-endian `u64` at `gpa`.
    fn read_u64(&self, gpa: u64) -> Result<u64, PhysAccessError> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian `u32` at `gpa`.
    fn write_u32(&self, gpa: u64, value: u32) -> Result<(), PhysAccessError> {
        self.write(gpa, &value.to_le_bytes())
    }

    /// Writes a little-endian `u64` at `gpa`.
    fn write_u64(&self, gpa: u64, value: u64) -> Result<(), PhysAccessError> {
        self.write(gpa, &value.to_le_bytes())
    }
}

impl<T: PhysAccess + ?Sized> PhysAccess for &T {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), PhysAccessError> {
        (**self).read(gpa, buf)
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), PhysAccessError> {
        (**self).write(gpa, data)
    }
    fn read_u32(&self, gpa: u64) -> Result<u32, PhysAccessError> {
        (**self).read_u32(gpa)
    }
    fn read_u64(&self, gpa: u64) -> Result<u64, PhysAccessError> {
        (**self).read_u64(gpa)
    }
    fn write_u32(&self, gpa: u64, value: u32) -> Result<(), PhysAccessError> {
        (**self).write_u32(gpa, value)
    }
    fn write_u64(&self, gpa: u64, value: u64) -> Result<(), PhysAccessError> {
        (**self).write_u64(gpa, value)
    }
}

/// Guest-physical memory held in one host buffer starting at address 0.
///
/// Meant for tests, tools and examples: it is `Sync` (bytes are relaxed
/// atomics), so one instance can be shared like real guest RAM.
///
/// ```
/// use pgm::paging::{FlatMemory, PhysAccess};
/// let mem = FlatMemory::new(0x2000);
/// mem.write_u64(0x1ff8, 0x1122_3344_5566_7788).unwrap();
/// assert_eq!(mem.read_u32(0x1ffc).unwrap(), 0x1122_3344);
/// assert!(mem.read_u64(0x1ffc).is_err());
/// ```
#[derive(Debug)]
pub struct FlatMemory {
    bytes: Box<[AtomicU8]>,
}

impl FlatMemory {
    /// Creates `size` bytes of zeroed memory.
    pub fn new(size: usize) -> Self {
        Self {
            bytes: (0..size).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the memory has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn range(&self, gpa: u64, len: usize) -> Result<&[AtomicU8], PhysAccessError> {
        let err = PhysAccessError::Unmapped { gpa, len };
        let start = usize::try_from(gpa).map_err(|_| err.clone())?;
        let end = start.checked_add(len).ok_or_else(|| err.clone())?;
        self.bytes.get(start..end).ok_or(err)
    }
}

impl PhysAccess for FlatMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), PhysAccessError> {
        let src = self.range(gpa, buf.len())?;
        for (d, s) in buf.iter_mut().zip(src) {
            *d = s.load(Ordering::Relaxed);
        }
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), PhysAccessError> {
        let dst = self.range(gpa, data.len())?;
        for (d, s) in dst.iter().zip(data) {
            d.store(*s, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_is_an_error() {
        let mem = FlatMemory::new(16);
        assert_eq!(
            mem.read_u64(12),
            Err(PhysAccessError::Unmapped { gpa: 12, len: 8 })
        );
        assert!(mem.write_u32(u64::MAX, 1).is_err());
        mem.write_u32(12, 0xdead_beef).unwrap();
        assert_eq!(mem.read_u32(12).unwrap(), 0xdead_beef);
    }
}
