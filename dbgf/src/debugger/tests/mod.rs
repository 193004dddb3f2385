//! Debugger-core tests against the in-memory target; page-trap watchpoints
//! are in `page_traps`.

use super::*;
use proptest::prelude::*;

mod page_traps;

const CODE: u64 = 0x1000;
const DATA: u64 = 0x3000;

fn vm_with(cpus: u32, code: &[u8]) -> (MemTarget, StopListener) {
    let (tx, rx) = stop_channel();
    let mut vm = MemTarget::new(cpus, 0x4000, tx);
    vm.write_phys(CODE, code).unwrap();
    for cpu in 0..cpus {
        set_rip(&mut vm, cpu, CODE);
    }
    (vm, rx)
}

fn set_rip(vm: &mut MemTarget, cpu: u32, rip: u64) {
    let mut r = vm.read_regs(cpu).unwrap();
    r.rip = rip;
    vm.write_regs(cpu, &r).unwrap();
}

fn rip(vm: &mut MemTarget, cpu: u32) -> u64 {
    vm.read_regs(cpu).unwrap().rip
}

/// Resumes and feeds stops to the core until one is reported.
fn run(dbg: &mut Debugger, vm: &mut MemTarget, rx: &StopListener, how: Resume) -> Stop {
    dbg.resume(vm, how).unwrap();
    for _ in 0..16 {
        let raw = rx
            .try_recv()
            .unwrap()
            .expect("the in-memory target reports synchronously");
        if let Some(stop) = dbg.handle_stop(vm, raw).unwrap() {
            return stop;
        }
    }
    panic!("no stop reported");
}

fn phys_byte(vm: &mut MemTarget, addr: u64) -> u8 {
    let mut b = [0u8];
    vm.read_phys(addr, &mut b).unwrap();
    b[0]
}

#[test]
fn hardware_breakpoint_hits_and_counts() {
    let (mut vm, rx) = vm_with(1, &[0x90, 0x90, 0x90, 0x90, 0xf4]);
    let mut dbg = Debugger::new();
    let id = dbg.add_hw_breakpoint(CODE + 3).unwrap();
    let stop = run(&mut dbg, &mut vm, &rx, Resume::Continue);
    assert_eq!(stop.reason, StopReason::Breakpoint { id, hits: 1 });
    assert_eq!(rip(&mut vm, 0), CODE + 3);
    let gd = vm.guest_debug(0).unwrap();
    assert!(gd.use_hw_bp && gd.enable && !gd.single_step);
    assert_eq!(gd.dr[0], CODE + 3);
    assert_eq!(gd.dr7 & 3, 0b10);

    set_rip(&mut vm, 0, CODE);
    let stop = run(&mut dbg, &mut vm, &rx, Resume::Continue);
    assert_eq!(stop.reason, StopReason::Breakpoint { id, hits: 2 });
    // Continuing from the breakpoint steps over it and runs to the end.
    let stop = run(&mut dbg, &mut vm, &rx, Resume::Continue);
    assert_eq!(stop.reason, StopReason::PoweredOff);
    assert_eq!(dbg.breakpoint(id).unwrap().hits, 2);
}

#[test]
fn software_breakpoint_patch_hide_step_over_restore() {
    let (mut vm, rx) = vm_with(1, &[0x90, 0x90, 0x48, 0x89, 0xd8, 0xf4]);
    let mut dbg = Debugger::new();
    let id = dbg.add_sw_breakpoint(&mut vm, 0, CODE + 2).unwrap();
    assert_eq!(phys_byte(&mut vm, CODE + 2), 0xcc);
    let mut seen = [0u8; 3];
    dbg.read_virt(&mut vm, 0, CODE + 2, &mut seen).unwrap();
    assert_eq!(seen, [0x48, 0x89, 0xd8]);
    dbg.read_phys(&mut vm, CODE + 1, &mut seen).unwrap();
    assert_eq!(seen, [0x90, 0x48, 0x89]);

    let stop = run(&mut dbg, &mut vm, &rx, Resume::Continue);
    assert_eq!(stop.reason, StopReason::Breakpoint { id, hits: 1 });
    assert_eq!(rip(&mut vm, 0), CODE + 2);
    assert!(vm.guest_debug(0).unwrap().use_sw_bp);

    // Step over the int3: the original instruction (3 bytes) runs, the int3 comes back.
    let stop = run(&mut dbg, &mut vm, &rx, Resume::Step(0));
    assert_eq!(stop.reason, StopReason::Step);
    assert_eq!(rip(&mut vm, 0), CODE + 5);
    assert_eq!(phys_byte(&mut vm, CODE + 2), 0xcc);

    set_rip(&mut vm, 0, CODE + 2);
    let stop = run(&mut dbg, &mut vm, &rx, Resume::Continue);
    assert_eq!(stop.reason, StopReason::PoweredOff);
    assert_eq!(phys_byte(&mut vm, CODE + 2), 0xcc);
    assert_eq!(dbg.breakpoint(id).unwrap().hits, 1);

    dbg.remove_breakpoint(&mut vm, id).unwrap();
    assert_eq!(phys_byte(&mut vm, CODE + 2), 0x48);
    assert!(matches!(
        dbg.remove_breakpoint(&mut vm, id),
        Err(DebuggerError::UnknownBreakpoint(_))
    ));
}

#[test]
fn single_step_advances_by_instruction_length() {
    // mov rax, imm64 (10 bytes); nop
    let code = [0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 0x90, 0xf4];
    let (mut vm, rx) = vm_with(2, &code);
    let mut dbg = Debugger::new();
    let stop = run(&mut dbg, &mut vm, &rx, Resume::Step(1));
    assert_eq!(
        stop,
        Stop {
            cpu: 1,
            reason: StopReason::Step
        }
    );
    assert_eq!(rip(&mut vm, 1), CODE + 10);
    assert_eq!(rip(&mut vm, 0), CODE, "the other vCPU stays halted");
    assert!(vm.guest_debug(1).unwrap().single_step);
    let stop = run(&mut dbg, &mut vm, &rx, Resume::Step(1));
    assert_eq!(stop.reason, StopReason::Step);
    assert_eq!(rip(&mut vm, 1), CODE + 11);
    assert!(matches!(
        dbg.resume(&mut vm, Resume::Step(2)),
        Err(DebuggerError::InvalidCpu(2))
    ));
}

#[test]
fn watchpoints_by_access_kind() {
    // mov eax, [0x3000]; mov [0x3004], eax; hlt
    let code = [
        0x8b, 0x04, 0x25, 0x00, 0x30, 0x00, 0x00, 0x89, 0x04, 0x25, 0x04, 0x30, 0x00, 0x00, 0xf4,
    ];
    let (mut vm, rx) = vm_with(1, &code);
    let mut dbg = Debugger::new();
    let w = dbg.add_watchpoint(DATA, 8, HwAccess::Write).unwrap();
    let stop = run(&mut dbg, &mut vm, &rx, Resume::Continue);
    assert_eq!(
        stop.reason,
        StopReason::Watchpoint {
            id: w,
            hits: 1,
            addr: DATA,
            access: HwAccess::Write
        }
    );
    assert_eq!(rip(&mut vm, 0), CODE + 14, "data breakpoints are traps");

    dbg.remove_breakpoint(&mut vm, w).unwrap();
    let rw = dbg
        .add_watchpoint(DATA + 1, 2, HwAccess::ReadWrite)
        .unwrap();
    assert_eq!(
        dbg.free_hw_slots(),
        2,
        "an unaligned 2-byte range takes two slots"
    );
    set_rip(&mut vm, 0, CODE);
    let stop = run(&mut dbg, &mut vm, &rx, Resume::Continue);
    assert!(matches!(stop.reason, StopReason::Watchpoint { id, hits: 1, .. } if id == rw));
    assert_eq!(rip(&mut vm, 0), CODE + 7);
    assert!(matches!(
        dbg.add_watchpoint(DATA, 4, HwAccess::Execute),
        Err(DebuggerError::InvalidLength(_))
    ));
}

#[test]
fn one_hit_per_breakpoint_even_across_scattered_slots() {
    let (mut vm, _rx) = vm_with(1, &[0xf4]);
    let mut dbg = Debugger::new();
    let a = dbg.add_hw_breakpoint(0x100).unwrap(); // slot 0
    dbg.add_hw_breakpoint(0x104).unwrap(); // slot 1
    dbg.remove_breakpoint(&mut vm, a).unwrap();
    let w = dbg.add_watchpoint(DATA + 1, 2, HwAccess::Write).unwrap(); // slots 0 and 2
    let stop = VcpuStop {
        cpu: 0,
        cause: StopCause::Debug {
            exception: 1,
            dr6: 0xffff_0ff5,
            pc: CODE,
        },
    };
    let got = dbg.handle_stop(&mut vm, stop).unwrap().unwrap();
    assert!(matches!(got.reason, StopReason::Watchpoint { id, hits: 1, .. } if id == w));
    assert_eq!(dbg.breakpoint(w).unwrap().hits, 1);
}

#[test]
fn io_breakpoint_stops_once_per_access() {
    // out 0x80, al; in al, 0x80; hlt
    let (mut vm, rx) = vm_with(1, &[0xe6, 0x80, 0xe4, 0x80, 0xf4]);
    let mut dbg = Debugger::new();
    vm.set_io_watch(dbg.io_watch());
    let id = dbg.add_io_breakpoint(0x80, 0x80, IoAccess::Write).unwrap();
    let stop = run(&mut dbg, &mut vm, &rx, Resume::Continue);
    assert_eq!(
        stop.reason,
        StopReason::IoBreakpoint {
            id,
            hits: 1,
            port: 0x80,
            write: true
        }
    );
    let stop = run(&mut dbg, &mut vm, &rx, Resume::Continue);
    assert_eq!(
        stop.reason,
        StopReason::PoweredOff,
        "the `in` does not match"
    );
    assert!(matches!(
        dbg.add_io_breakpoint(2, 1, IoAccess::Read),
        Err(DebuggerError::InvalidPortRange { .. })
    ));
    dbg.remove_breakpoint(&mut vm, id).unwrap();
    assert!(!dbg.io_watch().matches(0x80, 1, true));
}

#[test]
fn add_breakpoint_falls_back_to_software() {
    let (mut vm, _rx) = vm_with(1, &[0x90; 8]);
    let mut dbg = Debugger::new();
    for i in 0..5 {
        dbg.add_breakpoint(&mut vm, 0, CODE + i).unwrap();
    }
    let kinds: Vec<_> = dbg.breakpoints().iter().map(|b| b.kind).collect();
    assert!(matches!(kinds[3], BreakpointKind::Hardware { addr, .. } if addr == CODE + 3));
    assert!(matches!(kinds[4], BreakpointKind::Software { addr, .. } if addr == CODE + 4));
    assert!(matches!(
        dbg.add_sw_breakpoint(&mut vm, 0, CODE + 4),
        Err(DebuggerError::DuplicateSoftware(_))
    ));
    assert!(matches!(
        dbg.add_hw_breakpoint(CODE),
        Err(DebuggerError::NoFreeSlot { .. })
    ));
}

#[test]
fn writes_under_an_int3_update_the_original() {
    let (mut vm, _rx) = vm_with(1, &[0x90; 4]);
    let mut dbg = Debugger::new();
    dbg.add_sw_breakpoint(&mut vm, 0, CODE + 1).unwrap();
    dbg.write_virt(&mut vm, 0, CODE, &[1, 2, 3]).unwrap();
    assert_eq!(phys_byte(&mut vm, CODE + 1), 0xcc);
    let mut seen = [0u8; 3];
    dbg.read_virt(&mut vm, 0, CODE, &mut seen).unwrap();
    assert_eq!(seen, [1, 2, 3]);
    dbg.remove_all(&mut vm).unwrap();
    assert_eq!(phys_byte(&mut vm, CODE + 1), 2);
}

#[test]
fn guest_overwritten_int3_is_not_clobbered_on_removal() {
    let (mut vm, _rx) = vm_with(1, &[0x90; 4]);
    let mut dbg = Debugger::new();
    let id = dbg.add_sw_breakpoint(&mut vm, 0, CODE + 1).unwrap();
    vm.write_phys(CODE + 1, &[0x55]).unwrap(); // the guest rewrites its code
    dbg.remove_breakpoint(&mut vm, id).unwrap();
    assert_eq!(phys_byte(&mut vm, CODE + 1), 0x55);
}

#[test]
fn foreign_int3_is_a_trap_and_detach_cleans_up() {
    let (mut vm, rx) = vm_with(1, &[0x90, 0xcc, 0x90, 0xf4]);
    let mut dbg = Debugger::new();
    dbg.add_sw_breakpoint(&mut vm, 0, CODE + 2).unwrap();
    dbg.add_hw_breakpoint(CODE + 3).unwrap();
    let stop = run(&mut dbg, &mut vm, &rx, Resume::Continue);
    assert_eq!(
        stop.reason,
        StopReason::Trap {
            exception: 3,
            dr6: 0,
            pc: CODE + 1
        }
    );
    set_rip(&mut vm, 0, CODE + 2);
    dbg.detach(&mut vm).unwrap();
    assert_eq!(rx.try_recv().unwrap().unwrap().cause, StopCause::PoweredOff);
    assert!(dbg.breakpoints().is_empty());
    assert_eq!(phys_byte(&mut vm, CODE + 2), 0x90);
    assert_eq!(vm.guest_debug(0).unwrap().control(), 0);
}

#[test]
fn resume_twice_is_refused_until_a_stop() {
    let (mut vm, rx) = vm_with(1, &[0x90, 0xf4]);
    let mut dbg = Debugger::new();
    dbg.resume(&mut vm, Resume::Continue).unwrap();
    assert!(dbg.is_running());
    assert!(matches!(
        dbg.resume(&mut vm, Resume::Continue),
        Err(DebuggerError::Running)
    ));
    let raw = rx.try_recv().unwrap().unwrap();
    assert_eq!(
        dbg.handle_stop(&mut vm, raw).unwrap().unwrap().reason,
        StopReason::PoweredOff
    );
    assert!(!dbg.is_running());
}

#[test]
fn halt_is_reported() {
    let (mut vm, rx) = vm_with(1, &[0xf4]);
    let mut dbg = Debugger::new();
    dbg.halt(&mut vm).unwrap();
    let raw = rx.try_recv().unwrap().unwrap();
    let stop = dbg.handle_stop(&mut vm, raw).unwrap().unwrap();
    assert_eq!(stop.reason, StopReason::Halted);
}

#[test]
fn disassembly_hides_int3() {
    let (mut vm, _rx) = vm_with(1, &[0x48, 0x89, 0xd8, 0xc3]);
    let mut dbg = Debugger::new();
    dbg.add_sw_breakpoint(&mut vm, 0, CODE).unwrap();
    let lines = dbg.disassemble(&mut vm, 0, CODE, 2).unwrap();
    assert_eq!(lines[0].text, "mov rax,rbx");
    assert_eq!(lines[1].text, "ret");
    // Near the end of memory the read stops at the unmapped page.
    let tail = dbg.disassemble(&mut vm, 0, 0x3ffe, 4).unwrap();
    assert_eq!(tail.len(), 1, "two zero bytes decode as one `add [rax],al`");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever breakpoints and writes happen, reads through the debugger see the
    /// guest's own bytes, and removing every breakpoint leaves exactly those bytes.
    #[test]
    fn int3_patches_are_invisible(
        bps in proptest::collection::btree_set(0u64..64, 0..8),
        writes in proptest::collection::vec((0u64..60, proptest::collection::vec(any::<u8>(), 1..4)), 0..8),
    ) {
        let (mut vm, _rx) = vm_with(1, &[0u8; 64]);
        let mut shadow = vec![0u8; 64];
        let mut dbg = Debugger::new();
        for &a in &bps {
            dbg.add_sw_breakpoint(&mut vm, 0, CODE + a).unwrap();
        }
        for (a, data) in &writes {
            dbg.write_virt(&mut vm, 0, CODE + a, data).unwrap();
            shadow[*a as usize..*a as usize + data.len()].copy_from_slice(data);
        }
        let mut seen = vec![0u8; 64];
        dbg.read_virt(&mut vm, 0, CODE, &mut seen).unwrap();
        prop_assert_eq!(&seen, &shadow);
        for &a in &bps {
            prop_assert_eq!(phys_byte(&mut vm, CODE + a), 0xcc);
        }
        dbg.remove_all(&mut vm).unwrap();
        vm.read_phys(CODE, &mut seen).unwrap();
        prop_assert_eq!(&seen, &shadow);
    }
}
