//! The one shape of a guest's port and memory-mapped I/O accesses.
//!
//! An access leaves the guest as a vCPU exit (`hm-vmx`), goes through the
//! EMT and ends in a device or a `pgm` access handler. All of them see the
//! same [`Data`]: the bytes a guest write carries, read-only, or the
//! buffer a guest read must fill. Nothing on the way copies it or turns it
//! into a flag and a mutable buffer, so no handler can change what the
//! guest wrote.
//!
//! The crate has no dependencies: a VMM author can use it between any
//! backend and any device model.
//!
//! ```
//! use iom::Data;
//!
//! /// A device with one 32-bit register.
//! struct Register(u32);
//!
//! impl Register {
//!     fn access(&mut self, data: Data<'_>) {
//!         match data {
//!             Data::Read(buf) => buf.copy_from_slice(&self.0.to_le_bytes()[..buf.len()]),
//!             Data::Write(bytes) => {
//!                 let mut v = [0; 4];
//!                 v[..bytes.len()].copy_from_slice(bytes);
//!                 self.0 = u32::from_le_bytes(v);
//!             }
//!         }
//!     }
//! }
//!
//! let mut reg = Register(0);
//! reg.access(Data::Write(&[0x78, 0x56, 0x34, 0x12]));
//! let mut out = [0; 2];
//! reg.access(Data::Read(&mut out));
//! assert_eq!(out, [0x78, 0x56]);
//! ```

/// The data of one access: what a write carries or what a read fills.
#[derive(Debug, PartialEq, Eq)]
pub enum Data<'a> {
    /// A read: fill the buffer (its length is the access size).
    Read(&'a mut [u8]),
    /// A write: the bytes the guest wrote.
    Write(&'a [u8]),
}

impl<'a> Data<'a> {
    /// The access size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Data::Read(b) => b.len(),
            Data::Write(b) => b.len(),
        }
    }

    /// Whether the access has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this is a write.
    pub fn is_write(&self) -> bool {
        matches!(self, Data::Write(_))
    }

    /// The bytes `from .. from + len` of the access, as an access of its
    /// own (to split string I/O or an access crossing a boundary).
    ///
    /// # Panics
    ///
    /// If the range is not inside the access.
    pub fn sub(&mut self, from: usize, len: usize) -> Data<'_> {
        match self {
            Data::Read(b) => Data::Read(&mut b[from..from + len]),
            Data::Write(b) => Data::Write(&b[from..from + len]),
        }
    }

    /// Answers a read with `byte` in every position (as unassigned space
    /// reads 0xFF); does nothing to a write.
    pub fn fill_read(&mut self, byte: u8) {
        if let Data::Read(b) = self {
            b.fill(byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fill_writes_stay_as_written() {
        let mut buf = [0u8; 3];
        let mut read = Data::Read(&mut buf);
        assert!(!read.is_write());
        read.sub(1, 2).fill_read(0xff);
        assert_eq!(buf, [0, 0xff, 0xff]);
        let mut write = Data::Write(&[1, 2, 3]);
        write.fill_read(0);
        assert_eq!(write, Data::Write(&[1, 2, 3]));
        assert_eq!(write.len(), 3);
    }
}

// The README's example runs as a doctest, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
