//! The breakpoint table: ids, kinds, hit counters and the DR0..DR3 slot assignment.

use std::collections::BTreeMap;

use super::DebuggerError;
use super::dr7::{HW_SLOTS, HwAccess, HwLen, HwSlot, split_aligned};
use super::stop::{IoAccess, IoRange, MemAccess, MemRange};
use super::target::{PAGE_SIZE, PageTrap};

/// Identifies a breakpoint for its whole life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BreakpointId(pub u32);

impl std::fmt::Display for BreakpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What a breakpoint watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakpointKind {
    /// A debug-register breakpoint: an execute breakpoint (`len` 1) or a watchpoint
    /// over `[addr, addr + len)`, which may occupy several DR slots.
    Hardware {
        /// Linear start address.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// Trigger condition.
        access: HwAccess,
    },
    /// An `int3` patched into guest memory.
    Software {
        /// Linear address.
        addr: u64,
        /// Guest-physical address of the patched byte.
        phys: u64,
    },
    /// A page-trap watchpoint over `[addr, addr + len)`: the guest-physical pages behind
    /// the range (translated when it was set, so it follows those physical pages) trap
    /// guest accesses to the VMM, which checks the exact bytes.
    PageTrap {
        /// Start address as given (linear, or guest-physical for
        /// [`Debugger::add_phys_watch`](super::Debugger::add_phys_watch)).
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// Guest-physical address of the first byte.
        phys: u64,
        /// Direction filter.
        access: MemAccess,
    },
    /// An I/O-port breakpoint over ports `first..=last`, checked by the VMM on port exits.
    Io {
        /// First port.
        first: u16,
        /// Last port (inclusive).
        last: u16,
        /// Direction filter.
        access: IoAccess,
    },
}

impl BreakpointKind {
    /// Whether this breakpoint stops execution at `addr` before the instruction runs.
    pub fn is_execute_at(&self, addr: u64) -> bool {
        match *self {
            Self::Hardware {
                addr: a,
                access: HwAccess::Execute,
                ..
            } => a == addr,
            Self::Software { addr: a, .. } => a == addr,
            _ => false,
        }
    }
}

/// A breakpoint and its hit counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breakpoint {
    /// Its id.
    pub id: BreakpointId,
    /// What it watches.
    pub kind: BreakpointKind,
    /// How many times it triggered.
    pub hits: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub bp: Breakpoint,
    /// DR slots used by a hardware breakpoint.
    pub slots: Vec<usize>,
    /// The guest byte an `int3` replaced.
    pub original: u8,
    /// Guest-physical pieces `(first, last)` of a page-trap watchpoint.
    pub phys: Vec<(u64, u64)>,
}

/// Breakpoints by id plus the DR slot assignment.
#[derive(Debug, Default)]
pub(crate) struct Table {
    next_id: u32,
    entries: BTreeMap<BreakpointId, Entry>,
    slots: [Option<(HwSlot, BreakpointId)>; HW_SLOTS],
}

impl Table {
    fn alloc_id(&mut self) -> BreakpointId {
        self.next_id = self.next_id.wrapping_add(1);
        BreakpointId(self.next_id)
    }

    fn insert(&mut self, kind: BreakpointKind, slots: Vec<usize>, original: u8) -> BreakpointId {
        let id = self.alloc_id();
        let bp = Breakpoint { id, kind, hits: 0 };
        self.entries.insert(
            id,
            Entry {
                bp,
                slots,
                original,
                phys: Vec::new(),
            },
        );
        id
    }

    pub fn free_slots(&self) -> usize {
        self.slots.iter().filter(|s| s.is_none()).count()
    }

    /// Adds a hardware breakpoint over `[addr, addr + len)`, using as many DR slots as
    /// the aligned split needs.
    pub fn add_hw(
        &mut self,
        addr: u64,
        len: u64,
        access: HwAccess,
    ) -> Result<BreakpointId, DebuggerError> {
        let pieces = if access == HwAccess::Execute {
            vec![HwSlot::new(addr, access, HwLen::from_bytes(len)?)?]
        } else {
            split_aligned(addr, len)?
                .into_iter()
                .map(|(a, l)| HwSlot::new(a, access, l))
                .collect::<Result<Vec<_>, _>>()?
        };
        if pieces.len() > self.free_slots() {
            return Err(DebuggerError::NoFreeSlot {
                needed: pieces.len(),
                free: self.free_slots(),
            });
        }
        let id = self.alloc_id();
        let mut used = Vec::with_capacity(pieces.len());
        for piece in pieces {
            if let Some(i) = self.slots.iter().position(Option::is_none) {
                self.slots[i] = Some((piece, id));
                used.push(i);
            }
        }
        let bp = Breakpoint {
            id,
            kind: BreakpointKind::Hardware { addr, len, access },
            hits: 0,
        };
        self.entries.insert(
            id,
            Entry {
                bp,
                slots: used,
                original: 0,
                phys: Vec::new(),
            },
        );
        Ok(id)
    }

    /// Records a software breakpoint whose `int3` the caller has just written.
    pub fn add_sw(&mut self, addr: u64, phys: u64, original: u8) -> BreakpointId {
        self.insert(
            BreakpointKind::Software { addr, phys },
            Vec::new(),
            original,
        )
    }

    pub fn add_io(&mut self, first: u16, last: u16, access: IoAccess) -> BreakpointId {
        self.insert(
            BreakpointKind::Io {
                first,
                last,
                access,
            },
            Vec::new(),
            0,
        )
    }

    /// Records a page-trap watchpoint whose guest-physical pieces are `phys`.
    pub fn add_page_trap(
        &mut self,
        addr: u64,
        len: u64,
        access: MemAccess,
        phys: Vec<(u64, u64)>,
    ) -> BreakpointId {
        let first = phys.first().map_or(0, |p| p.0);
        let id = self.insert(
            BreakpointKind::PageTrap {
                addr,
                len,
                phys: first,
                access,
            },
            Vec::new(),
            0,
        );
        if let Some(e) = self.entries.get_mut(&id) {
            e.phys = phys;
        }
        id
    }

    /// Removes an entry and frees its slots.
    pub fn remove(&mut self, id: BreakpointId) -> Result<Entry, DebuggerError> {
        let entry = self
            .entries
            .remove(&id)
            .ok_or(DebuggerError::UnknownBreakpoint(id))?;
        for &s in &entry.slots {
            self.slots[s] = None;
        }
        Ok(entry)
    }

    pub fn get(&self, id: BreakpointId) -> Option<&Entry> {
        self.entries.get(&id)
    }

    pub fn ids(&self) -> Vec<BreakpointId> {
        self.entries.keys().copied().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Counts a hit and returns the new count.
    pub fn hit(&mut self, id: BreakpointId) -> u64 {
        match self.entries.get_mut(&id) {
            Some(e) => {
                e.bp.hits += 1;
                e.bp.hits
            }
            None => 0,
        }
    }

    pub fn slots(&self) -> [Option<HwSlot>; HW_SLOTS] {
        self.slots.map(|s| s.map(|(slot, _)| slot))
    }

    pub fn slot_owner(&self, slot: usize) -> Option<BreakpointId> {
        self.slots.get(slot).copied().flatten().map(|(_, id)| id)
    }

    /// Software breakpoints as `(phys, entry)`.
    pub fn software(&self) -> impl Iterator<Item = (u64, &Entry)> {
        self.entries.values().filter_map(|e| match e.bp.kind {
            BreakpointKind::Software { phys, .. } => Some((phys, e)),
            _ => None,
        })
    }

    pub fn software_at_phys_mut(&mut self, phys: u64) -> Option<&mut Entry> {
        self.entries
            .values_mut()
            .find(|e| matches!(e.bp.kind, BreakpointKind::Software { phys: p, .. } if p == phys))
    }

    pub fn has_software(&self) -> bool {
        self.software().next().is_some()
    }

    /// Guest-physical ranges of the page-trap watchpoints, with their owner.
    fn page_trap_pieces(&self) -> impl Iterator<Item = (BreakpointId, MemRange)> + '_ {
        self.entries.values().flat_map(|e| {
            let access = match e.bp.kind {
                BreakpointKind::PageTrap { access, .. } => Some(access),
                _ => None,
            };
            access.into_iter().flat_map(move |access| {
                e.phys.iter().map(move |&(first, last)| {
                    (
                        e.bp.id,
                        MemRange {
                            first,
                            last,
                            access,
                        },
                    )
                })
            })
        })
    }

    pub fn mem_ranges(&self) -> Vec<MemRange> {
        self.page_trap_pieces().map(|(_, r)| r).collect()
    }

    /// The first page-trap watchpoint an access matches.
    pub fn page_trap_hit(&self, addr: u64, size: u32, write: bool) -> Option<BreakpointId> {
        self.page_trap_pieces()
            .find(|(_, r)| r.matches(addr, size, write))
            .map(|(id, _)| id)
    }

    /// The pages the page-trap watchpoints need trapped, sorted, one entry per page
    /// (reads trapped when any watch on the page wants them).
    pub fn trap_pages(&self) -> Vec<PageTrap> {
        let mut pages: BTreeMap<u64, bool> = BTreeMap::new();
        for (_, r) in self.page_trap_pieces() {
            let reads = r.access != IoAccess::Write;
            let mut page = r.first & !(PAGE_SIZE - 1);
            while page <= r.last {
                *pages.entry(page).or_default() |= reads;
                match page.checked_add(PAGE_SIZE) {
                    Some(next) => page = next,
                    None => break,
                }
            }
        }
        pages
            .into_iter()
            .map(|(page, reads)| PageTrap { page, reads })
            .collect()
    }

    pub fn io_ranges(&self) -> Vec<IoRange> {
        self.entries
            .values()
            .filter_map(|e| match e.bp.kind {
                BreakpointKind::Io {
                    first,
                    last,
                    access,
                } => Some(IoRange {
                    first,
                    last,
                    access,
                }),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_allocated_and_freed() {
        let mut t = Table::default();
        let a = t.add_hw(0x1000, 1, HwAccess::Execute).unwrap();
        let w = t.add_hw(0x2002, 6, HwAccess::Write).unwrap(); // 0x2002/2 + 0x2004/4
        assert_eq!(t.get(w).unwrap().slots, vec![1, 2]);
        assert_eq!(t.free_slots(), 1);
        assert!(matches!(
            t.add_hw(0x3000, 16, HwAccess::ReadWrite),
            Err(DebuggerError::NoFreeSlot { needed: 2, free: 1 })
        ));
        assert_eq!(t.free_slots(), 1);
        t.remove(w).unwrap();
        assert_eq!(t.free_slots(), 3);
        assert_eq!(t.slot_owner(0), Some(a));
        assert!(matches!(
            t.remove(w),
            Err(DebuggerError::UnknownBreakpoint(_))
        ));
    }

    #[test]
    fn hits_count_per_breakpoint() {
        let mut t = Table::default();
        let a = t.add_sw(0x1000, 0x1000, 0x90);
        let b = t.add_io(0x60, 0x64, IoAccess::Read);
        assert_eq!(t.hit(a), 1);
        assert_eq!(t.hit(a), 2);
        assert_eq!(t.hit(b), 1);
        assert_eq!(t.hit(BreakpointId(999)), 0);
        assert_eq!(t.get(a).unwrap().bp.hits, 2);
        assert_eq!(t.io_ranges().len(), 1);
        assert_ne!(a, b);
    }

    #[test]
    fn page_traps_merge_per_page() {
        let mut t = Table::default();
        let w = t.add_page_trap(
            0x1ffc,
            8,
            IoAccess::Write,
            vec![(0x7ffc, 0x7fff), (0x3000, 0x3003)],
        );
        let r = t.add_page_trap(0x3000, 2, IoAccess::Read, vec![(0x3000, 0x3001)]);
        assert_eq!(
            t.trap_pages(),
            vec![
                PageTrap {
                    page: 0x3000,
                    reads: true
                },
                PageTrap {
                    page: 0x7000,
                    reads: false
                },
            ]
        );
        assert_eq!(t.mem_ranges().len(), 3);
        assert_eq!(t.page_trap_hit(0x3001, 1, false), Some(r));
        assert_eq!(t.page_trap_hit(0x3001, 1, true), Some(w));
        assert_eq!(t.page_trap_hit(0x7ff8, 8, true), Some(w));
        assert_eq!(t.page_trap_hit(0x7ff8, 4, true), None);
        assert!(matches!(
            t.get(w).unwrap().bp.kind,
            BreakpointKind::PageTrap {
                phys: 0x7ffc,
                len: 8,
                ..
            }
        ));
        t.remove(w).unwrap();
        t.remove(r).unwrap();
        assert!(t.trap_pages().is_empty());
    }
}
