//! The request queue: run closures on a given EMT or on any EMT.
//!
//! Any thread (an EMT or not) submits a closure for [`Target::Cpu`] or
//! [`Target::Any`]; the queue sets `VMCPU_FF_REQUEST` (or `VM_FF_REQUEST`)
//! so the EMT leaves the guest or its halt, and the EMT runs the closure from
//! [`RequestQueue::process_requests`] in its loop. The submitter may wait for
//! the result ([`Pending::wait`], with or without a timeout) or not at all.
//! When an EMT submits a request it could run itself, it runs it at once
//! (waiting for itself would deadlock).
//!
//! Priority requests (VirtualBox's `VMREQFLAGS_PRIORITY`) run before normal
//! ones and are also run by an EMT that only handles priority work, for
//! example while it waits to start a rendezvous.
//!
//! ```
//! use std::sync::Arc;
//! use vmm_core::sync::ffs::{ForcedActions, Kick};
//! use vmm_core::sync::request::{RequestQueue, Target};
//!
//! struct NoKick;
//! impl Kick for NoKick {
//!     fn kick(&self, _cpu: u32) {}
//! }
//!
//! let ffs = ForcedActions::new(1, Arc::new(NoKick)).unwrap();
//! let requests = RequestQueue::new(ffs.clone());
//! // A (tiny) EMT loop: wait for work, process requests.
//! let (f, q) = (ffs.clone(), requests.clone());
//! let emt = std::thread::spawn(move || {
//!     let _me = f.register_emt(0).unwrap();
//!     while q.process_requests(0).unwrap() == 0 {
//!         f.halt_wait(0, None).unwrap();
//!     }
//! });
//! let answer = requests.call_wait(Target::Cpu(0), |cpu| 40 + cpu + 2).unwrap();
//! assert_eq!(answer, 42);
//! emt.join().unwrap();
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use thiserror::Error;

use crate::sync::ffs::{CpuFf, CpuId, FfError, ForcedActions, VmFf};

/// Which EMT runs a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The EMT of this vCPU.
    Cpu(CpuId),
    /// Whichever EMT gets to it first (VirtualBox's `VMCPUID_ANY`).
    Any,
}

/// How a request is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// Normal, first in first out.
    #[default]
    Normal,
    /// Ahead of normal requests; also run by EMTs that only do priority work.
    High,
}

/// Errors of the request queue.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    /// The target vCPU does not exist.
    #[error(transparent)]
    Cpu(#[from] FfError),
    /// The queue was shut down; no more requests are taken.
    #[error("the request queue has been shut down")]
    ShutDown,
    /// The request was discarded (queue shut down, or the closure panicked)
    /// before it produced a result.
    #[error("the request was dropped before it completed")]
    Dropped,
    /// The result did not arrive in time; the request stays queued.
    #[error("timed out waiting for the request")]
    Timeout,
}

type Job = Box<dyn FnOnce(CpuId) + Send>;

#[derive(Default)]
struct Queue {
    normal: VecDeque<Job>,
    priority: VecDeque<Job>,
}

impl Queue {
    fn pop(&mut self, priority_only: bool) -> Option<Job> {
        match self.priority.pop_front() {
            Some(job) => Some(job),
            None if priority_only => None,
            None => self.normal.pop_front(),
        }
    }
}

struct Inner {
    ffs: ForcedActions,
    per_cpu: Box<[Mutex<Queue>]>,
    any: Mutex<Queue>,
    shut_down: AtomicBool,
}

/// The request queues of one VM. Cheap to clone.
#[derive(Clone)]
pub struct RequestQueue {
    inner: Arc<Inner>,
}

impl fmt::Debug for RequestQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestQueue")
            .field("shut_down", &self.inner.shut_down.load(Ordering::SeqCst))
            .finish()
    }
}

enum SlotState<R> {
    Waiting,
    Done(R),
    Dropped,
    Taken,
}

struct Slot<R> {
    state: Mutex<SlotState<R>>,
    cv: Condvar,
}

/// The sending half; marks the request dropped if it never completes.
struct Reply<R> {
    slot: Arc<Slot<R>>,
    sent: bool,
}

impl<R> Reply<R> {
    fn send(mut self, value: R) {
        *self.slot.state.lock() = SlotState::Done(value);
        self.sent = true;
        self.slot.cv.notify_all();
    }
}

impl<R> Drop for Reply<R> {
    fn drop(&mut self) {
        if !self.sent {
            *self.slot.state.lock() = SlotState::Dropped;
            self.slot.cv.notify_all();
        }
    }
}

/// A submitted request's result. Dropping it without waiting is fine: the
/// request still runs (VirtualBox's "no wait" requests).
pub struct Pending<R> {
    slot: Arc<Slot<R>>,
}

impl<R> fmt::Debug for Pending<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("done", &self.is_done())
            .finish()
    }
}

impl<R> Pending<R> {
    fn ready(value: R) -> Self {
        Pending {
            slot: Arc::new(Slot {
                state: Mutex::new(SlotState::Done(value)),
                cv: Condvar::new(),
            }),
        }
    }

    /// Whether the result (or the drop) has arrived.
    pub fn is_done(&self) -> bool {
        !matches!(*self.slot.state.lock(), SlotState::Waiting)
    }

    /// Waits for the result.
    pub fn wait(self) -> Result<R, RequestError> {
        self.wait_until(None)
    }

    /// Waits at most `timeout` for the result.
    pub fn wait_timeout(self, timeout: Duration) -> Result<R, RequestError> {
        self.wait_until(Some(Instant::now() + timeout))
    }

    fn wait_until(self, deadline: Option<Instant>) -> Result<R, RequestError> {
        let mut state = self.slot.state.lock();
        loop {
            match std::mem::replace(&mut *state, SlotState::Taken) {
                SlotState::Done(v) => return Ok(v),
                SlotState::Dropped | SlotState::Taken => return Err(RequestError::Dropped),
                SlotState::Waiting => *state = SlotState::Waiting,
            }
            match deadline {
                None => self.slot.cv.wait(&mut state),
                Some(d) => {
                    if self.slot.cv.wait_until(&mut state, d).timed_out()
                        && matches!(*state, SlotState::Waiting)
                    {
                        return Err(RequestError::Timeout);
                    }
                }
            }
        }
    }
}

impl RequestQueue {
    /// Empty queues for the VM whose flags are `ffs`.
    pub fn new(ffs: ForcedActions) -> Self {
        let per_cpu = (0..ffs.cpu_count())
            .map(|_| Mutex::new(Queue::default()))
            .collect();
        RequestQueue {
            inner: Arc::new(Inner {
                ffs,
                per_cpu,
                any: Mutex::new(Queue::default()),
                shut_down: AtomicBool::new(false),
            }),
        }
    }

    /// The flags this queue signals through.
    pub fn forced_actions(&self) -> &ForcedActions {
        &self.inner.ffs
    }

    /// Queues `f` for `target` and returns its pending result. If the calling
    /// thread is an EMT that `target` allows, `f` runs right away instead.
    pub fn submit<R, F>(
        &self,
        target: Target,
        priority: Priority,
        f: F,
    ) -> Result<Pending<R>, RequestError>
    where
        R: Send + 'static,
        F: FnOnce(CpuId) -> R + Send + 'static,
    {
        if self.inner.shut_down.load(Ordering::SeqCst) {
            return Err(RequestError::ShutDown);
        }
        if let Target::Cpu(cpu) = target {
            // Validates the index.
            self.inner.ffs.cpu(cpu)?;
        }
        let own_emt = self
            .inner
            .ffs
            .current_cpu()
            .filter(|me| target == Target::Any || target == Target::Cpu(*me));
        if let Some(me) = own_emt {
            return Ok(Pending::ready(f(me)));
        }
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState::Waiting),
            cv: Condvar::new(),
        });
        let reply = Reply {
            slot: slot.clone(),
            sent: false,
        };
        let job: Job = Box::new(move |cpu| reply.send(f(cpu)));
        let queue = match target {
            Target::Cpu(cpu) => &self.inner.per_cpu[cpu as usize],
            Target::Any => &self.inner.any,
        };
        {
            let mut q = queue.lock();
            // Checked again under the lock so shutdown cannot strand a job.
            if self.inner.shut_down.load(Ordering::SeqCst) {
                return Err(RequestError::ShutDown);
            }
            match priority {
                Priority::Normal => q.normal.push_back(job),
                Priority::High => q.priority.push_back(job),
            }
        }
        match target {
            Target::Cpu(cpu) => self.inner.ffs.set_cpu(cpu, CpuFf::REQUEST)?,
            Target::Any => self.inner.ffs.set_vm(VmFf::REQUEST),
        }
        Ok(Pending { slot })
    }

    /// Runs `f` on `target` and waits for its result.
    pub fn call_wait<R, F>(&self, target: Target, f: F) -> Result<R, RequestError>
    where
        R: Send + 'static,
        F: FnOnce(CpuId) -> R + Send + 'static,
    {
        self.submit(target, Priority::Normal, f)?.wait()
    }

    /// Queues `f` for `target` without waiting for it.
    pub fn call_no_wait<F>(&self, target: Target, f: F) -> Result<(), RequestError>
    where
        F: FnOnce(CpuId) + Send + 'static,
    {
        self.submit(target, Priority::Normal, f).map(drop)
    }

    /// EMT side: runs every request queued for `cpu` and for any EMT
    /// (priority ones first) and returns how many ran. Call it from `cpu`'s
    /// EMT when `VMCPU_FF_REQUEST` or `VM_FF_REQUEST` is set.
    pub fn process_requests(&self, cpu: CpuId) -> Result<usize, RequestError> {
        self.process(cpu, false)
    }

    /// EMT side: runs only the priority requests for `cpu` and for any EMT.
    pub fn process_priority_requests(&self, cpu: CpuId) -> Result<usize, RequestError> {
        self.process(cpu, true)
    }

    fn process(&self, cpu: CpuId, priority_only: bool) -> Result<usize, RequestError> {
        let ffs = &self.inner.ffs;
        let mut ran = 0;
        // Flags are cleared before the queues are drained: a request queued
        // after our last pop sets its flag again and is not lost.
        if !priority_only {
            ffs.clear_cpu(cpu, CpuFf::REQUEST)?;
        }
        let own = self
            .inner
            .per_cpu
            .get(cpu as usize)
            .ok_or(FfError::InvalidCpu {
                cpu,
                count: ffs.cpu_count(),
            })?;
        while let Some(job) = Self::pop(own, priority_only, || {
            ffs.set_cpu(cpu, CpuFf::REQUEST).map(drop)
        })? {
            job(cpu);
            ran += 1;
        }
        if !priority_only {
            ffs.clear_vm(VmFf::REQUEST);
        }
        while let Some(job) = Self::pop(&self.inner.any, priority_only, || {
            ffs.set_vm(VmFf::REQUEST);
            Ok(())
        })? {
            job(cpu);
            ran += 1;
        }
        Ok(ran)
    }

    /// Pops one job. When only priority jobs are taken and normal ones remain,
    /// `keep_flag` re-asserts the request flag so they are not forgotten.
    fn pop(
        queue: &Mutex<Queue>,
        priority_only: bool,
        keep_flag: impl Fn() -> Result<(), FfError>,
    ) -> Result<Option<Job>, RequestError> {
        let mut q = queue.lock();
        let job = q.pop(priority_only);
        if job.is_none() && priority_only && !q.normal.is_empty() {
            drop(q);
            keep_flag()?;
        }
        Ok(job)
    }

    /// Number of queued requests (all queues).
    pub fn pending_count(&self) -> usize {
        let count = |q: &Mutex<Queue>| {
            let q = q.lock();
            q.normal.len() + q.priority.len()
        };
        self.inner.per_cpu.iter().map(count).sum::<usize>() + count(&self.inner.any)
    }

    /// Refuses new requests and discards the queued ones; their waiters get
    /// [`RequestError::Dropped`].
    pub fn shut_down(&self) {
        self.inner.shut_down.store(true, Ordering::SeqCst);
        let mut dropped = Vec::new();
        for q in self
            .inner
            .per_cpu
            .iter()
            .chain(std::iter::once(&self.inner.any))
        {
            let mut q = q.lock();
            dropped.extend(q.priority.drain(..));
            dropped.extend(q.normal.drain(..));
        }
        // Dropped outside the locks: dropping a job notifies its waiter.
        drop(dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::ffs::Kick;

    struct NoKick;
    impl Kick for NoKick {
        fn kick(&self, _cpu: CpuId) {}
    }

    fn queue(n: u32) -> RequestQueue {
        RequestQueue::new(ForcedActions::new(n, Arc::new(NoKick)).unwrap())
    }

    #[test]
    fn priority_requests_run_first_and_alone() {
        let q = queue(1);
        let log = Arc::new(Mutex::new(Vec::new()));
        for (i, p) in [Priority::Normal, Priority::High, Priority::Normal]
            .into_iter()
            .enumerate()
        {
            let l = log.clone();
            drop(
                q.submit(Target::Cpu(0), p, move |_| l.lock().push(i))
                    .unwrap(),
            );
        }
        assert_eq!(q.process_priority_requests(0).unwrap(), 1);
        assert_eq!(*log.lock(), vec![1]);
        // Normal work is still flagged.
        assert!(q.forced_actions().cpu(0).unwrap().contains(CpuFf::REQUEST));
        assert_eq!(q.process_requests(0).unwrap(), 2);
        assert_eq!(*log.lock(), vec![1, 0, 2]);
        assert!(q.forced_actions().cpu(0).unwrap().is_empty());
    }

    #[test]
    fn any_requests_set_the_global_flag() {
        let q = queue(2);
        q.call_no_wait(Target::Any, |_| {}).unwrap();
        assert!(q.forced_actions().vm().contains(VmFf::REQUEST));
        assert_eq!(q.pending_count(), 1);
        assert_eq!(q.process_requests(1).unwrap(), 1);
        assert!(q.forced_actions().vm().is_empty());
    }

    #[test]
    fn timeout_and_shutdown() {
        let q = queue(1);
        let p = q.submit(Target::Cpu(0), Priority::Normal, |_| 1).unwrap();
        assert!(!p.is_done());
        assert_eq!(
            p.wait_timeout(Duration::from_millis(1)),
            Err(RequestError::Timeout)
        );
        let p = q.submit(Target::Cpu(0), Priority::Normal, |_| 2).unwrap();
        q.shut_down();
        assert_eq!(p.wait(), Err(RequestError::Dropped));
        assert_eq!(q.pending_count(), 0);
        assert_eq!(
            q.call_no_wait(Target::Any, |_| {}),
            Err(RequestError::ShutDown)
        );
    }

    #[test]
    fn bad_cpu_is_an_error() {
        let q = queue(1);
        assert!(matches!(
            q.call_wait(Target::Cpu(3), |_| ()),
            Err(RequestError::Cpu(FfError::InvalidCpu { cpu: 3, count: 1 }))
        ));
        assert!(q.process_requests(3).is_err());
    }

    #[test]
    fn emt_runs_its_own_request_inline() {
        let q = queue(2);
        let _me = q.forced_actions().register_emt(1).unwrap();
        assert_eq!(q.call_wait(Target::Cpu(1), |cpu| cpu * 10).unwrap(), 10);
        assert_eq!(q.call_wait(Target::Any, |cpu| cpu + 5).unwrap(), 6);
        // A request for another EMT is queued.
        let p = q
            .submit(Target::Cpu(0), Priority::Normal, |cpu| cpu)
            .unwrap();
        assert!(!p.is_done());
        assert_eq!(q.process_requests(0).unwrap(), 1);
        assert_eq!(p.wait(), Ok(0));
    }

    #[test]
    fn panicking_request_reports_dropped() {
        let q = queue(1);
        let p = q
            .submit(Target::Cpu(0), Priority::Normal, |_| -> u32 {
                panic!("request failed")
            })
            .unwrap();
        let q2 = q.clone();
        let emt = std::thread::spawn(move || q2.process_requests(0));
        assert!(emt.join().is_err());
        assert_eq!(p.wait(), Err(RequestError::Dropped));
    }
}
