//! A per-vCPU wait/wake primitive for halted EMTs.
//!
//! [`HaltEvent::wait`] blocks until a waker calls [`HaltEvent::wake`], the
//! caller's condition becomes true, or a timeout expires. The condition is
//! checked under the event's lock, and [`HaltEvent::wake`] takes the same lock,
//! so a waker that makes the condition true *before* calling `wake` can never
//! be missed.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::time::Duration;
//! use vmm_core::sync::halt::{HaltEvent, WaitOutcome};
//!
//! let ev = Arc::new(HaltEvent::new());
//! let flag = Arc::new(AtomicBool::new(false));
//! let (e2, f2) = (ev.clone(), flag.clone());
//! let waker = std::thread::spawn(move || {
//!     f2.store(true, Ordering::SeqCst);
//!     e2.wake();
//! });
//! let got = ev.wait(Some(Duration::from_secs(10)), || flag.load(Ordering::SeqCst));
//! assert_eq!(got, WaitOutcome::Condition);
//! waker.join().unwrap();
//! ```

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Why [`HaltEvent::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The condition was (or became) true.
    Condition,
    /// The timeout expired with the condition still false.
    TimedOut,
}

/// A wait/wake event; one per vCPU.
#[derive(Debug, Default)]
pub struct HaltEvent {
    /// Set by `wake`, consumed by the waiter.
    signalled: Mutex<bool>,
    cv: Condvar,
}

impl HaltEvent {
    /// A fresh, unsignalled event.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits until `done()` is true or `timeout` (`None`: no limit) expires.
    ///
    /// `done` is evaluated under the event's lock before every sleep and after
    /// every wake-up, so it should be cheap (an atomic load).
    pub fn wait(&self, timeout: Option<Duration>, done: impl Fn() -> bool) -> WaitOutcome {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut signalled = self.signalled.lock();
        // A wake from before this wait refers to a condition we check below.
        *signalled = false;
        loop {
            if done() {
                return WaitOutcome::Condition;
            }
            if *signalled {
                *signalled = false;
                continue;
            }
            match deadline {
                None => self.cv.wait(&mut signalled),
                Some(d) => {
                    if self.cv.wait_until(&mut signalled, d).timed_out() {
                        return if done() {
                            WaitOutcome::Condition
                        } else {
                            WaitOutcome::TimedOut
                        };
                    }
                }
            }
        }
    }

    /// Wakes the waiter, if any, so it re-checks its condition.
    pub fn wake(&self) {
        let mut signalled = self.signalled.lock();
        *signalled = true;
        self.cv.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_out_when_nothing_happens() {
        let ev = HaltEvent::new();
        assert_eq!(
            ev.wait(Some(Duration::from_millis(1)), || false),
            WaitOutcome::TimedOut
        );
    }

    #[test]
    fn returns_at_once_when_condition_holds() {
        let ev = HaltEvent::new();
        assert_eq!(ev.wait(None, || true), WaitOutcome::Condition);
    }

    #[test]
    fn stale_wake_does_not_end_a_later_wait() {
        let ev = HaltEvent::new();
        ev.wake();
        assert_eq!(
            ev.wait(Some(Duration::from_millis(1)), || false),
            WaitOutcome::TimedOut
        );
    }
}
