//! Physical access handlers: handler types, handler ranges and the sorted
//! handler table that finds the handler covering an address.

use std::fmt;
use std::sync::Arc;

use super::error::PhysError;
use super::range_index::{Bounds, RangeIndex};

/// Default maximum number of handler ranges (as in VirtualBox).
pub const DEFAULT_MAX_HANDLERS: usize = 6144;
/// Smallest allowed maximum.
pub const MIN_MAX_HANDLERS: usize = 32;
/// Largest allowed maximum.
pub const MAX_MAX_HANDLERS: usize = 65536;

/// What a handler intercepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandlerKind {
    /// Device memory without backing: all accesses.
    Mmio,
    /// Writes to memory-backed pages.
    Write,
    /// All accesses to memory-backed pages.
    All,
}

impl HandlerKind {
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mmio => "MMIO",
            Self::Write => "WRITE",
            Self::All => "ALL",
        }
    }
}

/// Identifies a registered handler type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HandlerTypeId(pub(crate) u32);

impl fmt::Display for HandlerTypeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// An access handed to a handler callback.
#[derive(Debug)]
pub struct HandlerAccess<'a> {
    /// Guest-physical address of the first byte.
    pub gpa: u64,
    /// Offset of `gpa` from the start of the handler range.
    pub offset: u64,
    /// What the guest wrote (it cannot be changed), or the buffer a read
    /// fills.
    pub data: iom::Data<'a>,
    /// The user value given when the handler range was registered.
    pub user: u64,
    /// The map the access goes through, so a handler can access other guest
    /// memory (e.g. DMA) without taking the map's lock again.
    pub map: &'a super::map::PhysMap,
}

/// What the handler wants done after it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerAction {
    /// The handler fully handled the access.
    Handled,
    /// Perform the default access: the memory access for memory-backed pages;
    /// for MMIO, reads give 0xFF and writes are dropped.
    Default,
}

/// Error returned by a handler callback.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

impl From<super::error::PhysError> for HandlerError {
    fn from(e: super::error::PhysError) -> Self {
        Self(e.to_string())
    }
}

/// Handler callback.
pub type HandlerFn =
    dyn Fn(&mut HandlerAccess<'_>) -> Result<HandlerAction, HandlerError> + Send + Sync;

/// A registered handler type.
#[derive(Clone)]
pub struct HandlerType {
    /// What it intercepts.
    pub kind: HandlerKind,
    /// Description.
    pub desc: String,
    pub(crate) callback: Arc<HandlerFn>,
}

impl fmt::Debug for HandlerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerType")
            .field("kind", &self.kind)
            .field("desc", &self.desc)
            .finish_non_exhaustive()
    }
}

/// A handler range: `first..=last` handled by a handler type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerRange {
    /// First covered byte.
    pub first: u64,
    /// Last covered byte (inclusive).
    pub last: u64,
    /// The handler type.
    pub type_id: HandlerTypeId,
    /// Value passed to the callback.
    pub user: u64,
    /// Description.
    pub desc: String,
}

/// A failed handler-table integrity check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntegrityError {
    /// An entry with `first > last`.
    #[error("handler {index} is inverted: {first:#x} > {last:#x}")]
    Inverted {
        /// Entry index.
        index: usize,
        /// First byte.
        first: u64,
        /// Last byte.
        last: u64,
    },
    /// Two neighbours out of order or overlapping.
    #[error("handlers {index} and {next} overlap or are out of order (walking {direction})")]
    Order {
        /// Entry index.
        index: usize,
        /// Its neighbour.
        next: usize,
        /// `forward` or `backward`.
        direction: &'static str,
    },
    /// The lookup index disagrees with the entries.
    #[error("handler lookup index: {reason}")]
    Index {
        /// What is wrong.
        reason: String,
    },
    /// The lookup keys disagree with the entry.
    #[error(
        "handler {index}: key {key:#x} differs from its start {first:#x} or its end key is stale"
    )]
    Key {
        /// Entry index.
        index: usize,
        /// Key stored.
        key: u64,
        /// Entry start.
        first: u64,
    },
    /// Walking forward and backward visited different counts.
    #[error("forward walk saw {forward} handlers, backward walk {backward}, table holds {len}")]
    Count {
        /// Count walking forward.
        forward: usize,
        /// Count walking backward.
        backward: usize,
        /// Table length.
        len: usize,
    },
    /// A handler outside a fitting range, or pages whose handler state
    /// disagrees with the handlers covering them.
    #[error("handler at {first:#x}: {reason}")]
    Placement {
        /// First byte of the handler (or of the page).
        first: u64,
        /// What is wrong.
        reason: String,
    },
    /// More entries than the configured maximum.
    #[error("{len} handlers exceed the maximum {max}")]
    OverMax {
        /// Entries.
        len: usize,
        /// Maximum.
        max: usize,
    },
}

/// The handler table: non-overlapping handler ranges sorted by address,
/// with a lookup index rebuilt on every insert and remove: a small
/// first-level radix table over the handlers' starts and a dense array of
/// their bounds, so that a lookup reads about two cache lines, does not
/// allocate and takes no data-dependent branch in the common case.
///
/// ```
/// use pgm::phys::{HandlerTable, HandlerRange};
/// # use pgm::phys::HandlerTypeId;
/// # fn id() -> HandlerTypeId { pgm::phys::PhysMap::with_defaults()
/// #     .register_handler_type(pgm::phys::HandlerKind::Mmio, "t", |_| Ok(pgm::phys::HandlerAction::Handled)) }
/// let mut t = HandlerTable::new(64).unwrap();
/// t.insert(HandlerRange { first: 0x1000, last: 0x1fff, type_id: id(), user: 0, desc: "a".into() }).unwrap();
/// assert!(t.lookup(0x1800).is_some());
/// assert!(t.lookup(0x2000).is_none());
/// t.check_integrity().unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct HandlerTable {
    index: RangeIndex,
    entries: Vec<HandlerRange>,
    max: usize,
}

impl HandlerTable {
    /// An empty table holding at most `max` (32..=65536) ranges.
    pub fn new(max: usize) -> Result<Self, PhysError> {
        if !(MIN_MAX_HANDLERS..=MAX_MAX_HANDLERS).contains(&max) {
            return Err(PhysError::InvalidConfig(format!(
                "maximum handler count {max} outside {MIN_MAX_HANDLERS}..={MAX_MAX_HANDLERS}"
            )));
        }
        Ok(Self {
            index: RangeIndex::default(),
            entries: Vec::new(),
            max,
        })
    }

    /// An empty table with the default maximum (6144).
    pub fn with_default_max() -> Self {
        Self {
            index: RangeIndex::default(),
            entries: Vec::new(),
            max: DEFAULT_MAX_HANDLERS,
        }
    }

    /// Configured maximum.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Number of handler ranges.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The handler range covering `addr`.
    #[inline]
    pub fn lookup(&self, addr: u64) -> Option<&HandlerRange> {
        self.index.find(addr).and_then(|i| self.entries.get(i))
    }

    /// A handler range overlapping `first..=last` (the highest one), if any.
    pub fn any_overlap(&self, first: u64, last: u64) -> Option<&HandlerRange> {
        let idx = self.entries.partition_point(|e| e.first <= last);
        let i = idx.checked_sub(1)?;
        let e = &self.entries[i];
        (e.last >= first).then_some(e)
    }

    /// All ranges overlapping `first..=last`, in address order.
    pub fn overlapping(&self, first: u64, last: u64) -> impl Iterator<Item = &HandlerRange> {
        let start = self.entries.partition_point(|e| e.last < first);
        self.entries[start..]
            .iter()
            .take_while(move |h| h.first <= last)
    }

    /// Adds a range; fails if it is inverted, overlaps, or the table is full.
    pub fn insert(&mut self, range: HandlerRange) -> Result<(), PhysError> {
        if range.first > range.last {
            return Err(PhysError::InvalidRange {
                start: range.first,
                size: 0,
            });
        }
        if let Some(e) = self.any_overlap(range.first, range.last) {
            return Err(PhysError::HandlerOverlap {
                first: range.first,
                last: range.last,
                existing: e.desc.clone(),
            });
        }
        if self.entries.len() >= self.max {
            return Err(PhysError::TooManyHandlers { max: self.max });
        }
        let idx = self.entries.partition_point(|e| e.first < range.first);
        self.entries.insert(idx, range);
        self.reindex();
        Ok(())
    }

    /// Removes the range starting at `first`.
    pub fn remove(&mut self, first: u64) -> Result<HandlerRange, PhysError> {
        let idx = self
            .entries
            .binary_search_by_key(&first, |e| e.first)
            .map_err(|_| PhysError::NoSuchHandler(first))?;
        let removed = self.entries.remove(idx);
        self.reindex();
        Ok(removed)
    }

    /// Rebuilds the lookup index from the entries.
    fn reindex(&mut self) {
        self.index = RangeIndex::build(self.entries.iter().map(|e| Bounds {
            first: e.first,
            last: e.last,
        }));
    }

    /// All ranges in address order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &HandlerRange> {
        self.entries.iter()
    }

    /// Walks the table forward and backward checking order, non-overlap,
    /// keys and counts.
    pub fn check_integrity(&self) -> Result<(), IntegrityError> {
        let len = self.entries.len();
        if len > self.max {
            return Err(IntegrityError::OverMax { len, max: self.max });
        }
        let mut forward = 0;
        let mut prev: Option<(usize, &HandlerRange)> = None;
        for (index, e) in self.entries.iter().enumerate() {
            if e.first > e.last {
                return Err(IntegrityError::Inverted {
                    index,
                    first: e.first,
                    last: e.last,
                });
            }
            let b = self.index.bounds().get(index).copied();
            let (key, last) = b.map_or((!e.first, !e.last), |b| (b.first, b.last));
            if key != e.first || last != e.last {
                return Err(IntegrityError::Key {
                    index,
                    key,
                    first: e.first,
                });
            }
            if let Some((p, pe)) = prev
                && pe.last >= e.first
            {
                return Err(IntegrityError::Order {
                    index: p,
                    next: index,
                    direction: "forward",
                });
            }
            prev = Some((index, e));
            forward += 1;
        }
        let mut backward = 0;
        let mut next: Option<(usize, &HandlerRange)> = None;
        for (index, e) in self.entries.iter().enumerate().rev() {
            if let Some((n, ne)) = next
                && e.last >= ne.first
            {
                return Err(IntegrityError::Order {
                    index,
                    next: n,
                    direction: "backward",
                });
            }
            next = Some((index, e));
            backward += 1;
        }
        if forward != len || backward != len || self.index.len() != len {
            return Err(IntegrityError::Count {
                forward,
                backward,
                len,
            });
        }
        self.index
            .verify()
            .map_err(|reason| IntegrityError::Index { reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn range(first: u64, last: u64) -> HandlerRange {
        HandlerRange {
            first,
            last,
            type_id: HandlerTypeId(0),
            user: first,
            desc: format!("h{first:#x}"),
        }
    }

    #[test]
    fn limits_are_enforced() {
        assert!(HandlerTable::new(31).is_err());
        assert!(HandlerTable::new(65537).is_err());
        let mut t = HandlerTable::new(32).unwrap();
        for i in 0..32 {
            t.insert(range(i * 0x1000, i * 0x1000 + 0xfff)).unwrap();
        }
        assert!(matches!(
            t.insert(range(0x100_0000, 0x100_0fff)),
            Err(PhysError::TooManyHandlers { max: 32 })
        ));
    }

    #[test]
    fn overlap_and_missing_are_errors() {
        let mut t = HandlerTable::new(64).unwrap();
        t.insert(range(0x2000, 0x2fff)).unwrap();
        assert!(t.insert(range(0x2fff, 0x3fff)).is_err());
        assert!(t.insert(range(0x1000, 0x2000)).is_err());
        assert!(t.insert(range(0x3000, 0x2000)).is_err());
        assert!(t.remove(0x2001).is_err());
        assert_eq!(t.remove(0x2000).unwrap().last, 0x2fff);
        assert!(t.is_empty());
    }

    #[test]
    fn integrity_detects_corruption() {
        let mut t = HandlerTable::new(64).unwrap();
        t.insert(range(0x1000, 0x1fff)).unwrap();
        t.insert(range(0x3000, 0x3fff)).unwrap();
        t.check_integrity().unwrap();
        let mut bad = t.clone();
        bad.entries[0].last = 0x3000;
        assert!(matches!(
            bad.check_integrity(),
            Err(IntegrityError::Key { .. })
        ));
        bad.index.bounds_mut()[0].last = 0x3000;
        assert!(matches!(
            bad.check_integrity(),
            Err(IntegrityError::Order { .. })
        ));
        let mut bad = t.clone();
        bad.index.bounds_mut()[1].first = 0x3001;
        assert!(matches!(
            bad.check_integrity(),
            Err(IntegrityError::Key { .. })
        ));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(u64, u64),
        Remove(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..0x400, 1u64..16).prop_map(|(p, n)| Op::Add(p * 0x100, n * 0x100)),
            (0usize..64).prop_map(Op::Remove),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_ops_keep_table_consistent(ops in proptest::collection::vec(op(), 1..200),
                                            probes in proptest::collection::vec(0u64..0x41000, 64)) {
            let mut t = HandlerTable::new(64).unwrap();
            let mut model: Vec<(u64, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Add(first, size) => {
                        let last = first + size - 1;
                        let overlaps = model.iter().any(|&(f, l)| f <= last && first <= l);
                        let res = t.insert(range(first, last));
                        if overlaps || model.len() >= 64 {
                            prop_assert!(res.is_err());
                        } else {
                            prop_assert!(res.is_ok());
                            model.push((first, last));
                        }
                    }
                    Op::Remove(i) => {
                        if model.is_empty() {
                            prop_assert!(t.remove(0x12345).is_err());
                        } else {
                            let (f, l) = model.swap_remove(i % model.len());
                            prop_assert_eq!(t.remove(f).unwrap().last, l);
                        }
                    }
                }
                prop_assert!(t.check_integrity().is_ok());
                prop_assert_eq!(t.len(), model.len());
                // Both ends of every range and their outer neighbours, after
                // every insert and removal.
                let edges = model.iter().flat_map(|&(f, l)| [f.wrapping_sub(1), f, l, l + 1]);
                for p in edges.chain([0, u64::MAX]) {
                    let linear = model.iter().find(|&&(f, l)| f <= p && p <= l).map(|&(f, _)| f);
                    prop_assert_eq!(t.lookup(p).map(|e| e.first), linear, "address {:#x}", p);
                }
            }
            for p in probes {
                let linear = model.iter().find(|&&(f, l)| f <= p && p <= l).map(|&(f, _)| f);
                prop_assert_eq!(t.lookup(p).map(|e| e.first), linear);
            }
        }
    }
}
