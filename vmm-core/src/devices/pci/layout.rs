//! Where the PCI platform lives in the guest-physical and port spaces: the
//! one place that says so.
//!
//! The 32-bit MMIO hole (from [`MMIO_HOLE_START`], 3 GiB, to 4 GiB) holds,
//! in address order:
//!
//! | range | what |
//! |---|---|
//! | `0xC000_0000 - 0xDFFF_FFFF` | 32-bit PCI memory window: BARs ([`MMIO32_WINDOW`]) |
//! | `0xE000_0000 - 0xE00F_FFFF` | ECAM of bus 0 ([`ECAM_BASE`], [`ECAM_SIZE`]), in the MCFG, reserved in e820 |
//! | `0xE010_0000 - 0xFEBF_FFFF` | unused |
//! | `0xFEC0_0000` | IOAPIC |
//! | `0xFEE0_0000` | local APICs |
//! | `0xFF00_0000 - 0xFFFF_FFFF` | the firmware ROM (16 MiB at most) |
//!
//! `0xFEC0_0000` to 4 GiB ([`PLATFORM_RESERVED`]) is reserved in e820;
//! the PCI window is not (Linux clips host bridge windows by e820
//! reservations), and the ECAM is (Linux uses an MCFG region only if it is
//! reserved).
//!
//! Above RAM, the 64-bit window ([`mmio64_window`]) starts at the first
//! GiB boundary past the end of RAM (and past 4 GiB).
//!
//! Ports: configuration mechanism #1 at 0xCF8-0xCFF, which the root
//! bridge consumes; it forwards the rest of the port space, as on a PC
//! ([`IO_WINDOWS`]).
//!
//! Interrupts: INTA#-INTD# of slot `d` go to IOAPIC GSI
//! `16 + (d + pin) % 8` ([`intx_gsi`]), level-triggered, active low as on
//! a PC (Linux programs PCI GSIs from `_PRT` that way).

/// Start of the 32-bit MMIO hole (RAM ends below it).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// The 32-bit PCI memory window: `(start, size)`.
pub const MMIO32_WINDOW: (u64, u64) = (MMIO_HOLE_START, 0x2000_0000);
/// The ECAM of bus 0.
pub const ECAM_BASE: u64 = 0xe000_0000;
/// Bytes of ECAM: one bus of 32 devices, 8 functions, 4 KiB each.
pub const ECAM_SIZE: u64 = 1 << 20;
/// The APICs and the firmware ROM: reserved from here to 4 GiB.
pub const PLATFORM_RESERVED: (u64, u64) = (0xfec0_0000, FOUR_GIB - 0xfec0_0000);
/// The I/O port windows behind the root bridge: `(first, last)` port.
pub const IO_WINDOWS: [(u16, u16); 2] = [(0x0000, 0x0cf7), (0x0d00, 0xffff)];
/// Bytes of the 64-bit memory window.
pub const MMIO64_SIZE: u64 = 32 << 30;
/// The first IOAPIC GSI PCI interrupt lines use (8 of them).
pub const INTX_GSI_BASE: u32 = 16;
/// GSIs for PCI interrupt lines.
pub const INTX_GSIS: u32 = 8;

const FOUR_GIB: u64 = 1 << 32;
const GIB: u64 = 1 << 30;

/// The 64-bit memory window `(start, size)` of a VM whose RAM ends at
/// `ram_end` (one past its highest byte): from the first GiB boundary
/// past 4 GiB and past RAM.
///
/// ```
/// use vmm_core::devices::pci::layout::{mmio64_window, MMIO64_SIZE};
/// assert_eq!(mmio64_window(1 << 30), (1 << 32, MMIO64_SIZE));
/// // 4 GiB of RAM: 3 GiB below the hole, 1 GiB from 4 GiB on.
/// assert_eq!(mmio64_window(5 << 30).0, 5 << 30);
/// assert_eq!(mmio64_window((5 << 30) + 4096).0, 6 << 30);
/// ```
pub fn mmio64_window(ram_end: u64) -> (u64, u64) {
    (ram_end.max(FOUR_GIB).next_multiple_of(GIB), MMIO64_SIZE)
}

/// The GSI interrupt pin `pin` (0 = INTA#) of slot `device` raises.
///
/// ```
/// use vmm_core::devices::pci::layout::intx_gsi;
/// assert_eq!(intx_gsi(1, 0), 17);
/// assert_eq!(intx_gsi(7, 3), 18);
/// ```
pub fn intx_gsi(device: u8, pin: u8) -> u32 {
    INTX_GSI_BASE + (u32::from(device) + u32::from(pin)) % INTX_GSIS
}

/// The `(start, size)` ranges e820 reports as reserved for the platform:
/// the ECAM and the APIC/firmware area.
pub fn e820_reserved() -> [(u64, u64); 2] {
    [(ECAM_BASE, ECAM_SIZE), PLATFORM_RESERVED]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ranges_do_not_overlap_and_stay_in_the_hole() {
        let ranges = [MMIO32_WINDOW, (ECAM_BASE, ECAM_SIZE), PLATFORM_RESERVED];
        for w in ranges.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{w:x?}");
        }
        assert!(ranges.iter().all(|r| r.0 >= MMIO_HOLE_START));
        assert_eq!(PLATFORM_RESERVED.0 + PLATFORM_RESERVED.1, FOUR_GIB);
        // The firmware ROM (16 MiB at most) ends at 4 GiB inside the reserve.
        assert!(FOUR_GIB - crate::firmware::MAX_FIRMWARE >= PLATFORM_RESERVED.0);
        assert_eq!(
            pgm::phys::PcLayout::new(1 << 30).mmio_hole_start(),
            MMIO_HOLE_START
        );
    }

    #[test]
    fn the_64_bit_window_is_above_ram() {
        for ram_end in [64 << 20, 3 << 30, (4 << 30) + 4096, 9 << 30] {
            let (start, _) = mmio64_window(ram_end);
            assert!(
                start >= ram_end.max(FOUR_GIB) && start % GIB == 0,
                "{start:#x}"
            );
        }
    }
}
