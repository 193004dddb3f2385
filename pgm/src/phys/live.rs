//! The live-save vote: whether another pass of dirty pages is worth it, by
//! VirtualBox's rule (short- and long-term averages of the dirty page count;
//! after pass 10, the expected downtime at the measured save speed).

/// Number of passes remembered for the long-term average.
pub const DIRTY_HISTORY: usize = 64;

/// The decision of one vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveVote {
    /// Few enough pages stay dirty: stop the VM and finish.
    Done,
    /// Run another live pass.
    AnotherPass,
}

/// Dirty-page history of a live save.
///
/// ```
/// use pgm::phys::{LiveVote, LiveVoter};
/// let mut v = LiveVoter::new();
/// // a guest that keeps dirtying 100_000 pages never converges early
/// assert_eq!(v.vote(0, 100_000, 50_000.0, 250), LiveVote::AnotherPass);
/// // an idle guest is done at once
/// let mut idle = LiveVoter::new();
/// assert_eq!(idle.vote(0, 0, 50_000.0, 250), LiveVote::Done);
/// ```
#[derive(Debug, Clone)]
pub struct LiveVoter {
    history: [u64; DIRTY_HISTORY],
    next: usize,
    short: u64,
    long: u64,
}

impl Default for LiveVoter {
    fn default() -> Self {
        Self::new()
    }
}

impl LiveVoter {
    /// A voter with an empty history.
    pub fn new() -> Self {
        Self {
            history: [0; DIRTY_HISTORY],
            next: 0,
            short: 0,
            long: 0,
        }
    }

    /// Short-term average (last 4 passes) after the last vote.
    pub fn short_average(&self) -> u64 {
        self.short
    }

    /// Long-term average (history sum over 64 slots) after the last vote.
    pub fn long_average(&self) -> u64 {
        self.long
    }

    /// Records `dirty_now` pages dirty after pass `pass` and votes.
    /// `pages_per_second` is the measured save speed; `max_downtime_ms` the
    /// tolerated downtime (at least 32 ms is assumed).
    pub fn vote(
        &mut self,
        pass: u32,
        dirty_now: u64,
        pages_per_second: f64,
        max_downtime_ms: u32,
    ) -> LiveVote {
        let slot = self.next;
        self.history[slot] = dirty_now;
        self.next = (slot + 1) % DIRTY_HISTORY;

        self.short = (0..4)
            .map(|back| self.history[(slot + DIRTY_HISTORY - back) % DIRTY_HISTORY])
            .sum::<u64>()
            / 4;
        let seen = (pass as usize + 1).min(DIRTY_HISTORY);
        self.long = self.history[..seen].iter().sum::<u64>() / DIRTY_HISTORY as u64;
        let (short, long) = (self.short, self.long);

        let settled =
            short <= long && (dirty_now <= short || dirty_now - short < (short / 8).min(16));
        if !settled {
            return LiveVote::AnotherPass;
        }
        let done = if pass > 10 {
            let rate = pages_per_second.max(1.0);
            let ms_short = short as f64 / rate * 1000.0;
            let ms_long = long as f64 / rate * 1000.0;
            let max = f64::from(max_downtime_ms.max(32));
            (ms_long <= max && ms_short < max) || ms_short < max / 2.0
        } else {
            (short <= 128 && long <= 1024) || long <= 256
        };
        if done {
            LiveVote::Done
        } else {
            LiveVote::AnotherPass
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn steady_dirtying_finishes_once_the_long_average_catches_up() {
        let mut v = LiveVoter::new();
        // 2000 dirty pages a pass: the long average (history / 64) stays
        // below the short one until the history is full
        for pass in 0..63 {
            assert_eq!(
                v.vote(pass, 2000, 1e6, 250),
                LiveVote::AnotherPass,
                "pass {pass}"
            );
        }
        // 2000 pages at 1M pages/s is 2 ms of downtime: done
        let mut fast = v.clone();
        assert_eq!(fast.vote(63, 2000, 1e6, 250), LiveVote::Done);
        assert_eq!(fast.long_average(), 2000);
        // at 1000 pages/s it is 2 s: keep going
        assert_eq!(v.vote(63, 2000, 1000.0, 250), LiveVote::AnotherPass);
    }

    #[test]
    fn early_passes_use_page_thresholds() {
        let mut v = LiveVoter::new();
        assert_eq!(v.vote(0, 0, 1.0, 0), LiveVote::Done);
        let mut v = LiveVoter::new();
        for pass in 0..4 {
            v.vote(pass, 100_000, 1.0, 0);
        }
        for pass in 4..8 {
            assert_eq!(v.vote(pass, 100, 1.0, 0), LiveVote::AnotherPass);
        }
    }

    #[test]
    fn rising_dirty_count_never_finishes() {
        let mut v = LiveVoter::new();
        for pass in 0..40 {
            assert_eq!(
                v.vote(pass, 1000 + 500 * u64::from(pass), 1e9, 250),
                LiveVote::AnotherPass
            );
        }
    }

    proptest! {
        #[test]
        fn averages_bound_history(dirty in proptest::collection::vec(0u64..1_000_000, 1..100)) {
            let mut v = LiveVoter::new();
            for (pass, &d) in dirty.iter().enumerate() {
                v.vote(pass as u32, d, 1e5, 100);
                let max = *dirty.iter().max().unwrap_or(&0);
                prop_assert!(v.short_average() <= max);
                prop_assert!(v.long_average() <= max);
            }
        }
    }
}
