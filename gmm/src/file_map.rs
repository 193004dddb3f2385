//! Region pages mapped copy-on-write from a file (a saved state's RAM):
//! [`Slot::File`], and its accounting.
//!
//! A file-mapped page is the VM's allocated private page, counted as one
//! host page (like a chunk page: the global maximum stays conservative).
//! Mapping it returns the memory the page had. A guest write makes the
//! kernel copy the page ([`Slot::Anon`] once reconciled, still one host
//! page); freeing, discarding and ballooning map zero memory over it like
//! over any page. The file's pages themselves belong to the page cache.

use std::os::fd::RawFd;

use crate::error::{Error, Result};
use crate::state::{Slot, State};

impl State {
    /// Maps allocated region pages `first..first+count` to a private view
    /// of `fd` from byte `offset`, releasing their old backing.
    ///
    /// If the mapping fails, the region's pages may read zero while their
    /// slots are unchanged; the caller (a failed restore) drops the VM.
    pub(crate) fn region_map_file(
        &mut self,
        id: u64,
        first: u64,
        count: u64,
        fd: RawFd,
        offset: u64,
    ) -> Result<()> {
        self.expect_slots(id, first, count, "allocated", Slot::is_allocated)?;
        let r = self.region(id)?;
        let vm = r.vm;
        let range = first as usize..(first + count) as usize;
        // Pages without a host page of their own now get one.
        let added = r.slots[range.clone()]
            .iter()
            .filter(|s| matches!(s, Slot::Zero | Slot::Shared(_)))
            .count() as u64;
        if self.host_pages + added > self.cfg.max_pages {
            return Err(Error::GlobalLimit {
                requested: added,
                in_use: self.host_pages,
                max: self.cfg.max_pages,
            });
        }
        r.map.map_file(first, count, fd, offset)?;
        let old: Vec<Slot> = r.slots[range.clone()].to_vec();
        self.release_pages(&old);
        let v = self.vm_mut(vm)?;
        v.shared -= added;
        v.private += added;
        self.file_pages += count;
        self.host_pages += count;
        if let Some(r) = self.regions.get_mut(&id) {
            r.slots[range].fill(Slot::File);
        }
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    use crate::{Error, Gmm, GmmConfig, PAGE_SIZE, PageState, Reservation};

    const P: u64 = PAGE_SIZE as u64;

    /// A file whose page `i` is filled with `i + 1`.
    fn page_file(pages: u64) -> File {
        let f = tempfile::tempfile().unwrap();
        for i in 0..pages {
            f.write_all_at(&[i as u8 + 1; PAGE_SIZE], i * P).unwrap();
        }
        f
    }

    fn setup(pages: u64) -> (Gmm, crate::Vm, crate::RamRegion) {
        let g = Gmm::new(GmmConfig::new(4096)).unwrap();
        let vm = g
            .register_vm(
                "vm",
                Reservation {
                    base: pages,
                    ..Default::default()
                },
            )
            .unwrap();
        let ram = vm.create_ram_region(pages).unwrap();
        ram.alloc(0, pages).unwrap();
        (g, vm, ram)
    }

    fn byte(ram: &crate::RamRegion, at: u64) -> u8 {
        let mut b = [0u8];
        ram.read(at, &mut b).unwrap();
        b[0]
    }

    #[test]
    fn mapped_pages_read_the_file_and_keep_the_accounts() {
        let (g, vm, ram) = setup(8);
        ram.write(2 * P, &[0x55; 100]).unwrap();
        let before = (g.stats().allocated_pages, vm.stats());
        let backing = g.stats().backing_bytes;
        let f = page_file(4);
        ram.map_file(2, 3, &f, P).unwrap();
        drop(f);
        let s = g.stats();
        assert_eq!(s.file_mapped_pages, 3);
        assert_eq!((s.allocated_pages, vm.stats()), before);
        // The written chunk page went back to the host (before anything
        // reads a memfd page again: a read allocates one).
        assert_eq!(s.pending_pages, 0);
        assert!(s.backing_bytes < backing);
        assert_eq!([2, 3, 4].map(|i| byte(&ram, i * P + 7)), [2, 3, 4]);
        assert_eq!(byte(&ram, P), 0);
        assert_eq!(ram.page_state(3).unwrap(), PageState::Private);
    }

    #[test]
    fn a_write_makes_a_private_copy_and_leaves_the_file_alone() {
        let (g, vm, ram) = setup(4);
        let f = page_file(2);
        ram.map_file(0, 2, &f, 0).unwrap();
        let allocated = g.stats().allocated_pages;
        ram.write(P + 10, &[0xaa]).unwrap();
        assert_eq!(byte(&ram, P + 10), 0xaa);
        assert_eq!(byte(&ram, P + 11), 2);
        let mut b = [0u8];
        f.read_exact_at(&mut b, P + 10).unwrap();
        assert_eq!(b, [2]);
        // Reconciling finds the copy: an anonymous page now, same totals.
        assert_eq!(g.reconcile_shared().unwrap(), 0);
        let s = g.stats();
        assert_eq!(s.file_mapped_pages, 1);
        assert_eq!(s.allocated_pages, allocated);
        assert_eq!(vm.stats().private, 4);
        assert_eq!(ram.page_state(1).unwrap(), PageState::Private);
        // A scan leaves the unwritten file page alone and reads the copy.
        let report = g.share_scan().unwrap();
        assert_eq!(report.pages_scanned, 3);
        assert_eq!(g.stats().file_mapped_pages, 1);
        assert_eq!(byte(&ram, 5), 1);
        assert_eq!(byte(&ram, P + 10), 0xaa);
    }

    #[test]
    fn balloon_free_and_discard_make_mapped_pages_zero_with_exact_accounts() {
        let (g, vm, ram) = setup(8);
        let f = page_file(6);
        ram.map_file(0, 6, &f, 0).unwrap();
        let host = g.stats().allocated_pages;

        ram.balloon_inflate(0, 2).unwrap();
        assert_eq!(byte(&ram, 0), 0);
        assert_eq!(byte(&ram, P), 0);
        assert_eq!(vm.stats().ballooned, 2);
        assert_eq!(vm.stats().allocated.base, 6);
        assert_eq!(g.stats().allocated_pages, host - 2);
        ram.balloon_deflate(0, 2).unwrap();
        ram.alloc(0, 2).unwrap();
        assert_eq!(byte(&ram, 0), 0);

        ram.free(2, 1).unwrap();
        assert_eq!(byte(&ram, 2 * P), 0);
        assert_eq!(ram.page_state(2).unwrap(), PageState::Empty);

        ram.discard(3, 1).unwrap();
        assert_eq!(byte(&ram, 3 * P), 0);
        assert_eq!(ram.page_state(3).unwrap(), PageState::Zero);

        let s = g.stats();
        assert_eq!(s.file_mapped_pages, 2);
        assert_eq!(s.allocated_pages, host - 2);
        let v = vm.stats();
        assert_eq!((v.allocated.base, v.private, v.shared), (7, 6, 1));
        assert_eq!([4, 5].map(|i| byte(&ram, i * P)), [5, 6]);

        drop(ram);
        assert_eq!(g.stats().file_mapped_pages, 0);
        assert_eq!(g.stats().allocated_pages, 0);
        drop(vm);
    }

    #[test]
    fn shared_and_zero_pages_can_be_mapped_too() {
        let (g, vm, ram) = setup(4);
        ram.write(0, &[3; PAGE_SIZE]).unwrap();
        ram.write(P, &[3; PAGE_SIZE]).unwrap();
        g.share_scan().unwrap();
        assert_eq!(vm.stats().shared, 4);
        let f = page_file(4);
        ram.map_file(0, 4, &f, 0).unwrap();
        let v = vm.stats();
        assert_eq!((v.private, v.shared, v.allocated.base), (4, 0, 4));
        let s = g.stats();
        assert_eq!(
            (s.file_mapped_pages, s.allocated_pages, s.shared_pages),
            (4, 4, 0)
        );
        assert_eq!([0, 1, 2, 3].map(|i| byte(&ram, i * P)), [1, 2, 3, 4]);
    }

    #[test]
    fn bad_requests_change_nothing() {
        let (g, vm, ram) = setup(4);
        let f = page_file(2);
        assert!(matches!(
            ram.map_file(0, 1, &f, 100),
            Err(Error::InvalidConfig(_))
        ));
        assert!(matches!(
            ram.map_file(3, 2, &f, 0),
            Err(Error::RangeOutOfBounds { .. })
        ));
        ram.free(1, 1).unwrap();
        assert!(matches!(
            ram.map_file(0, 2, &f, 0),
            Err(Error::PageState { index: 1, .. })
        ));
        assert_eq!(g.stats().file_mapped_pages, 0);
        assert_eq!(vm.stats().private, 3);
    }
}
