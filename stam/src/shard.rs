//! Per-thread shards laid out shard-major: a block holds, for each of
//! [`SHARDS`] shards, one cache-line-aligned row of cells for [`SLOTS`]
//! samples. A thread updates the row of its shard, so threads never write
//! the same cache line, while a reader summing one sample touches one line
//! per shard that it shares with the neighbouring samples of the block.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Number of shards per sharded sample (a power of two).
pub const SHARDS: usize = 8;
const SHARD_MASK: usize = SHARDS - 1;
/// Samples per block (a power of two).
const SLOTS: usize = 64;
const SLOT_MASK: usize = SLOTS - 1;
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
    THREAD_SHARD.with(|s| s.set(index & SHARD_MASK));
}

#[inline(always)]
fn thread_shard() -> usize {
    THREAD_SHARD.with(|s| {
        let v = s.get();
        if v != UNASSIGNED {
            v & SHARD_MASK
        } else {
            assign_shard(s)
        }
    })
}

#[cold]
fn assign_shard(slot: &Cell<usize>) -> usize {
    let v = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) & SHARD_MASK;
    slot.set(v);
    v
}

/// One shard's cells for the samples of a block, on their own cache lines
/// (128 bytes covers the adjacent-line prefetcher pairing on x86).
#[repr(align(128))]
struct Row<T>([T; SLOTS]);

/// Cells for [`SLOTS`] samples, one row per shard.
struct Block<T> {
    rows: [Row<T>; SHARDS],
}

impl<T: Default> Block<T> {
    fn new() -> Arc<Self> {
        Arc::new(Block {
            rows: std::array::from_fn(|_| Row(std::array::from_fn(|_| T::default()))),
        })
    }
}

/// A sample's cells: its column in a block.
pub(crate) struct Slot<T> {
    block: Arc<Block<T>>,
    index: usize,
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Slot {
            block: Arc::clone(&self.block),
            index: self.index,
        }
    }
}

impl<T> Slot<T> {
    /// The calling thread's cell.
    #[inline(always)]
    pub(crate) fn local(&self) -> &T {
        &self.block.rows[thread_shard()].0[self.index & SLOT_MASK]
    }

    /// The cells of all shards, for reading and resetting.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        let index = self.index & SLOT_MASK;
        self.block.rows.iter().map(move |row| &row.0[index])
    }
}

/// Hands out slots block by block. Slots are not reused: a block is freed
/// when every sample in it is gone and the allocator has moved on.
pub(crate) struct SlotAllocator<T> {
    block: Option<Arc<Block<T>>>,
    next: usize,
}

impl<T> Default for SlotAllocator<T> {
    fn default() -> Self {
        SlotAllocator {
            block: None,
            next: 0,
        }
    }
}

impl<T: Default> SlotAllocator<T> {
    pub(crate) fn alloc(&mut self) -> Slot<T> {
        let block = match &self.block {
            Some(block) if self.next < SLOTS => Arc::clone(block),
            _ => {
                let block = Block::new();
                self.block = Some(Arc::clone(&block));
                self.next = 0;
                block
            }
        };
        let index = self.next;
        self.next += 1;
        Slot { block, index }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn pinned_thread_uses_its_shard() {
        let mut alloc = SlotAllocator::<AtomicU64>::default();
        let s = alloc.alloc();
        std::thread::spawn(move || {
            set_thread_shard(SHARDS + 2);
            s.local().fetch_add(5, Ordering::Relaxed);
            let vals: Vec<u64> = s.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            assert_eq!(vals.len(), SHARDS);
            assert_eq!(vals[2], 5);
            assert_eq!(vals.iter().sum::<u64>(), 5);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn slots_are_distinct_and_blocks_fill_up() {
        let mut alloc = SlotAllocator::<AtomicU64>::default();
        let slots: Vec<_> = (0..SLOTS + 3).map(|_| alloc.alloc()).collect();
        for (i, s) in slots.iter().enumerate() {
            s.iter().for_each(|c| c.store(i as u64, Ordering::Relaxed));
        }
        for (i, s) in slots.iter().enumerate() {
            assert!(s.iter().all(|c| c.load(Ordering::Relaxed) == i as u64));
        }
        assert!(Arc::ptr_eq(&slots[0].block, &slots[SLOTS - 1].block));
        assert!(!Arc::ptr_eq(&slots[0].block, &slots[SLOTS].block));
    }

    #[test]
    fn shard_rows_are_cache_lines_apart() {
        assert!(std::mem::align_of::<Row<AtomicU64>>() >= 128);
        assert_eq!(std::mem::size_of::<Row<AtomicU64>>() % 128, 0);
    }
}
