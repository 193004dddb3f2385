//! The ROM-GDT guests: firmware whose GDT lives in ROM with the
//! descriptors' accessed bits clear, as real firmware images often have it.
//!
//! Loading such a descriptor makes the CPU set its accessed bit with a
//! write to the descriptor, here a write to read-only memory. On a PC the
//! write goes nowhere and the load completes; the guest must run on, and
//! the ROM must still read as the image.
//!
//! Two variants:
//! - `rom-gdt`: both the code descriptor (the far jump to protected mode
//!   writes it) and the data descriptor (`mov ds` writes it) are clear;
//! - `rom-gdt-data`: only the data descriptor is clear, so the first write
//!   to ROM is the one of the data-segment load.
//!
//! Either prints each stage on COM1, loads the data segments twice (the
//! second load finds the bit still clear and writes again), checks that
//! the descriptors in ROM are unchanged, and exits with status 0 through
//! the debug-exit port (1 if the ROM changed).

use iced_x86::code_asm::*;

use super::asm::{
    FLAT_GDT, GDT, LOW_MIRROR, SEL_DATA, STRINGS, StringTable, asm_err, enter_protected_mode,
    exit_with, low, place_gdt, print_routine,
};
use super::rom::RomImage;
use crate::error::Result;

const ROM_SIZE: usize = 64 * 1024;
const CODE16: usize = 0x1000;
const CODE32: usize = 0x2000;
const STACK_TOP: u32 = 0x8000;

/// A segment descriptor's accessed bit (bit 40).
const ACCESSED: u64 = 1 << 40;

/// Which descriptors of the GDT in ROM have their accessed bits clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clear {
    /// Code and data: the far jump writes ROM first.
    CodeAndData,
    /// Data only: `mov ds` writes ROM first.
    DataOnly,
}

impl Clear {
    fn gdt(self) -> [u64; 3] {
        let [null, code, data] = FLAT_GDT;
        match self {
            Clear::CodeAndData => [null, code & !ACCESSED, data & !ACCESSED],
            Clear::DataOnly => [null, code, data & !ACCESSED],
        }
    }
}

/// `rom-gdt`: code and data descriptors with accessed bits clear.
pub(super) fn firmware() -> Result<Vec<u8>> {
    build(Clear::CodeAndData)
}

/// `rom-gdt-data`: only the data descriptor's accessed bit is clear.
pub(super) fn firmware_data_only() -> Result<Vec<u8>> {
    build(Clear::DataOnly)
}

/// The guest's messages (ROM offsets).
struct Messages {
    real: usize,
    far_jump: usize,
    data: usize,
    unchanged: usize,
    changed: usize,
}

fn build(clear: Clear) -> Result<Vec<u8>> {
    let mut strings = StringTable::default();
    let m = Messages {
        real: strings
            .add("vmm rom-gdt: real mode, loading a GDT in ROM with accessed bits clear\n"),
        far_jump: strings.add("vmm rom-gdt: far jump to protected mode done\n"),
        data: strings.add("vmm rom-gdt: data segments loaded (twice)\n"),
        unchanged: strings.add("vmm rom-gdt: the GDT in ROM is unchanged; all checks passed\n"),
        changed: strings.add("vmm rom-gdt: the GDT in ROM CHANGED\n"),
    };
    let gdt = clear.gdt();
    let mut rom = RomImage::new(ROM_SIZE)?;
    place_gdt(&mut rom, &gdt)?;
    rom.place(STRINGS, strings.bytes())?;
    rom.place(CODE16, &real_mode(&m)?)?;
    rom.place(CODE32, &protected_mode(&m, &gdt)?)?;
    rom.reset_jump(CODE16 as u16)?;
    Ok(rom.into_bytes())
}

fn real_mode(m: &Messages) -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(16).map_err(asm_err)?;
    let mut print = a.create_label();
    a.cli().map_err(asm_err)?;
    a.xor(ax, ax).map_err(asm_err)?;
    a.mov(ss, ax).map_err(asm_err)?;
    a.mov(sp, STACK_TOP).map_err(asm_err)?;
    a.mov(ax, LOW_MIRROR >> 4).map_err(asm_err)?;
    a.mov(ds, ax).map_err(asm_err)?;
    a.mov(si, m.real as u32).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    enter_protected_mode(&mut a, CODE32)?;
    print_routine(&mut a, &mut print)?;
    a.assemble(CODE16 as u64).map_err(asm_err)
}

fn protected_mode(m: &Messages, gdt: &[u64; 3]) -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(32).map_err(asm_err)?;
    let mut print = a.create_label();
    let mut changed = a.create_label();
    // DS still holds its real-mode base (the ROM's low mirror): the first
    // message is addressed by ROM offset.
    a.mov(esi, m.far_jump as u32).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    for _ in 0..2 {
        a.mov(ax, u32::from(SEL_DATA)).map_err(asm_err)?;
        a.mov(ds, ax).map_err(asm_err)?;
        a.mov(es, ax).map_err(asm_err)?;
        a.mov(ss, ax).map_err(asm_err)?;
    }
    a.mov(esp, STACK_TOP).map_err(asm_err)?;
    a.mov(esi, low(m.data)).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    // The descriptors' high dwords, where the accessed bit is, as in the image.
    for (i, descriptor) in gdt.iter().enumerate().skip(1) {
        let high = low(GDT + i * 8 + 4);
        a.cmp(dword_ptr(high), (descriptor >> 32) as u32)
            .map_err(asm_err)?;
        a.jne(changed).map_err(asm_err)?;
    }
    a.mov(esi, low(m.unchanged)).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    exit_with(&mut a, 0)?;
    a.set_label(&mut changed).map_err(asm_err)?;
    a.mov(esi, low(m.changed)).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    exit_with(&mut a, 1)?;
    print_routine(&mut a, &mut print)?;
    a.assemble(u64::from(low(CODE32))).map_err(asm_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_in_the_image_has_the_accessed_bits_clear() {
        let image = firmware().unwrap();
        let descriptor =
            |i: usize| u64::from_le_bytes(image[GDT + i * 8..GDT + i * 8 + 8].try_into().unwrap());
        assert_eq!(descriptor(1) & ACCESSED, 0);
        assert_eq!(descriptor(2) & ACCESSED, 0);
        let image = firmware_data_only().unwrap();
        let descriptor =
            |i: usize| u64::from_le_bytes(image[GDT + i * 8..GDT + i * 8 + 8].try_into().unwrap());
        assert_ne!(descriptor(1) & ACCESSED, 0);
        assert_eq!(descriptor(2) & ACCESSED, 0);
    }
}
