//! The zero page (`struct boot_params`) handed to a 64-bit Linux entry.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};

use super::e820::E820Entry;
use super::header::{BOOT_FLAG, HDRS_MAGIC};

/// `type_of_loader` for a boot loader without an assigned id.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// The boot protocol version claimed for ELF kernels, which have no setup
/// header: the zero page is filled as protocol 2.15 lays it out (2.14
/// added `acpi_rsdp_addr`, which kernels read only from 2.14 on).
const ELF_PROTOCOL: u16 = 0x020f;
/// `kernel_alignment` given to ELF kernels, which have no setup header.
const ELF_KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// What goes into the zero page besides the kernel's own setup header.
#[derive(Debug, Clone)]
pub struct ZeroPageInput<'a> {
    /// The image's setup header (bzImage), or `None` for an ELF kernel.
    pub header: Option<setup_header>,
    /// Where the protected-mode kernel was loaded.
    pub kernel_load: u64,
    /// Guest-physical address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// Its length without the NUL.
    pub cmdline_len: u64,
    /// The initrd's address and size, if there is one.
    pub initrd: Option<(u64, u64)>,
    /// The memory map.
    pub e820: &'a [E820Entry],
    /// Where the ACPI RSDP is, if the machine has ACPI tables.
    pub acpi_rsdp: Option<u64>,
}

/// Fills a zero page the way the boot protocol asks a boot loader to: the
/// image's setup header with the loader's fields set, and the e820 map.
///
/// ```
/// use vmm_core::boot::e820::build;
/// use vmm_core::boot::zero_page::{fill, ZeroPageInput};
///
/// let e820 = build(&[(0, 0xa_0000), (0x10_0000, 0xf0_0000)], &[])?;
/// let zp = fill(&ZeroPageInput {
///     header: None, kernel_load: 0x100_0000, cmdline_addr: 0x2_0000, cmdline_len: 5,
///     initrd: Some((0x80_0000, 0x1000)), e820: &e820, acpi_rsdp: Some(0x9_c000),
/// });
/// assert_eq!({ zp.hdr.ramdisk_image }, 0x80_0000);
/// assert_eq!(zp.e820_entries, 2);
/// assert_eq!({ zp.acpi_rsdp_addr }, 0x9_c000);
/// # Ok::<(), vmm_core::boot::Error>(())
/// ```
pub fn fill(input: &ZeroPageInput<'_>) -> boot_params {
    let mut zp = boot_params {
        hdr: input.header.unwrap_or(setup_header {
            boot_flag: BOOT_FLAG,
            header: HDRS_MAGIC,
            version: ELF_PROTOCOL,
            kernel_alignment: ELF_KERNEL_ALIGNMENT,
            ..Default::default()
        }),
        ..Default::default()
    };
    zp.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    // The kernel was loaded at this address; the 64-bit entry ignores it but
    // the field must tell the truth.
    zp.hdr.code32_start = low32(input.kernel_load);
    zp.hdr.cmd_line_ptr = low32(input.cmdline_addr);
    zp.ext_cmd_line_ptr = high32(input.cmdline_addr);
    if input.header.is_none() {
        zp.hdr.cmdline_size = low32(input.cmdline_len + 1);
    }
    let (initrd_addr, initrd_size) = input.initrd.unwrap_or((0, 0));
    zp.hdr.ramdisk_image = low32(initrd_addr);
    zp.hdr.ramdisk_size = low32(initrd_size);
    zp.ext_ramdisk_image = high32(initrd_addr);
    zp.ext_ramdisk_size = high32(initrd_size);
    let mut count = 0u8;
    for (slot, e) in zp.e820_table.iter_mut().zip(input.e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind.code(),
        };
        count += 1;
    }
    zp.e820_entries = count;
    zp.acpi_rsdp_addr = input.acpi_rsdp.unwrap_or(0);
    zp
}

fn low32(v: u64) -> u32 {
    (v & 0xffff_ffff) as u32
}

fn high32(v: u64) -> u32 {
    (v >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::super::e820::{E820Kind, build};
    use super::*;

    fn input(e820: &[E820Entry]) -> ZeroPageInput<'_> {
        ZeroPageInput {
            header: Some(setup_header {
                boot_flag: BOOT_FLAG,
                header: HDRS_MAGIC,
                version: 0x020f,
                loadflags: 1,
                cmdline_size: 2047,
                code32_start: 0x10_0000,
                ..Default::default()
            }),
            kernel_load: 0x10_0000,
            cmdline_addr: 0x2_0000,
            cmdline_len: 10,
            initrd: Some((0x1_2345_6000, 0x1_0000_1000)),
            e820,
            acpi_rsdp: None,
        }
    }

    #[test]
    fn loader_fields() {
        let e820 = build(&[(0, 0xa_0000), (0x10_0000, 0x100_0000)], &[]).unwrap();
        let zp = fill(&input(&e820));
        assert_eq!({ zp.hdr.type_of_loader }, LOADER_TYPE_UNDEFINED);
        assert_eq!({ zp.hdr.header }, HDRS_MAGIC);
        assert_eq!({ zp.hdr.version }, 0x020f);
        assert_eq!(
            { zp.hdr.cmdline_size },
            2047,
            "the kernel's own limit is kept"
        );
        assert_eq!({ zp.hdr.cmd_line_ptr }, 0x2_0000);
        assert_eq!({ zp.ext_cmd_line_ptr }, 0);
        assert_eq!({ zp.hdr.code32_start }, 0x10_0000);
    }

    #[test]
    fn initrd_above_4g_uses_the_ext_fields() {
        let zp = fill(&input(&[]));
        assert_eq!({ zp.hdr.ramdisk_image }, 0x2345_6000);
        assert_eq!({ zp.ext_ramdisk_image }, 1);
        assert_eq!({ zp.hdr.ramdisk_size }, 0x1000);
        assert_eq!({ zp.ext_ramdisk_size }, 1);
    }

    #[test]
    fn e820_table_is_copied() {
        let e820 = build(
            &[(0, 0xa_0000), (0x10_0000, 0x100_0000), (1 << 32, 1 << 30)],
            &[(0xa_0000, 0x6_0000)],
        )
        .unwrap();
        let zp = fill(&input(&e820));
        assert_eq!(usize::from(zp.e820_entries), e820.len());
        for (raw, e) in zp.e820_table.iter().zip(&e820) {
            assert_eq!({ raw.addr }, e.addr);
            assert_eq!({ raw.size }, e.size);
            assert_eq!({ raw.r#type }, e.kind.code());
        }
        assert_eq!({ zp.e820_table[3].r#type }, E820Kind::Ram.code());
    }

    #[test]
    fn elf_kernels_get_a_synthetic_header() {
        let mut i = input(&[]);
        i.header = None;
        i.initrd = None;
        let zp = fill(&i);
        assert_eq!({ zp.hdr.boot_flag }, BOOT_FLAG);
        assert_eq!({ zp.hdr.header }, HDRS_MAGIC);
        assert_eq!({ zp.hdr.cmdline_size }, 11);
        assert_eq!({ zp.hdr.ramdisk_image }, 0);
        assert_eq!({ zp.hdr.kernel_alignment }, ELF_KERNEL_ALIGNMENT);
        assert_eq!({ zp.hdr.version }, ELF_PROTOCOL);
    }
}
