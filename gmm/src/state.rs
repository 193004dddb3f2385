//! The GMM state behind the lock: chunks, VMs, RAM regions, and the page
//! allocation / release paths with their accounting.

use std::collections::BTreeSet;

use crate::chunk::{Chunk, ChunkIdMap, IdMap, OWNER_NONE, OWNER_SHARED};
use crate::config::GmmConfig;
use crate::error::{Error, Result};
use crate::host::{Backing, RegionMap, Target};
use crate::ids::{Account, CHUNK_PAGES, ChunkId, PageId, VmId};

/// Raw pages freed this many times in a row are returned to the host in one batch.
const PENDING_FLUSH: usize = 256;
/// Entries in a VM's chunk lookup cache.
const CACHE_WAYS: usize = 4;
/// VM ids must fit below the account bits of an owner word.
const MAX_VMS: u32 = (1 << 30) - 2;

/// A chunk page's owner word: the VM id in the low 30 bits, the account above.
fn owner_word(vm: VmId, account: Account) -> u32 {
    vm.0 | ((account.idx() as u32) << 30)
}

fn owner_vm(word: u32) -> Option<VmId> {
    (word != OWNER_NONE && word != OWNER_SHARED).then_some(VmId(word & ((1 << 30) - 1)))
}

fn owner_account(word: u32) -> Account {
    match word >> 30 {
        1 => Account::Shadow,
        2 => Account::Fixed,
        _ => Account::Base,
    }
}

/// One page of a RAM region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// No backing; reads zero.
    Empty,
    /// Backed by the VM's own chunk page.
    Private(PageId),
    /// A private copy the kernel made when the guest wrote a shared page.
    Anon,
    /// Backed by a shared master page (copy-on-write view).
    Shared(PageId),
    /// Found to be all zeroes by a sharing scan; backed by nothing.
    Zero,
    /// Given back to the host by the balloon.
    Ballooned,
    /// Given back to the host by the balloon while the region keeps mapping
    /// chunk page `p`: the page is punched out of the memfd (the reclaim
    /// worker does it) but stays reserved for this slot, so no remap is
    /// needed either way and nobody else can ever get the page.
    Parked(PageId),
    /// A private (copy-on-write) view of a page of a file, e.g. a saved
    /// state: the VM's private page for the accounts, counted as one host
    /// page; a write turns it into an [`Slot::Anon`] copy (found by
    /// reconciliation).
    File,
}

impl Slot {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Slot::Empty => "empty",
            Slot::Private(_) => "private",
            Slot::Anon => "private (copied on write)",
            Slot::Shared(_) => "shared",
            Slot::Zero => "shared zero",
            Slot::Ballooned => "ballooned",
            Slot::Parked(_) => "ballooned (parked)",
            Slot::File => "private (file copy-on-write)",
        }
    }

    pub(crate) fn is_allocated(self) -> bool {
        !matches!(self, Slot::Empty | Slot::Ballooned | Slot::Parked(_))
    }

    /// Whether the slot is ballooned (parked or not).
    pub(crate) fn is_ballooned(self) -> bool {
        matches!(self, Slot::Ballooned | Slot::Parked(_))
    }
}

/// Bookkeeping of one registered VM.
pub(crate) struct VmState {
    pub(crate) name: String,
    pub(crate) reserved: [u64; 3],
    pub(crate) allocated: [u64; 3],
    pub(crate) private: u64,
    pub(crate) shared: u64,
    pub(crate) ballooned: u64,
    /// Region pages of this VM parked by the balloon.
    pub(crate) parked: u64,
    /// Chunk pages this VM owns, per chunk.
    chunks: BTreeSet<ChunkId>,
    /// Small MRU cache of chunks to allocate from.
    cache: [u32; CACHE_WAYS],
    cache_next: usize,
}

/// A RAM region: contiguous host virtual memory for a range of guest RAM.
pub(crate) struct RegionState {
    pub(crate) vm: VmId,
    pub(crate) map: RegionMap,
    pub(crate) slots: Vec<Slot>,
}

/// Region slots taken out of a region's accounts whose host pages are still
/// mapped there (see [`State::detach_slots`]).
pub(crate) struct Detached {
    pub(crate) region: u64,
    pub(crate) first: u64,
    /// The slots as they were, one per page from `first`, except that a
    /// private page parked by the balloon shows as [`Slot::Parked`] (its
    /// host half is a punch, not a remap).
    pub(crate) slots: Vec<Slot>,
}

/// A shared master page.
pub(crate) struct SharedPage {
    pub(crate) refs: u32,
    pub(crate) hash: u64,
}

/// Monotonic event counters.
#[derive(Default, Clone, Copy)]
pub(crate) struct Events {
    pub(crate) chunks_created: u64,
    pub(crate) chunks_freed: u64,
    pub(crate) pages_returned: u64,
    pub(crate) scans: u64,
    pub(crate) pages_deduplicated: u64,
    pub(crate) cow_unshares: u64,
    pub(crate) reclaim_errors: u64,
}

pub(crate) struct State {
    pub(crate) cfg: GmmConfig,
    pub(crate) backing: Backing,
    chunks: Vec<Option<Chunk>>,
    ids: ChunkIdMap,
    pub(crate) n_chunks: u32,
    empty: Vec<ChunkId>,
    pub(crate) n_empty: u32,
    partial: BTreeSet<ChunkId>,
    free_in_partial: u64,
    pending: Vec<PageId>,
    /// Ballooned ranges whose host pages the reclaim worker still has to return.
    pub(crate) deferred: crate::reclaim::DeferredQueue,
    vms: Vec<Option<VmState>>,
    pub(crate) regions: IdMap<u64, RegionState>,
    next_region: u64,
    pub(crate) shared: IdMap<PageId, SharedPage>,
    /// Host pages in use: used chunk pages plus private copies made on write.
    pub(crate) host_pages: u64,
    pub(crate) anon_pages: u64,
    /// Region pages mapped from files ([`Slot::File`]).
    pub(crate) file_pages: u64,
    pub(crate) reserved_total: u64,
    pub(crate) ballooned_total: u64,
    /// Region pages parked by the balloon ([`Slot::Parked`]), all VMs.
    pub(crate) parked_total: u64,
    pub(crate) events: Events,
}

impl State {
    pub(crate) fn new(cfg: GmmConfig) -> Result<Self> {
        cfg.validate()?;
        let limit = cfg.chunk_limit();
        let backing = Backing::new(u64::from(limit) * CHUNK_PAGES as u64)?;
        Ok(State {
            cfg,
            backing,
            chunks: Vec::new(),
            ids: ChunkIdMap::new(limit),
            n_chunks: 0,
            empty: Vec::new(),
            n_empty: 0,
            partial: BTreeSet::new(),
            free_in_partial: 0,
            pending: Vec::new(),
            deferred: Default::default(),
            vms: Vec::new(),
            regions: IdMap::default(),
            next_region: 1,
            shared: IdMap::default(),
            host_pages: 0,
            anon_pages: 0,
            file_pages: 0,
            reserved_total: 0,
            ballooned_total: 0,
            parked_total: 0,
            events: Events::default(),
        })
    }

    // ----- VMs -----

    pub(crate) fn register_vm(&mut self, name: &str, reserved: [u64; 3]) -> Result<VmId> {
        let total = reserved.iter().try_fold(0u64, |a, &r| a.checked_add(r));
        let total = total.ok_or(Error::InvalidConfig("reservation overflows"))?;
        if !self.cfg.overcommit {
            let available = self.cfg.max_pages.saturating_sub(self.reserved_total);
            if total > available {
                return Err(Error::ReservationTooLarge {
                    requested: total,
                    available,
                });
            }
        }
        let slot = match self.vms.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                if self.vms.len() as u32 >= MAX_VMS {
                    return Err(Error::InvalidConfig("too many VMs"));
                }
                self.vms.push(None);
                self.vms.len() - 1
            }
        };
        self.vms[slot] = Some(VmState {
            name: name.to_owned(),
            reserved,
            allocated: [0; 3],
            private: 0,
            shared: 0,
            ballooned: 0,
            parked: 0,
            chunks: BTreeSet::new(),
            cache: [0; CACHE_WAYS],
            cache_next: 0,
        });
        self.reserved_total += total;
        Ok(VmId(slot as u32 + 1))
    }

    /// Frees everything the VM still owns and forgets it. Its regions must be gone.
    pub(crate) fn deregister_vm(&mut self, vm: VmId) -> Result<()> {
        let chunks: Vec<ChunkId> = self.vm(vm)?.chunks.iter().copied().collect();
        for cid in chunks {
            for idx in 0..CHUNK_PAGES {
                let Some(ch) = self.chunk(cid) else { break };
                if owner_vm(ch.owner(idx)) == Some(vm) {
                    self.release(PageId::new(cid, idx));
                }
            }
        }
        let v = self.vms[vm.0 as usize - 1]
            .take()
            .ok_or(Error::InvalidConfig("unknown VM"))?;
        self.reserved_total -= v.reserved.iter().sum::<u64>();
        self.ballooned_total -= v.ballooned;
        self.flush()
    }

    pub(crate) fn vm(&self, vm: VmId) -> Result<&VmState> {
        self.vms
            .get((vm.0 as usize).wrapping_sub(1))
            .and_then(Option::as_ref)
            .ok_or(Error::InvalidConfig("unknown VM"))
    }

    pub(crate) fn vm_mut(&mut self, vm: VmId) -> Result<&mut VmState> {
        self.vms
            .get_mut((vm.0 as usize).wrapping_sub(1))
            .and_then(Option::as_mut)
            .ok_or(Error::InvalidConfig("unknown VM"))
    }

    pub(crate) fn vms(&self) -> impl Iterator<Item = (VmId, &VmState)> {
        self.vms
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|v| (VmId(i as u32 + 1), v)))
    }

    // ----- limits -----

    /// Refuses allocating `n` more pages on `account` if that breaks the VM's
    /// reservation or the global maximum.
    /// When only ballooned memory still waiting to be returned stands in the
    /// way of the global maximum, returns it first.
    pub(crate) fn check_alloc(&mut self, vm: VmId, account: Account, n: u64) -> Result<()> {
        match self.check_limits(vm, account, n) {
            Err(Error::GlobalLimit { .. }) if self.has_deferred() => {
                self.settle_deferred(None)?;
                self.check_limits(vm, account, n)
            }
            other => other,
        }
    }

    fn check_limits(&self, vm: VmId, account: Account, n: u64) -> Result<()> {
        let v = self.vm(vm)?;
        let a = account.idx();
        let ballooned = if account == Account::Base {
            v.ballooned
        } else {
            0
        };
        if v.allocated[a] + ballooned + n > v.reserved[a] {
            return Err(Error::VmAccountLimit {
                vm,
                account,
                requested: n,
                allocated: v.allocated[a],
                ballooned,
                reserved: v.reserved[a],
            });
        }
        if self.host_pages + n > self.cfg.max_pages {
            return Err(Error::GlobalLimit {
                requested: n,
                in_use: self.host_pages,
                max: self.cfg.max_pages,
            });
        }
        Ok(())
    }

    // ----- chunks -----

    pub(crate) fn chunk(&self, cid: ChunkId) -> Option<&Chunk> {
        self.chunks.get(cid.0 as usize).and_then(Option::as_ref)
    }

    fn chunk_mut(&mut self, cid: ChunkId) -> Option<&mut Chunk> {
        self.chunks.get_mut(cid.0 as usize).and_then(Option::as_mut)
    }

    pub(crate) fn chunk_limit(&self) -> u32 {
        self.ids.limit()
    }

    pub(crate) fn partial_chunks(&self) -> usize {
        self.partial.len()
    }

    /// Keeps the partly-used set and its free-page total in step after a
    /// chunk's counts changed (`free_before` = its free count before).
    fn reclassify(&mut self, cid: ChunkId, free_before: u16) {
        let Some(ch) = self.chunks.get_mut(cid.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        let now = ch.n_used() > 0 && ch.n_free() > 0;
        match (ch.in_partial, now) {
            (true, true) => {
                self.free_in_partial =
                    self.free_in_partial - u64::from(free_before) + u64::from(ch.n_free());
            }
            (true, false) => {
                ch.in_partial = false;
                self.free_in_partial -= u64::from(free_before);
                self.partial.remove(&cid);
            }
            (false, true) => {
                ch.in_partial = true;
                self.free_in_partial += u64::from(ch.n_free());
                self.partial.insert(cid);
            }
            (false, false) => {}
        }
    }

    fn new_chunk(&mut self) -> Option<ChunkId> {
        let cid = self.ids.alloc()?;
        let i = cid.0 as usize;
        if self.chunks.len() <= i {
            self.chunks.resize_with(i + 1, || None);
        }
        self.chunks[i] = Some(Chunk::new());
        self.n_chunks += 1;
        self.events.chunks_created += 1;
        Some(cid)
    }

    fn pop_empty(&mut self) -> Option<ChunkId> {
        while let Some(cid) = self.empty.pop() {
            if let Some(ch) = self.chunk_mut(cid) {
                if ch.in_empty_list {
                    ch.in_empty_list = false;
                    self.n_empty -= 1;
                    return Some(cid);
                }
            }
        }
        None
    }

    /// Picks the chunk to allocate `vm`'s next page from: chunks this VM
    /// already uses (cache first), then empty chunks, then partly used chunks
    /// of others when plenty is free there, then a new chunk.
    fn pick_chunk(&mut self, vm: VmId) -> Result<ChunkId> {
        let idx = vm.0 as usize - 1;
        let Some(v) = self.vms.get(idx).and_then(Option::as_ref) else {
            return Err(Error::InvalidConfig("unknown VM"));
        };
        for &c in &v.cache {
            if c != 0
                && self.chunks[c as usize]
                    .as_ref()
                    .is_some_and(|ch| ch.n_free() > 0)
            {
                return Ok(ChunkId(c));
            }
        }
        let own = v
            .chunks
            .iter()
            .copied()
            .find(|c| self.chunk(*c).is_some_and(|ch| ch.n_free() > 0));
        let cid = match own {
            Some(c) => c,
            None => match self.pop_empty() {
                Some(c) => c,
                None => {
                    let others = (self.free_in_partial >= self.cfg.plenty_free_pages)
                        .then(|| self.partial.first().copied())
                        .flatten();
                    match others.or_else(|| self.new_chunk()) {
                        Some(c) => c,
                        None => self
                            .partial
                            .first()
                            .copied()
                            .ok_or(Error::ChunksExhausted(self.ids.limit()))?,
                    }
                }
            },
        };
        if let Some(v) = self.vms.get_mut(idx).and_then(Option::as_mut) {
            v.cache[v.cache_next] = cid.0;
            v.cache_next = (v.cache_next + 1) % CACHE_WAYS;
        }
        Ok(cid)
    }

    /// Allocates one page for `vm` on `account` (limits already checked).
    pub(crate) fn take_page(&mut self, vm: VmId, account: Account) -> Result<PageId> {
        let cid = self.pick_chunk(vm)?;
        let Some(ch) = self.chunks[cid.0 as usize].as_mut() else {
            return Err(Error::InvalidConfig("chunk table corrupt"));
        };
        let free_before = ch.n_free();
        if ch.in_empty_list {
            ch.in_empty_list = false;
            self.n_empty -= 1;
        }
        let idx = ch
            .take(owner_word(vm, account))
            .ok_or(Error::InvalidConfig("chunk table corrupt"))?;
        let first_here = ch.add_user(vm.0);
        self.reclassify(cid, free_before);
        let v = self.vm_mut(vm)?;
        if first_here {
            v.chunks.insert(cid);
        }
        v.allocated[account.idx()] += 1;
        v.private += 1;
        self.host_pages += 1;
        Ok(PageId::new(cid, idx))
    }

    /// Releases a used chunk page (VM-owned or shared master) to the pending
    /// list. The caller fixes the VM account counts.
    pub(crate) fn release(&mut self, pid: PageId) {
        self.host_pages -= 1;
        self.release_id(pid);
    }

    /// Releases the id of a used chunk page that costs no host page (a
    /// punched parked page) to the pending list.
    fn release_id(&mut self, pid: PageId) {
        let cid = pid.chunk();
        let Some(ch) = self.chunks.get_mut(cid.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        let free_before = ch.n_free();
        let owner = ch.owner(pid.index());
        ch.release(pid.index());
        self.reclassify(cid, free_before);
        if let Some(vm) = owner_vm(owner) {
            self.drop_chunk_user(vm, cid);
        }
        self.pending.push(pid);
    }

    /// One page of `vm` in chunk `cid` is gone (freed or turned shared).
    fn drop_chunk_user(&mut self, vm: VmId, cid: ChunkId) {
        let last = self.chunk_mut(cid).is_some_and(|ch| ch.drop_user(vm.0));
        if last {
            if let Ok(v) = self.vm_mut(vm) {
                v.chunks.remove(&cid);
            }
        }
    }

    /// Checks that `pid` is a raw (non-region) page of `vm`; returns its owner word.
    pub(crate) fn check_raw(&self, vm: VmId, pid: PageId) -> Result<u32> {
        let ch = self
            .chunk(pid.chunk())
            .filter(|ch| ch.is_used(pid.index()))
            .ok_or(Error::PageNotFound(pid))?;
        let word = ch.owner(pid.index());
        if owner_vm(word) != Some(vm) {
            return Err(Error::NotOwner { page: pid, vm });
        }
        if ch.in_region(pid.index()) {
            return Err(Error::PageInRegion(pid));
        }
        Ok(word)
    }

    /// Frees raw page `pid` of `vm` (validated first).
    pub(crate) fn free_raw(&mut self, vm: VmId, pid: PageId) -> Result<()> {
        let word = self.check_raw(vm, pid)?;
        self.release(pid);
        let v = self.vm_mut(vm)?;
        v.allocated[owner_account(word).idx()] -= 1;
        v.private -= 1;
        Ok(())
    }

    /// Flushes the pending list when it has grown long enough.
    pub(crate) fn maybe_flush(&mut self) -> Result<()> {
        if self.pending.len() >= PENDING_FLUSH {
            self.flush()?;
        }
        Ok(())
    }

    /// Returns every pending page to the host (punching holes in runs), makes
    /// the pages allocatable again, lists chunks that became empty and frees
    /// empty chunks beyond the configured cache.
    pub(crate) fn flush(&mut self) -> Result<()> {
        let mut pending = std::mem::take(&mut self.pending);
        if !pending.is_sorted() {
            pending.sort_unstable();
        }
        pending.dedup();
        let mut result = Ok(());
        let mut i = 0;
        while i < pending.len() {
            let start = pending[i].0;
            let mut end = start + 1;
            i += 1;
            while i < pending.len() && pending[i].0 == end {
                end += 1;
                i += 1;
            }
            if let Err(e) = self.backing.punch(start, end - start) {
                // Keep the run pending (not allocatable) and report.
                self.pending.extend((start..end).map(PageId));
                result = Err(e);
                continue;
            }
            self.settle_run(start, end);
        }
        self.trim_empty();
        result
    }

    fn settle_run(&mut self, start: u32, end: u32) {
        let mut p = start;
        while p < end {
            let cid = PageId(p).chunk();
            let chunk_end = end.min((cid.0 + 1) << crate::ids::CHUNK_SHIFT);
            if let Some(ch) = self.chunks.get_mut(cid.0 as usize).and_then(Option::as_mut) {
                let free_before = ch.n_free();
                let mut settled = 0;
                for q in p..chunk_end {
                    let idx = PageId(q).index();
                    if ch.is_pending(idx) {
                        ch.settle(idx);
                        settled += 1;
                    }
                }
                let now_empty = ch.n_used() == 0 && !ch.in_empty_list;
                if now_empty {
                    ch.in_empty_list = true;
                }
                self.events.pages_returned += settled;
                self.reclassify(cid, free_before);
                if now_empty {
                    self.n_empty += 1;
                    self.empty.push(cid);
                }
            }
            p = chunk_end;
        }
    }

    /// Drops stale entries from the empty list and frees chunks beyond the cache.
    fn trim_empty(&mut self) {
        let chunks = &self.chunks;
        self.empty.retain(|c| {
            chunks[c.0 as usize]
                .as_ref()
                .is_some_and(|ch| ch.in_empty_list && ch.n_used() == 0)
        });
        self.empty.sort_unstable();
        self.empty.dedup();
        while self.n_empty > self.cfg.empty_chunk_cache {
            let Some(cid) = self.pop_empty() else { break };
            if self.chunk(cid).is_some_and(|ch| ch.n_pending() == 0) {
                self.destroy_chunk(cid);
            }
        }
    }

    fn destroy_chunk(&mut self, cid: ChunkId) {
        self.chunks[cid.0 as usize] = None;
        self.ids.free(cid);
        self.n_chunks -= 1;
        self.events.chunks_freed += 1;
        for v in self.vms.iter_mut().flatten() {
            for c in &mut v.cache {
                if *c == cid.0 {
                    *c = 0;
                }
            }
        }
    }

    // ----- regions -----

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
        for (k, p) in pages.iter().enumerate() {
            if let Some(ch) = self.chunk_mut(p.chunk()) {
                ch.set_in_region(p.index(), true);
            }
            if let Some(r) = self.regions.get_mut(&id) {
                r.slots[first as usize + k] = Slot::Private(*p);
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
                    if let Some(v) = self.owner_of(p).and_then(owner_vm) {
                        if let Ok(v) = self.vm_mut(v) {
                            v.parked -= 1;
                        }
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
    fn unpark(&mut self, id: u64, first: u64, count: u64) -> Result<()> {
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

    // ----- balloon -----

    /// VirtualBox's balloon accounting for `vm`.
    pub(crate) fn balloon(&mut self, vm: VmId, action: BalloonAction, pages: u64) -> Result<()> {
        let v = self.vm_mut(vm)?;
        match action {
            BalloonAction::Inflate => {
                let base = v.allocated[Account::Base.idx()];
                let reserved = v.reserved[Account::Base.idx()];
                if base + v.ballooned + pages > reserved {
                    return Err(Error::BalloonInflateTooMuch {
                        requested: pages,
                        allocated: base,
                        ballooned: v.ballooned,
                        reserved,
                    });
                }
                v.ballooned += pages;
                self.ballooned_total += pages;
            }
            BalloonAction::Deflate => {
                if v.ballooned < pages {
                    return Err(Error::BalloonDeflateTooMuch {
                        requested: pages,
                        ballooned: v.ballooned,
                    });
                }
                v.ballooned -= pages;
                self.ballooned_total -= pages;
            }
            BalloonAction::Reset => {
                let regions: Vec<u64> = self
                    .regions
                    .iter()
                    .filter(|(_, r)| r.vm == vm)
                    .map(|(id, _)| *id)
                    .collect();
                for &id in &regions {
                    self.settle_deferred(Some(id))?;
                }
                let v = self.vm_mut(vm)?;
                let was = std::mem::take(&mut v.ballooned);
                self.ballooned_total -= was;
                // Parked pages become the VM's (zeroed) pages again: no
                // remap, which the host might refuse. Beyond the global
                // maximum they take the remap path and become empty.
                for &id in &regions {
                    let pages = self.region(id)?.slots.len() as u64;
                    if self.unpark(id, 0, pages).is_err()
                        && let Err(e) = self.drop_parked(id)
                    {
                        // What is still in the balloon stays counted there.
                        let left: u64 = regions
                            .iter()
                            .filter_map(|id| self.regions.get(id))
                            .map(|r| r.slots.iter().filter(|s| s.is_ballooned()).count() as u64)
                            .sum();
                        self.vm_mut(vm)?.ballooned = left;
                        self.ballooned_total += left;
                        return Err(e);
                    }
                }
                for r in self.regions.values_mut().filter(|r| r.vm == vm) {
                    for s in &mut r.slots {
                        if *s == Slot::Ballooned {
                            *s = Slot::Empty;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Points the parked pages of a region at zero memory and releases
    /// them; they become plain ballooned pages.
    fn drop_parked(&mut self, id: u64) -> Result<()> {
        let r = self.region(id)?;
        let parked: Vec<(u64, PageId)> = (0..)
            .zip(&r.slots)
            .filter_map(|(i, s)| match s {
                Slot::Parked(p) => Some((i, *p)),
                _ => None,
            })
            .collect();
        let mut k = 0;
        while k < parked.len() {
            let n = parked[k..]
                .windows(2)
                .position(|w| w[1].0 != w[0].0 + 1)
                .map_or(parked.len() - k, |i| i + 1);
            let remapped = self.region(id).and_then(|r| {
                r.map
                    .map(&self.backing, parked[k].0, n as u64, Target::Zero)
            });
            if let Err(e) = remapped {
                // The runs done so far are plain ballooned pages now.
                self.flush()?;
                return Err(e);
            }
            // Only now that the region maps zero there may the ids go.
            for &(i, p) in &parked[k..k + n] {
                self.release_pages(&[Slot::Parked(p)]);
                if let Some(r) = self.regions.get_mut(&id) {
                    r.slots[i as usize] = Slot::Ballooned;
                }
            }
            k += n;
        }
        self.flush()
    }

    // ----- sharing helpers used by the scan -----

    /// The owner word of a used chunk page.
    pub(crate) fn owner_of(&self, pid: PageId) -> Option<u32> {
        self.chunk(pid.chunk())
            .filter(|c| c.is_used(pid.index()))
            .map(|c| c.owner(pid.index()))
    }

    /// Turns VM-owned page `pid` into a shared master page owned by GMM.
    pub(crate) fn make_master(&mut self, pid: PageId, hash: u64) {
        let cid = pid.chunk();
        let owner = self.owner_of(pid).and_then(owner_vm);
        if let Some(ch) = self.chunk_mut(cid) {
            ch.set_owner(pid.index(), OWNER_SHARED);
            ch.set_in_region(pid.index(), false);
        }
        if let Some(vm) = owner {
            self.drop_chunk_user(vm, cid);
        }
        self.shared.insert(pid, SharedPage { refs: 0, hash });
    }

    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// Length of the run of consecutive page ids at the start of `pages`.
pub(crate) fn run_len(pages: &[PageId]) -> usize {
    pages
        .windows(2)
        .position(|w| w[1].0 != w[0].0 + 1)
        .map_or(pages.len(), |i| i + 1)
}

/// Balloon operations (VirtualBox `GMMBALLOONACTION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalloonAction {
    /// The guest gave pages back: count them as ballooned.
    Inflate,
    /// The guest took pages back out of the balloon.
    Deflate,
    /// The VM was reset: nothing is ballooned any more.
    Reset,
}
