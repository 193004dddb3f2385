//! The idle guest: runs until powered off, halting between timer ticks.
//!
//! Real mode throughout. It programs the PIC (IRQ 0 only, vectors 8..15)
//! and PIT channel 0 at 100 Hz, prints `vmm idle: started`, then sleeps in
//! `hlt`; every 50 ticks (half a second) it prints a heartbeat with a
//! running count, then brings its memory balloon to the size the host asks
//! for (see [`crate::devices::Balloon`]). Between ticks the vCPU is halted,
//! so an idle VM costs almost no host CPU.

use iced_x86::code_asm::*;

use super::asm::{STRINGS, asm_err, pic_eoi, print_hex_routine, print_routine, timer_100hz};
use super::rom::RomImage;
use crate::devices::BALLOON_PORT;
use crate::error::Result;

const ROM_SIZE: usize = 64 * 1024;
const LOW_SEGMENT: u32 = 0xf000;
const MAIN: usize = 0x1000;
const TIMER_HANDLER: usize = 0x2000;

/// Tick and heartbeat counters in low RAM.
const TICKS: u32 = 0x500;
const HEARTBEATS: u32 = 0x504;
/// Pages the guest has put in the memory balloon.
const BALLOONED: u32 = 0x508;
/// The balloon takes pages from 1 MiB up (the idle guest uses none of them).
const BALLOON_POOL_FRAME: u32 = 0x100;
const STACK_TOP: u32 = 0x7000;

const TICKS_PER_HEARTBEAT: u32 = 50;
const TIMER_VECTOR: u32 = 8;

pub(super) fn firmware() -> Result<Vec<u8>> {
    let started = b"vmm idle: started\n\0";
    let heartbeat = b"vmm idle: heartbeat 0x\0";
    let started_at = STRINGS;
    let heartbeat_at = STRINGS + started.len();
    let mut rom = RomImage::new(ROM_SIZE)?;
    rom.place(started_at, started)?;
    rom.place(heartbeat_at, heartbeat)?;
    rom.place(MAIN, &main_loop(started_at, heartbeat_at)?)?;
    rom.place(TIMER_HANDLER, &timer_handler()?)?;
    rom.reset_jump(MAIN as u16)?;
    Ok(rom.into_bytes())
}

fn main_loop(started: usize, heartbeat: usize) -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(16).map_err(asm_err)?;
    let (mut print, mut print_hex, mut print_rom) =
        (a.create_label(), a.create_label(), a.create_label());
    let mut idle = a.create_label();
    a.cli().map_err(asm_err)?;
    a.xor(ax, ax).map_err(asm_err)?;
    a.mov(ss, ax).map_err(asm_err)?;
    a.mov(ds, ax).map_err(asm_err)?;
    a.mov(sp, STACK_TOP).map_err(asm_err)?;
    a.mov(dword_ptr(TICKS), 0).map_err(asm_err)?;
    a.mov(dword_ptr(HEARTBEATS), 0).map_err(asm_err)?;
    a.mov(dword_ptr(BALLOONED), 0).map_err(asm_err)?;
    // IVT entry of the timer vector -> F000:TIMER_HANDLER.
    a.mov(word_ptr(TIMER_VECTOR * 4), TIMER_HANDLER as u32)
        .map_err(asm_err)?;
    a.mov(word_ptr(TIMER_VECTOR * 4 + 2), LOW_SEGMENT)
        .map_err(asm_err)?;
    // Timer interrupts at vectors 8.. (the BIOS layout), the slave PIC
    // masked at 0x70...
    timer_100hz(&mut a, 0x08, 0x70)?;
    a.mov(si, started as u32).map_err(asm_err)?;
    a.call(print_rom).map_err(asm_err)?;
    a.sti().map_err(asm_err)?;

    a.set_label(&mut idle).map_err(asm_err)?;
    a.hlt().map_err(asm_err)?;
    a.cmp(dword_ptr(TICKS), TICKS_PER_HEARTBEAT)
        .map_err(asm_err)?;
    a.jb(idle).map_err(asm_err)?;
    a.mov(dword_ptr(TICKS), 0).map_err(asm_err)?;
    a.inc(dword_ptr(HEARTBEATS)).map_err(asm_err)?;
    a.mov(si, heartbeat as u32).map_err(asm_err)?;
    a.call(print_rom).map_err(asm_err)?;
    a.mov(al, byte_ptr(HEARTBEATS)).map_err(asm_err)?;
    a.call(print_hex).map_err(asm_err)?;
    a.mov(al, b'\n' as u32).map_err(asm_err)?;
    a.out(dx, al).map_err(asm_err)?;
    balloon_driver(&mut a)?;
    a.jmp(idle).map_err(asm_err)?;

    // print_rom: print the ROM string at SI (DS switched to the ROM mirror).
    a.set_label(&mut print_rom).map_err(asm_err)?;
    a.push(ds).map_err(asm_err)?;
    a.mov(ax, LOW_SEGMENT).map_err(asm_err)?;
    a.mov(ds, ax).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    a.pop(ds).map_err(asm_err)?;
    a.ret().map_err(asm_err)?;
    print_routine(&mut a, &mut print)?;
    print_hex_routine(&mut a, &mut print_hex)?;
    a.assemble(MAIN as u64).map_err(asm_err)
}

/// Brings the memory balloon to the size the host asks for: gives pages
/// (from [`BALLOON_POOL_FRAME`] up) until the balloon is that big, or takes
/// them back. Stops early when the device refuses a page (no RAM left).
fn balloon_driver(a: &mut CodeAssembler) -> Result<()> {
    let (mut adjust, mut inflate, mut done) =
        (a.create_label(), a.create_label(), a.create_label());
    let port = u32::from(BALLOON_PORT);
    a.mov(dx, port).map_err(asm_err)?;
    a.in_(eax, dx).map_err(asm_err)?;
    a.mov(ebx, eax).map_err(asm_err)?; // target, in pages
    a.set_label(&mut adjust).map_err(asm_err)?;
    a.mov(eax, dword_ptr(BALLOONED)).map_err(asm_err)?;
    a.cmp(eax, ebx).map_err(asm_err)?;
    a.je(done).map_err(asm_err)?;
    a.jb(inflate).map_err(asm_err)?;
    // Deflate: take the last page given back.
    a.dec(eax).map_err(asm_err)?;
    a.mov(dword_ptr(BALLOONED), eax).map_err(asm_err)?;
    a.add(eax, BALLOON_POOL_FRAME as i32).map_err(asm_err)?;
    a.mov(dx, port + 8).map_err(asm_err)?;
    a.out(dx, eax).map_err(asm_err)?;
    a.jmp(adjust).map_err(asm_err)?;
    // Inflate: give the next page; the device's count must grow.
    a.set_label(&mut inflate).map_err(asm_err)?;
    a.mov(ecx, eax).map_err(asm_err)?;
    a.add(eax, BALLOON_POOL_FRAME as i32).map_err(asm_err)?;
    a.mov(dx, port + 4).map_err(asm_err)?;
    a.out(dx, eax).map_err(asm_err)?;
    a.in_(eax, dx).map_err(asm_err)?;
    a.cmp(eax, ecx).map_err(asm_err)?;
    a.jbe(done).map_err(asm_err)?;
    a.inc(ecx).map_err(asm_err)?;
    a.mov(dword_ptr(BALLOONED), ecx).map_err(asm_err)?;
    a.jmp(adjust).map_err(asm_err)?;
    a.set_label(&mut done).map_err(asm_err)
}

/// IRQ 0: count the tick, acknowledge the PIC.
fn timer_handler() -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(16).map_err(asm_err)?;
    a.push(ax).map_err(asm_err)?;
    a.push(ds).map_err(asm_err)?;
    a.xor(ax, ax).map_err(asm_err)?;
    a.mov(ds, ax).map_err(asm_err)?;
    a.inc(dword_ptr(TICKS)).map_err(asm_err)?;
    pic_eoi(&mut a)?;
    a.pop(ds).map_err(asm_err)?;
    a.pop(ax).map_err(asm_err)?;
    a.iret().map_err(asm_err)?;
    a.assemble(TIMER_HANDLER as u64).map_err(asm_err)
}
