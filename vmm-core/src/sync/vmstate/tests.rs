//! The VM state machine: transitions, listeners, waits.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

#[test]
fn names_are_unique_and_ls_matches() {
    let mut names: Vec<_> = VmState::ALL.iter().map(|s| s.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), VmState::ALL.len());
    assert!(VmState::RunningLs.is_live_save());
    assert!(!VmState::Running.is_live_save());
}

#[test]
fn every_state_but_terminated_has_a_way_out() {
    for s in VmState::ALL {
        assert_eq!(s.successors().is_empty(), s == VmState::Terminated, "{s}");
    }
}

#[test]
fn listeners_see_changes_in_order_and_can_leave() {
    let sm = VmStateMachine::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let id = sm.subscribe(move |o, n| s2.lock().push((o, n)));
    sm.set(VmState::Created).unwrap();
    sm.set(VmState::PoweringOn).unwrap();
    assert!(sm.unsubscribe(id));
    assert!(!sm.unsubscribe(id));
    sm.set(VmState::Running).unwrap();
    assert_eq!(
        *seen.lock(),
        vec![
            (VmState::Creating, VmState::Created),
            (VmState::Created, VmState::PoweringOn)
        ]
    );
    assert_eq!(sm.previous(), VmState::PoweringOn);
}

#[test]
fn listener_cannot_change_state() {
    let sm = VmStateMachine::new();
    let inner = sm.clone();
    let refused = Arc::new(AtomicUsize::new(0));
    let r2 = refused.clone();
    sm.subscribe(move |_, _| {
        if inner.set(VmState::PoweringOff) == Err(VmStateError::ChangeFromListener) {
            r2.fetch_add(1, Ordering::SeqCst);
        }
    });
    sm.set(VmState::Created).unwrap();
    assert_eq!(refused.load(Ordering::SeqCst), 1);
    assert_eq!(sm.state(), VmState::Created);
}

#[test]
fn try_transition_rejects_invalid_pairs_and_wrong_state() {
    let sm = VmStateMachine::new();
    assert!(matches!(
        sm.try_transition(&[(VmState::Creating, VmState::Running)]),
        Err(VmStateError::InvalidTransition { .. })
    ));
    assert!(matches!(
        sm.try_transition_as("test", &[(VmState::Running, VmState::Suspending)]),
        Err(VmStateError::WrongState {
            who: "test",
            current: VmState::Creating,
            ..
        })
    ));
}

#[test]
fn wait_for_wakes_on_change_and_times_out() {
    let sm = VmStateMachine::new();
    let other = sm.clone();
    let t = std::thread::spawn(move || other.wait_for(|s| s == VmState::Created, None));
    sm.set(VmState::Created).unwrap();
    assert_eq!(t.join().unwrap(), Ok(VmState::Created));
    assert_eq!(
        sm.wait_for(|s| s == VmState::Running, Some(Duration::from_millis(1))),
        Err(VmStateError::Timeout {
            current: VmState::Created
        })
    );
}
