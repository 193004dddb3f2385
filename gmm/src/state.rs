//! The GMM state behind the lock: chunks, VMs, RAM regions, and the page
//! allocation / release paths with their accounting.

use std::collections::BTreeSet;

use crate::chunk::{Chunk, ChunkIdMap, IdMap, OWNER_NONE, OWNER_SHARED};
use crate::config::GmmConfig;
use crate::error::{Error, Result};
use crate::host::{Backing, RegionMap, Target};
use crate::ids::{Account, CHUNK_PAGES, ChunkId, PageId, VmId};

mod balloon;
mod chunks;
mod regions;

pub use balloon::BalloonAction;

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
    /// Of those, the chunks with free pages: where the VM's next page goes
    /// when its cache has no room (found in O(log n), without looking at
    /// its full chunks).
    with_free: BTreeSet<ChunkId>,
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
    /// Chunks examined while picking the chunk to allocate a page from.
    pub(crate) chunk_probes: u64,
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
            with_free: BTreeSet::new(),
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
