//! Statistics under `/GMM/...` in a `stam` registry, computed when read.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use stam::{Registry, Unit};

use crate::gmm::{Gmm, Vm};
use crate::state::{State, VmState};
use crate::stats::GmmStats;

type GlobalStat = (&'static str, Unit, &'static str, fn(&GmmStats) -> u64);

const GLOBAL: &[GlobalStat] = &[
    (
        "cMaxPages",
        Unit::Pages,
        "Global maximum of host pages.",
        |s| s.max_pages,
    ),
    (
        "cReservedPages",
        Unit::Pages,
        "Pages reserved by all VMs.",
        |s| s.reserved_pages,
    ),
    (
        "cAllocatedPages",
        Unit::Pages,
        "Host pages in use by all VMs.",
        |s| s.allocated_pages,
    ),
    ("cSharedPages", Unit::Pages, "Shared master pages.", |s| {
        s.shared_pages
    }),
    (
        "cDuplicatePages",
        Unit::Pages,
        "Guest pages backed by shared or zero pages.",
        |s| s.sharing_guest_pages,
    ),
    (
        "cSavedPages",
        Unit::Pages,
        "Host pages saved by page sharing.",
        |s| s.saved_pages,
    ),
    (
        "cBalloonedPages",
        Unit::Pages,
        "Pages ballooned by all VMs.",
        |s| s.ballooned_pages,
    ),
    (
        "cParkedPages",
        Unit::Pages,
        "Ballooned pages still mapped by their region, their memory returned.",
        |s| s.parked_pages,
    ),
    (
        "cFileMappedPages",
        Unit::Pages,
        "Guest pages mapped copy-on-write from files, not written since.",
        |s| s.file_mapped_pages,
    ),
    ("cChunks", Unit::Count, "Chunks in existence.", |s| s.chunks),
    (
        "cEmptyChunks",
        Unit::Count,
        "Chunks without used pages.",
        |s| s.empty_chunks,
    ),
    ("cPartialChunks", Unit::Count, "Chunks partly used.", |s| {
        s.partial_chunks
    }),
    ("cFreedChunks", Unit::Count, "Chunks freed so far.", |s| {
        s.chunks_freed
    }),
    (
        "cPendingPages",
        Unit::Pages,
        "Freed or ballooned pages not yet returned to the host.",
        |s| s.pending_pages,
    ),
    (
        "cPagesReturned",
        Unit::Pages,
        "Pages returned to the host so far.",
        |s| s.pages_returned,
    ),
    (
        "cbBacking",
        Unit::Bytes,
        "Host memory held by the chunk memfd.",
        |s| s.backing_bytes,
    ),
    ("cShareScans", Unit::Count, "Page sharing scans run.", |s| {
        s.scans
    }),
    (
        "cCowUnshares",
        Unit::Pages,
        "Shared pages later written by a guest.",
        |s| s.cow_unshares,
    ),
    (
        "cReclaimErrors",
        Unit::Count,
        "Times the host refused ballooned memory back (retried).",
        |s| s.reclaim_errors,
    ),
    (
        "cChunkProbes",
        Unit::Count,
        "Chunks examined while picking where to allocate pages.",
        |s| s.chunk_probes,
    ),
    ("cVMs", Unit::Count, "Registered VMs.", |s| s.vms),
];

type VmStat = (&'static str, &'static str, fn(&VmState) -> u64);

const PER_VM: &[VmStat] = &[
    ("Reserved/cBasePages", "Base pages reserved.", |v| {
        v.reserved[0]
    }),
    ("Reserved/cShadowPages", "Shadow pages reserved.", |v| {
        v.reserved[1]
    }),
    ("Reserved/cFixedPages", "Fixed pages reserved.", |v| {
        v.reserved[2]
    }),
    ("Allocated/cBasePages", "Base pages allocated.", |v| {
        v.allocated[0]
    }),
    ("Allocated/cShadowPages", "Shadow pages allocated.", |v| {
        v.allocated[1]
    }),
    ("Allocated/cFixedPages", "Fixed pages allocated.", |v| {
        v.allocated[2]
    }),
    (
        "cPrivatePages",
        "Pages backed by memory of their own.",
        |v| v.private,
    ),
    (
        "cSharedPages",
        "Pages backed by shared or zero pages.",
        |v| v.shared,
    ),
    ("cBalloonedPages", "Pages in the balloon.", |v| v.ballooned),
    (
        "cParkedPages",
        "Ballooned pages parked (mapped, memory returned, no remap).",
        |v| v.parked,
    ),
];

fn read_global(state: &Weak<Mutex<State>>, f: fn(&GmmStats) -> u64) -> u64 {
    state
        .upgrade()
        .map_or(0, |s| f(&GmmStats::collect(&s.lock())))
}

impl Gmm {
    /// Registers the global statistics (`/GMM/cAllocatedPages`, ...) in
    /// `reg`; they are computed from the live state whenever read, and read
    /// zero once the GMM is gone.
    ///
    /// ```
    /// let gmm = gmm::Gmm::new(gmm::GmmConfig::new(1024))?;
    /// let reg = stam::Registry::new();
    /// gmm.register_stats(&reg).unwrap();
    /// assert!(reg.contains("/GMM/cAllocatedPages"));
    /// # Ok::<(), gmm::Error>(())
    /// ```
    pub fn register_stats(&self, reg: &Registry) -> Result<(), stam::Error> {
        for &(name, unit, desc, f) in GLOBAL {
            let state = Arc::downgrade(&self.state);
            reg.callback(format!("/GMM/{name}"), unit, desc, move || {
                read_global(&state, f)
            })?;
        }
        Ok(())
    }
}

impl Vm {
    /// Registers this VM's accounts under `prefix` (VirtualBox uses
    /// `/GMM/VM`; with several VMs in one registry give each its own, e.g.
    /// `/GMM/VM1`). They read zero once the VM is gone.
    pub fn register_stats(&self, reg: &Registry, prefix: &str) -> Result<(), stam::Error> {
        for &(name, desc, f) in PER_VM {
            let vm = Arc::downgrade(&self.inner);
            reg.callback(format!("{prefix}/{name}"), Unit::Pages, desc, move || {
                vm.upgrade().map_or(0, |vm| {
                    let st = vm.gmm.state.lock();
                    st.vm(vm.id).map_or(0, f)
                })
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Gmm, GmmConfig, Reservation};

    fn value(reg: &stam::Registry, name: &str) -> u64 {
        let snap = reg.snapshot(name);
        match snap.get(name).map(|s| &s.value) {
            Some(stam::Value::Callback { value, .. }) => *value,
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn stats_follow_the_live_state() {
        let reg = stam::Registry::new();
        let g = Gmm::new(GmmConfig::new(1024)).unwrap();
        g.register_stats(&reg).unwrap();
        let vm = g
            .register_vm(
                "vm",
                Reservation {
                    base: 64,
                    ..Default::default()
                },
            )
            .unwrap();
        vm.register_stats(&reg, "/GMM/VM").unwrap();
        let ram = vm.create_ram_region(16).unwrap();
        ram.alloc(0, 10).unwrap();
        ram.balloon_inflate(0, 3).unwrap();
        g.return_freed_pages().unwrap();
        assert_eq!(value(&reg, "/GMM/cAllocatedPages"), 7);
        assert_eq!(value(&reg, "/GMM/VM/Allocated/cBasePages"), 7);
        assert_eq!(value(&reg, "/GMM/VM/cBalloonedPages"), 3);
        assert_eq!(value(&reg, "/GMM/VM/cParkedPages"), 3);
        assert_eq!(value(&reg, "/GMM/cParkedPages"), 3);
        assert_eq!(value(&reg, "/GMM/VM/Reserved/cBasePages"), 64);
        // Registering twice is refused by the registry.
        assert!(g.register_stats(&reg).is_err());
        drop(ram);
        drop(vm);
        assert_eq!(value(&reg, "/GMM/VM/Allocated/cBasePages"), 0);
        drop(g);
        assert_eq!(value(&reg, "/GMM/cMaxPages"), 0);
    }
}
