//! The project's test kernel: a small bzImage (setup header plus a 64-bit
//! payload assembled with `iced-x86`) that checks everything a direct boot
//! hands a Linux kernel and reports on COM1.
//!
//! Entered through the 64-bit boot protocol, it checks, in order:
//!
//! | status | check |
//! |---|---|
//! | 1 `entry` | it runs at `code32_start + 0x200` |
//! | 2 `mode` | long mode (CR0.PE/PG, CR4.PAE, EFER.LMA), interrupts off, CS 0x10, DS/ES/SS 0x18 |
//! | 3 `zeropage` | RSI points at a zero page with "HdrS", boot flag 0xaa55, protocol >= 2.12, a loader type |
//! | 4 `cmdline` | the command line is in RAM, within `cmdline_size`, and carries `testkernel.ram=`, `testkernel.sum=` and `testkernel.cpus=` (lowercase hex) |
//! | 5 `e820` | the map is sorted and disjoint, its RAM totals `testkernel.ram`, no RAM in the legacy hole or the APIC/ROM range |
//! | 6 `layout` | the zero page and the kernel's `init_size` span lie in e820 RAM |
//! | 7 `initrd` | it is page aligned, in RAM, below `initrd_addr_max`, and its bytes sum (mod 2^32) to `testkernel.sum` |
//! | 8 `cpuid` | the hypervisor bit and the "KVMKVMKVM" leaf |
//! | 9 `mptable` | a valid MP floating pointer at 0x9fc00 whose table lists `testkernel.cpus` processors |
//! | 10 `lapic` | the local APIC answers at 0xfee00000 (in-kernel irqchip) |
//!
//! It writes `testkernel: NAME ok` per passed check and exits through the
//! debug-exit port (0x501) with 0 when all pass, or with the failed check's
//! status after printing `testkernel: NAME FAILED`. With
//! `testkernel.reboot=1` on the command line, a run whose checks all pass
//! ends instead with a reset through the i8042 (command 0xfe to port 0x64).

use iced_x86::IcedError;
use iced_x86::code_asm::*;
use linux_loader::loader::bootparam::setup_header;
use vm_memory::ByteValued;

use crate::boot::header::{
    BOOT_FLAG, HDRS_MAGIC, LOADED_HIGH, XLF_CAN_BE_LOADED_ABOVE_4G, XLF_KERNEL_64,
};
use crate::boot::layout::{HIGH_MEMORY, LAPIC_ADDR, MPTABLE_ADDR};
use crate::devices::COM1_PORT;
use crate::error::Result;
use crate::guests::asm::{asm_err, exit_with, print_routine};

/// The longest command line the test kernel declares it accepts.
pub const CMDLINE_SIZE: u32 = 4095;
const INITRD_ADDR_MAX: u32 = 0x7fff_ffff;
const STACK_BYTES: usize = 4096;

/// The names of the checks, in order: check `i` fails with status `i + 1`.
pub const CHECKS: [&str; 10] = [
    "entry", "mode", "zeropage", "cmdline", "e820", "layout", "initrd", "cpuid", "mptable", "lapic",
];

/// The command-line parameters that tell the test kernel what to expect:
/// `ram` bytes of e820 RAM, the `initrd`'s contents and `cpus` processors.
///
/// ```
/// let args = vmm_core::guests::test_kernel::expectations(0x3ff_fc00, &[1, 2, 255], 1);
/// assert_eq!(args, "testkernel.ram=0x3fffc00 testkernel.sum=0x102 testkernel.cpus=0x1");
/// ```
pub fn expectations(ram: u64, initrd: &[u8], cpus: u32) -> String {
    format!(
        "testkernel.ram={ram:#x} testkernel.sum={:#x} testkernel.cpus={cpus:#x}",
        initrd_sum(initrd)
    )
}

/// The initrd checksum the test kernel computes: the sum of its bytes
/// modulo 2^32.
pub fn initrd_sum(initrd: &[u8]) -> u32 {
    initrd
        .iter()
        .fold(0u32, |s, &b| s.wrapping_add(u32::from(b)))
}

/// Assembles the test kernel as a bzImage.
///
/// ```
/// let image = vmm_core::guests::test_kernel::build()?;
/// assert_eq!(&image[0x202..0x206], b"HdrS");
/// # Ok::<(), vmm_core::Error>(())
/// ```
pub fn build() -> Result<Vec<u8>> {
    let mut payload = payload()?;
    // `syssize` counts 16-byte units: pad the payload to a whole one.
    payload.resize(payload.len().div_ceil(16) * 16, 0);
    let header = setup_header {
        setup_sects: 1,
        syssize: (payload.len() / 16) as u32,
        boot_flag: BOOT_FLAG,
        // A short jump over the header to its end (0x268), as real images have.
        jump: 0x66eb,
        header: HDRS_MAGIC,
        version: 0x020f,
        loadflags: LOADED_HIGH,
        code32_start: HIGH_MEMORY as u32,
        initrd_addr_max: INITRD_ADDR_MAX,
        kernel_alignment: 0x20_0000,
        xloadflags: XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G,
        cmdline_size: CMDLINE_SIZE,
        pref_address: HIGH_MEMORY,
        init_size: payload.len().div_ceil(4096) as u32 * 4096,
        ..Default::default()
    };
    let mut image = vec![0u8; 1024];
    let at = crate::boot::header::SETUP_HEADER_OFFSET;
    image[at..at + std::mem::size_of::<setup_header>()].copy_from_slice(header.as_slice());
    image.extend_from_slice(&payload);
    Ok(image)
}

/// Labels shared by the checks and the routines they call.
struct Labels {
    print: CodeLabel,
    print_hex: CodeLabel,
    find_param: CodeLabel,
    in_ram: CodeLabel,
    stack_top: CodeLabel,
    strings: Vec<(CodeLabel, String)>,
    /// Failure stubs to emit: their label and the index of the check.
    fails: Vec<(CodeLabel, usize)>,
}

impl Labels {
    fn string(&mut self, a: &mut CodeAssembler, text: &str) -> CodeLabel {
        let label = a.create_label();
        self.strings.push((label, text.to_string()));
        label
    }

    /// A label that reports check `index` failed.
    fn fail(&mut self, a: &mut CodeAssembler, index: usize) -> CodeLabel {
        let label = a.create_label();
        self.fails.push((label, index));
        label
    }

    /// Emits a call printing the string `msg`.
    fn say(&self, a: &mut CodeAssembler, msg: CodeLabel) -> AsmResult {
        a.lea(rsi, ptr(msg))?;
        a.call(self.print)
    }
}

type AsmResult = std::result::Result<(), IcedError>;

/// The protected-mode kernel, assembled for its load address.
fn payload() -> Result<Vec<u8>> {
    let mut asm = CodeAssembler::new(64).map_err(asm_err)?;
    let a = &mut asm;
    let mut l = Labels {
        print: a.create_label(),
        print_hex: a.create_label(),
        find_param: a.create_label(),
        in_ram: a.create_label(),
        stack_top: a.create_label(),
        strings: Vec::new(),
        fails: Vec::new(),
    };
    let fail_msgs: Vec<CodeLabel> = CHECKS
        .iter()
        .map(|name| l.string(a, &format!("testkernel: {name} FAILED\r\n")))
        .collect();
    checks(a, &mut l).map_err(asm_err)?;
    exit_with(a, 0)?;
    for (mut label, index) in std::mem::take(&mut l.fails) {
        a.set_label(&mut label).map_err(asm_err)?;
        l.say(a, fail_msgs[index]).map_err(asm_err)?;
        exit_with(a, index as u8 + 1)?;
    }
    print_routine(a, &mut l.print)?;
    routines(a, &mut l).map_err(asm_err)?;
    a.assemble(HIGH_MEMORY).map_err(asm_err)
}

/// The 32-bit entry stub, then the checks at offset 0x200, ending with the
/// success message. Register roles: r15 zero page, r14 command line, r12
/// expected RAM, r13 expected initrd sum, rbp expected CPUs.
fn checks(a: &mut CodeAssembler, l: &mut Labels) -> AsmResult {
    let ok_msgs: Vec<CodeLabel> = CHECKS
        .iter()
        .map(|name| l.string(a, &format!("testkernel: {name} ok\r\n")))
        .collect();
    let key_ram = l.string(a, "testkernel.ram=");
    let key_sum = l.string(a, "testkernel.sum=");
    let key_cpus = l.string(a, "testkernel.cpus=");
    let key_reboot = l.string(a, "testkernel.reboot=");
    let msg_ram = l.string(a, "testkernel: e820 RAM 0x");
    let msg_passed = l.string(a, "testkernel: all checks passed\r\n");
    let msg_nl = l.string(a, "\r\n");

    // The 32-bit entry at offset 0 is not used by a 64-bit boot: `hlt` and
    // loop, padded with `hlt` up to the 64-bit entry.
    let mut stub = vec![0xf4u8; 0x200];
    stub[1..3].copy_from_slice(&[0xeb, 0xfd]);
    a.db(&stub)?;

    // The 64-bit entry: keep the zero page pointer, set up a stack.
    let mut entry = a.create_label();
    a.set_label(&mut entry)?;
    a.mov(r15, rsi)?;
    a.lea(rsp, ptr(l.stack_top))?;
    let calls = Calls {
        print: l.print,
        print_hex: l.print_hex,
        find_param: l.find_param,
        in_ram: l.in_ram,
        entry,
        key_ram,
        key_sum,
        key_cpus,
        msg_ram,
        msg_nl,
    };
    // In the order of CHECKS, whose names the messages use.
    let sections: [Section; CHECKS.len()] = [
        entry_point,
        cpu_mode,
        zero_page,
        command_line,
        e820_map,
        layout,
        initrd,
        cpuid,
        mp_table,
        local_apic,
    ];
    for (index, (section, ok)) in sections.iter().zip(&ok_msgs).enumerate() {
        let fail = l.fail(a, index);
        section(a, calls, fail)?;
        l.say(a, *ok)?;
    }

    l.say(a, msg_passed)?;

    // With `testkernel.reboot=1`, end by resetting through the keyboard
    // controller as Linux's `reboot=k` does, instead of the debug-exit port.
    let mut no_reboot = a.create_label();
    a.lea(rdi, ptr(key_reboot))?;
    a.call(l.find_param)?;
    a.test(edx, edx)?;
    a.jz(no_reboot)?;
    a.test(rax, rax)?;
    a.jz(no_reboot)?;
    a.mov(al, 0xfe)?;
    a.out(0x64, al)?;
    a.set_label(&mut no_reboot)?;
    Ok(())
}

/// What the checks call or refer to.
#[derive(Clone, Copy)]
struct Calls {
    print: CodeLabel,
    print_hex: CodeLabel,
    find_param: CodeLabel,
    in_ram: CodeLabel,
    entry: CodeLabel,
    key_ram: CodeLabel,
    key_sum: CodeLabel,
    key_cpus: CodeLabel,
    msg_ram: CodeLabel,
    msg_nl: CodeLabel,
}

/// Emits one check, jumping to `fail` when it does not hold.
type Section = fn(&mut CodeAssembler, Calls, CodeLabel) -> AsmResult;

/// Check 1: It runs at `code32_start + 0x200`.
fn entry_point(a: &mut CodeAssembler, c: Calls, fail: CodeLabel) -> AsmResult {
    a.lea(rax, ptr(c.entry))?;
    a.mov(ecx, dword_ptr(r15 + 0x214))?;
    a.add(rcx, 0x200)?;
    a.cmp(rax, rcx)?;
    a.jne(fail)?;
    Ok(())
}

/// Check 2: Long mode, paging, interrupts off, the boot selectors.
fn cpu_mode(a: &mut CodeAssembler, _: Calls, fail: CodeLabel) -> AsmResult {
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
fn zero_page(a: &mut CodeAssembler, _: Calls, fail: CodeLabel) -> AsmResult {
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
fn command_line(a: &mut CodeAssembler, c: Calls, fail: CodeLabel) -> AsmResult {
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
fn e820_map(a: &mut CodeAssembler, c: Calls, fail: CodeLabel) -> AsmResult {
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
fn layout(a: &mut CodeAssembler, c: Calls, fail: CodeLabel) -> AsmResult {
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
fn initrd(a: &mut CodeAssembler, c: Calls, fail: CodeLabel) -> AsmResult {
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
fn cpuid(a: &mut CodeAssembler, _: Calls, fail: CodeLabel) -> AsmResult {
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
fn mp_table(a: &mut CodeAssembler, _: Calls, fail: CodeLabel) -> AsmResult {
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
fn local_apic(a: &mut CodeAssembler, _: Calls, fail: CodeLabel) -> AsmResult {
    a.mov(ecx, LAPIC_ADDR + 0x30)?;
    a.mov(eax, dword_ptr(rcx))?;
    a.cmp(al, 0x14)?;
    a.jne(fail)?;
    Ok(())
}

/// print_hex, find_param, in_ram, the strings and the stack.
fn routines(a: &mut CodeAssembler, l: &mut Labels) -> AsmResult {
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

#[cfg(test)]
mod tests;
