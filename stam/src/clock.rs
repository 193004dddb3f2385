//! The profile clock: the CPU's time-stamp counter where it is invariant
//! (x86-64 with `constant_tsc` and `nonstop_tsc`), calibrated once against
//! the monotonic clock; the monotonic clock everywhere else.
//!
//! A period costs one counter read at each end plus a multiply-shift to
//! turn ticks into nanoseconds.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Fixed-point shift of [`Clock::mult`].
const SHIFT: u32 = 32;
/// How long the one-time calibration watches both clocks.
#[cfg(target_arch = "x86_64")]
const CALIBRATION: Duration = Duration::from_millis(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `rdtsc`.
    #[cfg(target_arch = "x86_64")]
    Tsc,
    /// Nanoseconds since [`epoch`].
    Monotonic,
}

/// A calibrated tick source; cheap to copy into hot-path handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Clock {
    source: Source,
    /// Nanoseconds per tick, as a fixed-point number with [`SHIFT`] fraction bits.
    mult: u64,
}

static CLOCK: OnceLock<Clock> = OnceLock::new();
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

impl Clock {
    /// The process-wide clock (calibrated on first use, which takes ~2 ms
    /// when the time-stamp counter is used).
    pub(crate) fn get() -> Clock {
        *CLOCK.get_or_init(Clock::calibrate)
    }

    /// The monotonic-clock fallback: one tick is one nanosecond.
    pub(crate) fn monotonic() -> Clock {
        epoch();
        Clock {
            source: Source::Monotonic,
            mult: 1 << SHIFT,
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn calibrate() -> Clock {
        if !invariant_tsc() {
            return Clock::monotonic();
        }
        let (t0, c0) = paired_read();
        let (t1, c1) = loop {
            let (t, c) = paired_read();
            if t.duration_since(t0) >= CALIBRATION {
                break (t, c);
            }
        };
        let ns = t1.duration_since(t0).as_nanos();
        let ticks = u128::from(c1.wrapping_sub(c0));
        match u64::try_from((ns << SHIFT) / ticks.max(1)) {
            Ok(mult) if ticks > 0 && mult > 0 => Clock {
                source: Source::Tsc,
                mult,
            },
            _ => Clock::monotonic(),
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn calibrate() -> Clock {
        Clock::monotonic()
    }

    /// The current tick count.
    #[inline(always)]
    pub(crate) fn now(self) -> u64 {
        match self.source {
            #[cfg(target_arch = "x86_64")]
            Source::Tsc => rdtsc(),
            Source::Monotonic => u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Nanoseconds in `ticks` (saturating).
    #[inline(always)]
    pub(crate) fn ticks_to_ns(self, ticks: u64) -> u64 {
        let ns = (u128::from(ticks) * u128::from(self.mult)) >> SHIFT;
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` exists on every x86-64 CPU and only reads the
    // time-stamp counter; the intrinsic is `unsafe` for historical reasons.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Reads the monotonic clock and the TSC back to back, retrying until the
/// pair was not split by a preemption (the two monotonic reads around the
/// TSC read are close), so calibration survives a loaded host.
#[cfg(target_arch = "x86_64")]
fn paired_read() -> (Instant, u64) {
    let mut best: Option<(Duration, Instant, u64)> = None;
    for _ in 0..16 {
        let a = Instant::now();
        let c = rdtsc();
        let b = Instant::now();
        let gap = b.duration_since(a);
        if best.is_none_or(|(g, _, _)| gap < g) {
            best = Some((gap, a + gap / 2, c));
        }
        if gap < Duration::from_micros(1) {
            break;
        }
    }
    best.map_or_else(|| (Instant::now(), rdtsc()), |(_, t, c)| (t, c))
}

/// Whether Linux reports the TSC as constant-rate and not stopping in idle states.
#[cfg(target_arch = "x86_64")]
fn invariant_tsc() -> bool {
    let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
        return false;
    };
    cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|flags| {
            let has = |w: &str| flags.split_whitespace().any(|f| f == w);
            has("constant_tsc") && has("nonstop_tsc")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_ticks_are_nanoseconds() {
        let c = Clock::monotonic();
        assert_eq!(c.ticks_to_ns(12_345), 12_345);
        let (a, b) = (c.now(), c.now());
        assert!(b >= a);
    }

    #[test]
    fn conversion_saturates() {
        let c = Clock {
            source: Source::Monotonic,
            mult: 4 << SHIFT,
        };
        assert_eq!(c.ticks_to_ns(u64::MAX), u64::MAX);
        assert_eq!(c.ticks_to_ns(10), 40);
    }

    #[test]
    fn calibrated_clock_measures_at_least_a_sleep() {
        let c = Clock::get();
        let start = c.now();
        std::thread::sleep(Duration::from_millis(20));
        let ns = c.ticks_to_ns(c.now().wrapping_sub(start));
        // A sleep lasts at least as long as asked; allow 10% calibration error.
        assert!(ns >= 18_000_000, "{ns} ns for a 20 ms sleep ({c:?})");
    }
}
