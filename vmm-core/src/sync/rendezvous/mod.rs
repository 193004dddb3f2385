//! EMT rendezvous (VirtualBox's `VMMR3EmtRendezvous`): gather every EMT and
//! run a callback on them once, one by one, all at once, in ascending or in
//! descending vCPU order.
//!
//! * Any thread may call [`Rendezvous::call`]; a thread that is not an EMT is
//!   forwarded to one through the request queue (a priority request with
//!   [`RendezvousFlags::priority`]).
//! * The caller sets `VM_FF_EMT_RENDEZVOUS`, which kicks every EMT out of the
//!   guest or its halt; each EMT then calls [`Rendezvous::on_ff`] from its
//!   loop. The flag is lowered when every EMT has arrived.
//! * Statuses merge like VirtualBox's: the first failure wins (reported to
//!   the caller only), otherwise the most important [`EmStatus`].
//! * A callback of a once / one-by-one / ascending / descending rendezvous may
//!   start another rendezvous (up to [`MAX_RECURSION`] deep); from an
//!   all-at-once callback that is a [`RendezvousError::Deadlock`].
//! * Every EMT must keep polling the flag while a rendezvous is pending: an
//!   EMT that has stopped (thread exited) or blocks waiting for another EMT
//!   outside the rendezvous makes the others wait for it, as in VirtualBox.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::time::Duration;
//! use parking_lot::Mutex;
//! use vmm_core::sync::ffs::{CpuFf, ForcedActions, Kick, VmFf};
//! use vmm_core::sync::rendezvous::{EmStatus, Rendezvous, RendezvousFlags, RendezvousType};
//! use vmm_core::sync::request::RequestQueue;
//!
//! struct NoKick; // these EMTs never enter a guest
//! impl Kick for NoKick {
//!     fn kick(&self, _cpu: u32) {}
//! }
//!
//! let ffs = ForcedActions::new(2, Arc::new(NoKick)).unwrap();
//! let requests = RequestQueue::new(ffs.clone());
//! let rendezvous = Rendezvous::new(requests.clone());
//! let stop = Arc::new(AtomicBool::new(false));
//! // Two EMTs running a minimal loop: handle flags, then halt.
//! let emts: Vec<_> = (0..2)
//!     .map(|cpu| {
//!         let (ffs, rq, rv, stop) = (ffs.clone(), requests.clone(), rendezvous.clone(), stop.clone());
//!         std::thread::spawn(move || {
//!             let _emt = ffs.register_emt(cpu).unwrap();
//!             while !stop.load(Ordering::SeqCst) {
//!                 if ffs.vm().contains(VmFf::EMT_RENDEZVOUS) {
//!                     rv.on_ff(cpu).unwrap();
//!                 }
//!                 if ffs.vm().contains(VmFf::REQUEST) || ffs.cpu(cpu).unwrap().contains(CpuFf::REQUEST) {
//!                     rq.process_requests(cpu).unwrap();
//!                 }
//!                 ffs.halt_wait(cpu, Some(Duration::from_millis(20))).unwrap();
//!             }
//!         })
//!     })
//!     .collect();
//!
//! let order = Arc::new(Mutex::new(Vec::new()));
//! let o = order.clone();
//! let status = rendezvous
//!     .call(RendezvousType::Descending, RendezvousFlags::default(), move |cpu| {
//!         o.lock().push(cpu);
//!         Ok(if cpu == 0 { Some(EmStatus::Suspend) } else { Some(EmStatus::Reschedule) })
//!     })
//!     .unwrap();
//! assert_eq!(*order.lock(), vec![1, 0]);
//! assert_eq!(status, Some(EmStatus::Suspend)); // the more important status wins
//!
//! stop.store(true, Ordering::SeqCst);
//! ffs.set_vm(VmFf::TERMINATE); // wake the halted EMTs
//! for t in emts {
//!     t.join().unwrap();
//! }
//! ```

mod core;
mod status;
mod sync;

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

pub use self::core::{Callback, MAX_RECURSION, RendezvousCore, Signal};
pub use self::status::EmStatus;
use crate::sync::ffs::{CpuId, VmFf};
use crate::sync::request::{Priority, RequestError, RequestQueue, Target};

/// The error a rendezvous callback may return.
pub type CallbackError = Box<dyn std::error::Error + Send + Sync>;

/// How the EMTs execute the callback (`VMMEMTRENDEZVOUS_FLAGS_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RendezvousType {
    /// One EMT (the caller's) runs it while the others wait.
    Once,
    /// Every EMT runs it, one at a time, in no particular order.
    OneByOne,
    /// Every EMT runs it at the same time.
    AllAtOnce,
    /// Every EMT runs it, one at a time, vCPU 0 first.
    Ascending,
    /// Every EMT runs it, one at a time, the last vCPU first.
    Descending,
}

/// Modifiers of a rendezvous (`VMMEMTRENDEZVOUS_FLAGS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RendezvousFlags {
    /// Skip the remaining callbacks after the first failure. Only for types
    /// that run one callback at a time (not `Once`, not `AllAtOnce`).
    pub stop_on_error: bool,
    /// Forward a non-EMT caller as a priority request.
    pub priority: bool,
}

/// Why a rendezvous failed.
#[derive(Debug, Error)]
pub enum RendezvousError {
    /// A callback failed (the first failure is reported).
    #[error("rendezvous callback on vCPU {cpu} failed: {source}")]
    Callback {
        /// The vCPU whose callback failed.
        cpu: CpuId,
        /// The callback's error.
        source: CallbackError,
    },
    /// The recursion is not allowed (all-at-once parent) or too deep.
    #[error("rendezvous deadlock: {0}")]
    Deadlock(&'static str),
    /// `stop_on_error` was given for a type that runs callbacks concurrently
    /// or only once.
    #[error("stop-on-error is not valid for {0:?} rendezvous")]
    InvalidFlags(RendezvousType),
    /// The vCPU index is out of range.
    #[error("vCPU {cpu} does not exist (the VM has {count})")]
    InvalidCpu {
        /// The index given.
        cpu: CpuId,
        /// The VM's vCPU count.
        count: u32,
    },
    /// Forwarding a non-EMT caller to an EMT failed.
    #[error("forwarding the rendezvous to an EMT failed: {0}")]
    Request(#[from] RequestError),
}

struct Inner {
    core: RendezvousCore,
    requests: RequestQueue,
}

/// The EMT rendezvous of one VM. Cheap to clone.
#[derive(Clone)]
pub struct Rendezvous {
    inner: Arc<Inner>,
}

impl fmt::Debug for Rendezvous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rendezvous")
            .field("cpus", &self.inner.core.cpu_count())
            .finish()
    }
}

impl Rendezvous {
    /// A rendezvous for the VM whose requests (and flags) are `requests`.
    pub fn new(requests: RequestQueue) -> Self {
        let ffs = requests.forced_actions().clone();
        let signal: Signal = Box::new(move |raise| {
            if raise {
                ffs.set_vm(VmFf::EMT_RENDEZVOUS);
            } else {
                ffs.clear_vm(VmFf::EMT_RENDEZVOUS);
            }
        });
        let cpus = requests.forced_actions().cpu_count();
        Rendezvous {
            inner: Arc::new(Inner {
                core: RendezvousCore::new(cpus, signal),
                requests,
            }),
        }
    }

    /// Runs `callback` on the EMTs as `kind` says and returns the first
    /// failure or the most important scheduling status (`None`: plain
    /// success). Callable from any thread.
    pub fn call<F>(
        &self,
        kind: RendezvousType,
        flags: RendezvousFlags,
        callback: F,
    ) -> Result<Option<EmStatus>, RendezvousError>
    where
        F: Fn(CpuId) -> Result<Option<EmStatus>, CallbackError> + Send + Sync + 'static,
    {
        self.call_arc(kind, flags, Arc::new(callback))
    }

    fn call_arc(
        &self,
        kind: RendezvousType,
        flags: RendezvousFlags,
        callback: Callback,
    ) -> Result<Option<EmStatus>, RendezvousError> {
        let ffs = self.inner.requests.forced_actions();
        if let Some(cpu) = ffs.current_cpu() {
            return self
                .inner
                .core
                .call(cpu, kind, flags.stop_on_error, callback);
        }
        let priority = if flags.priority {
            Priority::High
        } else {
            Priority::Normal
        };
        let this = self.clone();
        self.inner
            .requests
            .submit(Target::Any, priority, move |cpu| {
                this.inner
                    .core
                    .call(cpu, kind, flags.stop_on_error, callback)
            })?
            .wait()?
    }

    /// EMT side: call when `VM_FF_EMT_RENDEZVOUS` is set. Joins the pending
    /// rendezvous (if it still waits for `cpu`) and returns the scheduling
    /// status the EMT should act on.
    pub fn on_ff(&self, cpu: CpuId) -> Result<Option<EmStatus>, RendezvousError> {
        self.inner.core.participate(cpu)
    }

    /// Whether a rendezvous is waiting for `cpu`.
    pub fn is_pending_for(&self, cpu: CpuId) -> bool {
        self.inner.core.is_pending_for(cpu)
    }
}
