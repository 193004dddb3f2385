//! The first guests on KVM: the demo guest's stages, a triple fault and
//! accesses to unassigned ports.

mod common;

use common::Capture;
use hm_vmx::testing::kvm_available;
use hm_vmx::vmx::ExitReason;
use iced_x86::code_asm::*;
use vmm_core::guests::rom::RomImage;
use vmm_core::{Error, RunOutcome, Vm, VmConfig, guests};

fn run(firmware: Vec<u8>) -> (Vm, vmm_core::Result<RunOutcome>, Capture) {
    let capture = Capture::default();
    let mut config = VmConfig::new(16 << 20, firmware);
    config.serial = Box::new(capture.clone());
    let mut vm = Vm::new(config).expect("VM builds");
    let outcome = vm.run();
    (vm, outcome, capture)
}

/// A 64 KiB ROM whose reset vector jumps to 16-bit `code` at IP 0x1000.
fn rom_with(code: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(16).unwrap();
    code(&mut a).unwrap();
    let mut rom = RomImage::new(64 * 1024).unwrap();
    rom.place(0x1000, &a.assemble(0x1000).unwrap()).unwrap();
    rom.reset_jump(0x1000).unwrap();
    rom.into_bytes()
}

#[test]
fn demo_guest_passes_every_stage_in_order() {
    if !kvm_available("demo_guest_passes_every_stage_in_order") {
        return;
    }
    let (_, outcome, serial) = run(guests::find("demo").unwrap().firmware().unwrap());
    let text = serial.text();
    assert_eq!(
        outcome.unwrap(),
        RunOutcome::GuestExit(0),
        "serial output:\n{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    let stage = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{text}"))
    };
    let real = stage("vmm demo: real mode");
    let a20 = stage(
        "vmm demo: A20 gate: FFFF:0510 wraps to 0000:0500 when closed, not when open, check ok",
    );
    let protected = stage("vmm demo: protected mode");
    let pae = stage("vmm demo: PAE paging");
    let long = stage("vmm demo: long mode, paged memory check ok");
    let user = stage("vmm demo: user mode (CPL 3)");
    let done = stage("vmm demo: all checks passed");
    assert!(
        real < a20
            && a20 < protected
            && protected < pae
            && pae < long
            && long < user
            && user < done,
        "{text}"
    );
    assert!(!text.contains("FAILED"), "{text}");
}

#[test]
fn paging_info_handlers_read_the_guests_tables() {
    if !kvm_available("paging_info_handlers_read_the_guests_tables") {
        return;
    }
    let (vm, outcome, _) = run(guests::find("demo").unwrap().firmware().unwrap());
    assert_eq!(outcome.unwrap(), RunOutcome::GuestExit(0));
    let mut mode = String::new();
    vm.run_info("mode", "guest", &mut mode).unwrap();
    assert!(mode.contains("AMD64"), "{mode}");
    // The demo maps PML4 entries 0 and 256 onto the same PDPT at 0x11000.
    let mut tables = String::new();
    vm.run_info("pgmcr3", "", &mut tables).unwrap();
    assert!(tables.contains("CR3=0x10000"), "{tables}");
    assert!(
        tables.contains("PML4E[000]") && tables.contains("PML4E[256]"),
        "{tables}"
    );
    assert_eq!(tables.matches("-> 0x11000").count(), 2, "{tables}");
    let mut bad = String::new();
    assert!(vm.run_info("mode", "sideways", &mut bad).is_err());
}

#[test]
fn triple_fault_ends_the_run_with_an_error_naming_the_exit() {
    if !kvm_available("triple_fault_ends_the_run_with_an_error_naming_the_exit") {
        return;
    }
    // Protected mode with an empty IDT: the divide error cannot be
    // delivered, nor the #DF that follows. (Protected mode because real-mode
    // IVT limits are not enforced by every KVM; a divide error rather than
    // `ud2` or `int3` because some software KVMs cannot emulate those at CPL0.)
    let mut rom = RomImage::new(64 * 1024).unwrap();
    let gdt: Vec<u8> = [0u64, 0x00cf_9b00_0000_ffff]
        .iter()
        .flat_map(|d| d.to_le_bytes())
        .collect();
    rom.place(0, &gdt).unwrap();
    rom.place(0x20, &[15, 0, 0x00, 0x00, 0x0f, 0x00]).unwrap(); // limit 15, base 0xf0000
    let mut a = CodeAssembler::new(16).unwrap();
    a.mov(ax, 0xf000u32).unwrap();
    a.mov(ds, ax).unwrap();
    a.lgdt(ptr(0x20)).unwrap();
    a.mov(eax, cr0).unwrap();
    a.or(eax, 1).unwrap();
    a.mov(cr0, eax).unwrap();
    let far =
        iced_x86::Instruction::with_far_branch(iced_x86::Code::Jmp_ptr1632, 8, 0xf2000).unwrap();
    a.add_instruction(far).unwrap();
    rom.place(0x1000, &a.assemble(0x1000).unwrap()).unwrap();
    let mut a = CodeAssembler::new(32).unwrap();
    a.lidt(ptr(0xf0030)).unwrap(); // six zero bytes: limit 0
    a.xor(ebx, ebx).unwrap();
    a.div(ebx).unwrap();
    rom.place(0x2000, &a.assemble(0xf2000).unwrap()).unwrap();
    rom.place(0x30, &[0; 6]).unwrap();
    rom.reset_jump(0x1000).unwrap();
    let firmware = rom.into_bytes();
    let (_, outcome, _) = run(firmware);
    match outcome {
        Err(
            e @ Error::UnhandledExit {
                reason: Some(ExitReason::TripleFault),
                ..
            },
        ) => {
            let message = e.to_string();
            assert!(message.contains("Triple fault"), "{message}");
            assert!(message.contains("VMX exit reason 2"), "{message}");
            assert!(message.contains("RIP"), "{message}");
        }
        other => panic!("expected a triple-fault error, got {other:?}"),
    }
}

#[test]
fn unassigned_ports_are_ignored_and_counted() {
    if !kvm_available("unassigned_ports_are_ignored_and_counted") {
        return;
    }
    // Two writes and one read to ports nobody claims; the byte read (0xff
    // from an empty bus) becomes the exit status.
    let firmware = rom_with(|a| {
        a.mov(al, 0x12)?;
        a.out(0x80, al)?;
        a.mov(dx, 0x1234u32)?;
        a.out(dx, al)?;
        a.in_(al, dx)?;
        a.mov(dx, 0x501u32)?;
        a.out(dx, al)
    });
    let (vm, outcome, _) = run(firmware);
    assert_eq!(outcome.unwrap(), RunOutcome::GuestExit(0xff));
    let unassigned = vm.io_bus().unassigned();
    assert_eq!((unassigned.reads, unassigned.writes), (1, 2));
}

#[test]
fn rom_writes_are_ignored_and_unassigned_space_reads_all_ones() {
    if !kvm_available("rom_writes_are_ignored_and_unassigned_space_reads_all_ones") {
        return;
    }
    // Overwrite the first ROM byte through the low mirror (0xf0000, which
    // holds a `hlt` = 0xf4), read it back, then read the VGA hole at 0xa0000
    // (nothing is mapped there). Exit status = ROM byte XOR hole byte:
    // 0xf4 ^ 0xff = 0x0b when both behave.
    let firmware = rom_with(|a| {
        a.mov(ax, 0xf000u32)?;
        a.mov(ds, ax)?;
        a.mov(byte_ptr(0), 0x11u32)?;
        a.mov(bl, byte_ptr(0))?;
        a.mov(ax, 0xa000u32)?;
        a.mov(ds, ax)?;
        a.mov(al, byte_ptr(0))?;
        a.xor(al, bl)?;
        a.mov(dx, 0x501u32)?;
        a.out(dx, al)
    });
    let (vm, outcome, _) = run(firmware);
    assert_eq!(outcome.unwrap(), RunOutcome::GuestExit(0xf4 ^ 0xff));
    let mut text = String::new();
    vm.run_info("phys", "", &mut text).unwrap();
    assert!(text.contains("firmware"), "{text}");
    let snapshot = vm.stats().snapshot("/PGM/*");
    assert!(!snapshot.samples.is_empty());
}
