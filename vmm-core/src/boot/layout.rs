//! Where the boot data goes in guest-physical memory, and the ranges a PC
//! reserves that the e820 map must not report as RAM.

/// The boot GDT.
pub const GDT_ADDR: u64 = 0x500;
/// The PVH `hvm_start_info` and, after it, its memory map and module list.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// The zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// The identity-mapping page tables: PML4, PDPT, then four page directories.
pub const PAGE_TABLES_ADDR: u64 = 0x9000;
/// Bytes of identity-mapping page tables.
pub const PAGE_TABLES_SIZE: u64 = 6 * 4096;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// The longest command line the layout has room for (without its NUL).
pub const CMDLINE_MAX: u64 = 0x1_0000 - 1;
/// The boot stack top for the PVH entry (unused by the 64-bit entry).
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// The ACPI tables (RSDP first), just below the MP table.
pub const ACPI_ADDR: u64 = 0x9_a000;
/// Bytes set aside for the ACPI tables (those for 254 vCPUs take 11 KiB).
pub const ACPI_SIZE: u64 = MP_CONFIG_ADDR - ACPI_ADDR;
/// The MP configuration table, below the floating pointer that points at
/// it (one for 254 vCPUs takes 5.2 KiB).
pub const MP_CONFIG_ADDR: u64 = 0x9_e000;
/// The MP floating pointer, at the start of the last KiB of base memory,
/// one of the places a guest scans for it.
pub const MPTABLE_ADDR: u64 = 0x9_fc00;
/// Bytes set aside for the MP table: the configuration table and, in the
/// last KiB of base memory, the floating pointer.
pub const MPTABLE_SIZE: u64 = LEGACY_HOLE.0 - MP_CONFIG_ADDR;
/// The legacy VGA / option ROM / BIOS hole.
pub const LEGACY_HOLE: (u64, u64) = (0xa_0000, 0x6_0000);
/// Where RAM for kernels starts (1 MiB).
pub const HIGH_MEMORY: u64 = 0x10_0000;
/// The local APIC's MMIO base.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// The I/O APIC's MMIO base.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The 4 GiB boundary.
pub const FOUR_GIB: u64 = 1 << 32;
/// Highest initrd address for kernels that do not say (ELF `vmlinux`).
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;

/// The ranges a PC reserves, as `(start, length)` pairs: the ACPI tables,
/// the MP table, the legacy hole, the PCI ECAM and the APICs and firmware
/// ROM below 4 GiB (see [`crate::devices::pci::layout`]; the PCI memory
/// window is left out, as Linux clips host bridge windows by e820
/// reservations).
///
/// ```
/// use vmm_core::devices::pci::layout::ECAM_BASE;
/// let r = vmm_core::boot::layout::pc_reserved();
/// assert!(r.iter().any(|&(start, _)| start == ECAM_BASE));
/// assert!(r.contains(&(0xfec0_0000, 0x140_0000)));
/// ```
pub fn pc_reserved() -> Vec<(u64, u64)> {
    let mut reserved = vec![
        (ACPI_ADDR, ACPI_SIZE),
        (MP_CONFIG_ADDR, MPTABLE_SIZE),
        LEGACY_HOLE,
    ];
    reserved.extend(crate::devices::pci::layout::e820_reserved());
    reserved
}
