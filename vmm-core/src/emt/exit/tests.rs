//! Exit handling without `/dev/kvm`: a scripted vCPU's exits go through
//! [`handle_exit`] to a real port bus, a real `pgm` map and a fake
//! debugger.

use dbgf::debugger::StopCause;
use hm_vmx::DebugExit;
use hm_vmx::testing::{ScriptedExit, ScriptedVcpu};
use hm_vmx::vmx::ExitReason;
use proptest::prelude::*;

use super::*;
use crate::devices::{DEBUG_EXIT_PORT, DeviceAction};
use crate::emt::testing::*;

#[test]
fn port_writes_reach_the_device_and_reads_get_its_answer() {
    let m = Machine::new();
    let mut vcpu = ScriptedVcpu::new(
        0,
        [
            out(RECORDER_PORT + 2, 1, &[0x41]),
            input(RECORDER_PORT + 2, 2, 1),
        ],
    );
    let actions = m.run(&mut vcpu, &FakeDebugger::default());
    assert_eq!(actions, [ExitAction::Continue, ExitAction::Continue]);
    assert_eq!(
        m.port_log(),
        [(2, vec![0x41], true), (2, vec![0, 0], false)]
    );
    assert_eq!(vcpu.answers(), [vec![0x42, 0x42]]);
}

#[test]
fn string_io_is_split_into_accesses_of_its_size() {
    let m = Machine::new();
    let mut vcpu = ScriptedVcpu::new(
        0,
        [
            out(RECORDER_PORT, 2, &[1, 2, 3, 4, 5, 6]),
            input(RECORDER_PORT, 1, 3),
        ],
    );
    m.run(&mut vcpu, &FakeDebugger::default());
    let writes: Vec<_> = m
        .port_log()
        .into_iter()
        .filter(|l| l.2)
        .map(|l| l.1)
        .collect();
    assert_eq!(writes, [vec![1, 2], vec![3, 4], vec![5, 6]]);
    assert_eq!(vcpu.answers(), [vec![6, 6, 6]]);
}

#[test]
fn unassigned_ports_read_all_ones_and_drop_writes() {
    let m = Machine::new();
    let mut vcpu = ScriptedVcpu::new(0, [out(0x80, 1, &[9]), input(0x1234, 4, 1)]);
    let actions = m.run(&mut vcpu, &FakeDebugger::default());
    assert_eq!(actions, [ExitAction::Continue, ExitAction::Continue]);
    assert_eq!(vcpu.answers(), [vec![0xff; 4]]);
    let unassigned = m.io.unassigned();
    assert_eq!((unassigned.reads, unassigned.writes), (1, 1));
}

#[test]
fn a_device_that_ends_the_run_stops_a_string_write() {
    let m = Machine::new();
    let mut vcpu = ScriptedVcpu::new(0, [out(DEBUG_EXIT_PORT, 1, &[7, 8, 9])]);
    let actions = m.run(&mut vcpu, &FakeDebugger::default());
    assert_eq!(actions, [ExitAction::Device(DeviceAction::GuestExit(7))]);
}

#[test]
fn mmio_goes_through_the_pgm_handler_unchanged() {
    let m = Machine::new();
    let mut vcpu = ScriptedVcpu::new(
        0,
        [
            ScriptedExit::MmioWrite {
                addr: MMIO + 0x10,
                data: vec![1, 2, 3, 4],
            },
            ScriptedExit::MmioRead {
                addr: MMIO + 0x20,
                len: 8,
            },
        ],
    );
    let actions = m.run(&mut vcpu, &FakeDebugger::default());
    assert_eq!(actions, [ExitAction::Continue, ExitAction::Continue]);
    assert_eq!(
        *m.mmio_log.lock(),
        [(0x10, Some(vec![1, 2, 3, 4])), (0x20, None)]
    );
    assert_eq!(vcpu.answers(), [vec![MMIO_ANSWER; 8]]);
}

#[test]
fn rom_writes_are_dropped_and_unassigned_space_reads_all_ones() {
    let m = Machine::new();
    let mut vcpu = ScriptedVcpu::new(
        0,
        [
            ScriptedExit::MmioWrite {
                addr: ROM,
                data: vec![0, 0],
            },
            ScriptedExit::MmioRead { addr: ROM, len: 2 },
            ScriptedExit::MmioRead {
                addr: 0xc000_0000,
                len: 4,
            },
        ],
    );
    m.run(&mut vcpu, &FakeDebugger::default());
    assert_eq!(vcpu.answers(), [vec![0xf4, 0xf4], vec![0xff; 4]]);
}

#[test]
fn halts_interrupts_and_debug_exits_map_to_their_actions() {
    let m = Machine::new();
    let debug_exit = DebugExit {
        exception: 1,
        rip: 0x1000,
        dr6: 0x4000,
        dr7: 0,
    };
    let script = [
        ScriptedExit::Hlt,
        ScriptedExit::Interrupted,
        ScriptedExit::Debug(debug_exit),
    ];
    let attached = FakeDebugger {
        attached: true,
        ..FakeDebugger::default()
    };
    let actions = m.run(&mut ScriptedVcpu::new(0, script.clone()), &attached);
    let stop = StopCause::Debug {
        exception: 1,
        dr6: 0x4000,
        pc: 0x1000,
    };
    assert_eq!(
        actions,
        [
            ExitAction::Halt,
            ExitAction::Continue,
            ExitAction::DebugStop(stop)
        ]
    );
    // Without a debugger, a debug exit is not the VMM's to handle.
    let actions = m.run(&mut ScriptedVcpu::new(0, script), &FakeDebugger::default());
    assert!(matches!(&actions[2], ExitAction::Unhandled(u) if !u.diagnose));
}

#[test]
fn failures_end_the_run_and_entry_failures_are_explained() {
    let m = Machine::new();
    let mut vcpu = ScriptedVcpu::new(
        0,
        [
            ScriptedExit::Shutdown,
            ScriptedExit::InternalError { suberror: 1 },
            ScriptedExit::FailEntry {
                hardware_reason: 33,
            },
        ],
    );
    let actions = m.run(&mut vcpu, &FakeDebugger::default());
    assert_eq!(
        actions[0],
        ExitAction::Unhandled(Unhandled {
            exit: "Triple fault".into(),
            reason: Some(ExitReason::TripleFault),
            diagnose: false,
        })
    );
    assert!(
        matches!(&actions[1], ExitAction::Unhandled(u) if u.diagnose && u.exit.contains("emulation failed"))
    );
    assert!(matches!(
        &actions[2],
        ExitAction::Unhandled(u) if u.diagnose && u.reason == Some(ExitReason::EntryFailureGuestState)
    ));
}

#[test]
fn an_io_breakpoint_stops_before_the_access() {
    let m = Machine::new();
    let debugger = FakeDebugger {
        io_break: Some(RECORDER_PORT),
        resume: true,
        recorder: Some(m.recorder.clone()),
        ..FakeDebugger::default()
    };
    let mut vcpu = ScriptedVcpu::new(0, [out(RECORDER_PORT, 1, &[3])]);
    assert_eq!(m.run(&mut vcpu, &debugger), [ExitAction::Continue]);
    let cause = StopCause::Io {
        port: RECORDER_PORT,
        size: 1,
        write: true,
    };
    assert_eq!(*debugger.stops.borrow(), [(cause, 0)]);
    assert_eq!(m.port_log(), [(0, vec![3], true)]);

    // Told to terminate while stopped: the access never happens.
    let m = Machine::new();
    let debugger = FakeDebugger {
        io_break: Some(RECORDER_PORT),
        resume: false,
        ..FakeDebugger::default()
    };
    let mut vcpu = ScriptedVcpu::new(0, [input(RECORDER_PORT, 1, 1)]);
    assert_eq!(m.run(&mut vcpu, &debugger), [ExitAction::Terminate]);
    assert!(m.port_log().is_empty());
}

#[test]
fn a_watched_mmio_access_is_done_then_reported() {
    let m = Machine::new();
    let debugger = FakeDebugger {
        mem_watch: Some(MMIO + 8),
        ..FakeDebugger::default()
    };
    let mut vcpu = ScriptedVcpu::new(
        0,
        [ScriptedExit::MmioWrite {
            addr: MMIO + 8,
            data: vec![0xaa, 0xbb],
        }],
    );
    let hit = WatchHit {
        addr: MMIO + 8,
        size: 2,
        write: true,
    };
    assert_eq!(m.run(&mut vcpu, &debugger), [ExitAction::Watched(hit)]);
    assert_eq!(*m.mmio_log.lock(), [(8, Some(vec![0xaa, 0xbb]))]);
}

/// One port access of a random script.
fn port_exit() -> impl Strategy<Value = ScriptedExit> {
    let port = RECORDER_PORT..RECORDER_PORT + 8;
    let size = prop::sample::select(vec![1u8, 2, 4]);
    prop_oneof![
        (port.clone(), size.clone(), 1usize..4).prop_flat_map(|(p, s, n)| {
            prop::collection::vec(any::<u8>(), usize::from(s) * n).prop_map(move |d| out(p, s, &d))
        }),
        (port, size, 1usize..4).prop_map(|(p, s, n)| input(p, s, n)),
    ]
}

proptest! {
    /// Every access of any script of port exits reaches the device once,
    /// in order, with its offset and bytes, and every read gets the
    /// device's answer.
    #[test]
    fn every_port_access_reaches_the_device_in_order(
        script in prop::collection::vec(port_exit(), 1..20)
    ) {
        let m = Machine::new();
        let mut vcpu = ScriptedVcpu::new(0, script.clone());
        let actions = m.run(&mut vcpu, &FakeDebugger::default());
        prop_assert!(actions.iter().all(|a| *a == ExitAction::Continue));
        let mut expected = Vec::new();
        for exit in &script {
            match exit {
                ScriptedExit::Out { port, size, data } => {
                    for piece in data.chunks(usize::from(*size)) {
                        expected.push((port - RECORDER_PORT, piece.to_vec(), true));
                    }
                }
                ScriptedExit::In { port, size, count } => {
                    for _ in 0..*count {
                        expected.push((port - RECORDER_PORT, vec![0; usize::from(*size)], false));
                    }
                }
                _ => unreachable!(),
            }
        }
        prop_assert_eq!(m.port_log(), expected);
        let reads = script.iter().filter(|e| matches!(e, ScriptedExit::In { .. })).count();
        prop_assert_eq!(vcpu.answers().len(), reads);
    }
}
