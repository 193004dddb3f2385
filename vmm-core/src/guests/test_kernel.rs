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
use crate::boot::layout::HIGH_MEMORY;
use crate::error::Result;
use crate::guests::asm::{asm_err, exit_with, print_routine};

mod checks;
mod routines;

use checks::{
    Calls, Section, command_line, cpu_mode, cpuid, e820_map, entry_point, initrd, layout,
    local_apic, mp_table, zero_page,
};
use routines::routines;

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

#[cfg(test)]
mod tests;
