//! Loading a kernel, its command line and initrd into guest memory and
//! writing the tables the entry point reads.

use std::io::Cursor;

use linux_loader::loader::KernelLoader;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use pgm::phys::TrackedMemory;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::acpi;
use super::cpu::{Entry, write_tables};
use super::e820::{self, E820Entry, E820Kind};
use super::error::{Error, Result, mem_err};
use super::header::{self, BzImageInfo, ENTRY_64_OFFSET, KernelFormat};
use super::layout::{
    ACPI_ADDR, CMDLINE_ADDR, CMDLINE_MAX, DEFAULT_INITRD_ADDR_MAX, FOUR_GIB, HIGH_MEMORY,
    MP_CONFIG_ADDR, PVH_INFO_ADDR, ZERO_PAGE_ADDR,
};
use super::mptable;
use super::zero_page::{ZeroPageInput, fill};
use crate::devices::pci::layout::mmio64_window;

const PAGE: u64 = 4096;
/// `hvm_start_info.magic`: "xEn3" with the high bit of 'n' set.
const PVH_MAGIC: u32 = 0x336e_c578;

/// A kernel to boot directly, with its initrd and command line.
///
/// ```no_run
/// use vmm_core::boot::KernelBoot;
/// let boot = KernelBoot::from_files("bzImage".as_ref(), Some("initrd".as_ref()), "console=ttyS0")?;
/// let ram = [(0, 0xa_0000), (0x10_0000, 255 << 20)];
/// boot.plan(&ram, &vmm_core::boot::layout::pc_reserved())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct KernelBoot {
    /// The kernel image: a bzImage or an ELF `vmlinux`.
    pub kernel: Vec<u8>,
    /// The initial RAM disk, if any.
    pub initrd: Option<Vec<u8>>,
    /// The kernel command line.
    pub cmdline: String,
}

/// Where everything goes, computed (and so checked) before the VM exists.
#[derive(Debug, Clone)]
pub struct BootPlan {
    /// The kernel's format and, for a bzImage, its header facts.
    pub format: KernelFormat,
    /// The e820 map the guest will see.
    pub e820: Vec<E820Entry>,
    /// Where the initrd goes (bzImage; ELF initrds are placed after loading).
    pub initrd_addr: Option<u64>,
    /// Where the ACPI tables' RSDP goes ([`acpi::RSDP_ADDR`]); `None`: the
    /// guest gets no ACPI tables, only the MP table.
    pub rsdp: Option<u64>,
}

/// What was loaded, for the CPU setup and for callers' diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// How the bootstrap processor enters the kernel.
    pub entry: Entry,
    /// Where the kernel image starts in guest memory.
    pub kernel_load: u64,
    /// One past its last loaded byte, or of the memory it decompresses in.
    pub kernel_end: u64,
    /// The initrd's address and size.
    pub initrd: Option<(u64, u64)>,
}

impl KernelBoot {
    /// Reads the kernel and initrd from files.
    pub fn from_files(
        kernel: &std::path::Path,
        initrd: Option<&std::path::Path>,
        cmdline: &str,
    ) -> std::io::Result<Self> {
        let read = |p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        Ok(KernelBoot {
            kernel: read(kernel)?,
            initrd: initrd.map(read).transpose()?,
            cmdline: cmdline.to_string(),
        })
    }

    /// Checks what can be checked without a memory layout: the image's
    /// format and headers, and the command line.
    pub fn check(&self) -> Result<KernelFormat> {
        let format = header::inspect(&self.kernel)?;
        let cmdline_limit = match &format {
            KernelFormat::BzImage(info) => info.cmdline_size.min(CMDLINE_MAX),
            KernelFormat::Elf => CMDLINE_MAX,
        };
        if self.cmdline.contains('\0') {
            return Err(Error::Cmdline("it contains a NUL byte".into()));
        }
        if self.cmdline.len() as u64 > cmdline_limit {
            return Err(Error::Cmdline(format!(
                "{} bytes long, the kernel takes at most {cmdline_limit}",
                self.cmdline.len()
            )));
        }
        Ok(format)
    }

    /// Checks the image and computes the layout for a VM with `ram` and
    /// `reserved` ranges (`(start, length)` pairs), without touching memory.
    pub fn plan(&self, ram: &[(u64, u64)], reserved: &[(u64, u64)]) -> Result<BootPlan> {
        let format = self.check()?;
        let e820 = e820::build(ram, reserved)?;
        for (what, addr, len) in [
            ("the boot tables", 0, PVH_INFO_ADDR + 0x1000),
            ("the zero page and page tables", ZERO_PAGE_ADDR, 0x8000),
            ("the command line", CMDLINE_ADDR, CMDLINE_MAX + 1),
        ] {
            if !e820::is_ram(&e820, addr, len) {
                return Err(Error::NoRoom(format!(
                    "{what} need RAM at {addr:#x}..{:#x}",
                    addr + len
                )));
            }
        }
        let initrd_addr = match &format {
            KernelFormat::BzImage(info) => {
                if !e820::is_ram(&e820, info.load_addr, info.span_end - info.load_addr) {
                    return Err(Error::NoRoom(format!(
                        "the kernel needs RAM at {:#x}..{:#x} to decompress ({} MiB of RAM is too little)",
                        info.load_addr,
                        info.span_end,
                        e820::ram_total(&e820) >> 20
                    )));
                }
                self.initrd_place(&e820, info.span_end, info.initrd_addr_max)?
            }
            KernelFormat::Elf => None,
        };
        Ok(BootPlan {
            format,
            e820,
            initrd_addr,
            rsdp: Some(acpi::RSDP_ADDR),
        })
    }

    fn initrd_place(&self, e820: &[E820Entry], above: u64, max: u64) -> Result<Option<u64>> {
        match &self.initrd {
            None => Ok(None),
            Some(initrd) => place_initrd(e820, above, max, initrd.len() as u64).map(Some),
        }
    }

    /// Loads everything `plan` placed into `mem` for `cpus` vCPUs: kernel,
    /// command line, initrd, zero page (or PVH start info), ACPI tables, MP
    /// table, GDT and page tables. Returns the entry the bootstrap processor takes.
    pub fn load(&self, plan: &BootPlan, mem: &TrackedMemory, cpus: u32) -> Result<Loaded> {
        let cmdline_len = self.cmdline.len() as u64;
        let mut cmdline = self.cmdline.clone().into_bytes();
        cmdline.push(0);
        mem.write_slice(&cmdline, GuestAddress(CMDLINE_ADDR))
            .map_err(mem_err("the command line"))?;
        mem.write_slice(&mptable::build(cpus)?, GuestAddress(MP_CONFIG_ADDR))
            .map_err(mem_err("the MP table"))?;
        if plan.rsdp.is_some() {
            let ram_end = mem.last_addr().0 + 1;
            let tables = acpi::build(cpus, mmio64_window(ram_end))?;
            mem.write_slice(&tables, GuestAddress(ACPI_ADDR))
                .map_err(mem_err("the ACPI tables"))?;
        }
        let loaded = match &plan.format {
            KernelFormat::BzImage(info) => self.load_bzimage(plan, info, mem, cmdline_len)?,
            KernelFormat::Elf => self.load_elf(plan, mem, cmdline_len)?,
        };
        write_tables(mem, &loaded.entry)?;
        Ok(loaded)
    }

    fn write_initrd(&self, mem: &TrackedMemory, addr: Option<u64>) -> Result<Option<(u64, u64)>> {
        match (&self.initrd, addr) {
            (Some(initrd), Some(addr)) => {
                mem.write_slice(initrd, GuestAddress(addr))
                    .map_err(mem_err("the initrd"))?;
                Ok(Some((addr, initrd.len() as u64)))
            }
            _ => Ok(None),
        }
    }

    fn load_bzimage(
        &self,
        plan: &BootPlan,
        info: &BzImageInfo,
        mem: &TrackedMemory,
        cmdline_len: u64,
    ) -> Result<Loaded> {
        let result = BzImage::load(
            mem,
            Some(GuestAddress(info.load_addr)),
            &mut Cursor::new(&self.kernel),
            Some(GuestAddress(HIGH_MEMORY)),
        )?;
        let initrd = self.write_initrd(mem, plan.initrd_addr)?;
        let zp = fill(&ZeroPageInput {
            header: Some(info.header),
            kernel_load: info.load_addr,
            cmdline_addr: CMDLINE_ADDR,
            cmdline_len,
            initrd,
            e820: &plan.e820,
            acpi_rsdp: plan.rsdp,
        });
        mem.write_obj(zp, GuestAddress(ZERO_PAGE_ADDR))
            .map_err(mem_err("the zero page"))?;
        Ok(Loaded {
            entry: Entry::Long64 {
                rip: info.load_addr + ENTRY_64_OFFSET,
                boot_params: ZERO_PAGE_ADDR,
            },
            kernel_load: info.load_addr,
            kernel_end: result.kernel_end.max(info.span_end),
            initrd,
        })
    }

    fn load_elf(&self, plan: &BootPlan, mem: &TrackedMemory, cmdline_len: u64) -> Result<Loaded> {
        let result = Elf::load(
            mem,
            None,
            &mut Cursor::new(&self.kernel),
            Some(GuestAddress(HIGH_MEMORY)),
        )?;
        let kernel_load = result.kernel_load.0;
        let initrd_addr =
            self.initrd_place(&plan.e820, result.kernel_end, DEFAULT_INITRD_ADDR_MAX)?;
        let initrd = self.write_initrd(mem, initrd_addr)?;
        let entry = match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(eip) => {
                write_pvh_info(mem, plan, initrd)?;
                Entry::Pvh32 {
                    eip: eip.0,
                    start_info: PVH_INFO_ADDR,
                }
            }
            _ => {
                let zp = fill(&ZeroPageInput {
                    header: None,
                    kernel_load,
                    cmdline_addr: CMDLINE_ADDR,
                    cmdline_len,
                    initrd,
                    e820: &plan.e820,
                    acpi_rsdp: plan.rsdp,
                });
                mem.write_obj(zp, GuestAddress(ZERO_PAGE_ADDR))
                    .map_err(mem_err("the zero page"))?;
                Entry::Long64 {
                    rip: kernel_load,
                    boot_params: ZERO_PAGE_ADDR,
                }
            }
        };
        Ok(Loaded {
            entry,
            kernel_load,
            kernel_end: result.kernel_end,
            initrd,
        })
    }
}

/// The highest page-aligned address at or above `above` where `size` bytes
/// fit inside one RAM entry of `e820` without passing `max` (the last byte
/// the initrd may use) or 4 GiB.
///
/// ```
/// use vmm_core::boot::{e820::build, loader::place_initrd};
/// let map = build(&[(0x10_0000, 0xf0_0000)], &[])?;
/// assert_eq!(place_initrd(&map, 0x20_0000, 0x7fff_ffff, 0x1800)?, 0xff_e000);
/// assert!(place_initrd(&map, 0x20_0000, 0x7fff_ffff, 0x100_0000).is_err());
/// # Ok::<(), vmm_core::boot::Error>(())
/// ```
pub fn place_initrd(e820: &[E820Entry], above: u64, max: u64, size: u64) -> Result<u64> {
    let limit = max.saturating_add(1).min(FOUR_GIB);
    let above = above.div_ceil(PAGE) * PAGE;
    // The usable part of each RAM entry: above the kernel, below the limit.
    let windows = e820
        .iter()
        .rev()
        .filter(|e| e.kind == E820Kind::Ram)
        .map(|e| (e.addr.max(above), e.end().min(limit)))
        .filter(|(start, end)| start < end);
    let mut largest = 0;
    for (start, end) in windows {
        largest = largest.max(end - start);
        if let Some(at) = end.checked_sub(size).map(|a| a / PAGE * PAGE)
            && at >= start
        {
            return Ok(at);
        }
    }
    Err(Error::NoRoom(format!(
        "an initrd of {size} bytes does not fit: the largest free RAM between the kernel \
         ({above:#x}) and the initrd limit ({limit:#x}) is {largest} bytes"
    )))
}

/// Writes the PVH start info, its memory map and the initrd module entry.
fn write_pvh_info(mem: &TrackedMemory, plan: &BootPlan, initrd: Option<(u64, u64)>) -> Result<()> {
    let e820 = &plan.e820;
    let modlist_addr = PVH_INFO_ADDR + 0x40;
    let memmap_addr = modlist_addr + 0x40;
    for (i, e) in e820.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind.code(),
            reserved: 0,
        };
        let at = memmap_addr + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(at))
            .map_err(mem_err("the PVH memory map"))?;
    }
    if let Some((paddr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(modlist_addr))
            .map_err(mem_err("the PVH module list"))?;
    }
    let info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: modlist_addr,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: memmap_addr,
        memmap_entries: e820.len() as u32,
        rsdp_paddr: plan.rsdp.unwrap_or(0),
        ..Default::default()
    };
    mem.write_obj(info, GuestAddress(PVH_INFO_ADDR))
        .map_err(mem_err("the PVH start info"))
}

#[cfg(test)]
mod tests {
    use linux_loader::loader::bootparam::boot_params;

    use super::super::layout::{MPTABLE_ADDR, pc_reserved};
    use super::*;
    use crate::guests::test_kernel;

    const RAM: u64 = 64 << 20;

    fn ram_ranges() -> Vec<(u64, u64)> {
        vec![(0, 0xa_0000), (0x10_0000, RAM - 0x10_0000)]
    }

    fn memory() -> TrackedMemory {
        let ranges: Vec<_> = ram_ranges()
            .into_iter()
            .map(|(s, l)| (GuestAddress(s), l as usize))
            .collect();
        TrackedMemory::from_ranges(&ranges).unwrap()
    }

    fn boot(kernel: Vec<u8>, initrd: &[u8]) -> (KernelBoot, BootPlan) {
        let boot = KernelBoot {
            kernel,
            initrd: Some(initrd.to_vec()),
            cmdline: "console=ttyS0 quiet".into(),
        };
        let plan = boot.plan(&ram_ranges(), &pc_reserved()).unwrap();
        (boot, plan)
    }

    /// A minimal x86-64 ELF executable: one PT_LOAD segment of `code` at
    /// `paddr`, entry `entry`, and optionally a PVH note with `pvh_entry`.
    fn elf(code: &[u8], paddr: u64, entry: u64, pvh_entry: Option<u32>) -> Vec<u8> {
        let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
        let note_at = 64 + 56 * u64::from(phnum);
        let note: Vec<u8> = match pvh_entry {
            Some(e) => [4u32, 4, 18]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .chain(*b"Xen\0")
                .chain(e.to_le_bytes())
                .collect(),
            None => Vec::new(),
        };
        let code_at = note_at + note.len() as u64;
        let mut f = Vec::new();
        f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        f.extend_from_slice(&2u16.to_le_bytes());
        f.extend_from_slice(&0x3eu16.to_le_bytes());
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&entry.to_le_bytes());
        f.extend_from_slice(&64u64.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        for v in [64u16, 56, phnum, 64, 0, 0] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        let mut phdr = |kind: u32, offset: u64, addr: u64, size: u64| {
            f.extend_from_slice(&kind.to_le_bytes());
            f.extend_from_slice(&5u32.to_le_bytes());
            for v in [offset, addr, addr, size, size, 0x1000] {
                f.extend_from_slice(&v.to_le_bytes());
            }
        };
        phdr(1, code_at, paddr, code.len() as u64);
        if pvh_entry.is_some() {
            phdr(4, note_at, 0, note.len() as u64);
        }
        f.extend_from_slice(&note);
        f.extend_from_slice(code);
        f
    }

    #[test]
    fn bzimage_fills_the_zero_page() {
        let mem = memory();
        let (boot, plan) = boot(test_kernel::build().unwrap(), &[7; 5000]);
        let loaded = boot.load(&plan, &mem, 2).unwrap();
        assert_eq!(
            loaded.entry,
            Entry::Long64 {
                rip: 0x10_0200,
                boot_params: ZERO_PAGE_ADDR
            }
        );
        let zp: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        let (addr, size) = loaded.initrd.unwrap();
        assert_eq!(
            (
                u64::from(zp.hdr.ramdisk_image),
                u64::from(zp.hdr.ramdisk_size)
            ),
            (addr, size)
        );
        assert_eq!(size, 5000);
        assert_eq!(addr % PAGE, 0);
        assert!(addr >= loaded.kernel_end);
        assert!(
            addr + size <= RAM && addr + size > RAM - 2 * PAGE,
            "initrd at the top of RAM"
        );
        assert_eq!({ zp.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ zp.hdr.type_of_loader }, 0xff);
        assert_eq!(usize::from(zp.e820_entries), plan.e820.len());
        let mut cmdline = [0u8; 20];
        mem.read_slice(&mut cmdline, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&cmdline, b"console=ttyS0 quiet\0");
        let mut initrd = vec![0u8; 5000];
        mem.read_slice(&mut initrd, GuestAddress(addr)).unwrap();
        assert!(initrd.iter().all(|&b| b == 7));
        // The MP table lists both processors.
        let mut mp = [0u8; 4];
        mem.read_slice(&mut mp, GuestAddress(MPTABLE_ADDR)).unwrap();
        assert_eq!(&mp, b"_MP_");
        let procs: u8 = mem
            .read_obj(GuestAddress(MP_CONFIG_ADDR + 44 + 20 + 1))
            .unwrap();
        assert_eq!(procs, 1, "second processor has APIC id 1");
        // The zero page points at the ACPI tables for both processors.
        assert_eq!({ zp.acpi_rsdp_addr }, acpi::RSDP_ADDR);
        let tables = acpi::build(2, mmio64_window(64 << 20)).unwrap();
        let mut written = vec![0u8; tables.len()];
        mem.read_slice(&mut written, GuestAddress(zp.acpi_rsdp_addr))
            .unwrap();
        assert_eq!(written, tables);
        assert!(!e820::is_ram(&plan.e820, ACPI_ADDR, 1));
    }

    #[test]
    fn elf_without_pvh_note_enters_in_long_mode() {
        let mem = memory();
        let code = [0x90u8, 0x90, 0xf4];
        let (boot, plan) = boot(elf(&code, 0x20_0000, 0x20_0000, None), &[1; 100]);
        let loaded = boot.load(&plan, &mem, 1).unwrap();
        assert_eq!(
            loaded.entry,
            Entry::Long64 {
                rip: 0x20_0000,
                boot_params: ZERO_PAGE_ADDR
            }
        );
        let mut got = [0u8; 3];
        mem.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(got, code);
        let zp: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        assert_eq!({ zp.hdr.header }, super::super::header::HDRS_MAGIC);
        assert_eq!({ zp.hdr.ramdisk_size }, 100);
        assert!(u64::from(zp.hdr.ramdisk_image) >= loaded.kernel_end);
    }

    #[test]
    fn elf_with_pvh_note_enters_through_pvh() {
        let mem = memory();
        let (boot, plan) = boot(
            elf(&[0xf4; 16], 0x20_0000, 0x20_0000, Some(0x20_0008)),
            &[1; 64],
        );
        let loaded = boot.load(&plan, &mem, 1).unwrap();
        assert_eq!(
            loaded.entry,
            Entry::Pvh32 {
                eip: 0x20_0008,
                start_info: PVH_INFO_ADDR
            }
        );
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, PVH_MAGIC);
        assert_eq!(info.cmdline_paddr, CMDLINE_ADDR);
        assert_eq!(info.memmap_entries as usize, plan.e820.len());
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.rsdp_paddr, acpi::RSDP_ADDR);
        let mut rsdp = [0u8; 8];
        mem.read_slice(&mut rsdp, GuestAddress(info.rsdp_paddr))
            .unwrap();
        assert_eq!(&rsdp, b"RSD PTR ");
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!(Some((module.paddr, module.size)), loaded.initrd);
        let first: hvm_memmap_table_entry = mem.read_obj(GuestAddress(info.memmap_paddr)).unwrap();
        assert_eq!((first.addr, first.type_), (0, 1));
    }

    #[test]
    fn truncated_elf_is_refused_when_loading() {
        let mem = memory();
        let image = elf(&[0xf4; 4096], 0x20_0000, 0x20_0000, None);
        let (boot, plan) = boot(image[..image.len() - 100].to_vec(), &[]);
        let err = boot.load(&plan, &mem, 1).unwrap_err();
        assert!(matches!(err, Error::Loader(_)), "{err}");
    }

    #[test]
    fn initrd_placement_respects_the_limit_and_the_kernel() {
        let map = e820::build(&ram_ranges(), &pc_reserved()).unwrap();
        assert_eq!(
            place_initrd(&map, 0x20_0000, 0xff_ffff, 0x1000).unwrap(),
            0xff_f000
        );
        assert!(place_initrd(&map, RAM - 0x1000, u64::MAX, 0x2000).is_err());
        assert!(place_initrd(&map, 0, 0x7fff_ffff, RAM).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(256))]

        #[test]
        fn placed_initrds_are_aligned_in_ram_and_within_bounds(
            ram_mib in 2u64..8192,
            above in 0u64..0x400_0000,
            max in 0x10_0000u64..0x1_0000_0000,
            size in 1u64..0x800_0000,
        ) {
            let ram = [(0, 0xa_0000), (0x10_0000, (ram_mib << 20).min(0xbff0_0000))];
            let map = e820::build(&ram, &pc_reserved()).unwrap();
            if let Ok(at) = place_initrd(&map, above, max, size) {
                proptest::prop_assert_eq!(at % PAGE, 0);
                proptest::prop_assert!(at >= above);
                proptest::prop_assert!(at + size - 1 <= max);
                proptest::prop_assert!(e820::is_ram(&map, at, size));
            }
        }

        #[test]
        fn corrupted_images_never_panic_the_loader(
            edits in proptest::collection::vec((0usize..0x300, proptest::num::u8::ANY), 1..8),
            cut in 0usize..8000,
        ) {
            let mut image = test_kernel::build().unwrap();
            for (at, byte) in edits {
                image[0x100 + at] = byte;
            }
            image.truncate(cut.max(1));
            let boot = KernelBoot { kernel: image, initrd: Some(vec![1; 10]), cmdline: String::new() };
            if let Ok(plan) = boot.plan(&ram_ranges(), &pc_reserved()) {
                let _ = boot.load(&plan, &memory(), 1);
            }
        }
    }
}
