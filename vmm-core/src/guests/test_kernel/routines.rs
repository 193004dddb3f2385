//! The routines the checks call, the strings and the stack.

use iced_x86::code_asm::*;

use super::{AsmResult, Labels, STACK_BYTES};
use crate::devices::COM1_PORT;

/// print_hex, find_param, in_ram, the strings and the stack.
pub(super) fn routines(a: &mut CodeAssembler, l: &mut Labels) -> AsmResult {
    // print_hex: rax as 16 hex digits. Clobbers rax, rcx, rdx, rsi.
    let mut h_loop = a.create_label();
    let mut h_digit = a.create_label();
    a.set_label(&mut l.print_hex)?;
    a.mov(rsi, rax)?;
    a.mov(ecx, 16)?;
    a.mov(dx, u32::from(COM1_PORT))?;
    a.set_label(&mut h_loop)?;
    a.rol(rsi, 4)?;
    a.mov(eax, esi)?;
    a.and(eax, 0xf)?;
    a.add(eax, i32::from(b'0'))?;
    a.cmp(eax, i32::from(b'9'))?;
    a.jbe(h_digit)?;
    a.add(eax, i32::from(b'a' - b'9' - 1))?;
    a.set_label(&mut h_digit)?;
    a.out(dx, al)?;
    a.dec(ecx)?;
    a.jnz(h_loop)?;
    a.ret()?;

    find_param_routine(a, &mut l.find_param)?;
    in_ram_routine(a, &mut l.in_ram)?;

    for (mut label, text) in std::mem::take(&mut l.strings) {
        a.set_label(&mut label)?;
        let mut bytes = text.into_bytes();
        bytes.push(0);
        a.db(&bytes)?;
    }
    a.db(&[0u8; STACK_BYTES])?;
    a.set_label(&mut l.stack_top)?;
    a.db(&[0u8; 16])
}

/// find_param: looks for the NUL-terminated key at rdi (with its '=') at a
/// word start of the command line at r14 and parses the lowercase hex
/// number after it (an optional "0x" prefix). Returns rax = value and
/// edx = 1, or edx = 0 when the key is absent. Clobbers rcx, rsi.
fn find_param_routine(a: &mut CodeAssembler, label: &mut CodeLabel) -> AsmResult {
    let mut scan = a.create_label();
    let mut try_here = a.create_label();
    let mut compare = a.create_label();
    let mut next = a.create_label();
    let mut matched = a.create_label();
    let mut digits = a.create_label();
    let mut add_digit = a.create_label();
    let mut end = a.create_label();
    let mut absent = a.create_label();
    a.set_label(label)?;
    a.mov(rsi, r14)?;
    a.set_label(&mut scan)?;
    a.cmp(rsi, r14)?;
    a.je(try_here)?;
    a.cmp(byte_ptr(rsi - 1), i32::from(b' '))?;
    a.jne(next)?;
    a.set_label(&mut try_here)?;
    a.xor(ecx, ecx)?;
    a.set_label(&mut compare)?;
    a.mov(al, byte_ptr(rdi + rcx))?;
    a.test(al, al)?;
    a.jz(matched)?;
    a.cmp(al, byte_ptr(rsi + rcx))?;
    a.jne(next)?;
    a.inc(rcx)?;
    a.jmp(compare)?;
    a.set_label(&mut next)?;
    a.cmp(byte_ptr(rsi), 0)?;
    a.je(absent)?;
    a.inc(rsi)?;
    a.jmp(scan)?;
    a.set_label(&mut matched)?;
    a.add(rsi, rcx)?;
    a.xor(eax, eax)?;
    a.cmp(word_ptr(rsi), i32::from(u16::from_le_bytes(*b"0x")))?;
    a.jne(digits)?;
    a.add(rsi, 2)?;
    a.set_label(&mut digits)?;
    a.movzx(ecx, byte_ptr(rsi))?;
    a.sub(ecx, i32::from(b'0'))?;
    a.cmp(ecx, 9)?;
    a.jbe(add_digit)?;
    a.sub(ecx, i32::from(b'a' - b'0'))?;
    a.cmp(ecx, 5)?;
    a.ja(end)?;
    a.add(ecx, 10)?;
    a.set_label(&mut add_digit)?;
    a.shl(rax, 4)?;
    a.add(rax, rcx)?;
    a.inc(rsi)?;
    a.jmp(digits)?;
    a.set_label(&mut end)?;
    a.mov(edx, 1)?;
    a.ret()?;
    a.set_label(&mut absent)?;
    a.xor(edx, edx)?;
    a.ret()
}

/// in_ram: ecx = 1 when rax..rdx (end exclusive) lies inside one e820 RAM
/// entry of the zero page at r15, else 0. Clobbers rdi, r10, r11.
fn in_ram_routine(a: &mut CodeAssembler, label: &mut CodeLabel) -> AsmResult {
    let mut each = a.create_label();
    let mut next = a.create_label();
    let mut no = a.create_label();
    a.set_label(label)?;
    a.movzx(r11d, byte_ptr(r15 + 0x1e8))?;
    a.lea(rdi, ptr(r15 + 0x2d0))?;
    a.set_label(&mut each)?;
    a.test(r11d, r11d)?;
    a.jz(no)?;
    a.cmp(dword_ptr(rdi + 16), 1)?;
    a.jne(next)?;
    a.mov(r10, qword_ptr(rdi))?;
    a.cmp(rax, r10)?;
    a.jb(next)?;
    a.add(r10, qword_ptr(rdi + 8))?;
    a.cmp(rdx, r10)?;
    a.ja(next)?;
    a.mov(ecx, 1)?;
    a.ret()?;
    a.set_label(&mut next)?;
    a.add(rdi, 20)?;
    a.dec(r11d)?;
    a.jmp(each)?;
    a.set_label(&mut no)?;
    a.xor(ecx, ecx)?;
    a.ret()
}
