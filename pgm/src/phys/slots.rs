//! The KVM memory slots the map needs: which guest-physical ranges KVM maps
//! directly, read-write or read-only, and which must exit to `pgm`.

use std::collections::BTreeSet;

use super::a20::{Piece, alias_pieces};
use super::handler::HandlerTable;
use super::map::PhysMap;
use super::page::{PAGE_OFFSET_MASK, PAGE_SIZE, PageHandlerState};
use super::range::{Backing, PhysRange, RomProtection};

/// One KVM user memory slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvmSlot {
    /// Slot number (stable while the slot is unchanged).
    pub slot: u32,
    /// Guest-physical address.
    pub guest_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Host virtual address of the backing.
    pub host_addr: u64,
    /// Map read-only (`KVM_MEM_READONLY`): guest writes exit as MMIO.
    pub read_only: bool,
    /// Log dirty pages (`KVM_MEM_LOG_DIRTY_PAGES`).
    pub log_dirty: bool,
}

impl KvmSlot {
    fn same_mapping(&self, o: &KvmSlot) -> bool {
        (
            self.guest_addr,
            self.size,
            self.host_addr,
            self.read_only,
            self.log_dirty,
        ) == (o.guest_addr, o.size, o.host_addr, o.read_only, o.log_dirty)
    }
}

/// The slots for the current map, with a generation number that changes
/// whenever the set does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotSet {
    /// Bumped on every change.
    pub generation: u64,
    /// Slots in guest address order.
    pub slots: Vec<KvmSlot>,
}

/// What to tell KVM to get from one [`SlotSet`] to another: delete
/// `remove` (size 0) first, then add `add`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotChanges {
    /// Slots to delete.
    pub remove: Vec<KvmSlot>,
    /// Slots to create.
    pub add: Vec<KvmSlot>,
}

impl SlotSet {
    /// The changes that turn `old` into `self`.
    pub fn changes_from(&self, old: &SlotSet) -> SlotChanges {
        let missing = |from: &SlotSet, other: &SlotSet| -> Vec<KvmSlot> {
            from.slots
                .iter()
                .filter(|s| other.at(s.guest_addr) != Some(s))
                .copied()
                .collect()
        };
        SlotChanges {
            remove: missing(old, self),
            add: missing(self, old),
        }
    }

    /// The slot starting at guest address `guest_addr` (slots are sorted and
    /// do not overlap).
    fn at(&self, guest_addr: u64) -> Option<&KvmSlot> {
        self.slots
            .binary_search_by_key(&guest_addr, |s| s.guest_addr)
            .ok()
            .map(|i| &self.slots[i])
    }

    /// The slot with number `slot`.
    pub fn get(&self, slot: u32) -> Option<&KvmSlot> {
        self.slots.iter().find(|s| s.slot == slot)
    }
}

#[derive(Debug, Default)]
pub(crate) struct SlotTracker {
    pub(crate) current: SlotSet,
    /// ROM pages mapped writable for a window (see `rom_window`).
    pub(crate) open_rom: BTreeSet<u64>,
}

/// Pieces of one range KVM should map.
/// Only pages touched by a handler are looked at one by one, so the cost
/// follows the handlers, not the size of RAM.
/// ROM pages in `open` are mapped writable.
fn range_pieces(
    r: &PhysRange,
    handlers: &HandlerTable,
    open: &BTreeSet<u64>,
    out: &mut Vec<Piece>,
) {
    let mut push = |guest: u64, size: u64, host: u64, ro: bool| match out.last_mut() {
        _ if size == 0 => {}
        Some(l) if l.0 + l.1 == guest && l.2 + l.1 == host && l.3 == ro => l.1 += size,
        _ => out.push((guest, size, host, ro)),
    };
    match &r.backing {
        Backing::Mmio => {}
        Backing::Rom { prot, .. } => {
            if let Some(m) = r.readable_memory() {
                let ro = *prot != RomProtection::ReadRamWriteRam;
                let host = |gpa: u64| m.host_addr() + (gpa - r.start);
                let mut cursor = r.start;
                for &page in open.range(r.start..r.start + r.size) {
                    push(cursor, page - cursor, host(cursor), ro);
                    push(page, PAGE_SIZE, host(page), false);
                    cursor = page + PAGE_SIZE;
                }
                push(cursor, r.start + r.size - cursor, host(cursor), ro);
            }
        }
        Backing::Ram(_) | Backing::Mmio2 { .. } => {
            let Some(m) = r.writable_memory() else {
                return;
            };
            let host = |gpa: u64| m.host_addr() + (gpa - r.start);
            let end = r.start + r.size;
            let mut cursor = r.start;
            for h in handlers.overlapping(r.start, r.last()) {
                let first = (h.first & !PAGE_OFFSET_MASK).max(cursor);
                let stop = ((h.last | PAGE_OFFSET_MASK) + 1).min(end);
                if first > cursor {
                    push(cursor, first - cursor, host(cursor), false);
                }
                let mut page = first;
                while page < stop {
                    match m.page(page - r.start).map(|p| p.get().handler) {
                        Some(PageHandlerState::None) => push(page, PAGE_SIZE, host(page), false),
                        Some(PageHandlerState::Write) => push(page, PAGE_SIZE, host(page), true),
                        _ => {}
                    }
                    page += PAGE_SIZE;
                }
                cursor = cursor.max(stop);
            }
            if end > cursor {
                push(cursor, end - cursor, host(cursor), false);
            }
        }
    }
}

impl PhysMap {
    /// The KVM slots for the current map. Compare
    /// [`SlotSet::generation`] with the last one applied, and apply
    /// [`SlotSet::changes_from`] when it moved.
    pub fn kvm_slots(&self) -> &SlotSet {
        &self.slots.current
    }

    /// Recomputes the slot set after a change of the map.
    pub(crate) fn refresh_slots(&mut self) {
        let mut pieces = Vec::new();
        for r in &self.ranges {
            range_pieces(r, &self.handlers, &self.slots.open_rom, &mut pieces);
        }
        alias_pieces(&mut pieces, self.a20_enabled());
        let old = &self.slots.current;
        let max_old = old
            .slots
            .iter()
            .map(|o| o.slot as usize + 1)
            .max()
            .unwrap_or(0);
        let mut used = vec![false; max_old + pieces.len() + 1];
        let mut slots: Vec<KvmSlot> = pieces
            .iter()
            .map(|&(guest_addr, size, host_addr, read_only)| {
                let mut s = KvmSlot {
                    slot: u32::MAX,
                    guest_addr,
                    size,
                    host_addr,
                    read_only,
                    log_dirty: self.monitoring && !read_only,
                };
                if let Some(o) = old.at(guest_addr).filter(|o| o.same_mapping(&s)) {
                    s.slot = o.slot;
                    used[o.slot as usize] = true;
                }
                s
            })
            .collect();
        let mut free = (0..used.len()).filter(|&i| !used[i]);
        for s in slots.iter_mut().filter(|s| s.slot == u32::MAX) {
            // `used` has room for every piece, so a free number always exists
            s.slot = free.next().unwrap_or(usize::MAX) as u32;
        }
        if slots != old.slots {
            self.slots.current = SlotSet {
                generation: old.generation + 1,
                slots,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::phys::{HandlerAction, HandlerKind, PhysMap};

    #[test]
    fn slot_changes_keep_unchanged_slots_and_numbers() {
        let mut map = PhysMap::with_defaults();
        map.add_ram(0, 0x10000, "low").unwrap();
        map.add_ram(0x100000, 0x10000, "high").unwrap();
        let before = map.kvm_slots().clone();
        assert_eq!(before.slots.len(), 2);
        let w = map.register_handler_type(HandlerKind::Write, "w", |_| Ok(HandlerAction::Default));
        map.register_handler(w, 0x4000, 0x4fff, 0, "h").unwrap();
        let after = map.kvm_slots().clone();
        assert_eq!(after.generation, before.generation + 1);
        let ch = after.changes_from(&before);
        assert_eq!(ch.remove, vec![before.slots[0]]);
        assert_eq!(ch.add.len(), 3);
        // the untouched high slot keeps its number; numbers stay unique
        assert!(after.slots.contains(&before.slots[1]));
        let mut ids: Vec<u32> = after.slots.iter().map(|s| s.slot).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), after.slots.len());
        assert!(after.changes_from(&after).add.is_empty());
    }
}
