//! The halt guest: halts its CPU for good, as Linux's `poweroff` does on
//! a machine without ACPI.
//!
//! Real mode throughout. It starts the PIT at 100 Hz with IRQ 0 unmasked
//! at the PIC (so that an interrupt is pending all the time), prints
//! `vmm halt: halting with interrupts off`, then runs `cli; hlt` in a
//! loop: no interrupt can wake it, and `vmm run` ends with status 0 (see
//! [`RunOutcome::GuestHalted`](crate::RunOutcome::GuestHalted)).

use iced_x86::code_asm::*;

use super::asm::{STRINGS, StringTable, asm_err, print_routine, timer_100hz};
use super::rom::RomImage;
use crate::error::Result;

const ROM_SIZE: usize = 64 * 1024;
const LOW_SEGMENT: u32 = 0xf000;
const MAIN: usize = 0x1000;
const STACK_TOP: u32 = 0x7000;

pub(super) fn firmware() -> Result<Vec<u8>> {
    let mut strings = StringTable::default();
    let halting = strings.add("vmm halt: halting with interrupts off\n");
    let mut rom = RomImage::new(ROM_SIZE)?;
    rom.place(STRINGS, strings.bytes())?;
    rom.place(MAIN, &main(halting)?)?;
    rom.reset_jump(MAIN as u16)?;
    Ok(rom.into_bytes())
}

/// Starts the timer, says so, and halts with interrupts off for good.
fn main(halting: usize) -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(16).map_err(asm_err)?;
    let (mut print, mut stop) = (a.create_label(), a.create_label());
    a.cli().map_err(asm_err)?;
    a.xor(ax, ax).map_err(asm_err)?;
    a.mov(ss, ax).map_err(asm_err)?;
    a.mov(sp, STACK_TOP).map_err(asm_err)?;
    // Timer interrupts at vectors 8.. (the BIOS layout), the slave PIC
    // masked at 0x70: IRQ 0 is raised at 100 Hz but never taken.
    timer_100hz(&mut a, 0x08, 0x70)?;
    // The string is in the ROM: DS at its low mirror.
    a.mov(ax, LOW_SEGMENT).map_err(asm_err)?;
    a.mov(ds, ax).map_err(asm_err)?;
    a.mov(si, halting as u32).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    a.set_label(&mut stop).map_err(asm_err)?;
    a.cli().map_err(asm_err)?;
    a.hlt().map_err(asm_err)?;
    a.jmp(stop).map_err(asm_err)?;
    print_routine(&mut a, &mut print)?;
    a.assemble(MAIN as u64).map_err(asm_err)
}
