//! Tracking of writes that bypass KVM: the `vm-memory` dirty bitmap of
//! every host region.
//!
//! Devices (and anything else in the VMM) write guest RAM through the
//! `vm-memory` view of [`PhysMap::guest_memory`](super::PhysMap::guest_memory),
//! not through KVM, so KVM's dirty log never sees those writes. Every host
//! region therefore carries a [`WriteBitmap`] as its `vm-memory` bitmap:
//! `vm-memory` marks it on every write through its API (`write`,
//! `write_obj`, `store`, `read_volatile_from`, `virtio-queue`'s
//! descriptor writer and used ring, ...), after the bytes are written, so
//! no device has to remember to report anything. `pgm` drains the bitmaps
//! into its page tracking wherever it reads KVM's dirty log
//! ([`PhysMap::sync_dirty_log`](super::PhysMap::sync_dirty_log)) and when
//! write monitoring switches
//! ([`PhysMap::set_write_monitoring`](super::PhysMap::set_write_monitoring));
//! [`PhysMap::sync_vm_memory_writes`](super::PhysMap::sync_vm_memory_writes)
//! drains them alone.
//!
//! Writes through a raw host pointer (`as_ptr`, `ptr_guard_mut` without a
//! `mark_dirty`) are not seen; `pgm`'s own [`PhysMap::write`](super::PhysMap::write)
//! tracks its pages itself.
//!
//! Cost: marking is one atomic OR per 64 pages written plus a load of the
//! summary word (an OR the first time in a pass). Draining visits only the
//! summary words and the groups of 64 words (16 MiB of guest memory) a
//! summary bit names, so a pass with few device writes reads a few words,
//! whatever the size of the guest.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use vm_memory::bitmap::{Bitmap, NewBitmap, RefSlice, WithBitmapSlice};
use vm_memory::{GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use super::page::PAGE_SHIFT;

/// Words of page bits behind one summary bit.
const GROUP_WORDS: usize = 64;

/// A host region of guest memory with its write bitmap.
pub type TrackedRegion = MmapRegion<WriteBitmap>;

/// The `vm-memory` view of guest RAM [`PhysMap::guest_memory`](super::PhysMap::guest_memory)
/// builds: writes through it are tracked.
pub type TrackedMemory = GuestMemoryMmap<WriteBitmap>;

/// One region of a [`TrackedMemory`].
pub type TrackedGuestRegion = GuestRegionMmap<WriteBitmap>;

/// A two-level bitmap of the 4 KiB pages of a region written through
/// `vm-memory`: one bit per page, and one summary bit per 64 words of
/// page bits.
///
/// ```
/// use pgm::phys::WriteBitmap;
/// use vm_memory::bitmap::{Bitmap, NewBitmap};
/// let b = WriteBitmap::with_len(1 << 20);
/// b.mark_dirty(0x1ffe, 4); // straddles pages 1 and 2
/// let mut pages = Vec::new();
/// assert_eq!(b.take(|p| pages.push(p)), 2);
/// assert_eq!(pages, vec![1, 2]);
/// assert_eq!(b.take(|_| {}), 0);
/// ```
pub struct WriteBitmap {
    words: Box<[AtomicU64]>,
    summary: Box<[AtomicU64]>,
    pages: usize,
}

impl WriteBitmap {
    /// Number of pages covered.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Calls `f` with the index of every page written since the last take
    /// and clears those bits. Returns how many there were. A write racing
    /// with the take is reported by this take or the next one.
    pub fn take(&self, mut f: impl FnMut(usize)) -> u64 {
        let mut count = 0;
        for (s, summary) in self.summary.iter().enumerate() {
            if summary.load(SeqCst) == 0 {
                continue;
            }
            let groups = summary.swap(0, SeqCst);
            for group in bits(groups).map(|b| s * 64 + b) {
                let first = group * GROUP_WORDS;
                let words = self.words.iter().enumerate().skip(first).take(GROUP_WORDS);
                for (w, word) in words {
                    if word.load(SeqCst) == 0 {
                        continue;
                    }
                    for page in bits(word.swap(0, SeqCst)).map(|b| w * 64 + b) {
                        f(page);
                        count += 1;
                    }
                }
            }
        }
        count
    }
}

/// The indices of the set bits of `word`, lowest first.
fn bits(mut word: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (word != 0).then(|| {
            let b = word.trailing_zeros() as usize;
            word &= word - 1;
            b
        })
    })
}

impl fmt::Debug for WriteBitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBitmap")
            .field("pages", &self.pages)
            .finish_non_exhaustive()
    }
}

impl<'a> WithBitmapSlice<'a> for WriteBitmap {
    type S = RefSlice<'a, Self>;
}

impl Bitmap for WriteBitmap {
    fn mark_dirty(&self, offset: usize, len: usize) {
        if len == 0 {
            return;
        }
        let first = offset >> PAGE_SHIFT;
        let last = (offset.saturating_add(len - 1) >> PAGE_SHIFT).min(self.pages.wrapping_sub(1));
        if first >= self.pages {
            return;
        }
        let mut page = first;
        while page <= last {
            let w = page / 64;
            let upto = last.min(w * 64 + 63);
            let span = upto - page + 1;
            let mask = if span == 64 {
                u64::MAX
            } else {
                ((1u64 << span) - 1) << (page % 64)
            };
            // The page bits first, then the summary: a take that clears the
            // summary before this sees the page bits in the next take.
            self.words[w].fetch_or(mask, SeqCst);
            let group = w / GROUP_WORDS;
            let (s, bit) = (group / 64, 1u64 << (group % 64));
            if self.summary[s].load(SeqCst) & bit == 0 {
                self.summary[s].fetch_or(bit, SeqCst);
            }
            page = upto + 1;
        }
    }

    fn dirty_at(&self, offset: usize) -> bool {
        let page = offset >> PAGE_SHIFT;
        page < self.pages && self.words[page / 64].load(SeqCst) & (1 << (page % 64)) != 0
    }

    fn slice_at(&self, offset: usize) -> RefSlice<'_, Self> {
        RefSlice::new(self, offset)
    }
}

impl NewBitmap for WriteBitmap {
    /// A bitmap for a region of `len` bytes (4 KiB pages, rounded up).
    fn with_len(len: usize) -> Self {
        let pages = len.div_ceil(1 << PAGE_SHIFT);
        let words = pages.div_ceil(64);
        let summary = words.div_ceil(GROUP_WORDS).div_ceil(64);
        WriteBitmap {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            summary: (0..summary).map(|_| AtomicU64::new(0)).collect(),
            pages,
        }
    }
}

impl Default for WriteBitmap {
    fn default() -> Self {
        Self::with_len(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    const PAGE: usize = 4096;

    fn taken(b: &WriteBitmap) -> Vec<usize> {
        let mut v = Vec::new();
        let n = b.take(|p| v.push(p));
        assert_eq!(n as usize, v.len());
        v
    }

    #[test]
    fn marks_every_page_a_write_touches() {
        let b = WriteBitmap::with_len(300 * PAGE);
        b.mark_dirty(63 * PAGE + 1, 2 * PAGE); // pages 63..=65
        b.mark_dirty(299 * PAGE, 10 * PAGE); // clipped at the end
        b.mark_dirty(400 * PAGE, 1); // outside: ignored
        b.mark_dirty(5 * PAGE, 0);
        assert!(b.dirty_at(64 * PAGE + 7));
        assert!(!b.dirty_at(5 * PAGE));
        assert!(!b.dirty_at(400 * PAGE));
        assert_eq!(taken(&b), vec![63, 64, 65, 299]);
        assert!(taken(&b).is_empty());
        assert!(!b.dirty_at(64 * PAGE));
    }

    #[test]
    fn whole_words_and_far_groups() {
        // 300_000 pages: 74 groups of 4096 pages, two summary words
        let b = WriteBitmap::with_len(300_000 * PAGE);
        b.mark_dirty(128 * PAGE, 64 * PAGE); // exactly word 2
        b.mark_dirty(299_999 * PAGE, PAGE); // last page, group 73
        let mut want: Vec<usize> = (128..192).collect();
        want.push(299_999);
        assert_eq!(taken(&b), want);
    }

    #[test]
    fn empty_bitmap_ignores_writes() {
        let b = WriteBitmap::default();
        b.mark_dirty(0, 4096);
        assert_eq!(b.pages(), 0);
        assert!(taken(&b).is_empty());
    }

    #[test]
    fn vm_memory_writes_mark_the_region_bitmap() {
        let mem = TrackedMemory::from_ranges(&[(GuestAddress(0x10_0000), 16 * PAGE)]).unwrap();
        mem.write_obj(7u32, GuestAddress(0x10_3ffe)).unwrap();
        mem.write_slice(&[1; 10], GuestAddress(0x10_8000)).unwrap();
        let region = mem.iter().next().unwrap();
        assert_eq!(taken(region.bitmap()), vec![3, 4, 8]);
    }

    proptest! {
        #[test]
        fn take_reports_exactly_the_marked_pages(
            writes in proptest::collection::vec((0usize..9000 * PAGE, 1usize..5 * PAGE), 0..40),
        ) {
            let b = WriteBitmap::with_len(8200 * PAGE);
            let mut want = std::collections::BTreeSet::new();
            for &(off, len) in &writes {
                b.mark_dirty(off, len);
                want.extend((off / PAGE..=(off + len - 1) / PAGE).filter(|&p| p < 8200));
            }
            prop_assert_eq!(taken(&b), want.into_iter().collect::<Vec<_>>());
            prop_assert!(taken(&b).is_empty());
        }
    }
}
