//! Physical access handlers over the map's pages: registration, lookup,
//! the per-page handler state KVM slots are built from, and the integrity
//! check.

use super::PhysMap;
use crate::phys::error::PhysError;
use crate::phys::handler::{HandlerKind, HandlerRange, HandlerTypeId, IntegrityError};
use crate::phys::page::{PAGE_OFFSET_MASK, PAGE_SIZE, PageHandlerState};
use crate::phys::range::RangeKind;

impl PhysMap {
    /// Registers a WRITE or ALL handler over `first..=last`, which must lie in
    /// one RAM or MMIO2 range. KVM maps the covered pages read-only (WRITE)
    /// or not at all (ALL) so that accesses exit to the handler.
    pub fn register_handler(
        &mut self,
        type_id: HandlerTypeId,
        first: u64,
        last: u64,
        user: u64,
        desc: &str,
    ) -> Result<(), PhysError> {
        let kind = self.handler_type(type_id)?.kind;
        let range = self
            .range_at(first)
            .ok_or_else(|| PhysError::NoSuchRange(format!("nothing mapped at {first:#x}")))?;
        let fits = last >= first && last <= range.last();
        let memory_kind = matches!(range.kind(), RangeKind::Ram | RangeKind::Mmio2);
        if kind == HandlerKind::Mmio || !memory_kind || !fits {
            return Err(PhysError::HandlerKindMismatch {
                kind: kind.name(),
                what: format!(
                    "{first:#x}..={last:#x} in {} '{}'",
                    range.kind().name(),
                    range.name
                ),
            });
        }
        self.handlers.insert(HandlerRange {
            first,
            last,
            type_id,
            user,
            desc: desc.to_owned(),
        })?;
        self.update_page_handler_state(first, last);
        self.refresh_slots();
        Ok(())
    }

    /// Removes the WRITE/ALL handler starting at `first`.
    pub fn deregister_handler(&mut self, first: u64) -> Result<(), PhysError> {
        if matches!(
            self.range_at(first).map(|r| r.kind()),
            Some(RangeKind::Mmio)
        ) {
            return Err(PhysError::NoSuchHandler(first));
        }
        let h = self.handlers.remove(first)?;
        self.update_page_handler_state(h.first, h.last);
        self.refresh_slots();
        Ok(())
    }

    /// Recomputes the handler state of the pages touching `first..=last`.
    fn update_page_handler_state(&self, first: u64, last: u64) {
        let Some(range) = self.range_at(first) else {
            return;
        };
        let Some(mem) = range.writable_memory() else {
            return;
        };
        let mut page = first & !PAGE_OFFSET_MASK;
        while page <= last {
            let state = self.handler_state_of(page, page + PAGE_OFFSET_MASK);
            if let Some(slot) = mem.page(page - range.start) {
                slot.update(|mut i| {
                    i.handler = state;
                    i
                });
            }
            match page.checked_add(PAGE_SIZE) {
                Some(p) => page = p,
                None => break,
            }
        }
    }

    /// The handler state a page spanning `first..=last` should have.
    fn handler_state_of(&self, first: u64, last: u64) -> PageHandlerState {
        let mut state = PageHandlerState::None;
        for h in self.handlers.overlapping(first, last) {
            let k = self.handler_types.get(h.type_id.0 as usize).map(|t| t.kind);
            state = match (state, k) {
                (_, Some(HandlerKind::All)) | (PageHandlerState::All, _) => PageHandlerState::All,
                _ => PageHandlerState::Write,
            };
        }
        state
    }

    /// Handler ranges in address order.
    pub fn handlers(&self) -> impl Iterator<Item = &HandlerRange> {
        self.handlers.iter()
    }

    /// The handler range covering `gpa`.
    #[inline]
    pub fn lookup_handler(&self, gpa: u64) -> Option<&HandlerRange> {
        self.handlers.lookup(gpa)
    }

    /// Kind and description of a handler type.
    pub fn handler_type_info(&self, id: HandlerTypeId) -> Option<(HandlerKind, &str)> {
        self.handler_types
            .get(id.0 as usize)
            .map(|t| (t.kind, t.desc.as_str()))
    }

    /// Checks the handler table (walked in both directions), that every
    /// handler lies within one range of a fitting kind, and that every
    /// page's handler state matches the handlers covering it.
    pub fn check_handlers(&self) -> Result<(), IntegrityError> {
        self.handlers.check_integrity()?;
        for h in self.handlers.iter() {
            let placement = |reason: String| IntegrityError::Placement {
                first: h.first,
                reason,
            };
            let kind = self
                .handler_types
                .get(h.type_id.0 as usize)
                .map(|t| t.kind)
                .ok_or_else(|| placement(format!("unknown type {}", h.type_id)))?;
            let range = self
                .range_at(h.first)
                .ok_or_else(|| placement("not inside any range".into()))?;
            let fits = match kind {
                HandlerKind::Mmio => range.kind() == RangeKind::Mmio,
                _ => matches!(range.kind(), RangeKind::Ram | RangeKind::Mmio2),
            };
            if h.last > range.last() || !fits {
                return Err(placement(format!(
                    "{} handler does not fit {} range '{}'",
                    kind.name(),
                    range.kind().name(),
                    range.name
                )));
            }
        }
        for r in &self.ranges {
            if !matches!(r.kind(), RangeKind::Ram | RangeKind::Mmio2) {
                continue;
            }
            let Some(mem) = r.writable_memory() else {
                continue;
            };
            for (i, p) in mem.pages.iter().enumerate() {
                let first = r.start + i as u64 * PAGE_SIZE;
                let want = self.handler_state_of(first, first + PAGE_OFFSET_MASK);
                if p.get().handler != want {
                    return Err(IntegrityError::Placement {
                        first,
                        reason: format!(
                            "page handler state {:?}, expected {want:?}",
                            p.get().handler
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}
