//! The guest-physical memory access the page walker needs, and a plain
//! in-memory implementation of it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a guest-physical access failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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

    /// ORs `bits` into the little-endian `u32` at `gpa` (used to set
    /// accessed and dirty flags in 32-bit page-table entries). The default
    /// reads and writes back; memory shared with running vCPUs should do it
    /// atomically, as the CPU does.
    fn or_u32(&self, gpa: u64, bits: u32) -> Result<(), PhysAccessError> {
        let old = self.read_u32(gpa)?;
        self.write_u32(gpa, old | bits)
    }

    /// ORs `bits` into the little-endian `u64` at `gpa`; see
    /// [`or_u32`](Self::or_u32).
    fn or_u64(&self, gpa: u64, bits: u64) -> Result<(), PhysAccessError> {
        let old = self.read_u64(gpa)?;
        self.write_u64(gpa, old | bits)
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
    fn or_u32(&self, gpa: u64, bits: u32) -> Result<(), PhysAccessError> {
        (**self).or_u32(gpa, bits)
    }
    fn or_u64(&self, gpa: u64, bits: u64) -> Result<(), PhysAccessError> {
        (**self).or_u64(gpa, bits)
    }
}

/// Guest-physical memory held in one host buffer starting at address 0.
///
/// Meant for tests, tools and examples: it is `Sync` (the buffer is made of
/// relaxed atomic words, and aligned 4- and 8-byte accesses are single
/// atomic operations, like page-table accesses on real hardware), so one
/// instance can be shared like real guest RAM.
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
    words: Box<[AtomicU64]>,
    len: usize,
}

impl FlatMemory {
    /// Creates `size` bytes of zeroed memory.
    pub fn new(size: usize) -> Self {
        Self {
            words: (0..size.div_ceil(8)).map(|_| AtomicU64::new(0)).collect(),
            len: size,
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the memory has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The byte offset of `[gpa, gpa + len)`, if it lies inside.
    #[inline]
    fn offset(&self, gpa: u64, len: usize) -> Result<usize, PhysAccessError> {
        usize::try_from(gpa)
            .ok()
            .filter(|&start| start.checked_add(len).is_some_and(|end| end <= self.len))
            .ok_or(PhysAccessError::Unmapped { gpa, len })
    }

    fn byte(&self, at: usize) -> u8 {
        (self.words[at / 8].load(Ordering::Relaxed) >> ((at % 8) * 8)) as u8
    }

    /// Atomically ORs the `len`-byte little-endian value `bits` at `gpa`
    /// when it is naturally aligned, bytewise otherwise.
    fn or_u64_bits(&self, gpa: u64, len: usize, bits: u64) -> Result<(), PhysAccessError> {
        let at = self.offset(gpa, len)?;
        if at % len == 0 {
            self.words[at / 8].fetch_or(bits << ((at % 8) * 8), Ordering::Relaxed);
            return Ok(());
        }
        for (i, b) in bits.to_le_bytes()[..len].iter().enumerate() {
            let shift = ((at + i) % 8) * 8;
            self.words[(at + i) / 8].fetch_or(u64::from(*b) << shift, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Replaces the bits `mask << shift` of the word holding byte `at`.
    fn merge(&self, at: usize, mask: u64, value: u64) {
        let shift = (at % 8) * 8;
        let (mask, value) = (mask << shift, value << shift);
        // The closure always returns `Some`, so the update cannot fail.
        let _ = self.words[at / 8].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some((old & !mask) | (value & mask))
        });
    }
}

impl PhysAccess for FlatMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), PhysAccessError> {
        let start = self.offset(gpa, buf.len())?;
        for (i, d) in buf.iter_mut().enumerate() {
            *d = self.byte(start + i);
        }
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), PhysAccessError> {
        let start = self.offset(gpa, data.len())?;
        for (i, &b) in data.iter().enumerate() {
            self.merge(start + i, 0xff, u64::from(b));
        }
        Ok(())
    }

    #[inline]
    fn read_u64(&self, gpa: u64) -> Result<u64, PhysAccessError> {
        let at = self.offset(gpa, 8)?;
        if at % 8 == 0 {
            return Ok(self.words[at / 8].load(Ordering::Relaxed));
        }
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    #[inline]
    fn read_u32(&self, gpa: u64) -> Result<u32, PhysAccessError> {
        let at = self.offset(gpa, 4)?;
        if at % 4 == 0 {
            return Ok((self.words[at / 8].load(Ordering::Relaxed) >> ((at % 8) * 8)) as u32);
        }
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn write_u64(&self, gpa: u64, value: u64) -> Result<(), PhysAccessError> {
        let at = self.offset(gpa, 8)?;
        if at % 8 == 0 {
            self.words[at / 8].store(value, Ordering::Relaxed);
            return Ok(());
        }
        self.write(gpa, &value.to_le_bytes())
    }

    fn write_u32(&self, gpa: u64, value: u32) -> Result<(), PhysAccessError> {
        let at = self.offset(gpa, 4)?;
        if at % 4 == 0 {
            self.merge(at, 0xffff_ffff, u64::from(value));
            return Ok(());
        }
        self.write(gpa, &value.to_le_bytes())
    }

    fn or_u32(&self, gpa: u64, bits: u32) -> Result<(), PhysAccessError> {
        self.or_u64_bits(gpa, 4, u64::from(bits))
    }

    fn or_u64(&self, gpa: u64, bits: u64) -> Result<(), PhysAccessError> {
        self.or_u64_bits(gpa, 8, bits)
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
        let odd = FlatMemory::new(13);
        assert!(odd.write(12, &[1]).is_ok() && odd.write(12, &[1, 2]).is_err());
    }

    #[test]
    fn aligned_and_unaligned_accesses_agree() {
        let mem = FlatMemory::new(64);
        mem.write(3, &[1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
        assert_eq!(mem.read_u64(3).unwrap(), 0x0807_0605_0403_0201);
        assert_eq!(mem.read_u32(4).unwrap(), 0x0504_0302);
        mem.write_u32(8, 0xaabb_ccdd).unwrap();
        mem.write_u64(17, u64::MAX).unwrap();
        let mut b = [0u8; 16];
        mem.read(6, &mut b).unwrap();
        assert_eq!(
            b,
            [
                4, 5, 0xdd, 0xcc, 0xbb, 0xaa, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff
            ]
        );
    }

    #[test]
    fn or_sets_bits_atomically_in_place() {
        let mem = FlatMemory::new(64);
        mem.write_u32(8, 0xaabb_ccdd).unwrap();
        mem.or_u32(8, 0x1100_0022).unwrap();
        assert_eq!(mem.read_u32(8).unwrap(), 0xbbbb_ccff);
        mem.or_u32(12, 1).unwrap();
        assert_eq!(mem.read_u64(8).unwrap(), 0x1_bbbb_ccff);
        mem.or_u64(33, 0x8000_0000_0000_0001).unwrap();
        assert_eq!(mem.read_u64(33).unwrap(), 0x8000_0000_0000_0001);
        assert!(mem.or_u64(60, 1).is_err());
    }
}
