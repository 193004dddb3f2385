//! Per-thread shards: cache-line-padded cells picked by a per-thread index,
//! so that threads updating the same sample do not bounce one cache line.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Number of shards per sharded sample (a power of two).
pub const SHARDS: usize = 8;
const MASK: usize = SHARDS - 1;
const UNASSIGNED: usize = usize::MAX;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_SHARD: Cell<usize> = const { Cell::new(UNASSIGNED) };
}

/// Pins the calling thread to shard `index % SHARDS`.
///
/// Threads are otherwise given shards round-robin the first time they update
/// a sharded sample. A VMM gives EMT *n* shard *n* so that its vCPU threads
/// never share a cache line while counting.
///
/// ```
/// stam::set_thread_shard(3);
/// let reg = stam::Registry::new();
/// let c = reg.counter("/Doc/c", stam::Unit::Count, "example")?;
/// c.inc();
/// assert_eq!(c.get(), 1);
/// # Ok::<(), stam::Error>(())
/// ```
pub fn set_thread_shard(index: usize) {
    THREAD_SHARD.with(|s| s.set(index & MASK));
}

#[inline(always)]
pub(crate) fn thread_shard() -> usize {
    THREAD_SHARD.with(|s| {
        let v = s.get();
        if v != UNASSIGNED {
            v & MASK
        } else {
            assign_shard(s)
        }
    })
}

#[cold]
fn assign_shard(slot: &Cell<usize>) -> usize {
    let v = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) & MASK;
    slot.set(v);
    v
}

/// A value padded to its own cache line (128 bytes covers the adjacent-line
/// prefetcher pairing on x86).
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub T);

/// `SHARDS` padded cells; writers use their thread's cell, readers combine all.
pub(crate) struct Sharded<T> {
    cells: [Padded<T>; SHARDS],
}

impl<T> Sharded<T> {
    pub(crate) fn new_with(mut init: impl FnMut() -> T) -> Self {
        Sharded {
            cells: std::array::from_fn(|_| Padded(init())),
        }
    }

    /// The calling thread's cell.
    #[inline(always)]
    pub(crate) fn local(&self) -> &T {
        &self.cells[thread_shard()].0
    }

    /// All cells, for reading and resetting.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.cells.iter().map(|c| &c.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn pinned_thread_uses_its_shard() {
        let s = Sharded::new_with(|| AtomicU64::new(0));
        std::thread::spawn(move || {
            set_thread_shard(SHARDS + 2);
            s.local().fetch_add(5, Ordering::Relaxed);
            let vals: Vec<u64> = s.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            assert_eq!(vals[2], 5);
            assert_eq!(vals.iter().sum::<u64>(), 5);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn cells_are_cache_line_apart() {
        assert!(std::mem::align_of::<Padded<AtomicU64>>() >= 64);
        assert!(std::mem::size_of::<Padded<AtomicU64>>() >= 64);
    }
}
