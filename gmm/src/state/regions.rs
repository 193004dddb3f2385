//! RAM regions: allocating, freeing, discarding, detaching and parking
//! their pages.

use super::*;

impl State {
    pub(crate) fn add_region(&mut self, vm: VmId, pages: u64) -> Result<u64> {
        let base = self.vm(vm)?.reserved[Account::Base.idx()];
        if pages > base {
            return Err(Error::RegionTooLarge {
                pages,
                reserved: base,
            });
        }
        let map = RegionMap::new(pages)?;
        let id = self.next_region;
        self.next_region += 1;
        self.regions.insert(
            id,
            RegionState {
                vm,
                map,
                slots: vec![Slot::Empty; pages as usize],
            },
        );
        Ok(id)
    }

    pub(crate) fn region(&self, id: u64) -> Result<&RegionState> {
        self.regions
            .get(&id)
            .ok_or(Error::InvalidConfig("unknown region"))
    }

    fn check_range(&self, id: u64, first: u64, count: u64) -> Result<&RegionState> {
        let r = self.region(id)?;
        let pages = r.slots.len() as u64;
        if first.checked_add(count).is_none_or(|e| e > pages) {
            return Err(Error::RangeOutOfBounds {
                first,
                count,
                pages,
            });
        }
        Ok(r)
    }

    /// Fails with `PageState` unless every slot in the range satisfies `ok`.
    pub(crate) fn expect_slots(
        &self,
        id: u64,
        first: u64,
        count: u64,
        expected: &'static str,
        ok: fn(Slot) -> bool,
    ) -> Result<()> {
        let r = self.check_range(id, first, count)?;
        let bad = r.slots[first as usize..(first + count) as usize]
            .iter()
            .position(|s| !ok(*s));
        match bad {
            Some(i) => Err(Error::PageState {
                index: first + i as u64,
                expected,
                found: r.slots[first as usize + i].name(),
            }),
            None => Ok(()),
        }
    }

    /// Backs empty region pages `first..first+count` with fresh chunk pages.
    pub(crate) fn region_alloc(&mut self, id: u64, first: u64, count: u64) -> Result<()> {
        self.expect_slots(id, first, count, "empty", |s| s == Slot::Empty)?;
        let vm = self.region(id)?.vm;
        self.check_alloc(vm, Account::Base, count)?;
        let mut pages = Vec::with_capacity(count as usize);
        for _ in 0..count {
            match self.take_page(vm, Account::Base) {
                Ok(p) => pages.push(p),
                Err(e) => {
                    self.undo_alloc(vm, &pages);
                    return Err(e);
                }
            }
        }
        let r = self.region(id)?;
        let mut i = 0;
        while i < pages.len() {
            let run = run_len(&pages[i..]);
            if let Err(e) = r.map.map(
                &self.backing,
                first + i as u64,
                run as u64,
                Target::Own(pages[i].0),
            ) {
                // Point everything back at zero before giving the pages back.
                let _ = r.map.map(&self.backing, first, count, Target::Zero);
                self.undo_alloc(vm, &pages);
                return Err(e);
            }
            i += run;
        }
        for p in &pages {
            if let Some(ch) = self.chunk_mut(p.chunk()) {
                ch.set_in_region(p.index(), true);
            }
        }
        if let Some(r) = self.regions.get_mut(&id) {
            let slots = &mut r.slots[first as usize..(first + count) as usize];
            for (slot, p) in slots.iter_mut().zip(&pages) {
                *slot = Slot::Private(*p);
            }
        }
        Ok(())
    }

    fn undo_alloc(&mut self, vm: VmId, pages: &[PageId]) {
        for p in pages {
            self.release(*p);
            if let Ok(v) = self.vm_mut(vm) {
                v.allocated[Account::Base.idx()] -= 1;
                v.private -= 1;
            }
        }
        let _ = self.flush();
    }

    /// Drops the backing of allocated slots in the range (they become `to`),
    /// after pointing the whole range at zero memory. Returns the number of
    /// slots released.
    fn release_slots(&mut self, id: u64, first: u64, count: u64, to: Slot) -> Result<u64> {
        let r = self.check_range(id, first, count)?;
        r.map.map(&self.backing, first, count, Target::Zero)?;
        let (detached, released) = self.detach_slots(id, first, count, to, false)?;
        self.release_pages(&detached.slots);
        Ok(released)
    }

    /// The bookkeeping half of releasing slots: allocated slots in the range
    /// become `to` and leave the VM's accounts, but their host pages stay
    /// mapped in the region until [`release_detached`](Self::release_detached).
    /// Returns them with the number of allocated slots among them. With `park`, private pages become [`Slot::Parked`] instead while the
    /// global parking budget lasts (see [`State::park_budget`]).
    pub(crate) fn detach_slots(
        &mut self,
        id: u64,
        first: u64,
        count: u64,
        to: Slot,
        park: bool,
    ) -> Result<(Detached, u64)> {
        let vm = self.check_range(id, first, count)?.vm;
        let range = first as usize..(first + count) as usize;
        let mut budget = if park { self.park_budget() } else { 0 };
        let Some(r) = self.regions.get_mut(&id) else {
            return Err(Error::InvalidConfig("unknown region"));
        };
        let mut slots = r.slots[range.clone()].to_vec();
        let (mut private, mut shared, mut parked) = (0, 0, 0);
        for (slot, was) in r.slots[range].iter_mut().zip(&mut slots) {
            match *slot {
                Slot::Private(p) if budget > 0 => {
                    budget -= 1;
                    parked += 1;
                    private += 1;
                    *slot = Slot::Parked(p);
                    *was = Slot::Parked(p);
                    continue;
                }
                Slot::Private(_) | Slot::Anon | Slot::File => private += 1,
                Slot::Shared(_) | Slot::Zero => shared += 1,
                Slot::Empty | Slot::Ballooned | Slot::Parked(_) => continue,
            }
            *slot = to;
        }
        self.parked_total += parked;
        let v = self.vm_mut(vm)?;
        v.parked += parked;
        v.private -= private;
        v.shared -= shared;
        v.allocated[Account::Base.idx()] -= private + shared;
        let detached = Detached {
            region: id,
            first,
            slots,
        };
        Ok((detached, private + shared))
    }

    /// The host half of releasing slots: points the range at zero memory,
    /// then gives the host pages it mapped back (to the pending list);
    /// parked pages instead stay mapped and are punched out of the memfd
    /// (they stop costing a host page but stay reserved for their slot).
    /// On error no account changed (repeating it is harmless).
    pub(crate) fn release_detached(&mut self, detached: &Detached) -> Result<()> {
        let is_parked = |s: &Slot| matches!(s, Slot::Parked(_));
        let mut parked = Vec::new();
        let mut i = 0;
        while i < detached.slots.len() {
            let kind = is_parked(&detached.slots[i]);
            let n = detached.slots[i..]
                .iter()
                .take_while(|s| is_parked(s) == kind)
                .count();
            if kind {
                parked.extend(detached.slots[i..i + n].iter().filter_map(|s| match s {
                    Slot::Parked(p) => Some(*p),
                    _ => None,
                }));
            } else if let Some(r) = self.regions.get(&detached.region) {
                r.map.map(
                    &self.backing,
                    detached.first + i as u64,
                    n as u64,
                    Target::Zero,
                )?;
            }
            i += n;
        }
        self.punch_pages(&parked)?;
        self.host_pages -= parked.len() as u64;
        self.events.pages_returned += parked.len() as u64;
        for s in detached.slots.iter().filter(|s| !is_parked(s)) {
            self.release_pages(std::slice::from_ref(s));
        }
        Ok(())
    }

    /// Punches `pages` out of the memfd, in runs of consecutive ids.
    fn punch_pages(&self, pages: &[PageId]) -> Result<()> {
        let mut sorted = pages.to_vec();
        sorted.sort_unstable();
        let mut k = 0;
        while k < sorted.len() {
            let len = run_len(&sorted[k..]);
            self.backing.punch(sorted[k].0, len as u32)?;
            k += len;
        }
        Ok(())
    }

    /// How many more pages the balloon may park. Parked pages cost no host
    /// memory but keep their page ids; the id space has room for
    /// `max_pages` of them on top of the pages in use (see
    /// [`GmmConfig`]'s chunk limit), beyond that ballooning takes the remap
    /// path and gives the ids back.
    fn park_budget(&self) -> u64 {
        self.cfg.max_pages.saturating_sub(self.parked_total)
    }

    /// Gives back the host pages behind `slots`, which no region maps any more.
    pub(crate) fn release_pages(&mut self, slots: &[Slot]) {
        for slot in slots {
            match *slot {
                Slot::Private(p) => self.release(p),
                Slot::Anon => {
                    self.anon_pages -= 1;
                    self.host_pages -= 1;
                }
                Slot::File => {
                    self.file_pages -= 1;
                    self.host_pages -= 1;
                }
                Slot::Shared(m) => self.unref_shared(m),
                // A parked page costs no host page once punched; callers
                // account the ones still waiting for their punch.
                Slot::Parked(p) => {
                    if let Some(v) = self.owner_of(p).and_then(owner_vm)
                        && let Ok(v) = self.vm_mut(v)
                    {
                        v.parked -= 1;
                    }
                    self.parked_total -= 1;
                    self.release_id(p);
                }
                Slot::Zero | Slot::Empty | Slot::Ballooned => {}
            }
        }
    }

    pub(crate) fn unref_shared(&mut self, master: PageId) {
        let gone = match self.shared.get_mut(&master) {
            Some(s) => {
                s.refs -= 1;
                s.refs == 0
            }
            None => false,
        };
        if gone {
            self.shared.remove(&master);
            self.release(master);
        }
    }

    /// Frees allocated region pages (they read zero again).
    pub(crate) fn region_free(&mut self, id: u64, first: u64, count: u64) -> Result<()> {
        self.expect_slots(id, first, count, "allocated", Slot::is_allocated)?;
        self.release_slots(id, first, count, Slot::Empty)?;
        self.flush()
    }

    /// Gives the memory of allocated region pages back to the host while
    /// keeping them allocated: they read zero, and the next write backs them
    /// again (a private page stays the VM's page, now a hole in the memfd;
    /// others become zero pages).
    pub(crate) fn region_discard(&mut self, id: u64, first: u64, count: u64) -> Result<()> {
        self.expect_slots(id, first, count, "allocated", Slot::is_allocated)?;
        let r = self.region(id)?;
        let vm = r.vm;
        let range = first as usize..(first + count) as usize;
        let slots: Vec<(u64, Slot)> = (first..).zip(r.slots[range].iter().copied()).collect();
        let mut i = 0;
        while i < slots.len() {
            let (at, slot) = slots[i];
            let private = |s: Slot| matches!(s, Slot::Private(_));
            let n = slots[i..]
                .iter()
                .take_while(|(_, s)| private(*s) == private(slot))
                .count();
            let run = &slots[i..i + n];
            match slot {
                Slot::Private(_) => {
                    let pages: Vec<PageId> = run
                        .iter()
                        .filter_map(|(_, s)| match s {
                            Slot::Private(p) => Some(*p),
                            _ => None,
                        })
                        .collect();
                    let mut k = 0;
                    while k < pages.len() {
                        let len = run_len(&pages[k..]);
                        self.backing.punch(pages[k].0, len as u32)?;
                        k += len;
                    }
                }
                _ => {
                    self.region(id)?
                        .map
                        .map(&self.backing, at, n as u64, Target::Zero)?;
                    for &(idx, s) in run {
                        match s {
                            Slot::Shared(m) => self.unref_shared(m),
                            Slot::Anon => {
                                self.anon_pages -= 1;
                                self.host_pages -= 1;
                                let v = self.vm_mut(vm)?;
                                v.private -= 1;
                                v.shared += 1;
                            }
                            Slot::File => {
                                self.file_pages -= 1;
                                self.host_pages -= 1;
                                let v = self.vm_mut(vm)?;
                                v.private -= 1;
                                v.shared += 1;
                            }
                            _ => {}
                        }
                        if let Some(r) = self.regions.get_mut(&id) {
                            r.slots[idx as usize] = Slot::Zero;
                        }
                    }
                }
            }
            i += n;
        }
        self.flush()
    }

    /// Balloon inflation of region pages: they count as ballooned at once;
    /// their memory goes back to the host through the reclaim queue (see
    /// [`crate::reclaim`]). Private pages are parked (punched, no remap).
    pub(crate) fn region_inflate(&mut self, id: u64, first: u64, count: u64) -> Result<()> {
        self.expect_slots(id, first, count, "allocated", Slot::is_allocated)?;
        let vm = self.region(id)?.vm;
        let (detached, freed) = self.detach_slots(id, first, count, Slot::Ballooned, true)?;
        // Cannot fail: the pages just left the VM's allocated count.
        self.balloon(vm, BalloonAction::Inflate, freed)?;
        self.defer_release(detached);
        Ok(())
    }

    /// Balloon deflation of region pages: parked pages become the VM's
    /// private pages again (reading zero, no remap), subject to the global
    /// maximum; other ballooned pages become empty (allocatable) again. On
    /// error nothing changed.
    pub(crate) fn region_deflate(&mut self, id: u64, first: u64, count: u64) -> Result<()> {
        self.expect_slots(id, first, count, "ballooned", Slot::is_ballooned)?;
        let vm = self.region(id)?.vm;
        self.balloon(vm, BalloonAction::Deflate, count)?;
        // Empty pages must map zero before anyone backs them again, and
        // parked pages must have left the host-page count before they
        // rejoin it.
        let unparked = self
            .settle_deferred(Some(id))
            .and_then(|()| self.unpark(id, first, count));
        if let Err(e) = unparked {
            let v = self.vm_mut(vm)?;
            v.ballooned += count;
            self.ballooned_total += count;
            return Err(e);
        }
        if let Some(r) = self.regions.get_mut(&id) {
            for s in &mut r.slots[first as usize..(first + count) as usize] {
                if *s == Slot::Ballooned {
                    *s = Slot::Empty;
                }
            }
        }
        Ok(())
    }

    /// Makes the (punched) parked pages in the range private pages of the
    /// VM again: punched once more, since the guest may have written them
    /// while ballooned, so they read zero. Checks the reservation and the
    /// global maximum first; on error nothing changed.
    pub(super) fn unpark(&mut self, id: u64, first: u64, count: u64) -> Result<()> {
        let r = self.check_range(id, first, count)?;
        let vm = r.vm;
        let pages: Vec<PageId> = r.slots[first as usize..(first + count) as usize]
            .iter()
            .filter_map(|s| match s {
                Slot::Parked(p) => Some(*p),
                _ => None,
            })
            .collect();
        let n = pages.len() as u64;
        if n == 0 {
            return Ok(());
        }
        self.check_alloc(vm, Account::Base, n)?;
        self.punch_pages(&pages)?;
        let v = self.vm_mut(vm)?;
        v.allocated[Account::Base.idx()] += n;
        v.private += n;
        v.parked -= n;
        self.host_pages += n;
        self.parked_total -= n;
        if let Some(r) = self.regions.get_mut(&id) {
            for s in &mut r.slots[first as usize..(first + count) as usize] {
                if let Slot::Parked(p) = *s {
                    *s = Slot::Private(p);
                }
            }
        }
        Ok(())
    }

    /// Releases everything a region holds and unmaps it.
    pub(crate) fn remove_region(&mut self, id: u64) -> Result<()> {
        let (vm, pages) = {
            let r = self.region(id)?;
            (r.vm, r.slots.len() as u64)
        };
        // No remapping (which the host may refuse): the whole mapping goes
        // before anyone can have the released pages (they are pending until
        // the flush below).
        for queued in self.deferred.take(Some(id)) {
            for s in &queued.slots {
                match s {
                    // Still a host page; its id goes with the region's slot.
                    Slot::Parked(_) => self.host_pages -= 1,
                    s => self.release_pages(std::slice::from_ref(s)),
                }
            }
        }
        let (detached, _) = self.detach_slots(id, 0, pages, Slot::Empty, false)?;
        self.release_pages(&detached.slots);
        let ballooned = self.regions.remove(&id).map_or(0, |r| {
            r.slots.iter().filter(|s| s.is_ballooned()).count() as u64
        });
        let v = self.vm_mut(vm)?;
        let drop_count = ballooned.min(v.ballooned);
        v.ballooned -= drop_count;
        self.ballooned_total -= drop_count;
        self.flush()
    }
}
