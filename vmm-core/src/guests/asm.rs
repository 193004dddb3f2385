//! Assembly helpers shared by the embedded guests.

use iced_x86::code_asm::*;
use iced_x86::{Code, Instruction};

use crate::devices::{COM1_PORT, DEBUG_EXIT_PORT};
use crate::error::{Error, Result};

/// Turns an assembler error into a VM error (a bug in a guest's source).
pub(crate) fn asm_err(e: IcedError) -> Error {
    Error::Config(format!("embedded guest failed to assemble: {e}"))
}

/// `out port, value` through AL (any bitness).
pub(crate) fn outb(a: &mut CodeAssembler, port: u32, value: u32) -> Result<()> {
    a.mov(al, value).map_err(asm_err)?;
    a.out(port, al).map_err(asm_err)
}

/// `out 0x20, 0x20`: end of interrupt at the master PIC.
pub(crate) fn pic_eoi(a: &mut CodeAssembler) -> Result<()> {
    outb(a, 0x20, 0x20)
}

/// Programs the PICs: the master (edge triggered, slave on IRQ 2, 8086
/// mode) at vectors `master_vector..` with the IRQs set in `master_mask`
/// masked, the slave at `slave_vector..` all masked. Clobbers AL.
pub(crate) fn pic_init(
    a: &mut CodeAssembler,
    master_vector: u32,
    slave_vector: u32,
    master_mask: u32,
) -> Result<()> {
    for (port, value) in [
        (0x20, 0x11),
        (0x21, master_vector),
        (0x21, 0x04),
        (0x21, 0x01),
        (0x21, master_mask),
        (0xa0, 0x11),
        (0xa1, slave_vector),
        (0xa1, 0x02),
        (0xa1, 0x01),
        (0xa1, 0xff),
    ] {
        outb(a, port, value)?;
    }
    Ok(())
}

/// Programs a 100 Hz timer interrupt: the PICs as [`pic_init`] does with
/// only IRQ 0 unmasked, and PIT channel 0 as a rate generator
/// (lobyte/hibyte, mode 2) at 100 Hz. Clobbers AL.
pub(crate) fn timer_100hz(
    a: &mut CodeAssembler,
    master_vector: u32,
    slave_vector: u32,
) -> Result<()> {
    pic_init(a, master_vector, slave_vector, 0xfe)?;
    for (port, value) in [
        (0x43, 0x34),
        (0x40, PIT_DIVISOR_100HZ & 0xff),
        (0x40, PIT_DIVISOR_100HZ >> 8),
    ] {
        outb(a, port, value)?;
    }
    Ok(())
}

/// Emits `print`: writes the NUL-terminated string at `[si]`/`[esi]`/`[rsi]`
/// (per the assembler's bitness) to COM1. Clobbers AL, DX and the index.
pub(crate) fn print_routine(a: &mut CodeAssembler, print: &mut CodeLabel) -> Result<()> {
    let mut next = a.create_label();
    let mut done = a.create_label();
    a.set_label(print).map_err(asm_err)?;
    a.mov(dx, u32::from(COM1_PORT)).map_err(asm_err)?;
    a.set_label(&mut next).map_err(asm_err)?;
    a.lodsb().map_err(asm_err)?;
    a.test(al, al).map_err(asm_err)?;
    a.jz(done).map_err(asm_err)?;
    a.out(dx, al).map_err(asm_err)?;
    a.jmp(next).map_err(asm_err)?;
    a.set_label(&mut done).map_err(asm_err)?;
    a.ret().map_err(asm_err)?;
    Ok(())
}

/// Emits the end of a run: write `status` to the debug-exit port, then halt
/// for good should the VMM let the guest continue.
pub(crate) fn exit_with(a: &mut CodeAssembler, status: u8) -> Result<()> {
    let mut stop = a.create_label();
    a.mov(dx, u32::from(DEBUG_EXIT_PORT)).map_err(asm_err)?;
    a.mov(al, u32::from(status)).map_err(asm_err)?;
    a.out(dx, al).map_err(asm_err)?;
    a.set_label(&mut stop).map_err(asm_err)?;
    a.cli().map_err(asm_err)?;
    a.hlt().map_err(asm_err)?;
    a.jmp(stop).map_err(asm_err)?;
    Ok(())
}

/// Emits `print_hex`: writes AL as two lowercase hex digits to COM1.
/// Clobbers AX and DX; works in 16- and 32-bit code.
pub(crate) fn print_hex_routine(a: &mut CodeAssembler, print_hex: &mut CodeLabel) -> Result<()> {
    let mut digit = a.create_label();
    let mut decimal = a.create_label();
    a.set_label(print_hex).map_err(asm_err)?;
    a.mov(dx, u32::from(COM1_PORT)).map_err(asm_err)?;
    a.mov(ah, al).map_err(asm_err)?;
    a.shr(al, 4).map_err(asm_err)?;
    a.call(digit).map_err(asm_err)?;
    a.mov(al, ah).map_err(asm_err)?;
    a.and(al, 0xf).map_err(asm_err)?;
    a.call(digit).map_err(asm_err)?;
    a.ret().map_err(asm_err)?;
    a.set_label(&mut digit).map_err(asm_err)?;
    a.cmp(al, 10).map_err(asm_err)?;
    a.jb(decimal).map_err(asm_err)?;
    a.add(al, i32::from(b'a' - 10 - b'0')).map_err(asm_err)?;
    a.set_label(&mut decimal).map_err(asm_err)?;
    a.add(al, i32::from(b'0')).map_err(asm_err)?;
    a.out(dx, al).map_err(asm_err)?;
    a.ret().map_err(asm_err)?;
    Ok(())
}

/// A flat 4 GiB code segment (0x08) and data segment (0x10) after the null
/// descriptor, with their accessed bits set (the GDT lives in ROM, where
/// the CPU could not set them).
pub(crate) const FLAT_GDT: [u64; 3] = [0, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

/// The GDT as bytes.
pub(crate) fn gdt_bytes(descriptors: &[u64]) -> Vec<u8> {
    descriptors.iter().flat_map(|d| d.to_le_bytes()).collect()
}

/// Where the embedded guests keep their GDT and its `lgdt` operand in the
/// ROM (reached through [`LOW_MIRROR`]).
pub(crate) const GDT: usize = 0x0;
/// See [`GDT`].
pub(crate) const GDT_DESCRIPTOR: usize = 0x20;

/// Places a GDT of `descriptors` at [`GDT`] in `rom` and its `lgdt` operand
/// at [`GDT_DESCRIPTOR`], based at the ROM's low mirror.
pub(crate) fn place_gdt(rom: &mut super::rom::RomImage, descriptors: &[u64]) -> Result<()> {
    rom.place(GDT, &gdt_bytes(descriptors))?;
    rom.place(
        GDT_DESCRIPTOR,
        &pseudo_descriptor(descriptors.len(), LOW_MIRROR + GDT as u32),
    )
}

/// A pseudo-descriptor (`lgdt`/`lidt` operand): 16-bit limit, 32-bit base.
pub(crate) fn pseudo_descriptor(entries: usize, base: u32) -> [u8; 6] {
    let mut d = [0u8; 6];
    d[..2].copy_from_slice(&((entries * 8 - 1) as u16).to_le_bytes());
    d[2..].copy_from_slice(&base.to_le_bytes());
    d
}

/// Linear address of the firmware's mirror below 1 MiB (the last 64 KiB of
/// a 64 KiB ROM), where the embedded guests' 32- and 64-bit code runs.
pub(crate) const LOW_MIRROR: u32 = 0xf_0000;
/// Where the embedded guests keep their strings in the ROM.
pub(crate) const STRINGS: usize = 0x100;
/// Flat 32-bit code segment selector in [`FLAT_GDT`].
pub(crate) const SEL_CODE32: u16 = 0x08;
/// Flat data segment selector in [`FLAT_GDT`].
pub(crate) const SEL_DATA: u16 = 0x10;
/// The PIT input clock (1.193182 MHz) divided by 100.
pub(crate) const PIT_DIVISOR_100HZ: u32 = 11_932;
/// Local APIC interrupt command register (low half), xAPIC MMIO.
pub(crate) const APIC_ICR_LOW: u32 = 0xfee0_0300;
/// ICR: INIT, level assert, to all excluding self.
pub(crate) const ICR_INIT_ALL_BUT_SELF: u32 = 0x000c_4500;
/// ICR: start-up, to all excluding self (OR in the vector).
pub(crate) const ICR_SIPI_ALL_BUT_SELF: u32 = 0x000c_4600;
/// How long a BSP waits for its APs (loop iterations).
pub(crate) const AP_WAIT_ITERATIONS: u32 = 2_000_000;

/// The NUL-terminated strings of a guest, laid out from [`STRINGS`] in the
/// ROM; [`add`](StringTable::add) gives each one's ROM offset.
#[derive(Default)]
pub(crate) struct StringTable {
    bytes: Vec<u8>,
}

impl StringTable {
    /// Adds a string; returns its offset in the ROM.
    pub(crate) fn add(&mut self, s: &str) -> usize {
        let at = STRINGS + self.bytes.len();
        self.bytes.extend_from_slice(s.as_bytes());
        self.bytes.push(0);
        at
    }

    /// The table, to place at [`STRINGS`].
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The address of ROM offset `offset` in the ROM's low mirror.
pub(crate) fn low(offset: usize) -> u32 {
    LOW_MIRROR + offset as u32
}

/// Loads the GDT that [`place_gdt`] put in the ROM, sets CR0.PE and
/// far-jumps to ROM offset `target` (through the low mirror) in the flat
/// 32-bit code segment. Real-mode code; DS must address the low mirror.
pub(crate) fn enter_protected_mode(a: &mut CodeAssembler, target: usize) -> Result<()> {
    a.lgdt(ptr(GDT_DESCRIPTOR as u32)).map_err(asm_err)?;
    a.mov(eax, cr0).map_err(asm_err)?;
    a.or(eax, 1).map_err(asm_err)?;
    a.mov(cr0, eax).map_err(asm_err)?;
    let far = Instruction::with_far_branch(Code::Jmp_ptr1632, SEL_CODE32, low(target))
        .map_err(asm_err)?;
    a.add_instruction(far).map_err(asm_err)
}
