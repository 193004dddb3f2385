//! The tsc-gap guest: notices every moment it does not run.
//!
//! In 32-bit protected mode with interrupts off, it reads the TSC in a
//! tight loop and stores it at [`LAST_TSC`]; [`MAX_GAP`] keeps the longest
//! time (TSC ticks) between two loop iterations. While the VMM has the
//! vCPU stopped (a save's stop window) the loop stands still, so a host
//! that reads [`MAX_GAP`] around a save sees the downtime as the guest saw
//! it, beside the gaps the guest has anyway (host scheduling, exits). Each
//! iteration updates [`MAX_GAP`] before it stores the TSC: once
//! [`LAST_TSC`] has changed, a gap that just ended is counted.
//!
//! The host drives it through low RAM (every variable starts as zero):
//! - writing a new value to [`RESET_REQUEST`] clears [`MAX_GAP`]; the
//!   guest copies the value to [`RESET_DONE`] once it did;
//! - a non-zero [`DIRTY_PERIOD`] (TSC ticks) makes it write one dword into
//!   the next page of its [`DIRTY_PAGES`]-page buffer at [`DIRTY_BUFFER`]
//!   every period: a steady rate of dirtied memory for a live save to
//!   chase. The buffer needs [`RAM_NEEDED`] bytes of RAM.
//!
//! It prints `vmm tsc-gap: started` and runs until powered off.

use iced_x86::code_asm::*;

use super::asm::{
    FLAT_GDT, LOW_MIRROR, SEL_DATA, STRINGS, StringTable, asm_err, enter_protected_mode, low,
    place_gdt, print_routine,
};
use super::rom::RomImage;
use crate::error::Result;

/// The guest's TSC at its latest loop iteration (u64).
pub const LAST_TSC: u64 = 0x500;
/// The longest time between two loop iterations since the last reset, in
/// TSC ticks (u64).
pub const MAX_GAP: u64 = 0x508;
/// Written by the host: a value other than [`RESET_DONE`]'s clears
/// [`MAX_GAP`] (u32).
pub const RESET_REQUEST: u64 = 0x510;
/// The last [`RESET_REQUEST`] the guest has carried out (u32).
pub const RESET_DONE: u64 = 0x514;
/// Written by the host: TSC ticks between two dirtied pages, 0 for none
/// (u32).
pub const DIRTY_PERIOD: u64 = 0x518;
/// The low half of the TSC when the guest last dirtied a page (u32).
const LAST_DIRTY: u32 = 0x51c;
/// The index of the next page to dirty (u32).
const NEXT_PAGE: u32 = 0x520;
/// Where the buffer the guest dirties starts (16 MiB).
pub const DIRTY_BUFFER: u64 = 16 << 20;
/// Pages in that buffer (16 MiB; a power of two).
pub const DIRTY_PAGES: u32 = 4096;
/// The RAM the guest needs: up to the end of its buffer.
pub const RAM_NEEDED: u64 = DIRTY_BUFFER + DIRTY_PAGES as u64 * 4096;

const ROM_SIZE: usize = 64 * 1024;
const REAL_MODE: usize = 0x1000;
const PROTECTED: usize = 0x2000;

pub(super) fn firmware() -> Result<Vec<u8>> {
    let mut strings = StringTable::default();
    let started = strings.add("vmm tsc-gap: started\n");
    let mut rom = RomImage::new(ROM_SIZE)?;
    place_gdt(&mut rom, &FLAT_GDT)?;
    rom.place(STRINGS, strings.bytes())?;
    rom.place(REAL_MODE, &real_mode()?)?;
    rom.place(PROTECTED, &protected(started)?)?;
    rom.reset_jump(REAL_MODE as u16)?;
    Ok(rom.into_bytes())
}

/// From the reset vector into 32-bit protected mode (flat segments).
fn real_mode() -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(16).map_err(asm_err)?;
    a.cli().map_err(asm_err)?;
    a.mov(ax, LOW_MIRROR >> 4).map_err(asm_err)?;
    a.mov(ds, ax).map_err(asm_err)?;
    enter_protected_mode(&mut a, PROTECTED)?;
    a.assemble(REAL_MODE as u64).map_err(asm_err)
}

/// The variables' addresses as 32-bit operands.
fn at(address: u64) -> u32 {
    address as u32
}

fn protected(started: usize) -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(32).map_err(asm_err)?;
    let (mut print, mut next, mut kept, mut longer) = (
        a.create_label(),
        a.create_label(),
        a.create_label(),
        a.create_label(),
    );
    let mut not_reset = a.create_label();
    a.mov(ax, u32::from(SEL_DATA)).map_err(asm_err)?;
    a.mov(ds, ax).map_err(asm_err)?;
    a.mov(es, ax).map_err(asm_err)?;
    a.mov(ss, ax).map_err(asm_err)?;
    a.mov(esp, 0x7000u32).map_err(asm_err)?;
    a.cld().map_err(asm_err)?;
    a.mov(esi, low(started)).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    a.rdtsc().map_err(asm_err)?;
    a.mov(dword_ptr(at(LAST_TSC)), eax).map_err(asm_err)?;
    a.mov(dword_ptr(at(LAST_TSC) + 4), edx).map_err(asm_err)?;

    // EBX:ECX = now; EDX:EAX = now - LAST_TSC.
    a.set_label(&mut next).map_err(asm_err)?;
    a.rdtsc().map_err(asm_err)?;
    a.mov(ecx, eax).map_err(asm_err)?;
    a.mov(ebx, edx).map_err(asm_err)?;
    a.sub(eax, dword_ptr(at(LAST_TSC))).map_err(asm_err)?;
    a.sbb(edx, dword_ptr(at(LAST_TSC) + 4)).map_err(asm_err)?;
    a.cmp(edx, dword_ptr(at(MAX_GAP) + 4)).map_err(asm_err)?;
    a.jb(kept).map_err(asm_err)?;
    a.ja(longer).map_err(asm_err)?;
    a.cmp(eax, dword_ptr(at(MAX_GAP))).map_err(asm_err)?;
    a.jbe(kept).map_err(asm_err)?;
    a.set_label(&mut longer).map_err(asm_err)?;
    a.mov(dword_ptr(at(MAX_GAP)), eax).map_err(asm_err)?;
    a.mov(dword_ptr(at(MAX_GAP) + 4), edx).map_err(asm_err)?;
    a.set_label(&mut kept).map_err(asm_err)?;
    a.mov(dword_ptr(at(LAST_TSC)), ecx).map_err(asm_err)?;
    a.mov(dword_ptr(at(LAST_TSC) + 4), ebx).map_err(asm_err)?;

    // A reset the host asked for.
    a.mov(eax, dword_ptr(at(RESET_REQUEST))).map_err(asm_err)?;
    a.cmp(eax, dword_ptr(at(RESET_DONE))).map_err(asm_err)?;
    a.je(not_reset).map_err(asm_err)?;
    a.mov(dword_ptr(at(MAX_GAP)), 0).map_err(asm_err)?;
    a.mov(dword_ptr(at(MAX_GAP) + 4), 0).map_err(asm_err)?;
    a.mov(dword_ptr(at(RESET_DONE)), eax).map_err(asm_err)?;
    a.set_label(&mut not_reset).map_err(asm_err)?;

    // A page to dirty once DIRTY_PERIOD ticks have passed since the last.
    a.mov(eax, dword_ptr(at(DIRTY_PERIOD))).map_err(asm_err)?;
    a.test(eax, eax).map_err(asm_err)?;
    a.jz(next).map_err(asm_err)?;
    a.mov(edx, ecx).map_err(asm_err)?;
    a.sub(edx, dword_ptr(LAST_DIRTY)).map_err(asm_err)?;
    a.cmp(edx, eax).map_err(asm_err)?;
    a.jb(next).map_err(asm_err)?;
    a.mov(dword_ptr(LAST_DIRTY), ecx).map_err(asm_err)?;
    a.mov(eax, dword_ptr(NEXT_PAGE)).map_err(asm_err)?;
    a.mov(edx, eax).map_err(asm_err)?;
    a.shl(edx, 12).map_err(asm_err)?;
    a.mov(dword_ptr(edx + at(DIRTY_BUFFER)), ecx)
        .map_err(asm_err)?;
    a.inc(eax).map_err(asm_err)?;
    a.and(eax, DIRTY_PAGES - 1).map_err(asm_err)?;
    a.mov(dword_ptr(NEXT_PAGE), eax).map_err(asm_err)?;
    a.jmp(next).map_err(asm_err)?;
    print_routine(&mut a, &mut print)?;
    a.assemble(u64::from(low(PROTECTED))).map_err(asm_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_within_its_rom() {
        let image = firmware().unwrap();
        assert_eq!(image.len(), ROM_SIZE);
        // The 32-bit code starts by loading the flat data selector.
        assert_eq!(image[PROTECTED..PROTECTED + 2], [0x66, 0xb8]);
        assert!(DIRTY_PAGES.is_power_of_two());
    }
}
