//! Table-driven check of the VM state machine over every pair of states.

use std::collections::{HashMap, VecDeque};

use vmm_core::sync::vmstate::{VmState, VmStateError, VmStateMachine};

use VmState::*;

/// VirtualBox's allowed transitions, written out independently of
/// `VmState::successors` (plus reset returning to `Suspended`).
const ALLOWED: &[(VmState, VmState)] = &[
    (Creating, Created),
    (Created, Loading),
    (Created, PoweringOn),
    (Created, PoweringOff),
    (Loading, Suspended),
    (Loading, LoadFailure),
    (PoweringOn, Running),
    (Resuming, Running),
    (Running, PoweringOff),
    (Running, Suspending),
    (Running, Resetting),
    (Running, SoftResetting),
    (Running, RunningLs),
    (Running, Debugging),
    (Running, FatalError),
    (Running, GuruMeditation),
    (RunningLs, PoweringOffLs),
    (RunningLs, SuspendingLs),
    (RunningLs, SuspendingExtLs),
    (RunningLs, ResettingLs),
    (RunningLs, SoftResettingLs),
    (RunningLs, Running),
    (RunningLs, DebuggingLs),
    (RunningLs, FatalErrorLs),
    (RunningLs, GuruMeditationLs),
    (Resetting, Running),
    (Resetting, Suspended),
    (SoftResetting, Running),
    (SoftResetting, Suspended),
    (ResettingLs, SuspendingLs),
    (SoftResettingLs, RunningLs),
    (Suspending, Suspended),
    (SuspendingLs, Suspending),
    (SuspendingLs, SuspendedLs),
    (SuspendingExtLs, Suspending),
    (SuspendingExtLs, SuspendedExtLs),
    (Suspended, PoweringOff),
    (Suspended, Saving),
    (Suspended, Resetting),
    (Suspended, SoftResetting),
    (Suspended, Resuming),
    (Suspended, Loading),
    (SuspendedLs, Suspended),
    (SuspendedLs, Saving),
    (SuspendedExtLs, Suspended),
    (SuspendedExtLs, Saving),
    (Saving, Suspended),
    (Debugging, Running),
    (Debugging, PoweringOff),
    (DebuggingLs, Debugging),
    (DebuggingLs, RunningLs),
    (DebuggingLs, PoweringOffLs),
    (PoweringOff, Off),
    (PoweringOffLs, PoweringOff),
    (PoweringOffLs, OffLs),
    (Off, Destroying),
    (OffLs, Off),
    (FatalError, PoweringOff),
    (FatalErrorLs, FatalError),
    (FatalErrorLs, PoweringOffLs),
    (GuruMeditation, Debugging),
    (GuruMeditation, PoweringOff),
    (GuruMeditationLs, GuruMeditation),
    (GuruMeditationLs, DebuggingLs),
    (GuruMeditationLs, PoweringOffLs),
    (LoadFailure, PoweringOff),
    (Destroying, Terminated),
];

/// Shortest path of allowed transitions from `Creating` to `target`.
fn path_to(target: VmState) -> Vec<VmState> {
    let mut prev: HashMap<VmState, VmState> = HashMap::new();
    let mut queue = VecDeque::from([Creating]);
    while let Some(s) = queue.pop_front() {
        if s == target {
            break;
        }
        for &(from, to) in ALLOWED {
            if from == s && to != Creating && !prev.contains_key(&to) {
                prev.insert(to, s);
                queue.push_back(to);
            }
        }
    }
    let mut path = vec![target];
    let mut cur = target;
    while cur != Creating {
        cur = *prev
            .get(&cur)
            .unwrap_or_else(|| panic!("{target} unreachable"));
        path.push(cur);
    }
    path.reverse();
    path
}

fn machine_in(state: VmState) -> VmStateMachine {
    let sm = VmStateMachine::new();
    for s in path_to(state).into_iter().skip(1) {
        sm.set(s).unwrap();
    }
    assert_eq!(sm.state(), state);
    sm
}

#[test]
fn every_pair_is_allowed_exactly_when_the_table_says_so() {
    let mut accepted = 0;
    for from in VmState::ALL {
        for to in VmState::ALL {
            let expected = ALLOWED.contains(&(from, to));
            assert_eq!(from.can_transition_to(to), expected, "{from} -> {to}");
            let sm = machine_in(from);
            let result = sm.set(to);
            if expected {
                assert_eq!(result, Ok(()), "{from} -> {to} refused");
                assert_eq!(sm.state(), to);
                accepted += 1;
            } else {
                assert_eq!(
                    result,
                    Err(VmStateError::InvalidTransition { from, to }),
                    "{from} -> {to} accepted"
                );
                assert_eq!(sm.state(), from, "refused change still changed the state");
            }
        }
    }
    assert_eq!(accepted, ALLOWED.len());
}

#[test]
fn try_transition_checks_every_pair_too() {
    for from in VmState::ALL {
        for to in VmState::ALL {
            let sm = machine_in(from);
            let ok = sm.try_transition(&[(from, to)]).is_ok();
            assert_eq!(ok, ALLOWED.contains(&(from, to)), "{from} -> {to}");
        }
    }
}
