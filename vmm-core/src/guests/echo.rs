//! The echo guest: reads COM1 by interrupt and echoes what it receives.
//!
//! Real mode throughout. It points vector 0x0c (IRQ 4 with the master PIC
//! at 8, the BIOS layout) at its handler, unmasks IRQ 4 alone, prints
//! `vmm echo: ready`, enables the UART's received-data interrupt (IER bit
//! 0) and sleeps in `hlt`. The handler reads every byte the FIFO holds
//! (while LSR says data ready) and writes each back, lowercase letters
//! uppercased, so that an echo tells itself apart from its input. A `q`
//! prints `vmm echo: bye` and ends the run with status 0 (debug-exit
//! port); the bytes after it are not read.

use iced_x86::code_asm::*;

use super::asm::{STRINGS, StringTable, asm_err, exit_with, pic_eoi, pic_init, print_routine};
use super::rom::RomImage;
use crate::devices::COM1_PORT;
use crate::error::Result;

const ROM_SIZE: usize = 64 * 1024;
const LOW_SEGMENT: u32 = 0xf000;
const MAIN: usize = 0x1000;
const RX_HANDLER: usize = 0x2000;
const STACK_TOP: u32 = 0x7000;

/// IRQ 4 (COM1) with the master PIC's vectors at 8.
const UART_VECTOR: u32 = 0x08 + 4;
/// Master PIC mask: everything but IRQ 4.
const ONLY_IRQ4: u32 = 0xef;
/// UART registers (offsets from [`COM1_PORT`]) and bits.
const IER: u16 = 1;
const LSR: u16 = 5;
const IER_RECEIVED_DATA: u32 = 0x01;
const LSR_DATA_READY: u32 = 0x01;
/// The byte that ends the run.
const QUIT: u8 = b'q';

pub(super) fn firmware() -> Result<Vec<u8>> {
    let mut strings = StringTable::default();
    let ready = strings.add("vmm echo: ready\n");
    let bye = strings.add("\nvmm echo: bye\n");
    let mut rom = RomImage::new(ROM_SIZE)?;
    rom.place(STRINGS, strings.bytes())?;
    rom.place(MAIN, &main_loop(ready)?)?;
    rom.place(RX_HANDLER, &rx_handler(bye)?)?;
    rom.reset_jump(MAIN as u16)?;
    Ok(rom.into_bytes())
}

/// Sets up the IVT, the PIC and the UART, then sleeps.
fn main_loop(ready: usize) -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(16).map_err(asm_err)?;
    let (mut print, mut idle) = (a.create_label(), a.create_label());
    a.cli().map_err(asm_err)?;
    a.xor(ax, ax).map_err(asm_err)?;
    a.mov(ss, ax).map_err(asm_err)?;
    a.mov(ds, ax).map_err(asm_err)?;
    a.mov(sp, STACK_TOP).map_err(asm_err)?;
    a.mov(word_ptr(UART_VECTOR * 4), RX_HANDLER as u32)
        .map_err(asm_err)?;
    a.mov(word_ptr(UART_VECTOR * 4 + 2), LOW_SEGMENT)
        .map_err(asm_err)?;
    pic_init(&mut a, 0x08, 0x70, ONLY_IRQ4)?;
    // The strings are in the ROM: DS at its low mirror from here on.
    a.mov(ax, LOW_SEGMENT).map_err(asm_err)?;
    a.mov(ds, ax).map_err(asm_err)?;
    a.mov(si, ready as u32).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    // Bytes already in the FIFO raise the interrupt as soon as it is on.
    a.mov(dx, u32::from(COM1_PORT + IER)).map_err(asm_err)?;
    a.mov(al, IER_RECEIVED_DATA).map_err(asm_err)?;
    a.out(dx, al).map_err(asm_err)?;
    a.sti().map_err(asm_err)?;
    a.set_label(&mut idle).map_err(asm_err)?;
    a.hlt().map_err(asm_err)?;
    a.jmp(idle).map_err(asm_err)?;
    print_routine(&mut a, &mut print)?;
    a.assemble(MAIN as u64).map_err(asm_err)
}

/// IRQ 4: echo every received byte (uppercased), end on [`QUIT`].
fn rx_handler(bye: usize) -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(16).map_err(asm_err)?;
    let (mut next, mut send, mut quit, mut done, mut print) = (
        a.create_label(),
        a.create_label(),
        a.create_label(),
        a.create_label(),
        a.create_label(),
    );
    a.push(ax).map_err(asm_err)?;
    a.push(dx).map_err(asm_err)?;
    a.set_label(&mut next).map_err(asm_err)?;
    a.mov(dx, u32::from(COM1_PORT + LSR)).map_err(asm_err)?;
    a.in_(al, dx).map_err(asm_err)?;
    a.test(al, LSR_DATA_READY).map_err(asm_err)?;
    a.jz(done).map_err(asm_err)?;
    a.mov(dx, u32::from(COM1_PORT)).map_err(asm_err)?;
    a.in_(al, dx).map_err(asm_err)?;
    a.cmp(al, u32::from(QUIT)).map_err(asm_err)?;
    a.je(quit).map_err(asm_err)?;
    a.cmp(al, u32::from(b'a')).map_err(asm_err)?;
    a.jb(send).map_err(asm_err)?;
    a.cmp(al, u32::from(b'z')).map_err(asm_err)?;
    a.ja(send).map_err(asm_err)?;
    a.sub(al, i32::from(b'a' - b'A')).map_err(asm_err)?;
    a.set_label(&mut send).map_err(asm_err)?;
    a.out(dx, al).map_err(asm_err)?;
    a.jmp(next).map_err(asm_err)?;
    a.set_label(&mut done).map_err(asm_err)?;
    pic_eoi(&mut a)?;
    a.pop(dx).map_err(asm_err)?;
    a.pop(ax).map_err(asm_err)?;
    a.iret().map_err(asm_err)?;
    // DS is still the ROM's (the main loop set it and never changes it).
    a.set_label(&mut quit).map_err(asm_err)?;
    a.mov(si, bye as u32).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    exit_with(&mut a, 0)?;
    print_routine(&mut a, &mut print)?;
    a.assemble(RX_HANDLER as u64).map_err(asm_err)
}
