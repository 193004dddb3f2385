//! Deferred return of ballooned memory to the host.
//!
//! Inflating the balloon is on the guest's critical path, but giving written
//! memory back is slow kernel work: unmapping a touched gigabyte and punching
//! it out of the memfd takes well over 100 ms on a virtualised host. So
//! [`State::region_inflate`] only does the bookkeeping (the pages count as
//! ballooned at once, the VM's accounts are exact) and queues the host half;
//! a per-GMM worker thread then points the ballooned range at zero memory
//! and punches the pages out in bounded batches, taking the GMM lock per
//! batch so that other VMs are never held up for long. Parked pages
//! ([`Slot::Parked`]) are only punched: the region goes on mapping them.
//!
//! Until its batch is done a ballooned page still shows the guest its old
//! contents (a guest has no business touching pages it gave away), and its
//! host page stays out of circulation: it can never be handed to anyone else
//! before the region stopped mapping it. Whatever needs the final state
//! first finishes the queue synchronously: deflating, a balloon reset,
//! removing the region, reading it through [`RamRegion::read`], running out
//! of global memory, and [`Gmm::return_freed_pages`].
//!
//! [`RamRegion::read`]: crate::RamRegion::read
//! [`Gmm::return_freed_pages`]: crate::Gmm::return_freed_pages

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::error::Result;
use crate::state::{Detached, State};

/// Pages the worker returns per batch (64 MiB), bounding how long it holds
/// the GMM lock.
const BATCH_PAGES: usize = 16 * 1024;
/// Pause before retrying after the host refused a remap.
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// Ranges whose host pages still wait to be returned, oldest first.
#[derive(Default)]
pub(crate) struct DeferredQueue {
    ranges: std::collections::VecDeque<Detached>,
    pages: u64,
}

impl DeferredQueue {
    /// Pages queued.
    pub(crate) fn pages(&self) -> u64 {
        self.pages
    }

    fn push(&mut self, d: Detached) {
        self.pages += d.slots.len() as u64;
        // Guest balloon drivers inflate page by page: merge a range that
        // continues the previous one so the worker remaps it in one call.
        if let Some(last) = self.ranges.back_mut()
            && last.region == d.region
            && last.first + last.slots.len() as u64 == d.first
        {
            last.slots.extend_from_slice(&d.slots);
            return;
        }
        self.ranges.push_back(d);
    }

    /// Up to `max` pages from the front of the queue.
    fn pop_batch(&mut self, max: usize) -> Option<Detached> {
        let front = self.ranges.front_mut()?;
        let d = if front.slots.len() > max {
            let rest = front.slots.split_off(max);
            let head = std::mem::replace(&mut front.slots, rest);
            let first = front.first;
            front.first += max as u64;
            Detached {
                region: front.region,
                first,
                slots: head,
            }
        } else {
            self.ranges.pop_front()?
        };
        self.pages -= d.slots.len() as u64;
        Some(d)
    }

    /// Takes every queued range of `region` (all ranges for `None`).
    pub(crate) fn take(&mut self, region: Option<u64>) -> Vec<Detached> {
        let (taken, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ranges)
            .into_iter()
            .partition(|d| region.is_none_or(|r| r == d.region));
        self.ranges = kept.into();
        self.pages = self.ranges.iter().map(|d| d.slots.len() as u64).sum();
        taken
    }
}

impl State {
    /// Queues the host half of releasing `detached` for the worker.
    pub(crate) fn defer_release(&mut self, detached: Detached) {
        self.deferred.push(detached);
    }

    /// Whether released memory still waits for the worker.
    pub(crate) fn has_deferred(&self) -> bool {
        self.deferred.pages() > 0
    }

    /// Finishes the queued releases of `region` (of every region for
    /// `None`) now, and returns the pages to the host.
    pub(crate) fn settle_deferred(&mut self, region: Option<u64>) -> Result<()> {
        if !self.has_deferred() {
            return Ok(());
        }
        let mut taken = self.deferred.take(region).into_iter();
        while let Some(d) = taken.next() {
            if let Err(e) = self.release_detached(&d) {
                // The host refused (it will refuse the rest too): keep it all
                // queued for later.
                self.deferred.push(d);
                taken.for_each(|d| self.deferred.push(d));
                self.flush()?;
                return Err(e);
            }
        }
        self.flush()
    }

    /// Does one batch of queued work. Returns `false` when the queue is
    /// empty, and the error when the host refused (the batch stays queued).
    fn reclaim_batch(&mut self) -> Result<bool> {
        let Some(d) = self.deferred.pop_batch(BATCH_PAGES) else {
            return Ok(false);
        };
        if let Err(e) = self.release_detached(&d) {
            self.deferred.push(d);
            return Err(e);
        }
        self.flush()?;
        Ok(true)
    }
}

/// What the GMM handles and the worker share.
struct Signal {
    wake: Condvar,
    stop: AtomicBool,
}

/// The worker thread of one GMM, started on first use and stopped (after
/// finishing the queue) when the last [`Gmm`](crate::Gmm) handle goes.
pub(crate) struct Reclaimer {
    state: Arc<Mutex<State>>,
    signal: Arc<Signal>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Reclaimer {
    pub(crate) fn new(state: &Arc<Mutex<State>>) -> Self {
        Reclaimer {
            state: Arc::clone(state),
            signal: Arc::new(Signal {
                wake: Condvar::new(),
                stop: AtomicBool::new(false),
            }),
            thread: Mutex::new(None),
        }
    }

    /// Tells the worker there is work, starting it if needed. Without a
    /// worker (the host would not give us a thread) the work is done here.
    pub(crate) fn kick(&self) -> Result<()> {
        let mut thread = self.thread.lock();
        if thread.is_none() {
            let (state, signal) = (Arc::clone(&self.state), Arc::clone(&self.signal));
            match std::thread::Builder::new()
                .name("gmm-reclaim".into())
                .spawn(move || worker(&state, &signal))
            {
                Ok(handle) => *thread = Some(handle),
                Err(_) => return self.state.lock().settle_deferred(None),
            }
        }
        self.signal.wake.notify_one();
        Ok(())
    }
}

impl Drop for Reclaimer {
    fn drop(&mut self) {
        {
            // Under the lock the worker checks `stop` with, so that it is
            // either before its check or already waiting for this wake-up.
            let _state = self.state.lock();
            self.signal.stop.store(true, Ordering::Release);
            self.signal.wake.notify_one();
        }
        if let Some(handle) = self.thread.get_mut().take() {
            // A panicking worker has nothing more to give back.
            let _ = handle.join();
        }
    }
}

fn worker(state: &Mutex<State>, signal: &Signal) {
    let mut st = state.lock();
    loop {
        match st.reclaim_batch() {
            // Let others take the lock between batches.
            Ok(true) => parking_lot::MutexGuard::bump(&mut st),
            Ok(false) if signal.stop.load(Ordering::Acquire) => return,
            Ok(false) => signal.wake.wait(&mut st),
            Err(_) if signal.stop.load(Ordering::Acquire) => return,
            Err(_) => {
                st.events.reclaim_errors += 1;
                signal.wake.wait_for(&mut st, RETRY_AFTER);
            }
        }
    }
}
