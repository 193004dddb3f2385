//! The counter guest: a workload for save/restore and live save.
//!
//! The BSP switches to 32-bit protected mode, fills a 1 MiB buffer with a
//! per-page pattern, wakes the APs, programs the PIC and the PIT at 100 Hz
//! and then, for each timer tick, in order:
//! - checks its tick counter three ways: in a register (EBP), in memory and
//!   as a complemented copy in memory; a restore that brings back memory
//!   but not the registers (or the other way round) breaks this;
//! - verifies one page of the buffer (`repe scasd` against the pattern)
//!   and rewrites another, so memory keeps changing under a live save;
//! - sends an IPI to the APs, each of which counts up to the BSP's counter
//!   with the same register/memory check;
//! - prints `vmm counter: tick 0x....` every 32 ticks.
//!
//! After [`TOTAL_TICKS`] ticks it waits until every AP has caught up,
//! prints `vmm counter: ok` and exits with status 0 (debug port); any
//! failed check prints what failed and exits with status 1. A run takes
//! about four seconds; a restored run continues from the saved tick.

use iced_x86::code_asm::*;

use super::asm::{
    AP_WAIT_ITERATIONS, APIC_ICR_LOW, FLAT_GDT, ICR_INIT_ALL_BUT_SELF, ICR_SIPI_ALL_BUT_SELF,
    LOW_MIRROR, SEL_CODE32, SEL_DATA, STRINGS, StringTable, asm_err, enter_protected_mode,
    exit_with, low, pic_eoi, place_gdt, print_hex_routine, print_routine, pseudo_descriptor,
    timer_100hz,
};
use super::rom::RomImage;
use crate::error::{Error, Result};

/// Timer ticks a run lasts.
pub const TOTAL_TICKS: u32 = 400;

const ROM_SIZE: usize = 64 * 1024;
const IDT_DESCRIPTOR: usize = 0x30;
const BSP16: usize = 0x1000;
const BSP32: usize = 0x2000;
/// APs start here: SIPI vector 0xf3 means CS = 0xf300, IP = 0.
const AP16: usize = 0x3000;
const AP32: usize = 0x3400;
const SIPI_VECTOR: u32 = (LOW_MIRROR + AP16 as u32) >> 12;
const TIMER_HANDLER: usize = 0x3800;
const IPI_HANDLER: usize = 0x3880;
const DEFAULT_HANDLER: usize = 0x38c0;

/// Variables in low RAM.
const TICKS: u32 = 0x500;
const DONE: u32 = 0x504;
const DONE_NOT: u32 = 0x508;
const APS_READY: u32 = 0x50c;
const AP_FAIL: u32 = 0x510;
const AP_COUNT_TOTAL: u32 = 0x514;
const IDT_BASE: u32 = 0x1000;
/// One dword per APIC id: how far each AP has counted.
const AP_COUNTS: u32 = 0x2000;
const BSP_STACK: u32 = 0x7000;
/// AP stacks: 256 bytes each, by APIC id, from here up.
const AP_STACKS: u32 = 0x1_0000;
/// The buffer the guest fills and checks: 256 pages at 1 MiB.
const BUFFER: u32 = 0x10_0000;
const BUFFER_PAGES: u32 = 256;

const TIMER_VECTOR: u32 = 0x20;
const IPI_VECTOR: u32 = 0x31;
/// Local APIC registers (xAPIC MMIO).
const APIC_EOI: u32 = 0xfee0_00b0;
const APIC_SVR: u32 = 0xfee0_00f0;
/// ICR: fixed interrupt, to all excluding self (OR in the vector).
const ICR_FIXED_ALL_BUT_SELF: u32 = 0x000c_4000;

struct Messages {
    started: usize,
    tick: usize,
    ok: usize,
    bad_counter: usize,
    bad_buffer: usize,
    bad_ap: usize,
    no_aps: usize,
}

pub(super) fn firmware() -> Result<Vec<u8>> {
    let mut strings = StringTable::default();
    let m = Messages {
        started: strings.add("vmm counter: started\n"),
        tick: strings.add("vmm counter: tick 0x"),
        ok: strings.add("vmm counter: ok, counter and buffer intact\n"),
        bad_counter: strings.add("vmm counter: FAIL counter register/memory mismatch\n"),
        bad_buffer: strings.add("vmm counter: FAIL buffer page corrupted\n"),
        bad_ap: strings.add("vmm counter: FAIL an AP's counter is inconsistent\n"),
        no_aps: strings.add("vmm counter: FAIL the APs did not start or catch up\n"),
    };
    let mut rom = RomImage::new(ROM_SIZE)?;
    place_gdt(&mut rom, &FLAT_GDT)?;
    rom.place(IDT_DESCRIPTOR, &pseudo_descriptor(256, IDT_BASE))?;
    let pieces = [
        (STRINGS, strings.bytes().to_vec(), BSP16),
        (BSP16, real_to_protected(BSP16, BSP32)?, BSP32),
        (BSP32, bsp(&m)?, AP16),
        (AP16, real_to_protected(0, AP32)?, AP32),
        (AP32, ap()?, TIMER_HANDLER),
        (TIMER_HANDLER, timer_handler()?, IPI_HANDLER),
        (IPI_HANDLER, ipi_handler()?, DEFAULT_HANDLER),
        (DEFAULT_HANDLER, default_handler()?, ROM_SIZE - 16),
    ];
    for (at, bytes, next) in pieces {
        if at + bytes.len() > next {
            return Err(Error::Config(format!(
                "counter guest: {} bytes at ROM offset {at:#x} run into {next:#x}",
                bytes.len()
            )));
        }
        rom.place(at, &bytes)?;
    }
    rom.reset_jump(BSP16 as u16)?;
    Ok(rom.into_bytes())
}

/// Real mode at `ip` (CS base is the ROM's 64 KiB window) to 32-bit code at
/// ROM offset `target`, through the flat GDT.
fn real_to_protected(ip: usize, target: usize) -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(16).map_err(asm_err)?;
    a.cli().map_err(asm_err)?;
    a.mov(ax, LOW_MIRROR >> 4).map_err(asm_err)?;
    a.mov(ds, ax).map_err(asm_err)?;
    enter_protected_mode(&mut a, target)?;
    a.assemble(ip as u64).map_err(asm_err)
}

/// Flat data segments and a stack at `esp` (a register or a constant).
fn flat_segments(a: &mut CodeAssembler) -> Result<()> {
    a.mov(ax, u32::from(SEL_DATA)).map_err(asm_err)?;
    a.mov(ds, ax).map_err(asm_err)?;
    a.mov(es, ax).map_err(asm_err)?;
    a.mov(ss, ax).map_err(asm_err)?;
    a.cld().map_err(asm_err)
}

/// An interrupt gate's two dwords for a handler at ROM offset `handler`.
fn gate(handler: usize) -> (u32, u32) {
    let offset = low(handler);
    (
        (u32::from(SEL_CODE32) << 16) | (offset & 0xffff),
        (offset & 0xffff_0000) | 0x8e00,
    )
}

/// Emits `stamp`: EAX = page index -> EAX = the page's pattern dword,
/// EDI = the page's address, ECX = dwords per page.
fn stamp_routine(a: &mut CodeAssembler, stamp: &mut CodeLabel) -> Result<()> {
    a.set_label(stamp).map_err(asm_err)?;
    a.mov(edi, eax).map_err(asm_err)?;
    a.shl(edi, 12).map_err(asm_err)?;
    a.add(edi, BUFFER).map_err(asm_err)?;
    a.imul_3(eax, eax, 0x9e37_79b1_u32 as i32)
        .map_err(asm_err)?;
    a.xor(eax, 0x5a5a_5a5a).map_err(asm_err)?;
    a.mov(ecx, 1024).map_err(asm_err)?;
    a.ret().map_err(asm_err)
}

fn bsp(m: &Messages) -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(32).map_err(asm_err)?;
    let (mut print, mut print_hex, mut stamp) =
        (a.create_label(), a.create_label(), a.create_label());
    let (mut idt_loop, mut fill, mut wait_ready, mut no_aps) = (
        a.create_label(),
        a.create_label(),
        a.create_label(),
        a.create_label(),
    );
    let (mut main, mut process, mut quiet, mut aps_started) = (
        a.create_label(),
        a.create_label(),
        a.create_label(),
        a.create_label(),
    );
    let (mut bad_counter, mut bad_buffer, mut bad_ap, mut fail) = (
        a.create_label(),
        a.create_label(),
        a.create_label(),
        a.create_label(),
    );
    let (mut finish, mut wait_aps, mut caught_up, mut no_ipi) = (
        a.create_label(),
        a.create_label(),
        a.create_label(),
        a.create_label(),
    );
    let mut wait = a.create_label();
    flat_segments(&mut a)?;
    a.mov(esp, BSP_STACK).map_err(asm_err)?;
    for (var, value) in [
        (TICKS, 0),
        (DONE, 0),
        (DONE_NOT, u32::MAX),
        (APS_READY, 0),
        (AP_FAIL, 0),
    ] {
        a.mov(dword_ptr(var), value).map_err(asm_err)?;
    }
    a.xor(eax, eax).map_err(asm_err)?;
    a.mov(edi, AP_COUNTS).map_err(asm_err)?;
    a.mov(ecx, 256).map_err(asm_err)?;
    a.rep().stosd().map_err(asm_err)?;
    // IDT: every vector to an `iret`, then the timer and the IPI.
    let (lo, hi) = gate(DEFAULT_HANDLER);
    a.mov(edi, IDT_BASE).map_err(asm_err)?;
    a.mov(ecx, 256).map_err(asm_err)?;
    a.set_label(&mut idt_loop).map_err(asm_err)?;
    a.mov(dword_ptr(edi), lo).map_err(asm_err)?;
    a.mov(dword_ptr(edi + 4), hi).map_err(asm_err)?;
    a.add(edi, 8).map_err(asm_err)?;
    a.dec(ecx).map_err(asm_err)?;
    a.jnz(idt_loop).map_err(asm_err)?;
    for (vector, handler) in [(TIMER_VECTOR, TIMER_HANDLER), (IPI_VECTOR, IPI_HANDLER)] {
        let (lo, hi) = gate(handler);
        a.mov(dword_ptr(IDT_BASE + vector * 8), lo)
            .map_err(asm_err)?;
        a.mov(dword_ptr(IDT_BASE + vector * 8 + 4), hi)
            .map_err(asm_err)?;
    }
    a.lidt(ptr(low(IDT_DESCRIPTOR))).map_err(asm_err)?;
    a.mov(esi, low(m.started)).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    // The buffer: each page filled with its pattern.
    a.xor(ebx, ebx).map_err(asm_err)?;
    a.set_label(&mut fill).map_err(asm_err)?;
    a.mov(eax, ebx).map_err(asm_err)?;
    a.call(stamp).map_err(asm_err)?;
    a.rep().stosd().map_err(asm_err)?;
    a.inc(ebx).map_err(asm_err)?;
    a.cmp(ebx, BUFFER_PAGES).map_err(asm_err)?;
    a.jb(fill).map_err(asm_err)?;
    // AP_COUNT_TOTAL = number of APs = logical processors - 1.
    a.mov(eax, 1).map_err(asm_err)?;
    a.cpuid().map_err(asm_err)?;
    a.shr(ebx, 16).map_err(asm_err)?;
    a.and(ebx, 0xff).map_err(asm_err)?;
    a.dec(ebx).map_err(asm_err)?;
    a.mov(dword_ptr(AP_COUNT_TOTAL), ebx).map_err(asm_err)?;
    a.jz(aps_started).map_err(asm_err)?;
    a.mov(dword_ptr(APIC_ICR_LOW), ICR_INIT_ALL_BUT_SELF)
        .map_err(asm_err)?;
    for _ in 0..2 {
        a.mov(dword_ptr(APIC_ICR_LOW), ICR_SIPI_ALL_BUT_SELF | SIPI_VECTOR)
            .map_err(asm_err)?;
    }
    a.mov(ecx, AP_WAIT_ITERATIONS).map_err(asm_err)?;
    a.set_label(&mut wait_ready).map_err(asm_err)?;
    a.cmp(dword_ptr(APS_READY), ebx).map_err(asm_err)?;
    a.je(aps_started).map_err(asm_err)?;
    a.pause().map_err(asm_err)?;
    a.dec(ecx).map_err(asm_err)?;
    a.jnz(wait_ready).map_err(asm_err)?;
    a.jmp(no_aps).map_err(asm_err)?;

    a.set_label(&mut aps_started).map_err(asm_err)?;
    // Timer interrupts at vectors 0x20.., the slave PIC masked at 0x28...
    timer_100hz(&mut a, TIMER_VECTOR, TIMER_VECTOR + 8)?;
    a.xor(ebp, ebp).map_err(asm_err)?;

    // The main loop: EBP is the register copy of DONE.
    a.set_label(&mut main).map_err(asm_err)?;
    a.cli().map_err(asm_err)?;
    a.mov(eax, dword_ptr(DONE)).map_err(asm_err)?;
    a.cmp(eax, ebp).map_err(asm_err)?;
    a.jne(bad_counter).map_err(asm_err)?;
    a.mov(edx, dword_ptr(DONE_NOT)).map_err(asm_err)?;
    a.not(edx).map_err(asm_err)?;
    a.cmp(edx, eax).map_err(asm_err)?;
    a.jne(bad_counter).map_err(asm_err)?;
    a.cmp(dword_ptr(AP_FAIL), 0).map_err(asm_err)?;
    a.jne(bad_ap).map_err(asm_err)?;
    a.cmp(eax, dword_ptr(TICKS)).map_err(asm_err)?;
    a.jb(process).map_err(asm_err)?;
    a.call(wait).map_err(asm_err)?;
    a.jmp(main).map_err(asm_err)?;

    a.set_label(&mut process).map_err(asm_err)?;
    // Verify page DONE % 256 ...
    a.and(eax, BUFFER_PAGES - 1).map_err(asm_err)?;
    a.call(stamp).map_err(asm_err)?;
    a.repe().scasd().map_err(asm_err)?;
    a.jne(bad_buffer).map_err(asm_err)?;
    // ... and rewrite page (7 * DONE + 3) % 256.
    a.imul_3(eax, ebp, 7).map_err(asm_err)?;
    a.add(eax, 3).map_err(asm_err)?;
    a.and(eax, BUFFER_PAGES - 1).map_err(asm_err)?;
    a.call(stamp).map_err(asm_err)?;
    a.rep().stosd().map_err(asm_err)?;
    // One more tick done, in the register and both memory copies.
    a.inc(ebp).map_err(asm_err)?;
    a.mov(dword_ptr(DONE), ebp).map_err(asm_err)?;
    a.mov(eax, ebp).map_err(asm_err)?;
    a.not(eax).map_err(asm_err)?;
    a.mov(dword_ptr(DONE_NOT), eax).map_err(asm_err)?;
    a.cmp(dword_ptr(AP_COUNT_TOTAL), 0).map_err(asm_err)?;
    a.je(no_ipi).map_err(asm_err)?;
    a.mov(dword_ptr(APIC_ICR_LOW), ICR_FIXED_ALL_BUT_SELF | IPI_VECTOR)
        .map_err(asm_err)?;
    a.set_label(&mut no_ipi).map_err(asm_err)?;
    a.test(ebp, 31).map_err(asm_err)?;
    a.jnz(quiet).map_err(asm_err)?;
    a.mov(esi, low(m.tick)).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    a.mov(eax, ebp).map_err(asm_err)?;
    a.shr(eax, 8).map_err(asm_err)?;
    a.call(print_hex).map_err(asm_err)?;
    a.mov(eax, ebp).map_err(asm_err)?;
    a.call(print_hex).map_err(asm_err)?;
    a.mov(al, b'\n' as u32).map_err(asm_err)?;
    a.out(dx, al).map_err(asm_err)?;
    a.set_label(&mut quiet).map_err(asm_err)?;
    a.cmp(ebp, TOTAL_TICKS).map_err(asm_err)?;
    a.jae(finish).map_err(asm_err)?;
    a.jmp(main).map_err(asm_err)?;

    // Done: every AP must reach TOTAL_TICKS too (they are woken by IPIs;
    // keep sending while waiting).
    a.set_label(&mut finish).map_err(asm_err)?;
    a.mov(edx, AP_WAIT_ITERATIONS).map_err(asm_err)?;
    a.set_label(&mut wait_aps).map_err(asm_err)?;
    a.cmp(dword_ptr(AP_FAIL), 0).map_err(asm_err)?;
    a.jne(bad_ap).map_err(asm_err)?;
    a.mov(ebx, dword_ptr(AP_COUNT_TOTAL)).map_err(asm_err)?;
    a.test(ebx, ebx).map_err(asm_err)?;
    a.jz(caught_up).map_err(asm_err)?;
    // EBX = APIC id, from the highest down; any AP behind -> wait more.
    let mut next_ap = a.create_label();
    let mut behind = a.create_label();
    a.set_label(&mut next_ap).map_err(asm_err)?;
    a.cmp(dword_ptr(AP_COUNTS + ebx * 4), TOTAL_TICKS)
        .map_err(asm_err)?;
    a.jne(behind).map_err(asm_err)?;
    a.dec(ebx).map_err(asm_err)?;
    a.jnz(next_ap).map_err(asm_err)?;
    a.jmp(caught_up).map_err(asm_err)?;
    a.set_label(&mut behind).map_err(asm_err)?;
    a.mov(dword_ptr(APIC_ICR_LOW), ICR_FIXED_ALL_BUT_SELF | IPI_VECTOR)
        .map_err(asm_err)?;
    a.pause().map_err(asm_err)?;
    a.dec(edx).map_err(asm_err)?;
    a.jnz(wait_aps).map_err(asm_err)?;
    a.jmp(no_aps).map_err(asm_err)?;
    a.set_label(&mut caught_up).map_err(asm_err)?;
    a.mov(esi, low(m.ok)).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    exit_with(&mut a, 0)?;

    for (label, message) in [
        (&mut bad_counter, m.bad_counter),
        (&mut bad_buffer, m.bad_buffer),
        (&mut bad_ap, m.bad_ap),
        (&mut no_aps, m.no_aps),
    ] {
        a.set_label(label).map_err(asm_err)?;
        a.mov(esi, low(message)).map_err(asm_err)?;
        a.jmp(fail).map_err(asm_err)?;
    }
    a.set_label(&mut fail).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    exit_with(&mut a, 1)?;
    print_routine(&mut a, &mut print)?;
    print_hex_routine(&mut a, &mut print_hex)?;
    stamp_routine(&mut a, &mut stamp)?;
    wait_routine(&mut a, &mut wait)?;
    a.assemble(u64::from(low(BSP32))).map_err(asm_err)
}

/// AP code in protected mode: count up to the BSP's counter whenever an
/// IPI wakes it, keeping a register copy (ESI) of its memory counter.
fn ap() -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(32).map_err(asm_err)?;
    let (mut top, mut sleep, mut bad, mut stop, mut wait) = (
        a.create_label(),
        a.create_label(),
        a.create_label(),
        a.create_label(),
        a.create_label(),
    );
    flat_segments(&mut a)?;
    // EBX = APIC id; stack and counter slot by id.
    a.mov(eax, 1).map_err(asm_err)?;
    a.cpuid().map_err(asm_err)?;
    a.shr(ebx, 24).map_err(asm_err)?;
    a.lea(esp, dword_ptr(ebx + 1)).map_err(asm_err)?;
    a.shl(esp, 8).map_err(asm_err)?;
    a.add(esp, AP_STACKS).map_err(asm_err)?;
    a.lea(edi, dword_ptr(ebx * 4 + AP_COUNTS))
        .map_err(asm_err)?;
    a.mov(esi, dword_ptr(edi)).map_err(asm_err)?;
    a.lidt(ptr(low(IDT_DESCRIPTOR))).map_err(asm_err)?;
    // Software-enable the local APIC (spurious vector 0xff) so that it
    // accepts the BSP's fixed IPIs.
    a.mov(dword_ptr(APIC_SVR), 0x1ff).map_err(asm_err)?;
    a.lock().inc(dword_ptr(APS_READY)).map_err(asm_err)?;
    a.set_label(&mut top).map_err(asm_err)?;
    a.cli().map_err(asm_err)?;
    a.cmp(dword_ptr(edi), esi).map_err(asm_err)?;
    a.jne(bad).map_err(asm_err)?;
    a.cmp(esi, dword_ptr(DONE)).map_err(asm_err)?;
    a.jae(sleep).map_err(asm_err)?;
    a.inc(esi).map_err(asm_err)?;
    a.mov(dword_ptr(edi), esi).map_err(asm_err)?;
    a.jmp(top).map_err(asm_err)?;
    a.set_label(&mut sleep).map_err(asm_err)?;
    a.call(wait).map_err(asm_err)?;
    a.jmp(top).map_err(asm_err)?;
    a.set_label(&mut bad).map_err(asm_err)?;
    a.mov(dword_ptr(AP_FAIL), 1).map_err(asm_err)?;
    a.set_label(&mut stop).map_err(asm_err)?;
    a.cli().map_err(asm_err)?;
    a.hlt().map_err(asm_err)?;
    a.jmp(stop).map_err(asm_err)?;
    wait_routine(&mut a, &mut wait)?;
    a.assemble(u64::from(low(AP32))).map_err(asm_err)
}

/// Emits `wait`: sleeps until an interrupt with interrupts enabled, and
/// returns with them disabled.
///
/// Interrupts are only ever enabled inside `wait`, so every handler knows
/// where it interrupted: instead of `iretd` (which KVM's instruction
/// emulator, and so the software virtualization layer of the test hosts,
/// handles in real mode only) a handler drops its interrupt frame and
/// returns from `wait` with `ret`.
fn wait_routine(a: &mut CodeAssembler, wait: &mut CodeLabel) -> Result<()> {
    a.set_label(wait).map_err(asm_err)?;
    a.sti().map_err(asm_err)?;
    a.hlt().map_err(asm_err)?;
    a.cli().map_err(asm_err)?;
    a.ret().map_err(asm_err)
}

/// A handler's end: drop the interrupt frame (EIP, CS, EFLAGS; IF stays
/// clear) and return from `wait`.
fn return_from_wait(a: &mut CodeAssembler) -> Result<()> {
    a.add(esp, 12).map_err(asm_err)?;
    a.ret().map_err(asm_err)
}

/// IRQ 0: count the tick, acknowledge the PIC.
fn timer_handler() -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(32).map_err(asm_err)?;
    a.inc(dword_ptr(TICKS)).map_err(asm_err)?;
    pic_eoi(&mut a)?;
    return_from_wait(&mut a)?;
    a.assemble(u64::from(low(TIMER_HANDLER))).map_err(asm_err)
}

/// The BSP's IPI: only wakes the AP; acknowledge the local APIC.
fn ipi_handler() -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(32).map_err(asm_err)?;
    a.mov(dword_ptr(APIC_EOI), 0).map_err(asm_err)?;
    return_from_wait(&mut a)?;
    a.assemble(u64::from(low(IPI_HANDLER))).map_err(asm_err)
}

/// Any other vector (spurious interrupts): just wake up.
fn default_handler() -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(32).map_err(asm_err)?;
    return_from_wait(&mut a)?;
    a.assemble(u64::from(low(DEFAULT_HANDLER))).map_err(asm_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assembles_within_its_slots() {
        let image = firmware().unwrap();
        assert_eq!(image.len(), ROM_SIZE);
        assert_eq!(image[AP32], ap().unwrap()[0]);
        assert_eq!(
            image[DEFAULT_HANDLER..DEFAULT_HANDLER + 4],
            [0x83, 0xc4, 12, 0xc3]
        );
    }

    #[test]
    fn gates_point_into_the_low_rom_mirror() {
        let (lo, hi) = gate(TIMER_HANDLER);
        assert_eq!(lo >> 16, u32::from(SEL_CODE32));
        assert_eq!((hi & 0xffff_0000) | (lo & 0xffff), low(TIMER_HANDLER));
        assert_eq!(hi & 0xffff, 0x8e00);
    }
}
