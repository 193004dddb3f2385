//! Identifiers: page ids, chunk ids, VM ids and the chunk geometry.

use std::fmt;

/// Size of a guest/host page in bytes.
pub const PAGE_SIZE: usize = 4096;
/// log2 of the number of pages in a chunk.
pub const CHUNK_SHIFT: u32 = 9;
/// Pages per chunk (512).
pub const CHUNK_PAGES: usize = 1 << CHUNK_SHIFT;
/// Size of a chunk in bytes (2 MiB).
pub const CHUNK_SIZE: usize = CHUNK_PAGES * PAGE_SIZE;

/// Identifies a 2 MiB host chunk. Chunk id 0 is never used (VirtualBox's NIL chunk id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId(pub u32);

/// Identifies one host page: the chunk id shifted left by 9, plus the page index in the chunk.
///
/// ```
/// use gmm::{ChunkId, PageId};
/// let id = PageId::new(ChunkId(3), 5);
/// assert_eq!(id.0, (3 << 9) | 5);
/// assert_eq!(id.chunk(), ChunkId(3));
/// assert_eq!(id.index(), 5);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageId(pub u32);

impl PageId {
    /// The page with index `index` (0..512) in chunk `chunk`.
    pub const fn new(chunk: ChunkId, index: usize) -> Self {
        PageId((chunk.0 << CHUNK_SHIFT) | (index as u32 & (CHUNK_PAGES as u32 - 1)))
    }
    /// The chunk this page lives in.
    pub const fn chunk(self) -> ChunkId {
        ChunkId(self.0 >> CHUNK_SHIFT)
    }
    /// Index of the page inside its chunk.
    pub const fn index(self) -> usize {
        (self.0 as usize) & (CHUNK_PAGES - 1)
    }
}

impl fmt::Display for PageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Identifies a VM registered with a [`Gmm`](crate::Gmm). Never 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmId(pub u32);

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The accounts a VM's pages are charged to (VirtualBox `GMMACCOUNT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Account {
    /// Guest RAM (the only account that can be ballooned or shared).
    Base,
    /// Shadow page tables and similar VMM structures.
    Shadow,
    /// Fixed allocations (hypervisor structures).
    Fixed,
}

impl Account {
    /// All accounts, in the order used by per-account arrays.
    pub const ALL: [Account; 3] = [Account::Base, Account::Shadow, Account::Fixed];

    pub(crate) const fn idx(self) -> usize {
        match self {
            Account::Base => 0,
            Account::Shadow => 1,
            Account::Fixed => 2,
        }
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Account::Base => "base",
            Account::Shadow => "shadow",
            Account::Fixed => "fixed",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_id_round_trips() {
        for (c, i) in [(1u32, 0usize), (7, 511), (0x7f_ffff, 3)] {
            let p = PageId::new(ChunkId(c), i);
            assert_eq!(p.chunk(), ChunkId(c));
            assert_eq!(p.index(), i);
        }
    }
}
