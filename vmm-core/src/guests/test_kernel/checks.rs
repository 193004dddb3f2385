//! The ten checks, each emitted as code that jumps to its failure label
//! when it does not hold.

use iced_x86::code_asm::*;

use super::AsmResult;
use crate::boot::header::{BOOT_FLAG, HDRS_MAGIC};
use crate::boot::layout::{LAPIC_ADDR, MPTABLE_ADDR};

/// What the checks call or refer to.
#[derive(Clone, Copy)]
pub(super) struct Calls {
    pub(super) print: CodeLabel,
    pub(super) print_hex: CodeLabel,
    pub(super) find_param: CodeLabel,
    pub(super) in_ram: CodeLabel,
    pub(super) entry: CodeLabel,
    pub(super) key_ram: CodeLabel,
    pub(super) key_sum: CodeLabel,
    pub(super) key_cpus: CodeLabel,
    pub(super) msg_ram: CodeLabel,
    pub(super) msg_nl: CodeLabel,
}

/// Emits one check, jumping to `fail` when it does not hold.
pub(super) type Section = fn(&mut CodeAssembler, Calls, CodeLabel) -> AsmResult;

/// Check 1: It runs at `code32_start + 0x200`.
pub(super) fn entry_point(a: &mut CodeAssembler, c: Calls, fail: CodeLabel) -> AsmResult {
    a.lea(rax, ptr(c.entry))?;
    a.mov(ecx, dword_ptr(r15 + 0x214))?;
    a.add(rcx, 0x200)?;
    a.cmp(rax, rcx)?;
    a.jne(fail)?;
    Ok(())
}

/// Check 2: Long mode, paging, interrupts off, the boot selectors.
pub(super) fn cpu_mode(a: &mut CodeAssembler, _: Calls, fail: CodeLabel) -> AsmResult {
    a.pushfq()?;
    a.pop(rax)?;
    a.test(eax, 0x200)?;
    a.jnz(fail)?;
    a.mov(rax, cr0)?;
    a.mov(ecx, 0x8000_0001u32)?;
    a.and(rax, rcx)?;
    a.cmp(rax, rcx)?;
    a.jne(fail)?;
    a.mov(rax, cr4)?;
    a.test(eax, 0x20)?;
    a.jz(fail)?;
    a.mov(ecx, 0xc000_0080u32)?;
    a.rdmsr()?;
    a.test(eax, 0x400)?;
    a.jz(fail)?;
    a.mov(ax, cs)?;
    a.cmp(ax, 0x10)?;
    a.jne(fail)?;
    for seg in [ds, es, ss] {
        a.mov(ax, seg)?;
        a.cmp(ax, 0x18)?;
        a.jne(fail)?;
    }
    Ok(())
}

/// Check 3: RSI points at a zero page with the setup header's magic values and a loader type.
pub(super) fn zero_page(a: &mut CodeAssembler, _: Calls, fail: CodeLabel) -> AsmResult {
    a.cmp(dword_ptr(r15 + 0x202), HDRS_MAGIC as i32)?;
    a.jne(fail)?;
    a.cmp(word_ptr(r15 + 0x1fe), i32::from(BOOT_FLAG))?;
    a.jne(fail)?;
    a.cmp(word_ptr(r15 + 0x206), 0x020c)?;
    a.jb(fail)?;
    a.cmp(byte_ptr(r15 + 0x210), 0)?;
    a.je(fail)?;
    Ok(())
}

/// Check 4: The command line: in RAM, within `cmdline_size`, carrying the expectations (r12, r13, rbp).
pub(super) fn command_line(a: &mut CodeAssembler, c: Calls, fail: CodeLabel) -> AsmResult {
    a.mov(r14d, dword_ptr(r15 + 0x228))?;
    a.mov(eax, dword_ptr(r15 + 0xc8))?;
    a.shl(rax, 32)?;
    a.or(r14, rax)?;
    a.jz(fail)?;
    // strlen -> rcx
    let mut len_loop = a.create_label();
    let mut len_done = a.create_label();
    a.xor(ecx, ecx)?;
    a.set_label(&mut len_loop)?;
    a.cmp(byte_ptr(r14 + rcx), 0)?;
    a.je(len_done)?;
    a.inc(rcx)?;
    a.jmp(len_loop)?;
    a.set_label(&mut len_done)?;
    a.mov(eax, dword_ptr(r15 + 0x238))?;
    a.cmp(rcx, rax)?;
    a.ja(fail)?;
    a.mov(rax, r14)?;
    a.lea(rdx, ptr(r14 + rcx + 1))?;
    a.call(c.in_ram)?;
    a.test(ecx, ecx)?;
    a.jz(fail)?;
    for (key, reg) in [(c.key_ram, r12), (c.key_sum, r13), (c.key_cpus, rbp)] {
        a.lea(rdi, ptr(key))?;
        a.call(c.find_param)?;
        a.test(edx, edx)?;
        a.jz(fail)?;
        a.mov(reg, rax)?;
    }
    Ok(())
}

/// Check 5: The e820 map: sorted, disjoint, RAM totals the expectation and avoids the holes.
pub(super) fn e820_map(a: &mut CodeAssembler, c: Calls, fail: CodeLabel) -> AsmResult {
    let mut e_loop = a.create_label();
    let mut e_next = a.create_label();
    let mut e_not_low = a.create_label();
    a.movzx(ecx, byte_ptr(r15 + 0x1e8))?;
    a.test(ecx, ecx)?;
    a.jz(fail)?;
    a.cmp(ecx, 128)?;
    a.ja(fail)?;
    a.lea(rsi, ptr(r15 + 0x2d0))?;
    a.xor(r8d, r8d)?; // RAM total
    a.xor(r9d, r9d)?; // end of the previous entry
    a.set_label(&mut e_loop)?;
    a.mov(rax, qword_ptr(rsi))?;
    a.cmp(rax, r9)?;
    a.jb(fail)?;
    a.mov(rdx, qword_ptr(rsi + 8))?;
    a.test(rdx, rdx)?;
    a.jz(fail)?;
    a.add(rdx, rax)?;
    a.jc(fail)?;
    a.mov(r9, rdx)?;
    a.cmp(dword_ptr(rsi + 16), 1)?;
    a.jne(e_next)?;
    a.add(r8, qword_ptr(rsi + 8))?;
    // RAM must not touch the legacy hole 0xa0000..0x100000 ...
    a.cmp(rax, 0x10_0000)?;
    a.jae(e_not_low)?;
    a.cmp(rdx, 0xa_0000)?;
    a.ja(fail)?;
    a.set_label(&mut e_not_low)?;
    // ... nor the I/O APIC / local APIC / ROM range 0xfec00000..4 GiB.
    a.mov(r10, 1u64 << 32)?;
    a.cmp(rax, r10)?;
    a.jae(e_next)?;
    a.mov(r10d, 0xfec0_0000u32)?;
    a.cmp(rdx, r10)?;
    a.ja(fail)?;
    a.set_label(&mut e_next)?;
    a.add(rsi, 20)?;
    a.dec(ecx)?;
    a.jnz(e_loop)?;
    a.push(r8)?;
    a.lea(rsi, ptr(c.msg_ram))?;
    a.call(c.print)?;
    a.pop(rax)?;
    a.push(rax)?;
    a.call(c.print_hex)?;
    a.lea(rsi, ptr(c.msg_nl))?;
    a.call(c.print)?;
    a.pop(r8)?;
    a.cmp(r8, r12)?;
    a.jne(fail)?;
    Ok(())
}

/// Check 6: The zero page and the kernel's `init_size` span lie in e820 RAM.
pub(super) fn layout(a: &mut CodeAssembler, c: Calls, fail: CodeLabel) -> AsmResult {
    a.mov(rax, r15)?;
    a.lea(rdx, ptr(r15 + 0x1000))?;
    a.call(c.in_ram)?;
    a.test(ecx, ecx)?;
    a.jz(fail)?;
    a.mov(eax, dword_ptr(r15 + 0x214))?;
    a.mov(edx, dword_ptr(r15 + 0x260))?;
    a.add(rdx, rax)?;
    a.call(c.in_ram)?;
    a.test(ecx, ecx)?;
    a.jz(fail)?;
    Ok(())
}

/// Check 7: The initrd: aligned, in RAM, below `initrd_addr_max`, with the expected byte sum.
pub(super) fn initrd(a: &mut CodeAssembler, c: Calls, fail: CodeLabel) -> AsmResult {
    let mut sum_loop = a.create_label();
    a.mov(eax, dword_ptr(r15 + 0x218))?;
    a.mov(edx, dword_ptr(r15 + 0xc0))?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.mov(r8d, dword_ptr(r15 + 0x21c))?;
    a.mov(edx, dword_ptr(r15 + 0xc4))?;
    a.shl(rdx, 32)?;
    a.or(r8, rdx)?;
    a.jz(fail)?;
    a.test(eax, 0xfff)?;
    a.jnz(fail)?;
    a.lea(rdx, ptr(rax + r8))?;
    a.mov(r9d, dword_ptr(r15 + 0x22c))?;
    a.lea(r10, ptr(rdx - 1))?;
    a.cmp(r10, r9)?;
    a.ja(fail)?;
    a.call(c.in_ram)?;
    a.test(ecx, ecx)?;
    a.jz(fail)?;
    a.xor(r9d, r9d)?;
    a.mov(rsi, rax)?;
    a.mov(rcx, r8)?;
    a.set_label(&mut sum_loop)?;
    a.movzx(edx, byte_ptr(rsi))?;
    a.add(r9d, edx)?;
    a.inc(rsi)?;
    a.dec(rcx)?;
    a.jnz(sum_loop)?;
    a.cmp(r9d, r13d)?;
    a.jne(fail)?;
    Ok(())
}

/// Check 8: The hypervisor bit and the KVM signature leaf.
pub(super) fn cpuid(a: &mut CodeAssembler, _: Calls, fail: CodeLabel) -> AsmResult {
    a.mov(eax, 1)?;
    a.cpuid()?;
    a.bt(ecx, 31)?;
    a.jnc(fail)?;
    a.mov(eax, 0x4000_0000u32)?;
    a.cpuid()?;
    a.cmp(ebx, u32::from_le_bytes(*b"KVMK") as i32)?;
    a.jne(fail)?;
    a.cmp(ecx, u32::from_le_bytes(*b"VMKV") as i32)?;
    a.jne(fail)?;
    Ok(())
}

/// Check 9: A valid MP table listing the expected number of processors.
pub(super) fn mp_table(a: &mut CodeAssembler, _: Calls, fail: CodeLabel) -> AsmResult {
    let mut fp_sum = a.create_label();
    let mut mp_loop = a.create_label();
    let mut mp_small = a.create_label();
    a.mov(esi, MPTABLE_ADDR as u32)?;
    a.cmp(dword_ptr(rsi), u32::from_le_bytes(*b"_MP_") as i32)?;
    a.jne(fail)?;
    a.xor(eax, eax)?;
    a.mov(ecx, 16)?;
    a.set_label(&mut fp_sum)?;
    a.add(al, byte_ptr(rsi + rcx - 1))?;
    a.dec(ecx)?;
    a.jnz(fp_sum)?;
    a.test(al, al)?;
    a.jnz(fail)?;
    a.mov(esi, dword_ptr(rsi + 4))?;
    a.cmp(dword_ptr(rsi), u32::from_le_bytes(*b"PCMP") as i32)?;
    a.jne(fail)?;
    a.movzx(ecx, word_ptr(rsi + 34))?;
    a.add(rsi, 44)?;
    a.xor(edx, edx)?; // processors seen
    a.test(ecx, ecx)?;
    a.jz(fail)?;
    a.set_label(&mut mp_loop)?;
    a.cmp(byte_ptr(rsi), 0)?;
    a.jne(mp_small)?;
    a.inc(edx)?;
    a.add(rsi, 12)?;
    a.set_label(&mut mp_small)?;
    a.add(rsi, 8)?;
    a.dec(ecx)?;
    a.jnz(mp_loop)?;
    a.cmp(rdx, rbp)?;
    a.jne(fail)?;
    Ok(())
}

/// Check 10: The in-kernel local APIC answers.
pub(super) fn local_apic(a: &mut CodeAssembler, _: Calls, fail: CodeLabel) -> AsmResult {
    a.mov(ecx, LAPIC_ADDR + 0x30)?;
    a.mov(eax, dword_ptr(rcx))?;
    a.cmp(al, 0x14)?;
    a.jne(fail)?;
    Ok(())
}
