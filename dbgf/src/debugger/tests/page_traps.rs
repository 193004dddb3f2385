//! Page-trap watchpoints: direction, auto mode, input checks, exactness, and
//! linear ranges across pages.

use super::*;

/// `mov eax, [0x3000]; mov [0x3004], eax; hlt`
const LOAD_STORE: [u8; 15] = [
    0x8b, 0x04, 0x25, 0x00, 0x30, 0x00, 0x00, 0x89, 0x04, 0x25, 0x04, 0x30, 0x00, 0x00, 0xf4,
];

/// A target whose debug registers never fire data breakpoints, wired to the core's
/// memory watch like the VMM's EMTs.
fn vm_without_data_breakpoints(dbg: &Debugger) -> (MemTarget, StopListener) {
    let (mut vm, rx) = vm_with(1, &LOAD_STORE);
    vm.set_data_breakpoints(false);
    vm.set_mem_watch(dbg.mem_watch());
    (vm, rx)
}

#[test]
fn page_trap_watchpoints_fire_after_the_access_by_direction() {
    let mut dbg = Debugger::new();
    let (mut vm, rx) = vm_without_data_breakpoints(&dbg);
    // Auto on a target without data breakpoints: a page trap.
    let w = dbg
        .add_data_watch(&mut vm, 0, DATA + 4, 4, MemAccess::Write)
        .unwrap();
    assert!(matches!(
        dbg.breakpoint(w).unwrap().kind,
        BreakpointKind::PageTrap { addr, phys, len: 4, access: MemAccess::Write } if addr == DATA + 4 && phys == DATA + 4
    ));
    assert_eq!(dbg.free_hw_slots(), HW_SLOTS);
    assert_eq!(
        vm.page_traps(),
        &[PageTrap {
            page: DATA,
            reads: false
        }]
    );
    let stop = run(&mut dbg, &mut vm, &rx, Resume::Continue);
    assert_eq!(
        stop.reason,
        StopReason::PageWatchpoint {
            id: w,
            hits: 1,
            addr: DATA + 4,
            phys: DATA + 4,
            write: true
        }
    );
    assert_eq!(rip(&mut vm, 0), CODE + 14, "reported after the store");
    dbg.remove_breakpoint(&mut vm, w).unwrap();
    assert!(vm.page_traps().is_empty());
    assert!(!dbg.mem_watch().matches(DATA + 4, 4, true));

    // A read watch on the loaded bytes: the load stops, the store (to other bytes of
    // the same page) does not.
    let r = dbg
        .add_data_watch(&mut vm, 0, DATA + 2, 1, MemAccess::Read)
        .unwrap();
    assert!(vm.page_traps()[0].reads);
    set_rip(&mut vm, 0, CODE);
    let stop = run(&mut dbg, &mut vm, &rx, Resume::Continue);
    assert!(matches!(stop.reason, StopReason::PageWatchpoint { id, write: false, .. } if id == r));
    assert_eq!(rip(&mut vm, 0), CODE + 7);
    let stop = run(&mut dbg, &mut vm, &rx, Resume::Continue);
    assert_eq!(stop.reason, StopReason::PoweredOff);
    assert_eq!(dbg.breakpoint(r).unwrap().hits, 1);
}

#[test]
fn auto_mode_prefers_debug_registers_and_falls_back_to_page_traps() {
    let (mut vm, rx) = vm_with(1, &LOAD_STORE);
    let mut dbg = Debugger::new();
    vm.set_mem_watch(dbg.mem_watch());
    let dr = dbg
        .add_data_watch(&mut vm, 0, DATA + 4, 4, MemAccess::Write)
        .unwrap();
    assert!(matches!(
        dbg.breakpoint(dr).unwrap().kind,
        BreakpointKind::Hardware { .. }
    ));
    // Longer than the free slots can cover: page traps.
    let long = dbg
        .add_data_watch(&mut vm, 0, DATA, 64, MemAccess::Read)
        .unwrap();
    assert!(matches!(
        dbg.breakpoint(long).unwrap().kind,
        BreakpointKind::PageTrap { len: 64, .. }
    ));
    assert_eq!(dbg.free_hw_slots(), HW_SLOTS - 1);
    // The load hits the page trap first, the store the debug register.
    let stop = run(&mut dbg, &mut vm, &rx, Resume::Continue);
    assert!(matches!(stop.reason, StopReason::PageWatchpoint { id, .. } if id == long));
    let stop = run(&mut dbg, &mut vm, &rx, Resume::Continue);
    assert!(matches!(stop.reason, StopReason::Watchpoint { id, .. } if id == dr));
    // Forced modes.
    dbg.set_watch_mode(WatchMode::DebugRegisters);
    assert!(matches!(
        dbg.add_data_watch(&mut vm, 0, DATA, 64, MemAccess::Write),
        Err(DebuggerError::NoFreeSlot { .. })
    ));
    dbg.set_watch_mode(WatchMode::PageTraps);
    let forced = dbg
        .add_data_watch(&mut vm, 0, DATA, 1, MemAccess::Write)
        .unwrap();
    assert!(matches!(
        dbg.breakpoint(forced).unwrap().kind,
        BreakpointKind::PageTrap { .. }
    ));
    assert_eq!(dbg.watch_mode(), WatchMode::PageTraps);
    dbg.detach(&mut vm).unwrap();
    assert!(vm.page_traps().is_empty());
    assert!(!dbg.mem_watch().matches(DATA, 1, true));
}

#[test]
fn page_trap_watchpoints_check_their_input_and_need_a_halted_vm() {
    let mut dbg = Debugger::new().with_watch_mode(WatchMode::PageTraps);
    let (mut vm, rx) = vm_without_data_breakpoints(&dbg);
    for (addr, len) in [(DATA, 0), (u64::MAX, 2), (DATA, MAX_PAGE_WATCH_LEN + 1)] {
        assert!(matches!(
            dbg.add_data_watch(&mut vm, 0, addr, len, MemAccess::Write),
            Err(DebuggerError::InvalidLength(_))
        ));
    }
    // The second page is beyond memory: nothing is left armed.
    assert!(matches!(
        dbg.add_data_watch(&mut vm, 0, 0x3ffe, 4, MemAccess::Write),
        Err(DebuggerError::Target(TargetError::Unmapped {
            addr: 0x4000
        }))
    ));
    assert!(matches!(
        dbg.add_phys_watch(&mut vm, 0x4000, 4, MemAccess::Write),
        Err(DebuggerError::Target(TargetError::PhysAccess { .. }))
    ));
    assert!(dbg.breakpoints().is_empty() && vm.page_traps().is_empty());
    // A range across a page boundary traps both pages.
    let id = dbg
        .add_phys_watch(&mut vm, 0x2ffe, 4, MemAccess::Write)
        .unwrap();
    assert_eq!(vm.page_traps().len(), 2);
    dbg.resume(&mut vm, Resume::Continue).unwrap();
    assert!(matches!(
        dbg.add_data_watch(&mut vm, 0, DATA, 4, MemAccess::Write),
        Err(DebuggerError::Running)
    ));
    assert!(matches!(
        dbg.remove_breakpoint(&mut vm, id),
        Err(DebuggerError::Running)
    ));
    let raw = rx.try_recv().unwrap().unwrap();
    dbg.handle_stop(&mut vm, raw).unwrap();
    dbg.remove_breakpoint(&mut vm, id).unwrap();
    assert!(vm.page_traps().is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The memory watch matches an access exactly when it overlaps a watched range in
    /// a watched direction, and every such access lies on a trapped page.
    #[test]
    fn memory_watch_is_exact_and_trapped(
        watches in proptest::collection::vec((0u64..0x3f00, 1u64..0x100, 0u8..3), 1..4),
        probes in proptest::collection::vec((0u64..0x4000, 1u32..9, any::<bool>()), 32),
    ) {
        let mut dbg = Debugger::new().with_watch_mode(WatchMode::PageTraps);
        let (mut vm, _rx) = vm_with(1, &[0xf4]);
        let access = |k: u8| [MemAccess::Read, MemAccess::Write, MemAccess::ReadWrite][k as usize];
        for &(addr, len, k) in &watches {
            dbg.add_data_watch(&mut vm, 0, addr, len, access(k)).unwrap();
        }
        let traps = vm.page_traps().to_vec();
        for (addr, size, write) in probes {
            let last = addr + u64::from(size) - 1;
            let expect = watches.iter().any(|&(a, l, k)| {
                access(k).matches(write) && a <= last && addr < a + l
            });
            prop_assert_eq!(dbg.mem_watch().matches(addr, size, write), expect);
            if expect {
                let on_trap = traps.iter().any(|t| {
                    (write || t.reads) && t.page <= last && addr < t.page + PAGE_SIZE
                });
                prop_assert!(on_trap);
            }
        }
        dbg.remove_all(&mut vm).unwrap();
        prop_assert!(vm.page_traps().is_empty());
    }
}

/// A target whose linear pages 0x10000 and 0x11000 map to physical 0x3000 and 0x1000.
struct Remapped(MemTarget);

impl DebugTarget for Remapped {
    fn cpu_count(&self) -> u32 {
        self.0.cpu_count()
    }
    fn read_regs(&mut self, cpu: u32) -> Result<Registers, TargetError> {
        self.0.read_regs(cpu)
    }
    fn write_regs(&mut self, cpu: u32, regs: &Registers) -> Result<(), TargetError> {
        self.0.write_regs(cpu, regs)
    }
    fn read_phys(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        self.0.read_phys(addr, buf)
    }
    fn write_phys(&mut self, addr: u64, data: &[u8]) -> Result<(), TargetError> {
        self.0.write_phys(addr, data)
    }
    fn translate(&mut self, cpu: u32, vaddr: u64) -> Result<u64, TargetError> {
        match vaddr >> 12 {
            0x10 => Ok(0x3000 | (vaddr & 0xfff)),
            0x11 => Ok(0x1000 | (vaddr & 0xfff)),
            _ => self.0.translate(cpu, vaddr),
        }
    }
    fn set_page_traps(&mut self, traps: &[PageTrap]) -> Result<(), TargetError> {
        self.0.set_page_traps(traps)
    }
    fn set_guest_debug(&mut self, cpu: u32, dbg: &GuestDebug) -> Result<(), TargetError> {
        self.0.set_guest_debug(cpu, dbg)
    }
    fn resume(&mut self, scope: ResumeScope) -> Result<(), TargetError> {
        self.0.resume(scope)
    }
    fn halt(&mut self) -> Result<(), TargetError> {
        self.0.halt()
    }
}

#[test]
fn a_linear_range_across_pages_watches_each_physical_piece() {
    let (vm, rx) = vm_with(1, &[0xf4]);
    let mut vm = Remapped(vm);
    let mut dbg = Debugger::new();
    // Auto with free debug registers still needs page traps for 4 KiB + 2 bytes.
    let id = dbg
        .add_data_watch(&mut vm, 0, 0x10ffe, 0x1002, MemAccess::ReadWrite)
        .unwrap();
    assert!(matches!(
        dbg.breakpoint(id).unwrap().kind,
        BreakpointKind::PageTrap {
            addr: 0x10ffe,
            len: 0x1002,
            phys: 0x3ffe,
            ..
        }
    ));
    assert_eq!(
        vm.0.page_traps(),
        &[
            PageTrap {
                page: 0x1000,
                reads: true
            },
            PageTrap {
                page: 0x3000,
                reads: true
            }
        ]
    );
    let w = dbg.mem_watch();
    assert!(w.matches(0x3fff, 1, false) && w.matches(0x1fff, 1, true));
    assert!(!w.matches(0x3ffd, 1, true) && !w.matches(0x2000, 4, true));
    assert!(
        !w.matches(0x10ffe, 2, true),
        "physical addresses, not linear"
    );
    // One more byte reaches linear 0x12000, which does not translate.
    assert!(matches!(
        dbg.add_data_watch(&mut vm, 0, 0x10ffe, 0x1003, MemAccess::Write),
        Err(DebuggerError::Target(TargetError::Unmapped {
            addr: 0x12000
        }))
    ));
    dbg.detach(&mut vm).unwrap();
    assert!(vm.0.page_traps().is_empty());
    assert!(rx.try_recv().unwrap().is_some(), "detach lets the VM run");
}
