//! A small software TLB of completed walks.

use super::walk::{PageSize, Translation};

const ENTRIES: usize = 64;
const INVALID: u64 = u64::MAX;

/// One cached translation of a 4 KiB linear page (large pages are cached
/// per 4 KiB piece, as CPUs may do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TlbEntry {
    /// Linear page number, or `INVALID`.
    tag: u64,
    /// Guest-physical address of the 4 KiB frame.
    pub frame: u64,
    /// Size of the page the translation came from.
    pub page_size: PageSize,
    /// Bit [`Access::index`] set for every access the rights allow under
    /// the state the entry was made in (any change of that state flushes).
    pub allowed: u16,
    /// Leaf dirty flag.
    pub dirty: bool,
}

const EMPTY: TlbEntry = TlbEntry {
    tag: INVALID,
    frame: 0,
    page_size: PageSize::Size4K,
    allowed: 0,
    dirty: false,
};

/// Hit, miss and flush counts of a [`GuestPaging`](super::GuestPaging) TLB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TlbStats {
    /// Lookups answered from the TLB.
    pub hits: u64,
    /// Lookups that needed a walk.
    pub misses: u64,
    /// Full flushes.
    pub flushes: u64,
    /// Single-page invalidations.
    pub invalidations: u64,
}

/// Direct-mapped cache of 64 translations, keyed by linear page number.
#[derive(Debug, Clone)]
pub(crate) struct Tlb {
    entries: [TlbEntry; ENTRIES],
    pub stats: TlbStats,
}

impl Tlb {
    pub fn new() -> Self {
        Self {
            entries: [EMPTY; ENTRIES],
            stats: TlbStats::default(),
        }
    }

    fn slot(page: u64) -> usize {
        (page as usize) % ENTRIES
    }

    /// The cached translation of `linear`, if any.
    #[inline]
    pub fn lookup(&self, linear: u64) -> Option<&TlbEntry> {
        let page = linear >> 12;
        let e = &self.entries[Self::slot(page)];
        (e.tag == page).then_some(e)
    }

    /// Caches `t` for its 4 KiB linear page; `allowed` as in [`TlbEntry`].
    pub fn insert(&mut self, t: &Translation, allowed: u16) {
        let page = t.linear >> 12;
        self.entries[Self::slot(page)] = TlbEntry {
            tag: page,
            frame: t.gpa & !0xfff,
            page_size: t.page_size,
            allowed,
            dirty: t.dirty,
        };
    }

    /// Drops every cached piece of the page (of whatever size) that holds
    /// `linear`, like INVLPG.
    pub fn invalidate(&mut self, linear: u64) {
        self.stats.invalidations += 1;
        for e in &mut self.entries {
            if e.tag != INVALID {
                let mask = !(e.page_size.bytes() - 1);
                if (e.tag << 12) & mask == linear & mask {
                    *e = EMPTY;
                }
            }
        }
    }

    /// Drops everything.
    pub fn flush(&mut self) {
        self.stats.flushes += 1;
        self.entries = [EMPTY; ENTRIES];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::{Access, CpuFeatures, FlatMemory, PagingState, PhysAccess, cr0, cr4, walk};

    #[test]
    fn invalidation_covers_whole_large_page() {
        let mem = FlatMemory::new(0x2000);
        // 32-bit PSE: PDE 1 maps a 4 MiB page at 0x800000.
        mem.write_u32(0x1004, 0x80_0000 | 0x83).unwrap();
        let st = PagingState::new(CpuFeatures::new(36).unwrap())
            .with_cr0(cr0::PE | cr0::PG)
            .with_cr4(cr4::PSE)
            .with_cr3(0x1000);
        let mut tlb = Tlb::new();
        for va in [0x40_0000u64, 0x41_2000, 0x7f_f000] {
            tlb.insert(&walk(&st, &mem, va, Access::supervisor_read()).unwrap(), 1);
        }
        assert_eq!(tlb.lookup(0x41_2abc).unwrap().frame, 0x81_2000);
        assert!(tlb.lookup(0x41_3000).is_none());
        tlb.invalidate(0x5f_0000);
        for va in [0x40_0000u64, 0x41_2000, 0x7f_f000] {
            assert!(tlb.lookup(va).is_none());
        }
        tlb.insert(
            &walk(&st, &mem, 0x40_0000, Access::supervisor_read()).unwrap(),
            1,
        );
        tlb.flush();
        assert!(tlb.lookup(0x40_0000).is_none());
        assert_eq!((tlb.stats.flushes, tlb.stats.invalidations), (1, 1));
    }
}
