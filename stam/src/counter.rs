//! Counters: monotonically increasing, sharded per thread.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::shard::Slot;

/// The shared cells behind a [`Counter`].
pub(crate) type CounterCells = Slot<AtomicU64>;

pub(crate) fn read(cells: &CounterCells) -> u64 {
    cells
        .iter()
        .fold(0u64, |acc, c| acc.wrapping_add(c.load(Ordering::Relaxed)))
}

pub(crate) fn reset(cells: &CounterCells) {
    cells.iter().for_each(|c| c.store(0, Ordering::Relaxed));
}

/// A hot-path handle to a counter sample.
///
/// Adding is one relaxed atomic add on a cache line owned by the calling
/// thread's shard: no lock, no allocation. Reading sums the shards.
///
/// ```
/// let reg = stam::Registry::new();
/// let c = reg.counter("/GMM/cChunks", stam::Unit::Count, "Chunks allocated")?;
/// c.inc();
/// c.add(5);
/// assert_eq!(c.get(), 6);
/// # Ok::<(), stam::Error>(())
/// ```
#[derive(Clone)]
pub struct Counter {
    cells: CounterCells,
}

impl Counter {
    pub(crate) fn from_cells(cells: CounterCells) -> Self {
        Counter { cells }
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n` (wrapping on overflow).
    #[inline]
    pub fn add(&self, n: u64) {
        self.cells.local().fetch_add(n, Ordering::Relaxed);
    }

    /// The current value: the sum over all shards.
    pub fn get(&self) -> u64 {
        read(&self.cells)
    }

    /// Sets the counter back to zero.
    pub fn reset(&self) {
        reset(&self.cells);
    }
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counter")
            .field("value", &self.get())
            .finish()
    }
}
