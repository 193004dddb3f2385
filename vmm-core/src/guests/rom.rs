//! Building firmware images that start at the x86 reset vector.

use iced_x86::code_asm::*;

use super::asm::asm_err;
use crate::error::{Error, Result};

/// Where a PC's reset vector points: 16 bytes below 4 GiB. After reset the
/// CPU runs real-mode code with CS base 0xffff0000 and IP 0xfff0.
pub const RESET_VECTOR: u64 = 0xffff_fff0;

/// A firmware image of a fixed size that ends at the 4 GiB boundary.
///
/// ```
/// use vmm_core::guests::rom::RomImage;
///
/// let mut rom = RomImage::new(64 * 1024)?;
/// rom.place(0x100, b"hello\0")?;
/// rom.reset_jump(0x1000)?;
/// let image = rom.into_bytes();
/// assert_eq!(&image[0x100..0x106], b"hello\0");
/// assert_eq!(image[0xfff0], 0xe9); // jmp near
/// # Ok::<(), vmm_core::Error>(())
/// ```
pub struct RomImage {
    bytes: Vec<u8>,
}

impl RomImage {
    /// An image of `size` bytes (a multiple of 4 KiB, at most 16 MiB),
    /// filled with `hlt` so that a stray jump stops rather than runs garbage.
    pub fn new(size: usize) -> Result<Self> {
        if size == 0 || !size.is_multiple_of(4096) || size > 16 << 20 {
            return Err(Error::Config(format!(
                "ROM size {size:#x} is not a multiple of 4 KiB up to 16 MiB"
            )));
        }
        Ok(RomImage {
            bytes: vec![0xf4; size],
        })
    }

    /// The guest-physical address of the image's first byte.
    pub fn base(&self) -> u64 {
        (1u64 << 32) - self.bytes.len() as u64
    }

    /// Copies `data` to `offset` in the image.
    pub fn place(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        let end = offset
            .checked_add(data.len())
            .filter(|&e| e <= self.bytes.len() - 16);
        let end = end.ok_or_else(|| {
            Error::Config(format!(
                "{} bytes at ROM offset {offset:#x} do not fit",
                data.len()
            ))
        })?;
        self.bytes[offset..end].copy_from_slice(data);
        Ok(())
    }

    /// Writes the reset vector: a near jump to `ip` in the reset code
    /// segment (CS base 0xffff0000), i.e. to image offset `ip - (size - 64 KiB)`.
    pub fn reset_jump(&mut self, ip: u16) -> Result<()> {
        let mut a = CodeAssembler::new(16).map_err(asm_err)?;
        a.jmp(u64::from(ip)).map_err(asm_err)?;
        let code = a.assemble(RESET_VECTOR & 0xffff).map_err(asm_err)?;
        let at = self.bytes.len() - 16;
        self.bytes[at..at + code.len()].copy_from_slice(&code);
        Ok(())
    }

    /// The finished image.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}
