use super::*;
use crate::debugger::{BreakpointKind, HwAccess, MemTarget, stop_channel};

fn gdb_target() -> GdbTarget<MemTarget> {
    let (tx, rx) = stop_channel();
    GdbTarget::new(MemTarget::new(2, 0x2000, tx), Debugger::new(), rx)
}

const TID1: Tid = NonZeroUsize::MIN;

fn ok<V>(r: TargetResult<V, GdbTarget<MemTarget>>) -> V {
    match r {
        Ok(v) => v,
        Err(_) => panic!("target error"),
    }
}

#[test]
fn memory_reads_stop_at_unmapped_pages() {
    let mut t = gdb_target();
    let mut buf = [0u8; 0x20];
    assert_eq!(t.read_addrs(0x1ff0, &mut buf, TID1).ok(), Some(0x10));
    assert!(matches!(
        t.read_addrs(0x2000, &mut buf, TID1),
        Err(GdbError::NonFatal)
    ));
    ok(t.write_addrs(0x10, &[1, 2], TID1));
    assert_eq!(t.read_addrs(0x10, &mut buf[..2], TID1).ok(), Some(2));
    assert_eq!(buf[..2], [1, 2]);
}

/// A memory target whose 8 KiB of memory repeat over the whole address space, so
/// that the last page is mapped like a higher-half kernel's.
struct Ring(MemTarget);

impl DebugTarget for Ring {
    fn cpu_count(&self) -> u32 {
        self.0.cpu_count()
    }
    fn read_regs(&mut self, cpu: u32) -> Result<crate::debugger::Registers, TargetError> {
        self.0.read_regs(cpu)
    }
    fn write_regs(
        &mut self,
        cpu: u32,
        regs: &crate::debugger::Registers,
    ) -> Result<(), TargetError> {
        self.0.write_regs(cpu, regs)
    }
    fn read_phys(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        self.0.read_phys(addr, buf)
    }
    fn write_phys(&mut self, addr: u64, data: &[u8]) -> Result<(), TargetError> {
        self.0.write_phys(addr, data)
    }
    fn translate(&mut self, cpu: u32, vaddr: u64) -> Result<u64, TargetError> {
        self.0.translate(cpu, vaddr & 0x1fff)
    }
    fn set_guest_debug(
        &mut self,
        cpu: u32,
        dbg: &crate::debugger::GuestDebug,
    ) -> Result<(), TargetError> {
        self.0.set_guest_debug(cpu, dbg)
    }
    fn resume(&mut self, scope: crate::debugger::ResumeScope) -> Result<(), TargetError> {
        self.0.resume(scope)
    }
    fn halt(&mut self) -> Result<(), TargetError> {
        self.0.halt()
    }
}

#[test]
fn memory_access_stops_at_the_end_of_the_address_space() {
    let (tx, rx) = stop_channel();
    let mut t = GdbTarget::new(Ring(MemTarget::new(1, 0x2000, tx)), Debugger::new(), rx);
    let mut buf = [0u8; 0x20];
    assert_eq!(
        t.read_addrs(u64::MAX - 0xf, &mut buf, TID1).ok(),
        Some(0x10)
    );
    assert_eq!(t.read_addrs(u64::MAX, &mut buf, TID1).ok(), Some(1));
    assert!(matches!(
        t.write_addrs(u64::MAX - 1, &[1, 2, 3], TID1),
        Err(GdbError::NonFatal)
    ));
    assert!(t.write_addrs(u64::MAX - 1, &[1, 2], TID1).is_ok());
    assert!(t.write_addrs(u64::MAX, &[], TID1).is_ok());
    assert_eq!(t.target.0.read_phys(0x1ffe, &mut buf[..2]).ok(), Some(()));
    assert_eq!(buf[..2], [1, 2]);
}

#[test]
fn breakpoint_packets_are_idempotent_and_fall_back() {
    let mut t = gdb_target();
    for addr in 0..4 {
        assert!(ok(t.add_hw_breakpoint(0x100 + addr, 1)));
    }
    assert!(ok(t.add_hw_breakpoint(0x100, 1)), "re-inserting is fine");
    assert_eq!(t.dbg.breakpoints().len(), 4);
    assert!(!ok(t.add_hw_breakpoint(0x200, 1)), "no free slot");
    // A watchpoint with the slots full becomes a page trap.
    assert!(ok(t.add_hw_watchpoint(0x300, 4, WatchKind::Write)));
    assert!(matches!(
        t.dbg.breakpoints().last().map(|b| b.kind),
        Some(BreakpointKind::PageTrap {
            addr: 0x300,
            len: 4,
            ..
        })
    ));
    assert!(
        !ok(t.add_hw_watchpoint(0x9000, 4, WatchKind::Read)),
        "unmapped"
    );
    assert!(ok(t.remove_hw_watchpoint(0x300, 4, WatchKind::Write)));
    assert!(t.target.page_traps().is_empty());
    // `break` with the slots full becomes an int3.
    assert!(ok(t.add_sw_breakpoint(0x400, 1)));
    assert!(matches!(
        t.dbg.breakpoints().last().map(|b| b.kind),
        Some(BreakpointKind::Software { addr: 0x400, .. })
    ));
    assert!(!ok(t.add_sw_breakpoint(0x9000, 1)), "unmapped");
    assert!(ok(t.remove_sw_breakpoint(0x400, 1)));
    assert!(!ok(t.remove_sw_breakpoint(0x400, 1)));
}

#[test]
fn stops_map_to_gdb_stop_replies() {
    let mut t = gdb_target();
    assert!(ok(t.add_hw_watchpoint(0x800, 2, WatchKind::Read)));
    let id = t.dbg.breakpoints()[0].id;
    let stop = |cpu, reason| Stop { cpu, reason };
    let tid2 = cpu_to_tid(1);
    assert_eq!(
        t.gdb_stop(stop(
            1,
            StopReason::Watchpoint {
                id,
                hits: 1,
                addr: 0x800,
                access: HwAccess::ReadWrite
            }
        )),
        MultiThreadStopReason::Watch {
            tid: tid2,
            kind: WatchKind::Read,
            addr: 0x800
        }
    );
    assert_eq!(
        t.gdb_stop(stop(1, StopReason::Halted)),
        MultiThreadStopReason::SignalWithThread {
            tid: tid2,
            signal: Signal::SIGINT
        }
    );
    assert_eq!(
        t.gdb_stop(stop(0, StopReason::Step)),
        MultiThreadStopReason::SignalWithThread {
            tid: TID1,
            signal: Signal::SIGTRAP
        }
    );
    assert_eq!(
        t.gdb_stop(stop(0, StopReason::PoweredOff)),
        MultiThreadStopReason::Exited(0)
    );
    // A breakpoint gdb did not set (the VMM's own) is a plain SIGTRAP.
    let foreign = t.dbg.add_hw_breakpoint(0x10).unwrap();
    assert_eq!(
        t.gdb_stop(stop(
            0,
            StopReason::Breakpoint {
                id: foreign,
                hits: 1
            }
        )),
        MultiThreadStopReason::SignalWithThread {
            tid: TID1,
            signal: Signal::SIGTRAP
        }
    );
}

#[test]
fn resume_actions_pick_step_or_locked_continue() {
    let mut t = gdb_target();
    t.target.write_phys(0, &[0x90, 0x90, 0xf4]).unwrap();
    t.clear_resume_actions().unwrap();
    t.set_resume_action_step(cpu_to_tid(1), None).unwrap();
    MultiThreadResume::resume(&mut t).unwrap();
    let raw = t.stops.try_recv().unwrap().unwrap();
    let s = t.dbg.handle_stop(&mut t.target, raw).unwrap().unwrap();
    assert_eq!((s.cpu, s.reason), (1, StopReason::Step));
    assert_eq!(t.target.read_regs(0).unwrap().rip, 0);
    assert!(t.set_resume_action_step(cpu_to_tid(2), None).is_err());

    t.clear_resume_actions().unwrap();
    t.set_resume_action_continue(cpu_to_tid(1), None).unwrap();
    t.set_resume_action_scheduler_lock().unwrap();
    MultiThreadResume::resume(&mut t).unwrap();
    let raw = t.stops.try_recv().unwrap().unwrap();
    assert_eq!(raw.cpu, 1);
    assert_eq!(t.target.read_regs(1).unwrap().rip, 3);
    assert_eq!(t.target.read_regs(0).unwrap().rip, 0, "vCPU 0 stayed put");
}
