//! Recognising a kernel image and checking its bzImage setup header
//! against what a 64-bit direct boot needs (Linux `boot.rst`).

use linux_loader::loader::bootparam::setup_header;
use vm_memory::ByteValued;

use super::error::{Error, Result};

/// Offset of the setup header in a bzImage (and in the zero page).
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// `boot_flag`: the boot-sector signature.
pub const BOOT_FLAG: u16 = 0xaa55;
/// `header`: "HdrS".
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// The oldest protocol with `xloadflags` and so with a declared 64-bit entry.
pub const MIN_PROTOCOL: u16 = 0x020c;
/// `loadflags` bit: the protected-mode kernel is loaded at 1 MiB or above.
pub const LOADED_HIGH: u8 = 0x01;
/// `xloadflags` bit: the kernel has the 64-bit entry at load address + 0x200.
pub const XLF_KERNEL_64: u16 = 0x01;
/// `xloadflags` bit: kernel, boot_params, command line and initrd may live above 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 0x02;
/// Offset of the 64-bit entry point from the protected-mode kernel's start.
pub const ENTRY_64_OFFSET: u64 = 0x200;

/// What kind of image a kernel file is.
#[derive(Debug, Clone, Copy)]
pub enum KernelFormat {
    /// A bzImage with a checked setup header.
    BzImage(BzImageInfo),
    /// An x86-64 ELF `vmlinux` (checked in detail when loading).
    Elf,
}

/// The facts of a bzImage's setup header the loader needs.
#[derive(Debug, Clone, Copy)]
pub struct BzImageInfo {
    /// The setup header as found in the image.
    pub header: setup_header,
    /// Boot protocol version (`0x020f` is 2.15).
    pub protocol: u16,
    /// Bytes of real-mode setup code (boot sector included) before the
    /// protected-mode kernel.
    pub setup_bytes: usize,
    /// Bytes of the protected-mode kernel (the payload after the setup code).
    pub payload_bytes: u64,
    /// Where the protected-mode kernel is loaded (`code32_start`).
    pub load_addr: u64,
    /// Linear memory the kernel needs from its load address while it
    /// decompresses itself (`init_size`, at least the payload).
    pub init_size: u64,
    /// One past the last byte the kernel uses while it decompresses:
    /// `init_size` bytes from where it decompresses to (its load address
    /// aligned to `kernel_alignment` for a relocatable kernel, but never
    /// below `pref_address`), and at least the loaded image.
    pub span_end: u64,
    /// Highest address the initrd may occupy.
    pub initrd_addr_max: u64,
    /// Longest command line, without its NUL.
    pub cmdline_size: u64,
}

/// Identifies `image` and, for a bzImage, checks its setup header.
///
/// ```
/// use vmm_core::boot::header::{inspect, KernelFormat};
///
/// assert!(inspect(b"not a kernel").is_err());
/// let elf_start = b"\x7fELF\x02\x01\x01";
/// assert!(matches!(inspect(elf_start)?, KernelFormat::Elf));
/// # Ok::<(), vmm_core::boot::Error>(())
/// ```
pub fn inspect(image: &[u8]) -> Result<KernelFormat> {
    if image.starts_with(b"\x7fELF") {
        return Ok(KernelFormat::Elf);
    }
    let header_end = SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>();
    let magic_at = 0x202;
    let has_magic = image.get(magic_at..magic_at + 4) == Some(&HDRS_MAGIC.to_le_bytes()[..]);
    if !has_magic {
        return Err(if image.len() < magic_at + 4 {
            Error::Truncated(format!(
                "{} bytes: too short for a bzImage setup header or an ELF header",
                image.len()
            ))
        } else {
            Error::UnknownFormat
        });
    }
    let bytes = image.get(SETUP_HEADER_OFFSET..header_end).ok_or_else(|| {
        Error::Truncated(format!(
            "{} bytes: the setup header needs {header_end}",
            image.len()
        ))
    })?;
    let header = setup_header::from_slice(bytes)
        .copied()
        .ok_or_else(|| Error::Truncated("setup header".into()))?;
    check(image.len(), header)
}

fn check(image_len: usize, header: setup_header) -> Result<KernelFormat> {
    let boot_flag = header.boot_flag;
    if boot_flag != BOOT_FLAG {
        return Err(Error::BadHeader(format!(
            "boot_flag is {boot_flag:#06x}, expected {BOOT_FLAG:#06x}"
        )));
    }
    let protocol = header.version;
    if protocol < MIN_PROTOCOL {
        return Err(Error::UnsupportedProtocol(format!(
            "boot protocol {}.{:02}: a 64-bit direct boot needs 2.12 or later",
            protocol >> 8,
            protocol & 0xff
        )));
    }
    let xloadflags = header.xloadflags;
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::UnsupportedProtocol(
            "the kernel has no 64-bit entry point (XLF_KERNEL_64 is clear)".into(),
        ));
    }
    if header.loadflags & LOADED_HIGH == 0 {
        return Err(Error::UnsupportedProtocol(
            "a zImage loaded low (LOADED_HIGH is clear) cannot be booted directly".into(),
        ));
    }
    let sects = match header.setup_sects {
        0 => 4,
        n => usize::from(n),
    };
    let setup_bytes = (sects + 1) * 512;
    let payload_bytes = image_len.checked_sub(setup_bytes).ok_or_else(|| {
        Error::Truncated(format!(
            "{image_len} bytes, but the setup code alone takes {setup_bytes}"
        ))
    })? as u64;
    let syssize = u64::from(header.syssize) * 16;
    if payload_bytes < syssize.max(ENTRY_64_OFFSET + 1) {
        return Err(Error::Truncated(format!(
            "the header declares a {syssize}-byte kernel after {setup_bytes} bytes of setup code, the file has {payload_bytes}"
        )));
    }
    let load_addr = u64::from(header.code32_start);
    if load_addr < 0x10_0000 {
        return Err(Error::BadHeader(format!(
            "code32_start {load_addr:#x} is below 1 MiB"
        )));
    }
    let init_size = u64::from(header.init_size).max(payload_bytes);
    let pref = header.pref_address;
    let target = if header.relocatable_kernel != 0 {
        let align = u64::from(header.kernel_alignment).max(1);
        load_addr.div_ceil(align).saturating_mul(align).max(pref)
    } else {
        pref.max(load_addr)
    };
    let span_end = target
        .saturating_add(init_size)
        .max(load_addr + payload_bytes);
    Ok(KernelFormat::BzImage(BzImageInfo {
        header,
        protocol,
        setup_bytes,
        payload_bytes,
        load_addr,
        init_size,
        span_end,
        initrd_addr_max: u64::from(header.initrd_addr_max),
        cmdline_size: u64::from(header.cmdline_size),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal well-formed bzImage: 1 setup sector and a 4 KiB payload.
    fn image() -> Vec<u8> {
        let mut h = setup_header {
            setup_sects: 1,
            boot_flag: BOOT_FLAG,
            header: HDRS_MAGIC,
            version: 0x020f,
            loadflags: LOADED_HIGH,
            code32_start: 0x10_0000,
            initrd_addr_max: 0x7fff_ffff,
            xloadflags: XLF_KERNEL_64,
            cmdline_size: 2047,
            init_size: 0x2000,
            ..Default::default()
        };
        h.syssize = 0x1000 / 16;
        let mut image = vec![0; 1024 + 0x1000];
        image[SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>()]
            .copy_from_slice(h.as_slice());
        image
    }

    fn patch(image: &mut [u8], offset: usize, bytes: &[u8]) {
        image[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    #[test]
    fn accepts_a_good_header() {
        let KernelFormat::BzImage(info) = inspect(&image()).unwrap() else {
            panic!("not a bzImage");
        };
        assert_eq!(info.setup_bytes, 1024);
        assert_eq!(info.payload_bytes, 0x1000);
        assert_eq!(info.init_size, 0x2000);
        assert_eq!(info.span_end, 0x10_2000);
        assert_eq!(info.load_addr, 0x10_0000);
        assert_eq!(info.protocol, 0x020f);
    }

    #[test]
    fn refuses_wrong_magic() {
        let mut img = image();
        patch(&mut img, 0x202, b"HdrX");
        assert!(matches!(inspect(&img), Err(Error::UnknownFormat)));
        let mut img = image();
        patch(&mut img, 0x1fe, &[0, 0]);
        let err = inspect(&img).unwrap_err();
        assert!(err.to_string().contains("boot_flag"), "{err}");
    }

    #[test]
    fn refuses_old_protocols_and_32_bit_kernels() {
        let mut img = image();
        patch(&mut img, 0x206, &0x0206u16.to_le_bytes());
        let err = inspect(&img).unwrap_err();
        assert!(err.to_string().contains("2.06"), "{err}");
        let mut img = image();
        patch(&mut img, 0x236, &0u16.to_le_bytes());
        let err = inspect(&img).unwrap_err();
        assert!(err.to_string().contains("64-bit entry"), "{err}");
        let mut img = image();
        img[0x211] = 0;
        assert!(matches!(inspect(&img), Err(Error::UnsupportedProtocol(_))));
    }

    #[test]
    fn refuses_truncated_images() {
        let img = image();
        for len in [0, 0x100, 0x204, 0x220, 1024, 1024 + 0x200, 1024 + 0xfff] {
            let err = inspect(&img[..len]).unwrap_err();
            assert!(matches!(err, Error::Truncated(_)), "{len}: {err}");
        }
    }

    #[test]
    fn relocatable_kernels_decompress_at_their_preferred_address() {
        let mut img = image();
        img[0x234] = 1; // relocatable_kernel
        patch(&mut img, 0x230, &0x20_0000u32.to_le_bytes()); // kernel_alignment
        patch(&mut img, 0x258, &0x100_0000u64.to_le_bytes()); // pref_address
        let KernelFormat::BzImage(info) = inspect(&img).unwrap() else {
            panic!("not a bzImage");
        };
        assert_eq!(info.span_end, 0x100_2000);
    }

    #[test]
    fn refuses_a_load_address_below_1m() {
        let mut img = image();
        patch(&mut img, 0x214, &0x1_0000u32.to_le_bytes());
        assert!(matches!(inspect(&img), Err(Error::BadHeader(_))));
    }
}
