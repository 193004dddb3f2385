//! The rendezvous engine, independent of flags, kicks and threads.
//!
//! [`RendezvousCore`] keeps a stack of rendezvous frames (the bottom one is
//! the active rendezvous, the ones above are recursive rendezvous started from
//! inside a callback) under one mutex, with one condition variable for all
//! waits. Every participant is told its vCPU index explicitly; a `signal`
//! hook raises (`true`) and lowers (`false`) the "rendezvous pending" flag
//! that makes EMTs call [`RendezvousCore::participate`].
//!
//! A waiting EMT always looks at the top of the stack first, so an EMT that
//! waits for its turn or for the end of a rendezvous joins a recursive
//! rendezvous pushed above it, and an EMT waiting to start its own
//! rendezvous joins the active one.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use super::sync::{Condvar, Mutex, MutexGuard, lock, wait};
use super::{CallbackError, EmStatus, RendezvousError, RendezvousType};
use crate::sync::ffs::CpuId;

/// The most rendezvous that may be nested inside the active one
/// (VirtualBox allows three recursions).
pub const MAX_RECURSION: usize = 3;

/// A rendezvous callback: runs on an EMT, given its vCPU index.
pub type Callback = Arc<dyn Fn(CpuId) -> Result<Option<EmStatus>, CallbackError> + Send + Sync>;

/// Raises (`true`) or lowers (`false`) the "rendezvous pending" signal.
pub type Signal = Box<dyn Fn(bool) + Send + Sync>;

struct Frame {
    id: u64,
    kind: RendezvousType,
    stop_on_error: bool,
    callback: Callback,
    caller: CpuId,
    entered: Vec<bool>,
    n_entered: u32,
    n_done: u32,
    n_left: u32,
    running: bool,
    info: Option<EmStatus>,
    failed: bool,
    failure: Option<(CpuId, CallbackError)>,
    complete: bool,
}

impl Frame {
    /// How many callback executions complete the rendezvous.
    fn executions(&self, n: u32) -> u32 {
        match self.kind {
            RendezvousType::Once => 1,
            _ => n,
        }
    }

    /// Whether `cpu` may run the callback now.
    fn my_turn(&self, cpu: CpuId, n: u32) -> bool {
        if self.n_entered < n {
            return false;
        }
        match self.kind {
            RendezvousType::Once => cpu == self.caller && self.n_done == 0,
            RendezvousType::AllAtOnce => true,
            RendezvousType::OneByOne => !self.running,
            RendezvousType::Ascending => cpu == self.n_done,
            RendezvousType::Descending => cpu + 1 + self.n_done == n,
        }
    }

    /// Whether `cpu` runs the callback at all.
    fn executes(&self, cpu: CpuId) -> bool {
        self.kind != RendezvousType::Once || cpu == self.caller
    }
}

struct State {
    frames: Vec<Frame>,
    next_id: u64,
    /// Per vCPU: the frame whose callback it is running.
    executing: Vec<Option<u64>>,
    /// Threads sleeping on the condition variable (wake-ups are skipped
    /// when there are none: every notify is a system call).
    sleepers: u32,
}

impl State {
    fn frame(&mut self, id: u64) -> &mut Frame {
        self.frames
            .iter_mut()
            .find(|f| f.id == id)
            .expect("a frame lives until all its participants have left")
    }

    /// The frame `cpu` must join: with `below`, a recursive rendezvous pushed
    /// above that frame; without, the active (incomplete) bottom frame.
    /// Completed frames linger until their last participant has left.
    fn joinable(&self, cpu: CpuId, below: Option<u64>) -> Option<u64> {
        let top = match below {
            None => self.frames.iter().find(|f| !f.complete)?,
            Some(id) => self.frames.last().filter(|f| f.id != id)?,
        };
        (!top.complete && !top.entered[cpu as usize]).then_some(top.id)
    }
}

/// What one participant takes away from a frame.
struct Taken {
    info: Option<EmStatus>,
    failure: Option<(CpuId, CallbackError)>,
}

/// The rendezvous engine of one VM with a fixed number of vCPUs.
pub struct RendezvousCore {
    n: u32,
    state: Mutex<State>,
    cv: Condvar,
    signal: Signal,
}

impl std::fmt::Debug for RendezvousCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RendezvousCore")
            .field("cpus", &self.n)
            .finish()
    }
}

impl RendezvousCore {
    /// An idle core for `cpu_count` vCPUs (at least 1).
    pub fn new(cpu_count: u32, signal: Signal) -> Self {
        RendezvousCore {
            n: cpu_count.max(1),
            state: Mutex::new(State {
                frames: Vec::new(),
                next_id: 1,
                executing: vec![None; cpu_count.max(1) as usize],
                sleepers: 0,
            }),
            cv: Condvar::new(),
            signal,
        }
    }

    /// The number of vCPUs.
    pub fn cpu_count(&self) -> u32 {
        self.n
    }

    /// Sleeps until the next [`Self::wake_all`].
    fn sleep<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        st.sleepers += 1;
        let mut st = wait(&self.cv, st);
        st.sleepers -= 1;
        st
    }

    /// Wakes every sleeper so it re-checks the state. The lock is released
    /// around the notification so the woken threads do not run straight into
    /// it; callers re-read the state afterwards.
    fn wake_all<'a>(&'a self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        if st.sleepers == 0 {
            return st;
        }
        drop(st);
        self.cv.notify_all();
        lock(&self.state)
    }

    /// Whether some frame still waits for EMTs to arrive.
    fn awaits_entrants(st: &State) -> bool {
        st.frames
            .iter()
            .any(|f| !f.complete && f.n_entered < f.entered.len() as u32)
    }

    fn check_cpu(&self, cpu: CpuId) -> Result<(), RendezvousError> {
        if cpu >= self.n {
            return Err(RendezvousError::InvalidCpu { cpu, count: self.n });
        }
        Ok(())
    }

    /// Whether a rendezvous is waiting for `cpu` to join.
    pub fn is_pending_for(&self, cpu: CpuId) -> bool {
        cpu < self.n && lock(&self.state).joinable(cpu, None).is_some()
    }

    /// EMT side: joins the active rendezvous if it still waits for `cpu`
    /// and returns the merged scheduling status (failures are only reported
    /// to the rendezvous' caller). Returns `Ok(None)` when nothing waits.
    pub fn participate(&self, cpu: CpuId) -> Result<Option<EmStatus>, RendezvousError> {
        self.check_cpu(cpu)?;
        let st = lock(&self.state);
        match st.joinable(cpu, None) {
            Some(id) => Ok(self.run_frame(st, cpu, id, false).1.info),
            None => {
                // The signal is raised outside the lock, so it can outlive the
                // rendezvous it announced; lower it when nobody is awaited.
                if !Self::awaits_entrants(&st) {
                    (self.signal)(false);
                }
                Ok(None)
            }
        }
    }

    /// Runs a rendezvous of `kind` from `cpu`'s EMT and returns the first
    /// failure or the most important scheduling status.
    ///
    /// Called from inside a callback it starts a recursive rendezvous; that
    /// is refused with [`RendezvousError::Deadlock`] for all-at-once parents
    /// and beyond [`MAX_RECURSION`] levels.
    pub fn call(
        &self,
        cpu: CpuId,
        kind: RendezvousType,
        stop_on_error: bool,
        callback: Callback,
    ) -> Result<Option<EmStatus>, RendezvousError> {
        self.check_cpu(cpu)?;
        if stop_on_error && matches!(kind, RendezvousType::Once | RendezvousType::AllAtOnce) {
            return Err(RendezvousError::InvalidFlags(kind));
        }
        let mut st = lock(&self.state);
        let mut acc = None;
        let recursion = st.executing[cpu as usize];
        match recursion {
            Some(parent) => {
                let parent_kind = st.frame(parent).kind;
                if parent_kind == RendezvousType::AllAtOnce {
                    return Err(RendezvousError::Deadlock(
                        "recursion from an all-at-once rendezvous",
                    ));
                }
                if st.frames.len() > MAX_RECURSION {
                    return Err(RendezvousError::Deadlock("rendezvous recursion too deep"));
                }
                // A previous recursion may still be emptying out.
                while st.frames.last().is_some_and(|f| f.id != parent) {
                    st = self.sleep(st);
                }
            }
            None => {
                // One rendezvous at a time: join the active one first.
                while st.frames.iter().any(|f| !f.complete) {
                    match st.joinable(cpu, None) {
                        Some(id) => {
                            let (guard, taken) = self.run_frame(st, cpu, id, false);
                            st = guard;
                            acc = EmStatus::merge(acc, taken.info);
                        }
                        None => st = self.sleep(st),
                    }
                }
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        st.frames.push(Frame {
            id,
            kind,
            stop_on_error,
            callback,
            caller: cpu,
            entered: vec![false; self.n as usize],
            n_entered: 0,
            n_done: 0,
            n_left: 0,
            running: false,
            info: None,
            failed: false,
            failure: None,
            complete: false,
        });
        tracing::debug!(
            cpu,
            ?kind,
            id,
            depth = st.frames.len(),
            "EMT rendezvous started"
        );
        let st = self.wake_all(st);
        // Raised after the push, without the lock (it may kick and wake EMTs,
        // which then want the lock).
        drop(st);
        (self.signal)(true);
        let st = lock(&self.state);
        let (_st, taken) = self.run_frame(st, cpu, id, true);
        match taken.failure {
            Some((failed_cpu, source)) => Err(RendezvousError::Callback {
                cpu: failed_cpu,
                source,
            }),
            None => Ok(EmStatus::merge(acc, taken.info)),
        }
    }

    /// Waits until `done(frame id)` holds, joining any recursive rendezvous
    /// pushed above frame `id` meanwhile (their statuses go into `acc`).
    fn wait_in_frame<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        cpu: CpuId,
        id: u64,
        acc: &mut Option<EmStatus>,
        done: impl Fn(&Frame) -> bool,
    ) -> MutexGuard<'a, State> {
        loop {
            // Checked first: once frame `id` is complete, frames above it are
            // later rendezvous, not recursions of this one.
            if done(st.frame(id)) {
                return st;
            }
            if let Some(child) = st.joinable(cpu, Some(id)) {
                let (guard, taken) = self.run_frame(st, cpu, child, false);
                st = guard;
                *acc = EmStatus::merge(*acc, taken.info);
                continue;
            }
            st = self.sleep(st);
        }
    }

    /// Takes part in frame `id`: enter, wait for the turn, run the callback,
    /// wait for the end, leave. Returns the merged statuses this participant
    /// gets (the failure only for the caller).
    fn run_frame<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        cpu: CpuId,
        id: u64,
        is_caller: bool,
    ) -> (MutexGuard<'a, State>, Taken) {
        let n = self.n;
        let mut acc = None;
        let f = st.frame(id);
        f.entered[cpu as usize] = true;
        f.n_entered += 1;
        let all_in = f.n_entered == n;
        let executes = f.executes(cpu);
        if all_in {
            (self.signal)(false);
            st = self.wake_all(st);
        }
        // Non-callers of a `Once` rendezvous never run the callback.
        if executes {
            st = self.wait_in_frame(st, cpu, id, &mut acc, |f| f.my_turn(cpu, n));
            let f = st.frame(id);
            f.running = true;
            let skip = f.stop_on_error && f.failed;
            let callback = f.callback.clone();
            st.executing[cpu as usize] = Some(id);
            drop(st);
            let result = if skip {
                Ok(None)
            } else {
                catch_unwind(AssertUnwindSafe(|| callback(cpu)))
                    .unwrap_or_else(|_| Err("rendezvous callback panicked".into()))
            };
            st = lock(&self.state);
            st.executing[cpu as usize] = None;
            let f = st.frame(id);
            match result {
                Ok(info) => f.info = EmStatus::merge(f.info, info),
                Err(e) => {
                    if !f.failed {
                        f.failed = true;
                        f.failure = Some((cpu, e));
                    }
                }
            }
            f.running = false;
            f.n_done += 1;
            if f.n_done == f.executions(n) {
                f.complete = true;
            }
            st = self.wake_all(st);
        }
        // Everyone stays until the rendezvous is complete.
        st = self.wait_in_frame(st, cpu, id, &mut acc, |f| f.complete);
        let f = st.frame(id);
        let failure = if is_caller { f.failure.take() } else { None };
        // Like VirtualBox, non-callers get no status from a failed rendezvous.
        let info = if f.failed { None } else { f.info };
        f.n_left += 1;
        if f.n_left == n {
            st.frames.retain(|f| f.id != id);
            st = self.wake_all(st);
        }
        let info = EmStatus::merge(acc, info);
        (st, Taken { info, failure })
    }
}
