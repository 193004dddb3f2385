//! Chunks and pages: picking a chunk, taking and releasing page ids, and
//! flushing released pages back to the host.

use super::*;

impl State {
    pub(crate) fn chunk(&self, cid: ChunkId) -> Option<&Chunk> {
        self.chunks.get(cid.0 as usize).and_then(Option::as_ref)
    }

    pub(super) fn chunk_mut(&mut self, cid: ChunkId) -> Option<&mut Chunk> {
        self.chunks.get_mut(cid.0 as usize).and_then(Option::as_mut)
    }

    pub(crate) fn chunk_limit(&self) -> u32 {
        self.ids.limit()
    }

    pub(crate) fn partial_chunks(&self) -> usize {
        self.partial.len()
    }

    /// Keeps the partly-used set, its free-page total and the users' sets
    /// of chunks with free pages in step after a chunk's counts changed
    /// (`free_before` = its free count before).
    fn reclassify(&mut self, cid: ChunkId, free_before: u16) {
        let Some(ch) = self.chunks.get_mut(cid.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        let has_free = ch.n_free() > 0;
        if has_free != (free_before > 0) {
            for user in ch.users() {
                let Some(v) = self.vms.get_mut(user as usize - 1).and_then(Option::as_mut) else {
                    continue;
                };
                if has_free {
                    v.with_free.insert(cid);
                } else {
                    v.with_free.remove(&cid);
                }
            }
        }
        let now = ch.n_used() > 0 && has_free;
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
            if let Some(ch) = self.chunk_mut(cid)
                && ch.in_empty_list
            {
                ch.in_empty_list = false;
                self.n_empty -= 1;
                return Some(cid);
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
        let mut probes = 0;
        for &c in &v.cache {
            probes += 1;
            if c != 0
                && self.chunks[c as usize]
                    .as_ref()
                    .is_some_and(|ch| ch.n_free() > 0)
            {
                self.events.chunk_probes += probes;
                return Ok(ChunkId(c));
            }
        }
        let own = v.with_free.first().copied();
        self.events.chunk_probes += probes + u64::from(own.is_some());
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
        let has_free = ch.n_free() > 0;
        let v = self.vm_mut(vm)?;
        if first_here {
            v.chunks.insert(cid);
            if has_free {
                v.with_free.insert(cid);
            }
        }
        self.reclassify(cid, free_before);
        let v = self.vm_mut(vm)?;
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
    pub(super) fn release_id(&mut self, pid: PageId) {
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
    pub(super) fn drop_chunk_user(&mut self, vm: VmId, cid: ChunkId) {
        let last = self.chunk_mut(cid).is_some_and(|ch| ch.drop_user(vm.0));
        if last && let Ok(v) = self.vm_mut(vm) {
            v.chunks.remove(&cid);
            v.with_free.remove(&cid);
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
}

#[cfg(test)]
impl State {
    /// Checks that every VM's set of chunks with free pages is exactly its
    /// chunks that have free pages; returns what differs.
    pub(crate) fn check_free_index(&self) -> std::result::Result<(), String> {
        for (id, v) in self.vms() {
            let want: BTreeSet<ChunkId> = v
                .chunks
                .iter()
                .copied()
                .filter(|c| self.chunk(*c).is_some_and(|ch| ch.n_free() > 0))
                .collect();
            if want != v.with_free {
                return Err(format!(
                    "VM {}: chunks with free pages {want:?}, indexed {:?}",
                    id.0, v.with_free
                ));
            }
        }
        Ok(())
    }
}
