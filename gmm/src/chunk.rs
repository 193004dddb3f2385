//! Chunk bookkeeping: per-page free/pending bitmaps and owners, the chunk id
//! bitmap, and a cheap hasher for maps keyed by chunk or page id.

use std::hash::{BuildHasherDefault, Hasher};

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
    /// Pages each VM owns here: (VM id, pages); usually one entry.
    users: Vec<(u32, u32)>,
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
            users: Vec::new(),
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

    /// Counts one more page of VM `vm` here; true if it is the VM's first.
    pub(crate) fn add_user(&mut self, vm: u32) -> bool {
        match self.users.iter_mut().find(|u| u.0 == vm) {
            Some(u) => {
                u.1 += 1;
                false
            }
            None => {
                self.users.push((vm, 1));
                true
            }
        }
    }

    /// Counts one page less of VM `vm` here; true if it was the VM's last.
    pub(crate) fn drop_user(&mut self, vm: u32) -> bool {
        let Some(i) = self.users.iter().position(|u| u.0 == vm) else {
            return false;
        };
        self.users[i].1 -= 1;
        if self.users[i].1 == 0 {
            self.users.swap_remove(i);
            return true;
        }
        false
    }

    /// The ids of the VMs owning pages here.
    pub(crate) fn users(&self) -> impl Iterator<Item = u32> + '_ {
        self.users.iter().map(|u| u.0)
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

/// Hasher for small integer keys (chunk and page ids, GMM-generated, so no
/// flooding concern): one multiply instead of SipHash on the allocation path.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A `HashMap` keyed by chunk or page ids.
pub(crate) type IdMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<IdHasher>>;

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
    fn chunk_users_are_counted() {
        let mut c = Chunk::new();
        assert!(c.add_user(1));
        assert!(!c.add_user(1));
        assert!(c.add_user(2));
        assert!(!c.drop_user(1));
        assert!(c.drop_user(1));
        assert!(!c.drop_user(1));
        assert!(c.drop_user(2));
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
