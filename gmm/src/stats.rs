//! Snapshots of the global and per-VM numbers.

use crate::gmm::Reservation;
use crate::ids::{PAGE_SIZE, VmId};
use crate::state::{State, VmState};

/// Pages per account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccountPages {
    /// Base (guest RAM) pages.
    pub base: u64,
    /// Shadow pages.
    pub shadow: u64,
    /// Fixed pages.
    pub fixed: u64,
}

/// One VM's accounts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmStats {
    /// The VM.
    pub id: u32,
    /// Its name.
    pub name: String,
    /// Its reservation.
    pub reserved: Reservation,
    /// Pages allocated per account (shared pages count as allocated).
    pub allocated: AccountPages,
    /// Pages backed by memory of their own.
    pub private: u64,
    /// Pages backed by a shared page (or by nothing when zero).
    pub shared: u64,
    /// Pages given back through the balloon.
    pub ballooned: u64,
    /// Of those, region pages parked: their memory is returned but the
    /// region still maps their page, which stays reserved for them (so
    /// deflating needs no remap).
    pub parked: u64,
}

impl VmStats {
    pub(crate) fn collect(id: VmId, v: &VmState) -> Self {
        let [base, shadow, fixed] = v.reserved;
        let [ab, ash, af] = v.allocated;
        VmStats {
            id: id.0,
            name: v.name.clone(),
            reserved: Reservation {
                base,
                shadow,
                fixed,
            },
            allocated: AccountPages {
                base: ab,
                shadow: ash,
                fixed: af,
            },
            private: v.private,
            shared: v.shared,
            ballooned: v.ballooned,
            parked: v.parked,
        }
    }
}

/// The GMM-wide numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GmmStats {
    /// Global maximum of host pages.
    pub max_pages: u64,
    /// Pages reserved by all VMs.
    pub reserved_pages: u64,
    /// Host pages in use (chunk pages plus private copies made on write).
    pub allocated_pages: u64,
    /// Shared master pages (each backs two or more guest pages).
    pub shared_pages: u64,
    /// Guest pages backed by shared pages or by nothing (zero pages).
    pub sharing_guest_pages: u64,
    /// Host pages saved by sharing (`sharing_guest_pages - shared_pages`).
    pub saved_pages: u64,
    /// Pages ballooned by all VMs.
    pub ballooned_pages: u64,
    /// Of those, region pages parked (see [`VmStats::parked`]); they cost
    /// no host memory once returned, but keep their page ids.
    pub parked_pages: u64,
    /// Chunks currently existing.
    pub chunks: u64,
    /// Of those, chunks without any used page (their memory is returned).
    pub empty_chunks: u64,
    /// Of those, chunks partly used.
    pub partial_chunks: u64,
    /// Chunk ids available in total.
    pub chunk_limit: u64,
    /// Freed or ballooned pages not yet returned to the host.
    pub pending_pages: u64,
    /// Bytes of host memory the chunk memfd holds right now.
    pub backing_bytes: u64,
    /// Chunks created so far.
    pub chunks_created: u64,
    /// Chunks freed so far.
    pub chunks_freed: u64,
    /// Pages returned to the host so far.
    pub pages_returned: u64,
    /// Sharing scans run.
    pub scans: u64,
    /// Pages deduplicated by all scans so far.
    pub pages_deduplicated: u64,
    /// Shared pages later written by their guest (copied on write) so far.
    pub cow_unshares: u64,
    /// Times the host refused to take ballooned memory back (retried later).
    pub reclaim_errors: u64,
    /// Chunks examined while picking where to allocate pages, so far
    /// (a few per allocation, however many chunks exist).
    pub chunk_probes: u64,
    /// Registered VMs.
    pub vms: u64,
    /// Guest pages mapped copy-on-write from files and not written since
    /// (part of `allocated_pages`).
    pub file_mapped_pages: u64,
}

impl GmmStats {
    pub(crate) fn collect(st: &State) -> Self {
        let sharing: u64 = st.vms().map(|(_, v)| v.shared).sum();
        let masters = st.shared.len() as u64;
        GmmStats {
            max_pages: st.cfg.max_pages,
            reserved_pages: st.reserved_total,
            allocated_pages: st.host_pages,
            shared_pages: masters,
            sharing_guest_pages: sharing,
            saved_pages: sharing.saturating_sub(masters),
            ballooned_pages: st.ballooned_total,
            parked_pages: st.parked_total,
            chunks: u64::from(st.n_chunks),
            empty_chunks: u64::from(st.n_empty),
            partial_chunks: st.partial_chunks() as u64,
            chunk_limit: u64::from(st.chunk_limit()),
            pending_pages: st.pending_len() as u64 + st.deferred.pages(),
            backing_bytes: st.backing.resident_bytes().unwrap_or(0),
            chunks_created: st.events.chunks_created,
            chunks_freed: st.events.chunks_freed,
            pages_returned: st.events.pages_returned,
            scans: st.events.scans,
            pages_deduplicated: st.events.pages_deduplicated,
            cow_unshares: st.events.cow_unshares,
            reclaim_errors: st.events.reclaim_errors,
            chunk_probes: st.events.chunk_probes,
            vms: st.vms().count() as u64,
            file_mapped_pages: st.file_pages,
        }
    }

    /// Host bytes saved by sharing.
    pub fn saved_bytes(&self) -> u64 {
        self.saved_pages * PAGE_SIZE as u64
    }
}
