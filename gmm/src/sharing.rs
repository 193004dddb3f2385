//! Page sharing: the scan that finds identical pages across all VMs of one
//! GMM and backs them with a single host page, and the reconciliation that
//! notices guests writing to shared pages.
//!
//! # Why shared pages stay correct
//!
//! A shared page's host copy (the *master*) is a chunk page owned by GMM
//! itself. No VM maps it writable: every region page that uses it, including
//! the page the master was promoted from, is a `MAP_PRIVATE` view of the
//! memfd offset. A write through such a view makes the kernel copy the page
//! for that mapping only (copy-on-write), so the writer gets its own copy and
//! the master, and every other VM's view of it, is unchanged. Only GMM's own
//! view maps the master `MAP_SHARED`, and GMM only reads it. KVM follows the
//! copy through its MMU notifiers, so this holds for guest writes too.
//!
//! Pages found to be all zeroes are not backed by anything: they become
//! anonymous private mappings reading the kernel's zero page (written pages
//! are copied the same way). Adjacent such mappings merge, so zero pages do
//! not cost a kernel mapping each.
//!
//! The kernel makes those copies without asking GMM, so they are counted
//! (as the writer's private pages, and against the global maximum) when GMM
//! next reconciles: at the start of every scan, or on
//! [`Gmm::reconcile_shared`](crate::Gmm::reconcile_shared). Until then a VM
//! can hold a few more host pages than the numbers show.
//!
//! The scan itself must run while the VMs' vCPUs are stopped (as VirtualBox
//! does it at a rendezvous): between comparing a page and remapping it, a
//! guest write would be lost.

use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64;

use crate::chunk::IdMap;
use crate::error::Result;
use crate::host::{Target, page_flags};
use crate::ids::{PAGE_SIZE, PageId, VmId};
use crate::state::{SharedPage, Slot, State};

/// At most this many distinct pages are compared per hash value.
const MAX_CANDIDATES: usize = 8;

/// What one sharing scan did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Region pages hashed (private pages only; shared ones are skipped).
    pub pages_scanned: u64,
    /// Pages found to be all zeroes and released.
    pub zero_pages: u64,
    /// Pages now backed by another page's host copy (their own copy released).
    pub pages_deduplicated: u64,
    /// Pages that became shared master copies.
    pub new_masters: u64,
    /// Shared pages a guest had written (now private copies), found first.
    pub unshared_by_write: u64,
    /// Time spent finding duplicates (hashing and comparing pages).
    pub detect_time: Duration,
}

#[derive(Clone, Copy)]
enum Candidate {
    Master(PageId),
    Private {
        region: u64,
        index: u64,
        page: PageId,
        ptr: *const u8,
    },
}

/// Pages seen so far by content hash: chains of candidates in one vector
/// (no allocation per hash value).
#[derive(Default)]
struct Index {
    heads: IdMap<u64, u32>,
    nodes: Vec<(Candidate, u32)>,
}

const NO_NODE: u32 = u32::MAX;

impl Index {
    fn push(&mut self, hash: u64, cand: Candidate) {
        let node = self.nodes.len() as u32;
        let next = self.heads.insert(hash, node).unwrap_or(NO_NODE);
        self.nodes.push((cand, next));
    }

    /// Walks the chain for `hash`: returns the node holding identical
    /// content, or whether there is room for one more candidate.
    fn find(&self, hash: u64, same: impl Fn(&Candidate) -> bool) -> Result<u32, bool> {
        let mut node = self.heads.get(&hash).copied().unwrap_or(NO_NODE);
        let mut len = 0;
        while node != NO_NODE {
            let (cand, next) = &self.nodes[node as usize];
            if same(cand) {
                return Ok(node);
            }
            node = *next;
            len += 1;
        }
        Err(len < MAX_CANDIDATES)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Promote,
    Share,
    Zero,
}

#[derive(Clone, Copy)]
struct Action {
    region: u64,
    index: u64,
    kind: Kind,
    page: PageId,
    hash: u64,
}

impl Action {
    fn target(&self) -> Target {
        match self.kind {
            Kind::Zero => Target::Zero,
            Kind::Promote | Kind::Share => Target::Cow(self.page.0),
        }
    }
}

fn is_data(extents: &[(u64, u64)], page: PageId) -> bool {
    let p = u64::from(page.0);
    let i = extents.partition_point(|&(_, end)| end <= p);
    extents.get(i).is_some_and(|&(start, _)| start <= p)
}

impl State {
    /// Finds shared (or zero) region pages that a guest has written since
    /// they were shared, and accounts them as the VM's private pages.
    pub(crate) fn reconcile(&mut self) -> Result<u64> {
        let mut ids: Vec<u64> = self
            .regions
            .iter()
            .filter(|(_, r)| {
                r.slots
                    .iter()
                    .any(|s| matches!(s, Slot::Shared(_) | Slot::Zero | Slot::File))
            })
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        let mut unshared = 0;
        for id in ids {
            let Some(r) = self.regions.get(&id) else {
                continue;
            };
            let flags = page_flags(r.map.base().as_ptr(), r.slots.len())?;
            let vm = r.vm;
            let written: Vec<(usize, Slot)> = r
                .slots
                .iter()
                .zip(&flags)
                .enumerate()
                .filter(|(_, (s, f))| match s {
                    Slot::Shared(_) | Slot::File => f.is_cow_copy_of_file(),
                    Slot::Zero => f.is_written_anon(),
                    _ => false,
                })
                .map(|(i, (s, _))| (i, *s))
                .collect();
            for (i, slot) in written {
                if let Some(r) = self.regions.get_mut(&id) {
                    r.slots[i] = Slot::Anon;
                }
                self.anon_pages += 1;
                if slot == Slot::File {
                    // Already the VM's private host page: only its kind changes.
                    self.file_pages -= 1;
                    continue;
                }
                if let Slot::Shared(m) = slot {
                    self.unref_shared(m);
                }
                let v = self.vm_mut(vm)?;
                v.shared -= 1;
                v.private += 1;
                self.host_pages += 1;
                unshared += 1;
            }
        }
        self.events.cow_unshares += unshared;
        self.flush()?;
        Ok(unshared)
    }

    /// One sharing scan over every RAM region of every VM.
    pub(crate) fn share_scan(&mut self) -> Result<ScanReport> {
        let mut report = ScanReport {
            unshared_by_write: self.reconcile()?,
            ..ScanReport::default()
        };
        let extents = self.backing.data_extents()?;
        let zero = [0u8; PAGE_SIZE];
        let zero_hash = xxh3_64(&zero);
        let detect_start = Instant::now();
        let mut index = Index::default();
        for (m, sp) in &self.shared {
            index.push(sp.hash, Candidate::Master(*m));
        }
        let mut region_ids: Vec<u64> = self.regions.keys().copied().collect();
        region_ids.sort_unstable();
        let mut actions = Vec::new();
        for &rid in &region_ids {
            let Some(r) = self.regions.get(&rid) else {
                continue;
            };
            for (i, slot) in r.slots.iter().enumerate() {
                let i = i as u64;
                let own = match *slot {
                    Slot::Private(p) => Some(p),
                    Slot::Anon => None,
                    // Unwritten file pages are the file's page cache, not
                    // memory of the VM's own: sharing them would save
                    // nothing, and reading them would fault the whole file
                    // in. Written ones became `Anon` in the reconcile above.
                    Slot::File => continue,
                    _ => continue,
                };
                let zero_action = Action {
                    region: rid,
                    index: i,
                    kind: Kind::Zero,
                    page: PageId(0),
                    hash: zero_hash,
                };
                report.pages_scanned += 1;
                if own.is_some_and(|p| !is_data(&extents, p)) {
                    // A hole in the memfd: never written, reads zero.
                    actions.push(zero_action);
                    continue;
                }
                let ptr = r.map.page_ptr(i).cast_const();
                // SAFETY: the region page is mapped (regions are always fully
                // mapped) and, per the scan's contract, the VM's vCPUs are
                // stopped, so nobody writes it while we read.
                let bytes = unsafe { std::slice::from_raw_parts(ptr, PAGE_SIZE) };
                let h = xxh3_64(bytes);
                if h == zero_hash && bytes == zero {
                    actions.push(zero_action);
                    continue;
                }
                let found = index.find(h, |c| {
                    let other = match *c {
                        // SAFETY: masters are never written by anyone (see
                        // the module docs); the page is inside the backing.
                        Candidate::Master(m) => unsafe { self.backing.page_bytes(m.0) },
                        // SAFETY: as for `bytes` above; regions stay mapped
                        // while we hold the state.
                        Candidate::Private { ptr, .. } => unsafe {
                            std::slice::from_raw_parts(ptr, PAGE_SIZE)
                        },
                    };
                    other == bytes
                });
                match found {
                    Ok(k) => {
                        let node = &mut index.nodes[k as usize].0;
                        let master = match *node {
                            Candidate::Master(m) => m,
                            Candidate::Private {
                                region,
                                index,
                                page,
                                ..
                            } => {
                                actions.push(Action {
                                    region,
                                    index,
                                    kind: Kind::Promote,
                                    page,
                                    hash: h,
                                });
                                *node = Candidate::Master(page);
                                page
                            }
                        };
                        actions.push(Action {
                            region: rid,
                            index: i,
                            kind: Kind::Share,
                            page: master,
                            hash: h,
                        });
                    }
                    Err(room) => {
                        if let (Some(page), true) = (own, room) {
                            index.push(
                                h,
                                Candidate::Private {
                                    region: rid,
                                    index: i,
                                    page,
                                    ptr,
                                },
                            );
                        }
                    }
                }
            }
        }
        report.detect_time = detect_start.elapsed();
        // Masters first: a page may only be shared once its master is
        // protected by a private view in its owner's region.
        actions.sort_unstable_by_key(|a| (a.kind != Kind::Promote, a.region, a.index));
        let split = actions.partition_point(|a| a.kind == Kind::Promote);
        let (promotes, rest) = actions.split_at(split);
        self.apply(promotes, &mut report)?;
        let applied = self.apply(rest, &mut report);
        self.events.scans += 1;
        self.flush()?;
        applied.map(|()| report)
    }

    /// Remaps the actions' region pages in coalesced runs, then updates the
    /// bookkeeping of each run that was remapped.
    fn apply(&mut self, actions: &[Action], report: &mut ScanReport) -> Result<()> {
        let mut i = 0;
        while i < actions.len() {
            let first = actions[i];
            let mut n = 1;
            while let Some(next) = actions.get(i + n) {
                let prev = actions[i + n - 1];
                let contiguous = next.region == prev.region
                    && next.index == prev.index + 1
                    && match (prev.target(), next.target()) {
                        (Target::Zero, Target::Zero) => true,
                        (Target::Cow(a), Target::Cow(b)) => b == a + 1,
                        _ => false,
                    };
                if !contiguous {
                    break;
                }
                n += 1;
            }
            if let Some(r) = self.regions.get(&first.region) {
                r.map
                    .map(&self.backing, first.index, n as u64, first.target())?;
            }
            for a in &actions[i..i + n] {
                self.record(a, report)?;
            }
            i += n;
        }
        Ok(())
    }

    fn record(&mut self, a: &Action, report: &mut ScanReport) -> Result<()> {
        let Some(r) = self.regions.get(&a.region) else {
            return Ok(());
        };
        let vm: VmId = r.vm;
        let old = r.slots[a.index as usize];
        let new = match a.kind {
            Kind::Promote => {
                self.make_master(a.page, a.hash);
                report.new_masters += 1;
                Slot::Shared(a.page)
            }
            Kind::Share | Kind::Zero => {
                match old {
                    Slot::Private(p) => self.release(p),
                    Slot::Anon => {
                        self.anon_pages -= 1;
                        self.host_pages -= 1;
                    }
                    _ => {}
                }
                if a.kind == Kind::Zero {
                    report.zero_pages += 1;
                    Slot::Zero
                } else {
                    report.pages_deduplicated += 1;
                    self.events.pages_deduplicated += 1;
                    Slot::Shared(a.page)
                }
            }
        };
        if let Slot::Shared(m) = new {
            self.shared
                .entry(m)
                .or_insert(SharedPage {
                    refs: 0,
                    hash: a.hash,
                })
                .refs += 1;
        }
        if let Some(r) = self.regions.get_mut(&a.region) {
            r.slots[a.index as usize] = new;
        }
        let v = self.vm_mut(vm)?;
        v.private -= 1;
        v.shared += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_lookup() {
        let ext = [(10, 12), (512, 1024)];
        assert!(!is_data(&ext, PageId(9)));
        assert!(is_data(&ext, PageId(10)));
        assert!(is_data(&ext, PageId(11)));
        assert!(!is_data(&ext, PageId(12)));
        assert!(is_data(&ext, PageId(1023)));
        assert!(!is_data(&ext, PageId(1024)));
    }
}
