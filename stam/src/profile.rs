//! Profiles: periods, total, minimum and maximum duration in nanoseconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::Clock;
use crate::shard::Slot;

/// One shard of a profile.
pub(crate) struct ProfileCell {
    periods: AtomicU64,
    total_ns: AtomicU64,
    min_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for ProfileCell {
    fn default() -> Self {
        ProfileCell {
            periods: AtomicU64::new(0),
            total_ns: AtomicU64::new(0),
            min_ns: AtomicU64::new(u64::MAX),
            max_ns: AtomicU64::new(0),
        }
    }
}

/// The shared cells behind a [`Profile`].
pub(crate) type ProfileCells = Slot<ProfileCell>;

/// Aggregated profile figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileStats {
    /// Number of timed periods.
    pub periods: u64,
    /// Sum of all periods, in nanoseconds.
    pub total_ns: u64,
    /// Shortest period in nanoseconds (`u64::MAX` while there is none).
    pub min_ns: u64,
    /// Longest period in nanoseconds.
    pub max_ns: u64,
}

pub(crate) fn read(cells: &ProfileCells) -> ProfileStats {
    cells.iter().fold(
        ProfileStats {
            periods: 0,
            total_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        },
        |acc, c| ProfileStats {
            periods: acc.periods.wrapping_add(c.periods.load(Ordering::Relaxed)),
            total_ns: acc
                .total_ns
                .wrapping_add(c.total_ns.load(Ordering::Relaxed)),
            min_ns: acc.min_ns.min(c.min_ns.load(Ordering::Relaxed)),
            max_ns: acc.max_ns.max(c.max_ns.load(Ordering::Relaxed)),
        },
    )
}

pub(crate) fn reset(cells: &ProfileCells) {
    for c in cells.iter() {
        c.periods.store(0, Ordering::Relaxed);
        c.total_ns.store(0, Ordering::Relaxed);
        c.min_ns.store(u64::MAX, Ordering::Relaxed);
        c.max_ns.store(0, Ordering::Relaxed);
    }
}

/// A hot-path handle to a profile sample.
///
/// [`start`](Profile::start) returns a scope timer that reads the clock once
/// when created and once when dropped (the CPU's invariant time-stamp counter
/// where there is one, calibrated to nanoseconds; the monotonic clock
/// otherwise), then records the period in the calling thread's shard (two
/// relaxed adds; min/max are only written when they change).
///
/// ```
/// let reg = stam::Registry::new();
/// let p = reg.profile("/HM/RunLoop", "Time spent in the run loop")?;
/// {
///     let _t = p.start();
///     // timed work
/// }
/// p.add_ns(100);
/// let s = p.stats();
/// assert_eq!(s.periods, 2);
/// assert!(s.max_ns >= 100 && s.min_ns <= 100);
/// # Ok::<(), stam::Error>(())
/// ```
#[derive(Clone)]
pub struct Profile {
    cells: ProfileCells,
    clock: Clock,
}

impl Profile {
    pub(crate) fn from_cells(cells: ProfileCells) -> Self {
        Profile {
            cells,
            clock: Clock::get(),
        }
    }

    /// Starts timing a period; the period ends when the timer is dropped or stopped.
    #[inline]
    pub fn start(&self) -> ProfileTimer<'_> {
        ProfileTimer {
            profile: self,
            start: self.clock.now(),
        }
    }

    /// Records one period of `ns` nanoseconds.
    #[inline]
    pub fn add_ns(&self, ns: u64) {
        let c = self.cells.local();
        c.periods.fetch_add(1, Ordering::Relaxed);
        c.total_ns.fetch_add(ns, Ordering::Relaxed);
        if ns < c.min_ns.load(Ordering::Relaxed) {
            c.min_ns.fetch_min(ns, Ordering::Relaxed);
        }
        if ns > c.max_ns.load(Ordering::Relaxed) {
            c.max_ns.fetch_max(ns, Ordering::Relaxed);
        }
    }

    /// Records one period given as a [`Duration`] (saturating at `u64::MAX` ns).
    pub fn add(&self, period: Duration) {
        self.add_ns(u64::try_from(period.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The aggregated figures over all shards.
    pub fn stats(&self) -> ProfileStats {
        read(&self.cells)
    }

    /// Clears periods, total and maximum, and puts the minimum back to its maximum.
    pub fn reset(&self) {
        reset(&self.cells);
    }
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Times one period of a [`Profile`]; records it when dropped.
#[must_use = "the period ends when the timer is dropped"]
pub struct ProfileTimer<'a> {
    profile: &'a Profile,
    start: u64,
}

impl ProfileTimer<'_> {
    /// Ends the period now (same as dropping the timer).
    pub fn stop(self) {}
}

impl Drop for ProfileTimer<'_> {
    #[inline]
    fn drop(&mut self) {
        let clock = self.profile.clock;
        // A counter read on another core may be a little behind: count zero then.
        let ticks = clock.now().saturating_sub(self.start);
        self.profile.add_ns(clock.ticks_to_ns(ticks));
    }
}
