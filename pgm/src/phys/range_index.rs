//! The lookup index of the handler table: which of a set of sorted,
//! non-overlapping ranges covers an address.
//!
//! A lookup is the hot path of every MMIO exit, while handlers change rarely,
//! so the index is rebuilt from scratch whenever the table changes and laid
//! out for lookups alone:
//!
//! - a first-level radix table splits the span from the lowest to the highest
//!   range start into a power-of-two number of equal buckets (about one per
//!   range) and stores, per bucket, how many ranges start before it;
//! - the ranges' bounds follow in one dense array of `(first, last)` pairs,
//!   padded so that a fixed window of [`WINDOW`] pairs can always be read.
//!
//! A lookup reads two neighbouring bucket counts, then counts the starts at
//! or below the address in the bucket's window without branching (a bucket
//! holds at most a few ranges unless the ranges are tightly clustered; such
//! a bucket falls back to a branch-free binary search over its ranges) and
//! checks the `last` of the range found, which sits in the same cache lines.
//! It allocates nothing.

/// Pairs counted without a branch when a bucket holds at most this many.
pub(crate) const WINDOW: usize = 4;

/// Most buckets in the first-level table (a power of two).
const MAX_BUCKETS: usize = 1 << 16;

/// First and last byte of one range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(16))]
pub(crate) struct Bounds {
    /// First covered byte.
    pub(crate) first: u64,
    /// Last covered byte (inclusive).
    pub(crate) last: u64,
}

/// Padding after the last range (never counted: lookups mask by bucket size).
const PAD: Bounds = Bounds {
    first: u64::MAX,
    last: 0,
};

/// Which range covers an address, over sorted non-overlapping ranges.
#[derive(Debug, Clone)]
pub(crate) struct RangeIndex {
    /// Bounds of every range in address order, then [`WINDOW`] pads.
    bounds: Vec<Bounds>,
    /// `starts[b]`: how many ranges start in buckets below `b`; one more
    /// entry than there are buckets.
    starts: Vec<u32>,
    /// Start of bucket 0: the lowest range start.
    base: u64,
    /// log2 of the bucket width in bytes.
    shift: u32,
    /// Index of the last bucket, which also takes every address above it.
    last_bucket: u64,
}

impl Default for RangeIndex {
    fn default() -> Self {
        Self::build(std::iter::empty())
    }
}

impl RangeIndex {
    /// Builds the index over `ranges`, which must be sorted by `first` and
    /// must not overlap.
    pub(crate) fn build(ranges: impl ExactSizeIterator<Item = Bounds>) -> Self {
        let mut bounds = Vec::with_capacity(ranges.len() + WINDOW);
        bounds.extend(ranges);
        let len = bounds.len();
        let buckets = len.next_power_of_two().clamp(2, MAX_BUCKETS);
        let base = bounds.first().map_or(0, |b| b.first);
        let span = bounds.last().map_or(0, |b| b.first) - base;
        let mut shift = 0;
        while span >> shift >= buckets as u64 {
            shift += 1;
        }
        let mut index = Self {
            bounds,
            starts: vec![0; buckets + 1],
            base,
            shift,
            last_bucket: buckets as u64 - 1,
        };
        // Count the ranges starting in each bucket, then sum them up.
        for i in 0..len {
            let b = index.bucket(index.bounds[i].first);
            index.starts[b + 1] += 1;
        }
        for b in 1..index.starts.len() {
            index.starts[b] += index.starts[b - 1];
        }
        index.bounds.extend([PAD; WINDOW]);
        index
    }

    /// Number of ranges.
    pub(crate) fn len(&self) -> usize {
        self.bounds.len() - WINDOW
    }

    /// Bounds of every range, in address order.
    pub(crate) fn bounds(&self) -> &[Bounds] {
        &self.bounds[..self.len()]
    }

    /// The bucket `addr` falls into.
    #[inline]
    fn bucket(&self, addr: u64) -> usize {
        // Saturating: an address below the lowest start lands in bucket 0,
        // where no start is at or below it.
        ((addr.saturating_sub(self.base) >> self.shift).min(self.last_bucket)) as usize
    }

    /// Index of the range covering `addr`.
    #[inline]
    pub(crate) fn find(&self, addr: u64) -> Option<usize> {
        let b = self.bucket(addr);
        let lo = self.starts[b] as usize;
        let in_bucket = self.starts[b + 1] as usize - lo;
        // Every range of an earlier bucket starts below `addr`, every range of
        // a later one above it: count the starts at or below `addr` in this
        // bucket and add the ranges before it.
        let at_or_below = if in_bucket <= WINDOW {
            let window = &self.bounds[lo..lo + WINDOW];
            let mut n = lo;
            for (j, r) in window.iter().enumerate() {
                n += usize::from((j < in_bucket) & (r.first <= addr));
            }
            n
        } else {
            lo + count_at_or_below(&self.bounds[lo..lo + in_bucket], addr)
        };
        let i = at_or_below.checked_sub(1)?;
        (self.bounds[i].last >= addr).then_some(i)
    }

    /// Checks the first-level table against the bounds (both rebuilt on
    /// every change, so a mismatch means memory corruption or a bug).
    pub(crate) fn verify(&self) -> Result<(), String> {
        let rebuilt = Self::build(self.bounds().iter().copied());
        if rebuilt.starts != self.starts
            || (rebuilt.base, rebuilt.shift, rebuilt.last_bucket)
                != (self.base, self.shift, self.last_bucket)
        {
            return Err("first-level index disagrees with the handler bounds".into());
        }
        if self.bounds[self.len()..] != [PAD; WINDOW] {
            return Err("padding after the last handler was overwritten".into());
        }
        Ok(())
    }

    /// The bounds, writable, for corruption tests.
    #[cfg(test)]
    pub(crate) fn bounds_mut(&mut self) -> &mut [Bounds] {
        &mut self.bounds
    }
}

/// How many of `ranges` (sorted by `first`) start at or below `addr`: a
/// binary search whose halving steps compile to conditional moves.
#[inline]
fn count_at_or_below(ranges: &[Bounds], addr: u64) -> usize {
    let mut base = 0;
    let mut len = ranges.len();
    if len == 0 {
        return 0;
    }
    while len > 1 {
        let half = len / 2;
        if ranges[base + half].first <= addr {
            base += half;
        }
        len -= half;
    }
    base + usize::from(ranges[base].first <= addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn index(ranges: &[(u64, u64)]) -> RangeIndex {
        RangeIndex::build(
            ranges
                .iter()
                .map(|&(first, last)| Bounds { first, last })
                .collect::<Vec<_>>()
                .into_iter(),
        )
    }

    /// The naive model: scan every range.
    fn naive(ranges: &[(u64, u64)], addr: u64) -> Option<usize> {
        ranges.iter().position(|&(f, l)| f <= addr && addr <= l)
    }

    /// Sorted, non-overlapping ranges from (gap, length - 1) pairs; a zero
    /// gap makes neighbours adjacent.
    fn layout(start: u64, parts: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let mut next = start;
        let mut out = Vec::new();
        for &(gap, extra) in parts {
            let Some(first) = next.checked_add(gap) else {
                break;
            };
            let Some(last) = first.checked_add(extra) else {
                break;
            };
            out.push((first, last));
            match last.checked_add(1) {
                Some(n) => next = n,
                None => break,
            }
        }
        out
    }

    /// Every address where an answer can change, and its neighbours.
    fn edges(ranges: &[(u64, u64)]) -> Vec<u64> {
        let mut v = vec![0, 1, u64::MAX, u64::MAX - 1];
        for &(f, l) in ranges {
            for a in [f, l] {
                v.extend([a.wrapping_sub(1), a, a.wrapping_add(1)]);
            }
        }
        v
    }

    #[test]
    fn empty_index_finds_nothing() {
        let i = RangeIndex::default();
        assert_eq!(i.len(), 0);
        for a in [0, 1, 0x1000, u64::MAX] {
            assert_eq!(i.find(a), None);
        }
        i.verify().unwrap();
    }

    #[test]
    fn ranges_at_both_ends_of_the_address_space() {
        let r = [(0, 0), (1, 0xfff), (u64::MAX - 1, u64::MAX)];
        let i = index(&r);
        for a in edges(&r) {
            assert_eq!(i.find(a), naive(&r, a), "{a:#x}");
        }
    }

    #[test]
    fn a_crowded_bucket_uses_the_fallback() {
        // 64 adjacent one-byte ranges next to one far away: the crowded
        // bucket holds far more than a window.
        let mut r: Vec<(u64, u64)> = (0..64).map(|i| (0x1000 + i, 0x1000 + i)).collect();
        r.push((1 << 40, (1 << 40) + 0xfff));
        let i = index(&r);
        assert!(i.starts.windows(2).any(|w| (w[1] - w[0]) as usize > WINDOW));
        for a in edges(&r) {
            assert_eq!(i.find(a), naive(&r, a), "{a:#x}");
        }
    }

    #[test]
    fn verify_detects_a_stale_first_level() {
        let mut i = index(&[(0x1000, 0x1fff), (0x8000, 0x8fff)]);
        i.verify().unwrap();
        i.starts[1] += 1;
        assert!(i.verify().is_err());
    }

    proptest! {
        #[test]
        fn find_agrees_with_the_naive_model(
            start in prop_oneof![Just(0u64), any::<u64>(), (u64::MAX - 0x10000)..=u64::MAX],
            parts in proptest::collection::vec(
                (prop_oneof![Just(0u64), 1u64..0x100, 0x1000u64..0x10_0000, any::<u64>()],
                 prop_oneof![Just(0u64), 1u64..0x2000]),
                0..200),
            probes in proptest::collection::vec(any::<u64>(), 32),
        ) {
            let r = layout(start, &parts);
            let i = index(&r);
            prop_assert_eq!(i.len(), r.len());
            prop_assert!(i.verify().is_ok());
            for a in edges(&r).into_iter().chain(probes) {
                prop_assert_eq!(i.find(a), naive(&r, a), "address {:#x}", a);
            }
        }
    }
}
