//! The demo guest: walks a PC from reset to 64-bit long mode.
//!
//! Stages, each announced on COM1:
//! 1. real mode at the reset vector, and the A20 gate: with the keyboard
//!    controller's A20 bit low (command 0xdd), port 0x92 closes the gate
//!    and a byte written at 0000:0500 must read back at FFFF:0510 (the
//!    real-mode wrap) and the other way round; with the gate open again
//!    the two must be different bytes;
//! 2. 32-bit protected mode (flat segments from a GDT in ROM);
//! 3. PAE paging: a value written through an alias mapping must be read back
//!    at its physical (identity-mapped) address. Some KVM implementations
//!    (the software kvm_pvm layer, for one) support only 64-bit paging and
//!    raise #GP when a 32-bit guest sets CR0.PG: the guest catches that #GP
//!    through its IDT, says so, and goes on to long mode, whose 4-level
//!    tables use the same PAE entry format;
//! 4. 64-bit long mode: EFER.LMA must be set, and a value written through a
//!    higher-half mapping must be read back through two other mappings;
//! 5. user mode: from a GDT, TSS and IDT of its own in RAM, the guest drops
//!    to CPL 3 with IRETQ, writes a marker at [`USER_MARKER`] and returns to
//!    CPL 0 through a page fault on an unmapped address; the handler checks
//!    the faulting CS, CR2 and the marker.
//!
//! It exits through the debug-exit port with status 0 only if every check
//! passed, otherwise with the number of the failed stage.

use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, Code, Instruction};

use super::asm::{
    FLAT_GDT, LOW_MIRROR, SEL_CODE32, SEL_DATA, STRINGS, StringTable, asm_err,
    enter_protected_mode, exit_with, low, outb, place_gdt, print_routine, pseudo_descriptor,
};
use super::rom::RomImage;
use crate::devices::{I8042_PORT, SYSTEM_CONTROL_A_PORT};
use crate::error::Result;

const ROM_SIZE: usize = 64 * 1024;

const IDT_DESCRIPTOR: usize = 0x28;
/// 32-bit IDT with gates up to #GP (vector 13).
const IDT: usize = 0x40;
const IDT_ENTRIES: usize = 14;
const CODE16: usize = 0x1000;
const CODE32: usize = 0x2000;
const CODE64: usize = 0x3000;

const SEL_CODE64: u16 = 0x18;

/// Page tables in low RAM.
const PML4: u32 = 0x10000;
const PDPT_LONG: u32 = 0x11000;
const PDPT_PAE: u32 = 0x12000;
const PD: u32 = 0x13000;
const TABLES_END: u32 = 0x14000;
const STACK_TOP: u32 = 0x8000;

/// The A20 check's byte below 1 MiB (segment 0) and its offset in segment
/// 0xFFFF: linear 0x10_0500, which wraps onto it with the gate closed.
const A20_LOW: u32 = 0x500;
const A20_WRAP: u32 = A20_LOW + 0x10;
/// i8042 commands that clear and set the output port's A20 bit.
const KBC_A20_OFF: u32 = 0xdd;
const KBC_A20_ON: u32 = 0xdf;
/// Port 0x92's ALT_A20 bit.
const ALT_A20: u32 = 0x02;

/// Page-directory entry: present, writable, user, 2 MiB page, frame 0.
const PDE_2M_FRAME0: u32 = 0x87;
/// Upper-level entry flags: present, writable, user (the user-mode stage
/// runs on the identity map).
const PRESENT_RW: u32 = 0x7;
/// Where the checks put their markers (physical; identity-mapped).
const PAE_MARKER: u32 = 0x3_0000;
const LONG_MARKER: u32 = 0x4_0000;
/// PD entry 1 maps 2..4 MiB onto frame 0: an alias of the first 2 MiB.
const ALIAS: u32 = 0x20_0000;
/// PML4 entry 256 maps the bottom of the higher half onto the same tables.
const HIGH_HALF: u64 = 0xffff_8000_0000_0000;

/// The user-mode stage: a GDT with DPL-3 segments and a TSS, an IDT with
/// one gate (the page fault, vector 14), all in RAM. CPL-3 code comes back
/// to CPL 0 by touching a page that is not mapped.
const USER_GDT: u64 = 0x1_5000;
const USER_GDT_DESCRIPTOR: u64 = 0x1_5100;
const TSS: u64 = 0x1_6000;
const USER_IDT: u64 = 0x1_7000;
const USER_IDT_DESCRIPTOR: u64 = 0x1_7810;
const PAGE_FAULT_VECTOR: u64 = 14;
/// Not mapped by the demo's page tables (PML4 entry 1).
const UNMAPPED: u64 = 0x80_0000_0000;
/// Where CPL-3 code writes its marker (a data watchpoint target).
pub(crate) const USER_MARKER: u64 = 0x1_8000;
const USER_STACK_TOP: u64 = 0xa000;
const KERNEL_STACK_TOP: u64 = 0x9000;
const SEL_USER_DATA: u64 = 0x20 | 3;
const SEL_USER_CODE64: u64 = 0x28 | 3;
const SEL_TSS: u16 = 0x30;
const USER_PATTERN: u64 = 0x0bad_cafe_feed_f00d;

const PAE_PATTERN: u32 = 0x5ae1_c0de;
const LONG_PATTERN: u64 = 0x0123_4567_89ab_cdef;

pub(super) fn firmware() -> Result<Vec<u8>> {
    let mut strings = StringTable::default();
    let real = strings.add("vmm demo: real mode\n");
    let a20_ok = strings.add(
        "vmm demo: A20 gate: FFFF:0510 wraps to 0000:0500 when closed, not when open, check ok\n",
    );
    let a20_bad = strings.add("vmm demo: A20 gate check FAILED\n");
    let protected = strings.add("vmm demo: protected mode\n");
    let pae_ok = strings.add("vmm demo: PAE paging, paged memory check ok\n");
    let pae_bad = strings.add("vmm demo: PAE paging, paged memory check FAILED\n");
    let pae_refused = strings.add(
        "vmm demo: PAE paging refused by this host's KVM (#GP on CR0.PG); continuing with long-mode paging\n",
    );
    let long_ok = strings.add("vmm demo: long mode, paged memory check ok\n");
    let long_bad = strings.add("vmm demo: long mode check FAILED\n");
    let user_ok =
        strings.add("vmm demo: user mode (CPL 3) write and page fault back to CPL 0, check ok\n");
    let user_bad = strings.add("vmm demo: user mode check FAILED\n");
    let done = strings.add("vmm demo: all checks passed\n");

    let mut rom = RomImage::new(ROM_SIZE)?;
    place_gdt(&mut rom, &GDT_ENTRIES)?;
    rom.place(STRINGS, strings.bytes())?;
    rom.place(CODE16, &real_mode(real, a20_ok, a20_bad)?)?;
    let (code32, gp_handler) = protected_mode(protected, pae_ok, pae_bad, pae_refused)?;
    rom.place(CODE32, &code32)?;
    rom.place(IDT, &idt(gp_handler))?;
    rom.place(IDT_DESCRIPTOR, &pseudo_descriptor(IDT_ENTRIES, low(IDT)))?;
    let user = UserStage {
        ok: user_ok,
        bad: user_bad,
    };
    rom.place(CODE64, &long_mode(long_ok, long_bad, &user, done)?)?;
    rom.reset_jump(CODE16 as u16)?;
    Ok(rom.into_bytes())
}

/// The flat segments plus a 64-bit code segment (0x18).
const GDT_ENTRIES: [u64; 4] = [FLAT_GDT[0], FLAT_GDT[1], FLAT_GDT[2], 0x00af_9b00_0000_ffff];

/// A 32-bit IDT whose only present gate is #GP, an interrupt gate to
/// `gp_handler` in the flat code segment.
fn idt(gp_handler: u32) -> Vec<u8> {
    let mut table = vec![0u8; IDT_ENTRIES * 8];
    let gate = &mut table[13 * 8..14 * 8];
    gate[0..2].copy_from_slice(&(gp_handler as u16).to_le_bytes());
    gate[2..4].copy_from_slice(&SEL_CODE32.to_le_bytes());
    gate[5] = 0x8e; // present, DPL 0, 32-bit interrupt gate
    gate[6..8].copy_from_slice(&((gp_handler >> 16) as u16).to_le_bytes());
    table
}

fn real_mode(banner: usize, a20_ok: usize, a20_bad: usize) -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(16).map_err(asm_err)?;
    let mut print = a.create_label();
    let mut a20_fail = a.create_label();
    a.cli().map_err(asm_err)?;
    a.xor(ax, ax).map_err(asm_err)?;
    a.mov(ss, ax).map_err(asm_err)?;
    a.mov(sp, STACK_TOP).map_err(asm_err)?;
    // DS points at the ROM's low mirror so that offsets in the image work.
    a.mov(ax, LOW_MIRROR >> 4).map_err(asm_err)?;
    a.mov(ds, ax).map_err(asm_err)?;
    a.mov(si, banner as u32).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    a20_check(&mut a, a20_fail)?;
    a.mov(si, a20_ok as u32).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    enter_protected_mode(&mut a, CODE32)?;
    a.set_label(&mut a20_fail).map_err(asm_err)?;
    a.mov(si, a20_bad as u32).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    exit_with(&mut a, 1)?;
    print_routine(&mut a, &mut print)?;
    a.assemble(CODE16 as u64).map_err(asm_err)
}

/// The A20 check of stage 1 (real mode): jumps to `fail` on a mismatch.
/// Leaves the gate open, driven by both sources. Clobbers AX, ES and FS.
fn a20_check(a: &mut CodeAssembler, fail: CodeLabel) -> Result<()> {
    let low = || byte_ptr(A20_LOW).es();
    let wrap = || byte_ptr(A20_WRAP).fs();
    a.xor(ax, ax).map_err(asm_err)?;
    a.mov(es, ax).map_err(asm_err)?;
    a.mov(ax, 0xffff_u32).map_err(asm_err)?;
    a.mov(fs, ax).map_err(asm_err)?;
    outb(a, u32::from(I8042_PORT) + 4, KBC_A20_OFF)?;
    let port92 = u32::from(SYSTEM_CONTROL_A_PORT);
    outb(a, port92, 0)?;
    // Closed: each address sees what was written at the other.
    a.mov(low(), 0x33_u32).map_err(asm_err)?;
    a.cmp(wrap(), 0x33).map_err(asm_err)?;
    a.jne(fail).map_err(asm_err)?;
    a.mov(wrap(), 0x44_u32).map_err(asm_err)?;
    a.cmp(low(), 0x44).map_err(asm_err)?;
    a.jne(fail).map_err(asm_err)?;
    // Open: two bytes.
    outb(a, port92, ALT_A20)?;
    a.mov(wrap(), 0x55_u32).map_err(asm_err)?;
    a.mov(low(), 0x66_u32).map_err(asm_err)?;
    a.cmp(wrap(), 0x55).map_err(asm_err)?;
    a.jne(fail).map_err(asm_err)?;
    a.cmp(low(), 0x66).map_err(asm_err)?;
    a.jne(fail).map_err(asm_err)?;
    outb(a, u32::from(I8042_PORT) + 4, KBC_A20_ON)
}

/// Returns the code and the address of its #GP handler.
fn protected_mode(
    banner: usize,
    pae_ok: usize,
    pae_bad: usize,
    pae_refused: usize,
) -> Result<(Vec<u8>, u32)> {
    let mut a = CodeAssembler::new(32).map_err(asm_err)?;
    let mut print = a.create_label();
    let mut fail = a.create_label();
    let mut gp_handler = a.create_label();
    let mut long_mode = a.create_label();
    a.mov(ax, u32::from(SEL_DATA)).map_err(asm_err)?;
    a.mov(ds, ax).map_err(asm_err)?;
    a.mov(es, ax).map_err(asm_err)?;
    a.mov(ss, ax).map_err(asm_err)?;
    a.mov(esp, STACK_TOP).map_err(asm_err)?;
    a.mov(esi, low(banner)).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    a.lidt(ptr(low(IDT_DESCRIPTOR))).map_err(asm_err)?;

    // Clear the page-table area, then build the PAE tables:
    // PDPT[0] -> PD; PD[0] identity-maps 0..2 MiB, PD[1] aliases it at 2 MiB.
    a.mov(edi, PML4).map_err(asm_err)?;
    a.xor(eax, eax).map_err(asm_err)?;
    a.mov(ecx, (TABLES_END - PML4) / 4).map_err(asm_err)?;
    a.rep().stosd().map_err(asm_err)?;
    a.mov(dword_ptr(PDPT_PAE), PD | 1).map_err(asm_err)?;
    a.mov(dword_ptr(PD), PDE_2M_FRAME0).map_err(asm_err)?;
    a.mov(dword_ptr(PD + 8), PDE_2M_FRAME0).map_err(asm_err)?;
    a.mov(eax, PDPT_PAE).map_err(asm_err)?;
    a.mov(cr3, eax).map_err(asm_err)?;
    a.mov(eax, cr4).map_err(asm_err)?;
    a.or(eax, 1 << 5).map_err(asm_err)?; // CR4.PAE
    a.mov(cr4, eax).map_err(asm_err)?;
    a.mov(eax, cr0).map_err(asm_err)?;
    a.or(eax, 1u32 << 31).map_err(asm_err)?; // CR0.PG
    a.mov(cr0, eax).map_err(asm_err)?;

    // Check: write through the alias, read at the physical address.
    a.mov(dword_ptr(ALIAS + PAE_MARKER), PAE_PATTERN)
        .map_err(asm_err)?;
    a.mov(eax, dword_ptr(PAE_MARKER)).map_err(asm_err)?;
    a.cmp(eax, PAE_PATTERN).map_err(asm_err)?;
    a.jne(fail).map_err(asm_err)?;
    a.mov(esi, low(pae_ok)).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;

    // Long mode: paging off, 4-level tables, EFER.LME, paging on, far jump.
    a.set_label(&mut long_mode).map_err(asm_err)?;
    a.mov(eax, cr0).map_err(asm_err)?;
    a.and(eax, 0x7fff_ffff).map_err(asm_err)?;
    a.mov(cr0, eax).map_err(asm_err)?;
    a.mov(dword_ptr(PML4), PDPT_LONG | PRESENT_RW)
        .map_err(asm_err)?;
    a.mov(dword_ptr(PML4 + 256 * 8), PDPT_LONG | PRESENT_RW)
        .map_err(asm_err)?;
    a.mov(dword_ptr(PDPT_LONG), PD | PRESENT_RW)
        .map_err(asm_err)?;
    a.mov(eax, PML4).map_err(asm_err)?;
    a.mov(cr3, eax).map_err(asm_err)?;
    a.mov(ecx, 0xc000_0080u32).map_err(asm_err)?; // IA32_EFER
    a.rdmsr().map_err(asm_err)?;
    a.or(eax, 1 << 8).map_err(asm_err)?; // LME
    a.wrmsr().map_err(asm_err)?;
    a.mov(eax, cr0).map_err(asm_err)?;
    a.or(eax, 1u32 << 31).map_err(asm_err)?;
    a.mov(cr0, eax).map_err(asm_err)?;
    let far = Instruction::with_far_branch(Code::Jmp_ptr1632, SEL_CODE64, low(CODE64))
        .map_err(asm_err)?;
    a.add_instruction(far).map_err(asm_err)?;

    a.set_label(&mut fail).map_err(asm_err)?;
    a.mov(esi, low(pae_bad)).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    exit_with(&mut a, 3)?;

    // #GP: only the CR0.PG write can raise it; anything else is a failure.
    a.set_label(&mut gp_handler).map_err(asm_err)?;
    a.mov(esp, STACK_TOP).map_err(asm_err)?;
    a.mov(eax, cr0).map_err(asm_err)?;
    a.test(eax, 1u32 << 31).map_err(asm_err)?;
    a.jnz(fail).map_err(asm_err)?;
    a.mov(esi, low(pae_refused)).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    a.jmp(long_mode).map_err(asm_err)?;

    print_routine(&mut a, &mut print)?;
    let base = u64::from(low(CODE32));
    let assembled = a
        .assemble_options(base, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)
        .map_err(asm_err)?;
    let handler = assembled.label_ip(&gp_handler).map_err(asm_err)?;
    Ok((assembled.inner.code_buffer, handler as u32))
}

/// Messages of the user-mode stage.
struct UserStage {
    ok: usize,
    bad: usize,
}

/// A 64-bit memory store of a 64-bit constant.
fn store_u64(a: &mut CodeAssembler, at: u64, value: u64) -> Result<()> {
    a.mov(rax, value).map_err(asm_err)?;
    a.mov(qword_ptr(at), rax).map_err(asm_err)
}

/// Builds the user-mode stage's GDT (flat segments as in ROM, DPL-3 data
/// and 64-bit code, a 64-bit TSS), TSS and IDT in RAM and loads them.
fn install_user_mode_tables(a: &mut CodeAssembler, handler: CodeLabel) -> Result<()> {
    let tss_descriptor_low = 0x67 | (TSS & 0xff_ffff) << 16 | 0x89 << 40 | (TSS >> 24 & 0xff) << 56;
    let descriptors = [
        GDT_ENTRIES[0],
        GDT_ENTRIES[1],
        GDT_ENTRIES[2],
        GDT_ENTRIES[3],
        0x00cf_f300_0000_ffff, // 0x20 data, DPL 3
        0x00af_fb00_0000_ffff, // 0x28 code64, DPL 3
        tss_descriptor_low,    // 0x30 TSS (16 bytes)
        TSS >> 32,
    ];
    for (i, &d) in descriptors.iter().enumerate() {
        store_u64(a, USER_GDT + 8 * i as u64, d)?;
    }
    store_u64(
        a,
        USER_GDT_DESCRIPTOR,
        (descriptors.len() as u64 * 8 - 1) | USER_GDT << 16,
    )?;
    store_u64(a, USER_GDT_DESCRIPTOR + 8, 0)?;
    a.lgdt(ptr(USER_GDT_DESCRIPTOR)).map_err(asm_err)?;
    store_u64(a, TSS + 4, KERNEL_STACK_TOP)?; // RSP0
    a.mov(ax, u32::from(SEL_TSS)).map_err(asm_err)?;
    a.ltr(ax).map_err(asm_err)?;
    // Page-fault gate: 64-bit interrupt gate to the kernel code segment.
    a.lea(rbx, ptr(handler)).map_err(asm_err)?;
    a.mov(rax, rbx).map_err(asm_err)?;
    a.and(eax, 0xffff).map_err(asm_err)?;
    a.mov(rcx, rbx).map_err(asm_err)?;
    a.shr(rcx, 16).map_err(asm_err)?;
    a.and(ecx, 0xffff).map_err(asm_err)?;
    a.shl(rcx, 48).map_err(asm_err)?;
    a.or(rax, rcx).map_err(asm_err)?;
    a.mov(rcx, 0xee00_u64 << 32 | u64::from(SEL_CODE64) << 16)
        .map_err(asm_err)?;
    a.or(rax, rcx).map_err(asm_err)?;
    a.mov(qword_ptr(USER_IDT + PAGE_FAULT_VECTOR * 16), rax)
        .map_err(asm_err)?;
    a.shr(rbx, 32).map_err(asm_err)?;
    a.mov(qword_ptr(USER_IDT + PAGE_FAULT_VECTOR * 16 + 8), rbx)
        .map_err(asm_err)?;
    store_u64(
        a,
        USER_IDT_DESCRIPTOR,
        ((PAGE_FAULT_VECTOR + 1) * 16 - 1) | USER_IDT << 16,
    )?;
    store_u64(a, USER_IDT_DESCRIPTOR + 8, 0)?;
    a.lidt(ptr(USER_IDT_DESCRIPTOR)).map_err(asm_err)
}

fn long_mode(long_ok: usize, long_bad: usize, user: &UserStage, done: usize) -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(64).map_err(asm_err)?;
    let mut print = a.create_label();
    let mut fail = a.create_label();
    let (mut user_code, mut page_fault, mut user_fail) =
        (a.create_label(), a.create_label(), a.create_label());
    a.mov(ax, u32::from(SEL_DATA)).map_err(asm_err)?;
    a.mov(ds, ax).map_err(asm_err)?;
    a.mov(ss, ax).map_err(asm_err)?;
    a.mov(rsp, u64::from(STACK_TOP)).map_err(asm_err)?;

    // EFER.LMA (bit 10) must be set by now.
    a.mov(ecx, 0xc000_0080u32).map_err(asm_err)?;
    a.rdmsr().map_err(asm_err)?;
    a.test(eax, 1 << 10).map_err(asm_err)?;
    a.jz(fail).map_err(asm_err)?;

    // Write through the higher half, read through the identity map and the alias.
    a.mov(rax, HIGH_HALF + u64::from(LONG_MARKER))
        .map_err(asm_err)?;
    a.mov(rbx, LONG_PATTERN).map_err(asm_err)?;
    a.mov(qword_ptr(rax), rbx).map_err(asm_err)?;
    a.mov(rcx, qword_ptr(u64::from(LONG_MARKER)))
        .map_err(asm_err)?;
    a.cmp(rcx, rbx).map_err(asm_err)?;
    a.jne(fail).map_err(asm_err)?;
    a.mov(rcx, qword_ptr(u64::from(ALIAS + LONG_MARKER)))
        .map_err(asm_err)?;
    a.cmp(rcx, rbx).map_err(asm_err)?;
    a.jne(fail).map_err(asm_err)?;

    a.mov(esi, low(long_ok)).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;

    // User mode: drop to CPL 3 with IRETQ; the CPL-3 code writes a marker
    // and comes back through a page fault.
    install_user_mode_tables(&mut a, page_fault)?;
    a.push(SEL_USER_DATA as i32).map_err(asm_err)?;
    a.push(USER_STACK_TOP as i32).map_err(asm_err)?;
    a.push(0x2).map_err(asm_err)?; // RFLAGS: interrupts off, IOPL 0
    a.push(SEL_USER_CODE64 as i32).map_err(asm_err)?;
    a.lea(rax, ptr(user_code)).map_err(asm_err)?;
    a.push(rax).map_err(asm_err)?;
    a.iretq().map_err(asm_err)?;

    a.set_label(&mut user_code).map_err(asm_err)?;
    a.mov(rax, USER_PATTERN).map_err(asm_err)?;
    a.mov(qword_ptr(USER_MARKER), rax).map_err(asm_err)?;
    a.mov(rax, UNMAPPED).map_err(asm_err)?;
    a.mov(rax, qword_ptr(rax)).map_err(asm_err)?;
    a.jmp(user_code).map_err(asm_err)?;

    // Back at CPL 0: the faulting CS (on the exception frame, above the
    // error code and RIP) must be the user code segment, CR2 the unmapped
    // address, and the marker must hold the pattern.
    a.set_label(&mut page_fault).map_err(asm_err)?;
    a.mov(rax, cr2).map_err(asm_err)?;
    a.mov(rcx, UNMAPPED).map_err(asm_err)?;
    a.cmp(rax, rcx).map_err(asm_err)?;
    a.jne(user_fail).map_err(asm_err)?;
    a.mov(rax, qword_ptr(rsp + 16)).map_err(asm_err)?;
    a.cmp(rax, SEL_USER_CODE64 as i32).map_err(asm_err)?;
    a.jne(user_fail).map_err(asm_err)?;
    a.mov(rax, USER_PATTERN).map_err(asm_err)?;
    a.cmp(qword_ptr(USER_MARKER), rax).map_err(asm_err)?;
    a.jne(user_fail).map_err(asm_err)?;
    a.mov(esi, low(user.ok)).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    a.mov(esi, low(done)).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    exit_with(&mut a, 0)?;

    a.set_label(&mut user_fail).map_err(asm_err)?;
    a.mov(esi, low(user.bad)).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    exit_with(&mut a, 5)?;

    a.set_label(&mut fail).map_err(asm_err)?;
    a.mov(esi, low(long_bad)).map_err(asm_err)?;
    a.call(print).map_err(asm_err)?;
    exit_with(&mut a, 4)?;
    print_routine(&mut a, &mut print)?;
    a.assemble(u64::from(low(CODE64))).map_err(asm_err)
}
