//! Chunk bookkeeping: per-page free/pending bitmaps and owners, and the chunk
//! id bitmap.

use crate::ids::{CHUNK_PAGES, ChunkId};

const WORDS: usize = CHUNK_PAGES / 64;

/// Owner value of a page that is a shared master page (owned by GMM itself).
pub(crate) const OWNER_SHARED: u32 = u32::MAX;
/// Owner value of a free (or pending) page.
pub(crate) const OWNER_NONE: u32 = 0;

/// One 2 MiB chunk. Every page is exactly one of: free (a hole in the memfd,
/// allocatable), pending (freed, not yet punched, not allocatable) or used.
pub(crate) struct Chunk {
    free: [u64; WORDS],
    pending: [u64; WORDS],
    in_region: [u64; WORDS],
    owner: Box<[u32; CHUNK_PAGES]>,
    n_free: u16,
    n_pending: u16,
    /// Whether the chunk is in the GMM's set of partly used chunks.
    pub(crate) in_partial: bool,
    /// Whether the chunk is on the GMM's list of empty chunks.
    pub(crate) in_empty_list: bool,
}

impl Chunk {
    /// A chunk whose pages are all free.
    pub(crate) fn new() -> Self {
        Chunk {
            free: [u64::MAX; WORDS],
            pending: [0; WORDS],
            in_region: [0; WORDS],
            owner: Box::new([OWNER_NONE; CHUNK_PAGES]),
            n_free: CHUNK_PAGES as u16,
            n_pending: 0,
            in_partial: false,
            in_empty_list: false,
        }
    }

    pub(crate) fn n_free(&self) -> u16 {
        self.n_free
    }

    pub(crate) fn n_pending(&self) -> u16 {
        self.n_pending
    }

    pub(crate) fn n_used(&self) -> u16 {
        CHUNK_PAGES as u16 - self.n_free - self.n_pending
    }

    /// Takes the lowest free page for `owner`; `None` if the chunk is full.
    pub(crate) fn take(&mut self, owner: u32) -> Option<usize> {
        let (w, word) = self.free.iter().enumerate().find(|(_, w)| **w != 0)?;
        let bit = word.trailing_zeros() as usize;
        self.free[w] &= !(1u64 << bit);
        let idx = w * 64 + bit;
        self.owner[idx] = owner;
        self.n_free -= 1;
        Some(idx)
    }

    pub(crate) fn owner(&self, idx: usize) -> u32 {
        self.owner[idx]
    }

    pub(crate) fn set_owner(&mut self, idx: usize, owner: u32) {
        self.owner[idx] = owner;
    }

    pub(crate) fn is_used(&self, idx: usize) -> bool {
        self.owner[idx] != OWNER_NONE
    }

    pub(crate) fn in_region(&self, idx: usize) -> bool {
        self.in_region[idx / 64] & (1 << (idx % 64)) != 0
    }

    pub(crate) fn set_in_region(&mut self, idx: usize, on: bool) {
        if on {
            self.in_region[idx / 64] |= 1 << (idx % 64);
        } else {
            self.in_region[idx / 64] &= !(1 << (idx % 64));
        }
    }

    /// Releases a used page; it becomes pending until its hole is punched.
    pub(crate) fn release(&mut self, idx: usize) {
        debug_assert!(self.is_used(idx));
        self.owner[idx] = OWNER_NONE;
        self.set_in_region(idx, false);
        self.pending[idx / 64] |= 1 << (idx % 64);
        self.n_pending += 1;
    }

    pub(crate) fn is_pending(&self, idx: usize) -> bool {
        self.pending[idx / 64] & (1 << (idx % 64)) != 0
    }

    /// Turns a pending page (already punched) into a free one.
    pub(crate) fn settle(&mut self, idx: usize) {
        debug_assert!(self.is_pending(idx));
        self.pending[idx / 64] &= !(1 << (idx % 64));
        self.free[idx / 64] |= 1 << (idx % 64);
        self.n_pending -= 1;
        self.n_free += 1;
    }
}

/// Allocator for chunk ids (bit set = id in use). Id 0 is permanently taken.
pub(crate) struct ChunkIdMap {
    words: Vec<u64>,
    limit: u32,
    hint: usize,
}

impl ChunkIdMap {
    /// Ids `1..limit` are available.
    pub(crate) fn new(limit: u32) -> Self {
        let mut words = vec![0u64; (limit as usize).div_ceil(64)];
        if let Some(w) = words.first_mut() {
            *w = 1;
        }
        ChunkIdMap {
            words,
            limit,
            hint: 0,
        }
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }

    pub(crate) fn alloc(&mut self) -> Option<ChunkId> {
        let n = self.words.len();
        for k in 0..n {
            let w = (self.hint + k) % n;
            let free = !self.words[w];
            if free != 0 {
                let bit = free.trailing_zeros();
                let id = w as u32 * 64 + bit;
                if id >= self.limit {
                    continue;
                }
                self.words[w] |= 1 << bit;
                self.hint = w;
                return Some(ChunkId(id));
            }
        }
        None
    }

    pub(crate) fn free(&mut self, id: ChunkId) {
        let (w, b) = (id.0 as usize / 64, id.0 % 64);
        debug_assert!(id.0 != 0 && self.words[w] & (1 << b) != 0);
        self.words[w] &= !(1 << b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_page_lifecycle() {
        let mut c = Chunk::new();
        assert_eq!(c.take(7), Some(0));
        assert_eq!(c.take(7), Some(1));
        assert_eq!(c.n_used(), 2);
        c.release(0);
        assert_eq!((c.n_used(), c.n_pending(), c.n_free()), (1, 1, 510));
        // A pending page is not handed out again before it is settled.
        assert_eq!(c.take(8), Some(2));
        c.settle(0);
        assert_eq!(c.take(8), Some(0));
        assert_eq!(c.owner(0), 8);
    }

    #[test]
    fn chunk_fills_up() {
        let mut c = Chunk::new();
        for i in 0..CHUNK_PAGES {
            assert_eq!(c.take(1), Some(i));
        }
        assert_eq!(c.take(1), None);
    }

    #[test]
    fn chunk_ids_skip_zero_and_respect_limit() {
        let mut m = ChunkIdMap::new(3);
        assert_eq!(m.alloc(), Some(ChunkId(1)));
        assert_eq!(m.alloc(), Some(ChunkId(2)));
        assert_eq!(m.alloc(), None);
        m.free(ChunkId(1));
        assert_eq!(m.alloc(), Some(ChunkId(1)));
    }
}
