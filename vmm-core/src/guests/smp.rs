//! The SMP guest: the BSP wakes every AP with INIT-SIPI-SIPI through its
//! local APIC; each AP reports its APIC id on COM1 and increments a shared
//! counter with a locked instruction; the BSP exits with status 0 once all
//! APs have checked in (status 1 if some never do).
//!
//! The number of vCPUs comes from CPUID leaf 1 (`EBX[23:16]`). Output lines
//! are serialised with a spinlock in RAM.

use iced_x86::code_asm::*;

use super::asm::{
    AP_WAIT_ITERATIONS, APIC_ICR_LOW, FLAT_GDT, ICR_INIT_ALL_BUT_SELF, ICR_SIPI_ALL_BUT_SELF,
    LOW_MIRROR, SEL_DATA, STRINGS, StringTable, asm_err, enter_protected_mode, exit_with, low,
    place_gdt, print_hex_routine, print_routine,
};
use super::rom::RomImage;
use crate::error::Result;

const ROM_SIZE: usize = 64 * 1024;
const BSP16: usize = 0x1000;
const BSP32: usize = 0x2000;
/// APs start here: SIPI vector 0xf3 means CS = 0xf300, IP = 0.
const AP16: usize = 0x3000;
const SIPI_VECTOR: u32 = (LOW_MIRROR + AP16 as u32) >> 12;

/// Shared variables in low RAM.
const COUNTER: u32 = 0x500;
const PRINT_LOCK: u32 = 0x504;
const BSP_STACK: u32 = 0x7000;
/// Each AP gets 256 bytes of stack below this, by APIC id.
const AP_STACKS: u32 = 0x6000;

struct Messages {
    starting: usize,
    ap: usize,
    checked_in: usize,
    all: usize,
    aps: usize,
    missing: usize,
}

pub(super) fn firmware() -> Result<Vec<u8>> {
    let mut strings = StringTable::default();
    let messages = Messages {
        starting: strings.add("vmm smp: BSP waking the APs with INIT-SIPI-SIPI\n"),
        ap: strings.add("vmm smp: AP with APIC id 0x"),
        checked_in: strings.add(" checked in\n"),
        all: strings.add("vmm smp: all 0x"),
        aps: strings.add(" APs checked in\n"),
        missing: strings.add("vmm smp: timed out waiting for the APs; checked in: 0x"),
    };
    let mut rom = RomImage::new(ROM_SIZE)?;
    place_gdt(&mut rom, &FLAT_GDT)?;
    rom.place(STRINGS, strings.bytes())?;
    rom.place(BSP16, &bsp_real_mode(&messages)?)?;
    rom.place(BSP32, &bsp_protected_mode(&messages)?)?;
    rom.place(AP16, &ap(&messages)?)?;
    rom.reset_jump(BSP16 as u16)?;
    Ok(rom.into_bytes())
}

fn bsp_real_mode(m: &Messages) -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(16).map_err(asm_err)?;
    let mut print = a.create_label();
    a.cli().map_err(asm_err)?;
    a.xor(ax, ax).map_err(asm_err)?;
    a.mov(ss, ax).map_err(asm_err)?;
    a.mov(sp, BSP_STACK).map_err(asm_err)?;
    a.mov(ax, LOW_MIRROR >> 4).map_err(asm_err)?;
    a.mov(ds, ax).map_err(asm_err)?;
    a.mov(si, m.starting as u32).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    enter_protected_mode(&mut a, BSP32)?;
    print_routine(&mut a, &mut print)?;
    a.assemble(BSP16 as u64).map_err(asm_err)
}

fn bsp_protected_mode(m: &Messages) -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(32).map_err(asm_err)?;
    let (mut print, mut print_hex) = (a.create_label(), a.create_label());
    let (mut wait, mut arrived, mut timeout) =
        (a.create_label(), a.create_label(), a.create_label());
    a.mov(ax, u32::from(SEL_DATA)).map_err(asm_err)?;
    a.mov(ds, ax).map_err(asm_err)?;
    a.mov(es, ax).map_err(asm_err)?;
    a.mov(ss, ax).map_err(asm_err)?;
    a.mov(esp, BSP_STACK).map_err(asm_err)?;
    a.mov(dword_ptr(COUNTER), 0).map_err(asm_err)?;
    a.mov(dword_ptr(PRINT_LOCK), 0).map_err(asm_err)?;
    // EBP = number of APs = logical processors - 1.
    a.mov(eax, 1).map_err(asm_err)?;
    a.cpuid().map_err(asm_err)?;
    a.shr(ebx, 16).map_err(asm_err)?;
    a.and(ebx, 0xff).map_err(asm_err)?;
    a.lea(ebp, dword_ptr(ebx - 1)).map_err(asm_err)?;
    a.test(ebp, ebp).map_err(asm_err)?;
    a.jz(arrived).map_err(asm_err)?;
    a.mov(dword_ptr(APIC_ICR_LOW), ICR_INIT_ALL_BUT_SELF)
        .map_err(asm_err)?;
    for _ in 0..2 {
        a.mov(dword_ptr(APIC_ICR_LOW), ICR_SIPI_ALL_BUT_SELF | SIPI_VECTOR)
            .map_err(asm_err)?;
    }
    a.mov(ecx, AP_WAIT_ITERATIONS).map_err(asm_err)?;
    a.set_label(&mut wait).map_err(asm_err)?;
    a.cmp(dword_ptr(COUNTER), ebp).map_err(asm_err)?;
    a.je(arrived).map_err(asm_err)?;
    a.pause().map_err(asm_err)?;
    a.dec(ecx).map_err(asm_err)?;
    a.jnz(wait).map_err(asm_err)?;
    a.jmp(timeout).map_err(asm_err)?;

    a.set_label(&mut arrived).map_err(asm_err)?;
    a.mov(esi, low(m.all)).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    a.mov(eax, ebp).map_err(asm_err)?;
    a.call(print_hex).map_err(asm_err)?;
    a.mov(esi, low(m.aps)).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    exit_with(&mut a, 0)?;

    a.set_label(&mut timeout).map_err(asm_err)?;
    a.mov(esi, low(m.missing)).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    a.mov(eax, dword_ptr(COUNTER)).map_err(asm_err)?;
    a.call(print_hex).map_err(asm_err)?;
    a.mov(al, b'\n' as u32).map_err(asm_err)?;
    a.out(dx, al).map_err(asm_err)?;
    exit_with(&mut a, 1)?;
    print_routine(&mut a, &mut print)?;
    print_hex_routine(&mut a, &mut print_hex)?;
    a.assemble(u64::from(low(BSP32))).map_err(asm_err)
}

/// AP code: real mode at CS = 0xf300, IP = 0.
fn ap(m: &Messages) -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(16).map_err(asm_err)?;
    let (mut print, mut print_hex, mut spin) =
        (a.create_label(), a.create_label(), a.create_label());
    a.cli().map_err(asm_err)?;
    // BL = initial APIC id (CPUID.1:EBX[31:24]).
    a.mov(eax, 1).map_err(asm_err)?;
    a.cpuid().map_err(asm_err)?;
    a.shr(ebx, 24).map_err(asm_err)?;
    // A stack of its own: SS = 0, SP = AP_STACKS - 256 * id.
    a.xor(ax, ax).map_err(asm_err)?;
    a.mov(ss, ax).map_err(asm_err)?;
    a.mov(es, ax).map_err(asm_err)?;
    a.mov(ax, bx).map_err(asm_err)?;
    a.shl(ax, 8).map_err(asm_err)?;
    a.mov(sp, AP_STACKS).map_err(asm_err)?;
    a.sub(sp, ax).map_err(asm_err)?;
    a.mov(ax, LOW_MIRROR >> 4).map_err(asm_err)?;
    a.mov(ds, ax).map_err(asm_err)?;
    // Take the print lock (xchg with memory is always locked).
    a.set_label(&mut spin).map_err(asm_err)?;
    a.mov(al, 1).map_err(asm_err)?;
    a.xchg(byte_ptr(PRINT_LOCK).es(), al).map_err(asm_err)?;
    a.test(al, al).map_err(asm_err)?;
    a.jnz(spin).map_err(asm_err)?;
    a.mov(si, m.ap as u32).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    a.mov(al, bl).map_err(asm_err)?;
    a.call(print_hex).map_err(asm_err)?;
    a.mov(si, m.checked_in as u32).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    a.mov(byte_ptr(PRINT_LOCK).es(), 0).map_err(asm_err)?;
    a.lock().inc(dword_ptr(COUNTER).es()).map_err(asm_err)?;
    let mut stop = a.create_label();
    a.set_label(&mut stop).map_err(asm_err)?;
    a.hlt().map_err(asm_err)?;
    a.jmp(stop).map_err(asm_err)?;
    print_routine(&mut a, &mut print)?;
    print_hex_routine(&mut a, &mut print_hex)?;
    a.assemble(0).map_err(asm_err)
}
