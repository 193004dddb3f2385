//! The VM state machine, modelled on VirtualBox's `VMSTATE`.
//!
//! [`VmState`] lists VirtualBox's states (including the live-save `*Ls`
//! variants) and [`VmState::can_transition_to`] allows exactly the
//! transitions VirtualBox's state diagram allows. [`VmStateMachine`] holds the
//! current state of one VM: every change is validated, logged through
//! `tracing`, handed to the registered listeners and can be waited for.
//!
//! ```
//! use std::time::Duration;
//! use vmm_core::sync::vmstate::{VmState, VmStateMachine};
//!
//! let sm = VmStateMachine::new();
//! assert_eq!(sm.state(), VmState::Creating);
//! sm.set(VmState::Created).unwrap();
//! sm.set(VmState::PoweringOn).unwrap();
//! // Running -> Off directly is not allowed: powering off comes first.
//! sm.set(VmState::Running).unwrap();
//! assert!(sm.set(VmState::Off).is_err());
//! // Try several transitions, the first whose source matches wins.
//! let which = sm
//!     .try_transition(&[
//!         (VmState::Suspended, VmState::Resuming),
//!         (VmState::Running, VmState::Suspending),
//!     ])
//!     .unwrap();
//! assert_eq!(which, 1);
//! assert_eq!(
//!     sm.wait_for(|s| s == VmState::Suspending, Some(Duration::from_millis(10))),
//!     Ok(VmState::Suspending)
//! );
//! ```

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use thiserror::Error;

/// The state of a VM (VirtualBox's `VMSTATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VmState {
    /// The VM structure is being created.
    Creating,
    /// Created, not yet powered on or loaded.
    Created,
    /// A saved state is being loaded.
    Loading,
    /// Being powered on.
    PoweringOn,
    /// Being resumed from the suspended state.
    Resuming,
    /// Executing guest code.
    Running,
    /// Live save: running while the state is being saved.
    RunningLs,
    /// Being hard reset.
    Resetting,
    /// Live save: being hard reset (suspended afterwards).
    ResettingLs,
    /// Being soft (warm) reset.
    SoftResetting,
    /// Live save: being soft reset (keeps running).
    SoftResettingLs,
    /// Being suspended.
    Suspending,
    /// Live save: being suspended as part of the live save.
    SuspendingLs,
    /// Live save: being suspended by an external suspend request.
    SuspendingExtLs,
    /// Suspended.
    Suspended,
    /// Live save: suspended, waiting for the live save to move on.
    SuspendedLs,
    /// Live save: suspended by an external suspend request.
    SuspendedExtLs,
    /// Suspended and the state is being saved.
    Saving,
    /// Stopped in the debugger.
    Debugging,
    /// Live save: stopped in the debugger while the live phase goes on.
    DebuggingLs,
    /// Being powered off.
    PoweringOff,
    /// Live save: being powered off, the save is being cancelled.
    PoweringOffLs,
    /// Powered off, awaiting destruction.
    Off,
    /// Live save: waiting for cancellation before going to `Off`.
    OffLs,
    /// Stopped because of a fatal error.
    FatalError,
    /// Live save: waiting for cancellation before going to `FatalError`.
    FatalErrorLs,
    /// Stopped because of a guru meditation (unrecoverable VMM failure).
    GuruMeditation,
    /// Live save: waiting for cancellation before going to `GuruMeditation`.
    GuruMeditationLs,
    /// Loading a saved state failed; only powering off is possible.
    LoadFailure,
    /// Being destroyed.
    Destroying,
    /// Destroyed.
    Terminated,
}

use VmState as S;

impl VmState {
    /// Every state, in declaration order.
    pub const ALL: [VmState; 31] = [
        S::Creating,
        S::Created,
        S::Loading,
        S::PoweringOn,
        S::Resuming,
        S::Running,
        S::RunningLs,
        S::Resetting,
        S::ResettingLs,
        S::SoftResetting,
        S::SoftResettingLs,
        S::Suspending,
        S::SuspendingLs,
        S::SuspendingExtLs,
        S::Suspended,
        S::SuspendedLs,
        S::SuspendedExtLs,
        S::Saving,
        S::Debugging,
        S::DebuggingLs,
        S::PoweringOff,
        S::PoweringOffLs,
        S::Off,
        S::OffLs,
        S::FatalError,
        S::FatalErrorLs,
        S::GuruMeditation,
        S::GuruMeditationLs,
        S::LoadFailure,
        S::Destroying,
        S::Terminated,
    ];

    /// VirtualBox's name for the state (`"RUNNING_LS"`, `"GURU_MEDITATION"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            S::Creating => "CREATING",
            S::Created => "CREATED",
            S::Loading => "LOADING",
            S::PoweringOn => "POWERING_ON",
            S::Resuming => "RESUMING",
            S::Running => "RUNNING",
            S::RunningLs => "RUNNING_LS",
            S::Resetting => "RESETTING",
            S::ResettingLs => "RESETTING_LS",
            S::SoftResetting => "SOFT_RESETTING",
            S::SoftResettingLs => "SOFT_RESETTING_LS",
            S::Suspending => "SUSPENDING",
            S::SuspendingLs => "SUSPENDING_LS",
            S::SuspendingExtLs => "SUSPENDING_EXT_LS",
            S::Suspended => "SUSPENDED",
            S::SuspendedLs => "SUSPENDED_LS",
            S::SuspendedExtLs => "SUSPENDED_EXT_LS",
            S::Saving => "SAVING",
            S::Debugging => "DEBUGGING",
            S::DebuggingLs => "DEBUGGING_LS",
            S::PoweringOff => "POWERING_OFF",
            S::PoweringOffLs => "POWERING_OFF_LS",
            S::Off => "OFF",
            S::OffLs => "OFF_LS",
            S::FatalError => "FATAL_ERROR",
            S::FatalErrorLs => "FATAL_ERROR_LS",
            S::GuruMeditation => "GURU_MEDITATION",
            S::GuruMeditationLs => "GURU_MEDITATION_LS",
            S::LoadFailure => "LOAD_FAILURE",
            S::Destroying => "DESTROYING",
            S::Terminated => "TERMINATED",
        }
    }

    /// The states this state may change to.
    ///
    /// This is VirtualBox's state diagram; in addition a (soft) reset that
    /// started from `Suspended` returns to `Suspended`, as VirtualBox's reset
    /// worker does.
    pub fn successors(self) -> &'static [VmState] {
        match self {
            S::Creating => &[S::Created],
            S::Created => &[S::Loading, S::PoweringOn, S::PoweringOff],
            S::Loading => &[S::Suspended, S::LoadFailure],
            S::PoweringOn | S::Resuming => &[S::Running],
            S::Running => &[
                S::PoweringOff,
                S::Suspending,
                S::Resetting,
                S::SoftResetting,
                S::RunningLs,
                S::Debugging,
                S::FatalError,
                S::GuruMeditation,
            ],
            S::RunningLs => &[
                S::PoweringOffLs,
                S::SuspendingLs,
                S::SuspendingExtLs,
                S::ResettingLs,
                S::SoftResettingLs,
                S::Running,
                S::DebuggingLs,
                S::FatalErrorLs,
                S::GuruMeditationLs,
            ],
            S::Resetting | S::SoftResetting => &[S::Running, S::Suspended],
            S::ResettingLs => &[S::SuspendingLs],
            S::SoftResettingLs => &[S::RunningLs],
            S::Suspending => &[S::Suspended],
            S::SuspendingLs => &[S::Suspending, S::SuspendedLs],
            S::SuspendingExtLs => &[S::Suspending, S::SuspendedExtLs],
            S::Suspended => &[
                S::PoweringOff,
                S::Saving,
                S::Resetting,
                S::SoftResetting,
                S::Resuming,
                S::Loading,
            ],
            S::SuspendedLs | S::SuspendedExtLs => &[S::Suspended, S::Saving],
            S::Saving => &[S::Suspended],
            S::Debugging => &[S::Running, S::PoweringOff],
            S::DebuggingLs => &[S::Debugging, S::RunningLs, S::PoweringOffLs],
            S::PoweringOff => &[S::Off],
            S::PoweringOffLs => &[S::PoweringOff, S::OffLs],
            S::Off => &[S::Destroying],
            S::OffLs => &[S::Off],
            S::FatalError => &[S::PoweringOff],
            S::FatalErrorLs => &[S::FatalError, S::PoweringOffLs],
            S::GuruMeditation => &[S::Debugging, S::PoweringOff],
            S::GuruMeditationLs => &[S::GuruMeditation, S::DebuggingLs, S::PoweringOffLs],
            S::LoadFailure => &[S::PoweringOff],
            S::Destroying => &[S::Terminated],
            S::Terminated => &[],
        }
    }

    /// Whether VirtualBox's state diagram allows `self -> new`.
    pub fn can_transition_to(self, new: VmState) -> bool {
        self.successors().contains(&new)
    }

    /// Whether this is one of the live-save (`*_LS`) states.
    pub fn is_live_save(self) -> bool {
        self.name().ends_with("_LS")
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `A or B or C`: the states a refused change needed.
fn one_of(states: &[VmState]) -> String {
    let names: Vec<&str> = states.iter().map(|s| s.name()).collect();
    names.join(" or ")
}

/// Why a state change was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VmStateError {
    /// The state diagram does not allow this transition.
    #[error("VM state transition {from} -> {to} is not allowed")]
    InvalidTransition {
        /// The current state.
        from: VmState,
        /// The refused new state.
        to: VmState,
    },
    /// None of the proposed transitions starts from the current state.
    #[error("the VM is {current}, not {}", one_of(expected))]
    WrongState {
        /// Who attempted the change (for the log).
        who: &'static str,
        /// The actual state.
        current: VmState,
        /// The source states the caller accepted.
        expected: Vec<VmState>,
    },
    /// A state listener tried to change the state from inside its callback.
    #[error("the VM state cannot be changed from inside a state-change listener")]
    ChangeFromListener,
    /// Waiting for a state timed out.
    #[error("timed out waiting for a VM state; the state is {current}")]
    Timeout {
        /// The state when the wait gave up.
        current: VmState,
    },
}

/// Identifies a registered state listener (see [`VmStateMachine::subscribe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(u64);

type Listener = Arc<dyn Fn(VmState, VmState) + Send + Sync>;

struct Current {
    state: VmState,
    previous: VmState,
    listeners: Vec<(ListenerId, Listener)>,
    next_listener: u64,
}

struct Inner {
    current: Mutex<Current>,
    changed: Condvar,
}

thread_local! {
    /// Set while this thread runs state listeners.
    static IN_LISTENER: Cell<bool> = const { Cell::new(false) };
}

/// Resets [`IN_LISTENER`] even if a listener panics.
struct ListenerScope;

impl ListenerScope {
    fn enter() -> Self {
        IN_LISTENER.with(|f| f.set(true));
        ListenerScope
    }
}

impl Drop for ListenerScope {
    fn drop(&mut self) {
        IN_LISTENER.with(|f| f.set(false));
    }
}

/// The current state of one VM, with validated transitions, listeners and
/// waiting. Cheap to clone (a shared handle).
#[derive(Clone)]
pub struct VmStateMachine {
    inner: Arc<Inner>,
}

impl Default for VmStateMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for VmStateMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmStateMachine")
            .field("state", &self.state())
            .finish()
    }
}

impl VmStateMachine {
    /// A machine in [`VmState::Creating`].
    pub fn new() -> Self {
        VmStateMachine {
            inner: Arc::new(Inner {
                current: Mutex::new(Current {
                    state: VmState::Creating,
                    previous: VmState::Creating,
                    listeners: Vec::new(),
                    next_listener: 0,
                }),
                changed: Condvar::new(),
            }),
        }
    }

    /// The current state.
    pub fn state(&self) -> VmState {
        self.inner.current.lock().state
    }

    /// The state before the last change.
    pub fn previous(&self) -> VmState {
        self.inner.current.lock().previous
    }

    /// Changes to `new` if the diagram allows it from the current state.
    pub fn set(&self, new: VmState) -> Result<(), VmStateError> {
        Self::refuse_in_listener()?;
        let mut cur = self.inner.current.lock();
        let from = cur.state;
        if !from.can_transition_to(new) {
            tracing::warn!(
                from = from.name(),
                to = new.name(),
                "refused VM state change"
            );
            return Err(VmStateError::InvalidTransition { from, to: new });
        }
        self.apply(&mut cur, new);
        Ok(())
    }

    /// VirtualBox's `vmR3TrySetState`: `pairs` are `(from, to)`; the first
    /// pair whose `from` is the current state is applied and its index
    /// returned. Every pair must be an allowed transition.
    pub fn try_transition(&self, pairs: &[(VmState, VmState)]) -> Result<usize, VmStateError> {
        self.try_transition_as("try_transition", pairs)
    }

    /// [`Self::try_transition`] naming the caller in the log and error.
    pub fn try_transition_as(
        &self,
        who: &'static str,
        pairs: &[(VmState, VmState)],
    ) -> Result<usize, VmStateError> {
        Self::refuse_in_listener()?;
        if let Some(&(from, to)) = pairs.iter().find(|(f, t)| !f.can_transition_to(*t)) {
            return Err(VmStateError::InvalidTransition { from, to });
        }
        let mut cur = self.inner.current.lock();
        match pairs.iter().position(|(from, _)| *from == cur.state) {
            Some(i) => {
                self.apply(&mut cur, pairs[i].1);
                Ok(i)
            }
            None => {
                let current = cur.state;
                tracing::warn!(
                    who,
                    current = current.name(),
                    "VM state change refused: wrong state"
                );
                Err(VmStateError::WrongState {
                    who,
                    current,
                    expected: pairs.iter().map(|p| p.0).collect(),
                })
            }
        }
    }

    /// Registers `listener(old, new)`, called after every change, in order,
    /// while changes are held back. It must not change the state itself
    /// (such a change is refused with [`VmStateError::ChangeFromListener`]).
    pub fn subscribe(
        &self,
        listener: impl Fn(VmState, VmState) + Send + Sync + 'static,
    ) -> ListenerId {
        let mut cur = self.inner.current.lock();
        let id = ListenerId(cur.next_listener);
        cur.next_listener += 1;
        cur.listeners.push((id, Arc::new(listener)));
        id
    }

    /// Removes a listener; returns whether it was registered.
    pub fn unsubscribe(&self, id: ListenerId) -> bool {
        let mut cur = self.inner.current.lock();
        let before = cur.listeners.len();
        cur.listeners.retain(|(l, _)| *l != id);
        cur.listeners.len() != before
    }

    /// Waits until `pred(state)` holds (checked immediately, then after every
    /// change) and returns that state; `None` waits without limit.
    pub fn wait_for(
        &self,
        pred: impl Fn(VmState) -> bool,
        timeout: Option<Duration>,
    ) -> Result<VmState, VmStateError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut cur = self.inner.current.lock();
        loop {
            if pred(cur.state) {
                return Ok(cur.state);
            }
            match deadline {
                None => self.inner.changed.wait(&mut cur),
                Some(d) => {
                    if self.inner.changed.wait_until(&mut cur, d).timed_out() && !pred(cur.state) {
                        return Err(VmStateError::Timeout { current: cur.state });
                    }
                }
            }
        }
    }

    fn refuse_in_listener() -> Result<(), VmStateError> {
        if IN_LISTENER.with(|f| f.get()) {
            return Err(VmStateError::ChangeFromListener);
        }
        Ok(())
    }

    fn apply(&self, cur: &mut Current, new: VmState) {
        let old = cur.state;
        cur.previous = old;
        cur.state = new;
        tracing::info!(from = old.name(), to = new.name(), "changing the VM state");
        let _scope = ListenerScope::enter();
        for (_, listener) in &cur.listeners {
            listener(old, new);
        }
        self.inner.changed.notify_all();
    }
}

#[cfg(test)]
mod tests;
