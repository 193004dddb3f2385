//! The EMT's loop without `/dev/kvm`: a scripted vCPU in a fake machine
//! with real forced actions, a real port bus and real guest memory.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use dbgf::debugger::StopCause;
use hm_vmx::VirtualCpu;
use hm_vmx::testing::{ScriptedExit, ScriptedVcpu};
use hm_vmx::vmx::ExitReason;
use parking_lot::Mutex;

use pgm::phys::RomWindow;

use super::exit::{ExitContext, WatchHit};
use super::host::EmtHost;
use super::run_guest;
use super::stall::StallWatch;
use super::testing::{FakeDebugger, MMIO, Machine, RECORDER_PORT, ROM, out};
use crate::devices::{DEBUG_EXIT_PORT, DeviceAction, PioDevice};
use crate::error::{Error, Result};
use crate::outcome::RunOutcome;
use crate::sync::ffs::{CpuFf, ForcedActions, Kick, VmFf};

/// A port that posts forced actions when written: 1 a request for vCPU 0,
/// 2 termination, 3 a reset.
const POSTER_PORT: u16 = 0x70;

struct Poster(Arc<ForcedActions>);

impl PioDevice for Poster {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) -> DeviceAction {
        match data[0] {
            1 => self.0.set_cpu(0, CpuFf::REQUEST).unwrap(),
            2 => self.0.set_vm(VmFf::TERMINATE),
            3 => return DeviceAction::Reset,
            _ => {}
        }
        DeviceAction::Continue
    }
}

/// No EMT is ever in a real guest here: kicks have nothing to do.
struct NoKick;

impl Kick for NoKick {
    fn kick(&self, _cpu: u32) {}
}

/// A machine that logs what the loop asks of it.
struct FakeHost {
    ffs: Arc<ForcedActions>,
    machine: Machine,
    debugger: FakeDebugger,
    /// Whether the VM may run; a wait lets it.
    may_run: Cell<bool>,
    log: RefCell<Vec<&'static str>>,
    outcome: Cell<Option<RunOutcome>>,
    /// Entries attempted: a loop that spins without serving what blocks
    /// them fails instead of hanging the test.
    entries: Cell<u32>,
    stall: StallWatch,
    /// Whether the vCPU's descriptor tables are in ROM (a window opens).
    tables_in_rom: Cell<bool>,
    /// Whether the watchdog kicks the single step too (the instruction
    /// does not complete even with the window open).
    step_stalls: Cell<bool>,
}

/// More entry attempts than any script here needs.
const MAX_ENTRIES: u32 = 10_000;

impl FakeHost {
    fn new(debugger: FakeDebugger) -> FakeHost {
        let ffs = Arc::new(ForcedActions::new(1, Arc::new(NoKick)).unwrap());
        let mut machine = Machine::new();
        machine
            .io
            .register(
                POSTER_PORT,
                1,
                "poster",
                Arc::new(Mutex::new(Poster(ffs.clone()))),
            )
            .unwrap();
        FakeHost {
            ffs,
            machine,
            debugger,
            may_run: Cell::new(true),
            log: RefCell::default(),
            outcome: Cell::new(None),
            entries: Cell::new(0),
            stall: StallWatch::new(1),
            tables_in_rom: Cell::new(false),
            step_stalls: Cell::new(false),
        }
    }

    fn note(&self, what: &'static str) {
        self.log.borrow_mut().push(what);
    }

    fn log(&self) -> Vec<&'static str> {
        self.log.borrow().clone()
    }
}

impl EmtHost for FakeHost {
    type Debug = FakeDebugger;

    fn forced_actions(&self) -> &ForcedActions {
        self.entries.set(self.entries.get() + 1);
        assert!(
            self.entries.get() < MAX_ENTRIES,
            "the loop keeps trying to enter: {:?}",
            self.log()
        );
        &self.ffs
    }

    fn serve_forced_actions(&self, cpu: u32) -> Result<bool> {
        if self.ffs.vm().contains(VmFf::TERMINATE) {
            self.note("terminate");
            return Ok(false);
        }
        if self.ffs.test_and_clear_cpu(cpu, CpuFf::REQUEST)? {
            self.note("request");
        }
        Ok(true)
    }

    fn may_run(&self, _cpu: u32) -> bool {
        self.may_run.get()
    }

    fn wait(&self, _cpu: u32) -> Result<()> {
        self.note("wait");
        self.may_run.set(true);
        Ok(())
    }

    fn exit_context(&self, cpu: u32) -> ExitContext<'_, FakeDebugger> {
        ExitContext {
            cpu,
            io: &self.machine.io,
            memory: &self.machine.memory,
            debug: &self.debugger,
        }
    }

    fn halted(&self, _cpu: u32) {
        self.note("halt");
    }

    fn debug_stop(&self, _cpu: u32, _cause: StopCause) -> Result<bool> {
        self.note("debug stop");
        Ok(true)
    }

    fn report_watch_hit(&self, _cpu: u32, _hit: WatchHit) -> Result<bool> {
        self.note("watch hit");
        Ok(false)
    }

    fn device_action(&self, action: DeviceAction) -> Result<Option<RunOutcome>> {
        Ok(match action {
            DeviceAction::Continue => None,
            DeviceAction::GuestExit(status) => Some(RunOutcome::GuestExit(status)),
            DeviceAction::PowerOff => Some(RunOutcome::GuestPoweredOff),
            DeviceAction::Reset => {
                self.note("reset");
                None
            }
        })
    }

    fn end_run(&self, outcome: RunOutcome) {
        self.outcome.set(Some(outcome));
    }

    fn stall_watch(&self) -> &StallWatch {
        &self.stall
    }

    fn open_descriptor_window(&self, cpu: u32) -> Result<Option<RomWindow>> {
        if !self.tables_in_rom.get() {
            return Ok(None);
        }
        self.note("window opened");
        if self.step_stalls.get() {
            self.stall.mark(cpu);
        }
        let mut map = self.machine.memory.phys().write();
        Ok(Some(map.open_rom_window(&[ROM]).unwrap()))
    }

    fn close_descriptor_window(&self, _cpu: u32, window: RomWindow) -> Result<()> {
        self.note("window closed");
        let mut map = self.machine.memory.phys().write();
        map.close_rom_window(window).unwrap();
        Ok(())
    }
}

fn exit_with(status: u8) -> ScriptedExit {
    out(DEBUG_EXIT_PORT, 1, &[status])
}

#[test]
fn the_loop_runs_exits_until_a_device_ends_the_run() {
    let host = FakeHost::new(FakeDebugger::default());
    let mut vcpu = ScriptedVcpu::new(
        0,
        [out(RECORDER_PORT, 1, &[5]), exit_with(3), ScriptedExit::Hlt],
    );
    run_guest(&mut vcpu, &host).unwrap();
    assert_eq!(host.outcome.get(), Some(RunOutcome::GuestExit(3)));
    assert_eq!(vcpu.remaining(), 1, "the exit after the end ran");
    assert_eq!(host.machine.port_log(), [(0, vec![5], true)]);
}

#[test]
fn a_forced_action_posted_by_an_exit_is_served_before_the_next_entry() {
    let host = FakeHost::new(FakeDebugger::default());
    let mut vcpu = ScriptedVcpu::new(
        0,
        [out(POSTER_PORT, 1, &[1]), ScriptedExit::Hlt, exit_with(0)],
    );
    run_guest(&mut vcpu, &host).unwrap();
    assert_eq!(host.log(), ["request", "halt", "wait"]);
    assert_eq!(host.outcome.get(), Some(RunOutcome::GuestExit(0)));
}

#[test]
fn termination_stops_the_loop_before_the_next_entry() {
    let host = FakeHost::new(FakeDebugger::default());
    let mut vcpu = ScriptedVcpu::new(0, [out(POSTER_PORT, 1, &[2]), exit_with(9)]);
    run_guest(&mut vcpu, &host).unwrap();
    assert_eq!(host.log(), ["terminate"]);
    assert_eq!(host.outcome.get(), None);
    assert_eq!(vcpu.remaining(), 1);
}

#[test]
fn a_vm_that_may_not_run_waits_before_entering() {
    let host = FakeHost::new(FakeDebugger::default());
    host.may_run.set(false);
    let mut vcpu = ScriptedVcpu::new(0, [exit_with(1)]);
    run_guest(&mut vcpu, &host).unwrap();
    assert_eq!(host.log(), ["wait"]);
    // The guest's exit, and the entry that completed its `out`.
    assert_eq!(vcpu.runs(), 2);
}

#[test]
fn a_reset_that_restarts_the_machine_runs_on() {
    let host = FakeHost::new(FakeDebugger::default());
    let mut vcpu = ScriptedVcpu::new(0, [out(POSTER_PORT, 1, &[3]), exit_with(4)]);
    run_guest(&mut vcpu, &host).unwrap();
    assert_eq!(host.log(), ["reset"]);
    assert_eq!(host.outcome.get(), Some(RunOutcome::GuestExit(4)));
    // The `out` completed (one entry that returned at once) before the
    // reset, and so did the exit's before the run ended.
    assert_eq!(vcpu.runs(), 4);
}

#[test]
fn an_access_completes_its_instruction_only_before_the_emt_stays_out() {
    // Nothing keeps the EMT out after the recorder's accesses: no extra
    // entry until the exit's own completion before the run ends.
    let host = FakeHost::new(FakeDebugger::default());
    let mut vcpu = ScriptedVcpu::new(
        0,
        [
            out(RECORDER_PORT, 1, &[5]),
            out(RECORDER_PORT, 1, &[6]),
            exit_with(0),
        ],
    );
    run_guest(&mut vcpu, &host).unwrap();
    assert_eq!(vcpu.runs(), 4);
    // A request posted by the access: its instruction completes first.
    let host = FakeHost::new(FakeDebugger::default());
    let mut vcpu = ScriptedVcpu::new(0, [out(POSTER_PORT, 1, &[1]), exit_with(0)]);
    run_guest(&mut vcpu, &host).unwrap();
    assert_eq!(host.log(), ["request"]);
    assert_eq!(vcpu.runs(), 4);
}

#[test]
fn a_debug_exit_is_reported_and_the_guest_goes_on() {
    let host = FakeHost::new(FakeDebugger {
        attached: true,
        ..FakeDebugger::default()
    });
    let debug = hm_vmx::DebugExit {
        exception: 1,
        rip: 0,
        dr6: 0,
        dr7: 0,
    };
    let mut vcpu = ScriptedVcpu::new(0, [ScriptedExit::Debug(debug), exit_with(0)]);
    run_guest(&mut vcpu, &host).unwrap();
    assert_eq!(host.log(), ["debug stop"]);
}

#[test]
fn a_watched_access_completes_its_instruction_before_the_hit_is_reported() {
    let host = FakeHost::new(FakeDebugger {
        mem_watch: Some(MMIO),
        ..FakeDebugger::default()
    });
    let mut vcpu = ScriptedVcpu::new(
        0,
        [
            ScriptedExit::MmioWrite {
                addr: MMIO,
                data: vec![1],
            },
            exit_with(0),
        ],
    );
    run_guest(&mut vcpu, &host).unwrap();
    assert_eq!(host.log(), ["watch hit"]);
    // The extra entries that completed the watched access and the exit's
    // `out` returned at once.
    assert_eq!(vcpu.runs(), 4);
    assert_eq!(host.outcome.get(), Some(RunOutcome::GuestExit(0)));
}

#[test]
fn an_unhandled_exit_ends_the_run_with_an_error_naming_it() {
    let host = FakeHost::new(FakeDebugger::default());
    let regs = hm_vmx::Regs {
        rip: 0xfff0,
        ..Default::default()
    };
    let mut vcpu = ScriptedVcpu::new(0, [ScriptedExit::Shutdown]);
    vcpu.set_regs(&regs).unwrap();
    match run_guest(&mut vcpu, &host) {
        Err(Error::UnhandledExit {
            cpu: 0,
            reason: Some(ExitReason::TripleFault),
            rip: 0xfff0,
            diagnosis: None,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

/// A single step's exit, as KVM reports it.
fn single_step() -> ScriptedExit {
    ScriptedExit::Debug(hm_vmx::DebugExit {
        exception: 1,
        rip: 0,
        dr6: 0x4000,
        dr7: 0,
    })
}

#[test]
fn a_vcpu_stuck_on_a_rom_descriptor_steps_through_a_window_and_runs_on() {
    let host = FakeHost::new(FakeDebugger::default());
    host.tables_in_rom.set(true);
    host.stall.mark(0);
    let mut vcpu = ScriptedVcpu::new(0, [ScriptedExit::Interrupted, single_step(), exit_with(0)]);
    run_guest(&mut vcpu, &host).unwrap();
    assert_eq!(host.log(), ["window opened", "window closed"]);
    assert_eq!(host.outcome.get(), Some(RunOutcome::GuestExit(0)));
    let slots = host.machine.memory.phys().read().kvm_slots().clone();
    assert!(
        slots
            .slots
            .iter()
            .filter(|s| s.guest_addr >= ROM)
            .all(|s| s.read_only)
    );
}

#[test]
fn an_exit_during_the_step_is_handled_after_the_window_closed() {
    let host = FakeHost::new(FakeDebugger::default());
    host.tables_in_rom.set(true);
    host.stall.mark(0);
    let mut vcpu = ScriptedVcpu::new(0, [ScriptedExit::Interrupted, exit_with(6)]);
    run_guest(&mut vcpu, &host).unwrap();
    assert_eq!(host.log(), ["window opened", "window closed"]);
    assert_eq!(host.outcome.get(), Some(RunOutcome::GuestExit(6)));
}

#[test]
fn a_step_that_does_not_complete_ends_the_run_with_a_clear_error() {
    let host = FakeHost::new(FakeDebugger::default());
    host.tables_in_rom.set(true);
    host.step_stalls.set(true);
    host.stall.mark(0);
    let mut vcpu = ScriptedVcpu::new(0, [ScriptedExit::Interrupted, ScriptedExit::Interrupted]);
    let e = run_guest(&mut vcpu, &host).unwrap_err();
    assert!(matches!(e, Error::GuestStuck { cpu: 0, .. }), "{e}");
    assert!(e.to_string().contains("descriptor is in ROM"), "{e}");
    assert_eq!(host.log(), ["window opened", "window closed"]);
}

#[test]
fn a_kick_that_is_not_the_watchdog_s_opens_no_window() {
    let host = FakeHost::new(FakeDebugger::default());
    host.tables_in_rom.set(true);
    let mut vcpu = ScriptedVcpu::new(0, [ScriptedExit::Interrupted, exit_with(0)]);
    run_guest(&mut vcpu, &host).unwrap();
    assert!(host.log().is_empty(), "{:?}", host.log());
}

#[test]
fn a_lone_vcpu_kicked_while_halted_with_interrupts_off_ends_the_run() {
    let host = FakeHost::new(FakeDebugger::default());
    host.tables_in_rom.set(true);
    host.stall.mark(0);
    let mut vcpu = ScriptedVcpu::new(0, [ScriptedExit::Interrupted, exit_with(0)]);
    vcpu.set_halted_with_interrupts_off(true);
    run_guest(&mut vcpu, &host).unwrap();
    assert_eq!(host.outcome.get(), Some(RunOutcome::GuestHalted));
    assert_eq!(vcpu.remaining(), 1, "the exit after the end ran");
    assert!(host.log().is_empty(), "{:?}", host.log());
}

#[test]
fn a_vcpu_halted_with_interrupts_on_runs_on() {
    let host = FakeHost::new(FakeDebugger::default());
    host.stall.mark(0);
    let mut vcpu = ScriptedVcpu::new(0, [ScriptedExit::Interrupted, exit_with(0)]);
    run_guest(&mut vcpu, &host).unwrap();
    assert_eq!(host.outcome.get(), Some(RunOutcome::GuestExit(0)));
}

#[test]
fn a_halted_guest_runs_on_under_a_debugger() {
    let host = FakeHost::new(FakeDebugger {
        attached: true,
        ..FakeDebugger::default()
    });
    host.stall.mark(0);
    let mut vcpu = ScriptedVcpu::new(0, [ScriptedExit::Interrupted, exit_with(0)]);
    vcpu.set_halted_with_interrupts_off(true);
    run_guest(&mut vcpu, &host).unwrap();
    assert_eq!(host.outcome.get(), Some(RunOutcome::GuestExit(0)));
}

/// A host of two vCPUs where vCPU 0 was seen halted with interrupts off,
/// then vCPU 1 (so vCPU 0's next sighting decides).
fn two_vcpus_seen_halted() -> FakeHost {
    let mut host = FakeHost::new(FakeDebugger::default());
    host.stall = StallWatch::new(2);
    assert!(!host.stall.halted_for_good(0));
    assert!(!host.stall.halted_for_good(1));
    host
}

#[test]
fn the_run_ends_when_the_last_vcpu_is_seen_halted_again() {
    let host = two_vcpus_seen_halted();
    host.stall.mark(0);
    let mut vcpu = ScriptedVcpu::new(0, [ScriptedExit::Interrupted, exit_with(0)]);
    vcpu.set_halted_with_interrupts_off(true);
    run_guest(&mut vcpu, &host).unwrap();
    assert_eq!(host.outcome.get(), Some(RunOutcome::GuestHalted));
}

#[test]
fn the_run_goes_on_while_another_vcpu_runs() {
    let host = two_vcpus_seen_halted();
    host.stall.running(1);
    host.stall.mark(0);
    let mut vcpu = ScriptedVcpu::new(0, [ScriptedExit::Interrupted, exit_with(0)]);
    vcpu.set_halted_with_interrupts_off(true);
    run_guest(&mut vcpu, &host).unwrap();
    assert_eq!(host.outcome.get(), Some(RunOutcome::GuestExit(0)));
}

#[test]
fn a_vcpu_that_exits_is_no_longer_seen_halted() {
    let host = two_vcpus_seen_halted();
    let mut vcpu = ScriptedVcpu::new(0, [out(RECORDER_PORT, 1, &[1]), exit_with(0)]);
    run_guest(&mut vcpu, &host).unwrap();
    assert_eq!(host.outcome.get(), Some(RunOutcome::GuestExit(0)));
    // vCPU 0 halts anew, after vCPU 1: vCPU 1 must be seen again
    assert!(!host.stall.halted_for_good(0));
}
