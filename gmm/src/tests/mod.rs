//! Unit tests of the public behaviour (accounting, limits, allocation order,
//! ballooning, sharing); the state-machine property against a simple model
//! is in `model`, the background reclaim and parking tests in `reclaim`.

mod model;
mod reclaim;
mod selection;

use crate::{
    Account, BalloonAction, CHUNK_PAGES, Error, Gmm, GmmConfig, PAGE_SIZE, PageState, RamRegion,
    Reservation,
};

fn gmm(max: u64) -> Gmm {
    Gmm::new(GmmConfig::new(max)).unwrap()
}

fn base(n: u64) -> Reservation {
    Reservation {
        base: n,
        ..Default::default()
    }
}

#[test]
fn exceeding_the_reservation_is_out_of_memory_and_changes_nothing() {
    let g = gmm(4096);
    let vm = g.register_vm("vm", base(100)).unwrap();
    let ram = vm.create_ram_region(100).unwrap();
    ram.alloc(0, 90).unwrap();
    vm.alloc_pages(Account::Base, 5).unwrap();
    let err = ram.alloc(90, 10).unwrap_err();
    assert!(matches!(
        err,
        Error::VmAccountLimit {
            requested: 10,
            allocated: 95,
            reserved: 100,
            ..
        }
    ));
    assert!(err.is_out_of_memory());
    assert_eq!(ram.page_state(95).unwrap(), PageState::Empty);
    assert_eq!(vm.stats().allocated.base, 95);
    assert_eq!(g.stats().allocated_pages, 95);
    ram.alloc(90, 5).unwrap();
    // Other accounts have their own reservations.
    assert!(
        vm.alloc_page(Account::Shadow)
            .unwrap_err()
            .is_out_of_memory()
    );
}

#[test]
fn the_global_maximum_is_enforced() {
    let mut cfg = GmmConfig::new(64);
    cfg.overcommit = true;
    let g = Gmm::new(cfg).unwrap();
    let a = g.register_vm("a", base(64)).unwrap();
    let b = g.register_vm("b", base(64)).unwrap();
    let pages = a.alloc_pages(Account::Base, 60).unwrap();
    let err = b.alloc_pages(Account::Base, 5).unwrap_err();
    assert!(matches!(
        err,
        Error::GlobalLimit {
            requested: 5,
            in_use: 60,
            max: 64
        }
    ));
    assert_eq!(b.stats().allocated.base, 0);
    a.free_pages(&pages[..10].iter().map(|p| p.id).collect::<Vec<_>>())
        .unwrap();
    b.alloc_pages(Account::Base, 5).unwrap();
}

#[test]
fn reservations_respect_the_maximum_unless_overcommitting() {
    let g = gmm(100);
    let _a = g.register_vm("a", base(60)).unwrap();
    let err = g.register_vm("b", base(50)).unwrap_err();
    assert!(matches!(
        err,
        Error::ReservationTooLarge {
            requested: 50,
            available: 40
        }
    ));
    drop(_a);
    g.register_vm("b", base(50)).unwrap();
}

#[test]
fn raw_pages_are_owned_and_accounted() {
    let g = gmm(4096);
    let a = g
        .register_vm(
            "a",
            Reservation {
                base: 8,
                shadow: 8,
                fixed: 8,
            },
        )
        .unwrap();
    let b = g.register_vm("b", base(8)).unwrap();
    let p = a.alloc_page(Account::Shadow).unwrap();
    let q = a.alloc_page(Account::Fixed).unwrap();
    assert_ne!(p.id, q.id);
    assert_eq!(
        q.host_addr - p.host_addr,
        u64::from(q.id.0 - p.id.0) * PAGE_SIZE as u64
    );
    let s = a.stats();
    assert_eq!(
        (s.allocated.shadow, s.allocated.fixed, s.private),
        (1, 1, 2)
    );
    assert!(matches!(b.free_page(p.id), Err(Error::NotOwner { .. })));
    a.free_page(p.id).unwrap();
    assert!(matches!(a.free_page(p.id), Err(Error::PageNotFound(_))));
    assert_eq!(a.stats().allocated.shadow, 0);
    // Duplicates make free_pages refuse the whole call.
    assert!(a.free_pages(&[q.id, q.id]).is_err());
    assert_eq!(a.stats().allocated.fixed, 1);
    // Region pages are not freed through the raw API.
    let ram = a.create_ram_region(1).unwrap();
    ram.alloc(0, 1).unwrap();
    let page = a.alloc_page(Account::Base).unwrap();
    let region_page = crate::PageId(page.id.0 - 1);
    assert!(matches!(
        a.free_page(region_page),
        Err(Error::PageInRegion(_))
    ));
}

#[test]
fn pages_are_zero_when_handed_out_again() {
    let g = gmm(4096);
    let vm = g.register_vm("vm", base(16)).unwrap();
    let ram = vm.create_ram_region(4).unwrap();
    ram.alloc(0, 4).unwrap();
    ram.write(0, &[0xaa; 4 * PAGE_SIZE]).unwrap();
    ram.free(0, 4).unwrap();
    let mut buf = [1u8; 64];
    ram.read(0, &mut buf).unwrap();
    assert_eq!(buf, [0; 64]);
    ram.alloc(0, 4).unwrap();
    ram.read(3 * PAGE_SIZE as u64, &mut buf).unwrap();
    assert_eq!(buf, [0; 64]);
    // A second VM gets the same chunk pages and does not see the old data.
    drop(ram);
    let other = g.register_vm("other", base(16)).unwrap();
    let p = other.alloc_page(Account::Base).unwrap();
    // SAFETY: the page is ours and 4 KiB long.
    let first = unsafe { std::ptr::read_volatile(p.host_addr as *const u8) };
    assert_eq!(first, 0);
}

#[test]
fn allocation_order_keeps_vms_apart_and_reuses_chunks() {
    let g = gmm(1 << 16);
    let a = g.register_vm("a", base(4096)).unwrap();
    let b = g.register_vm("b", base(4096)).unwrap();
    let pa = a.alloc_pages(Account::Base, 10).unwrap();
    let pb = b.alloc_pages(Account::Base, 10).unwrap();
    // B does not take free pages of A's partly used chunk: little is free.
    assert_ne!(pa[0].id.chunk(), pb[0].id.chunk());
    assert_eq!(g.stats().chunks, 2);
    // A keeps filling its own chunk.
    let more = a.alloc_page(Account::Base).unwrap();
    assert_eq!(more.id.chunk(), pa[0].id.chunk());
    // Emptied chunks are kept (memory returned) and reused before new ones.
    b.free_pages(&pb.iter().map(|p| p.id).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(g.stats().empty_chunks, 1);
    let c = g.register_vm("c", base(4096)).unwrap();
    let pc = c.alloc_page(Account::Base).unwrap();
    assert_eq!(pc.id.chunk(), pb[0].id.chunk());
    assert_eq!(g.stats().chunks, 2);
}

#[test]
fn partly_used_chunks_of_others_are_used_when_plenty_is_free() {
    let mut cfg = GmmConfig::new(1 << 16);
    cfg.plenty_free_pages = 600;
    cfg.empty_chunk_cache = 0;
    let g = Gmm::new(cfg).unwrap();
    let a = g.register_vm("a", base(4096)).unwrap();
    let b = g.register_vm("b", base(4096)).unwrap();
    let pa = a
        .alloc_pages(Account::Base, 2 * CHUNK_PAGES as u64)
        .unwrap();
    // Free most of both chunks but keep one page in each: 1022 pages free.
    let ids: Vec<_> = pa
        .iter()
        .enumerate()
        .filter(|(i, _)| i % CHUNK_PAGES != 0)
        .map(|(_, p)| p.id)
        .collect();
    a.free_pages(&ids).unwrap();
    assert_eq!(g.stats().partial_chunks, 2);
    let pb = b.alloc_page(Account::Base).unwrap();
    assert!(pa.iter().any(|p| p.id.chunk() == pb.id.chunk()));
    assert_eq!(g.stats().chunks, 2);
}

#[test]
fn empty_chunks_beyond_the_cache_are_freed_and_ids_recycled() {
    let mut cfg = GmmConfig::new(1 << 16);
    cfg.empty_chunk_cache = 1;
    let g = Gmm::new(cfg).unwrap();
    let vm = g.register_vm("vm", base(4 * CHUNK_PAGES as u64)).unwrap();
    let ram = vm.create_ram_region(4 * CHUNK_PAGES as u64).unwrap();
    ram.alloc(0, 4 * CHUNK_PAGES as u64).unwrap();
    assert_eq!(g.stats().chunks, 4);
    ram.free(0, 4 * CHUNK_PAGES as u64).unwrap();
    let s = g.stats();
    assert_eq!((s.chunks, s.empty_chunks, s.chunks_freed), (1, 1, 3));
    ram.alloc(0, 2 * CHUNK_PAGES as u64).unwrap();
    assert_eq!(g.stats().chunks, 2);
    assert!(g.stats().chunk_limit >= 2);
}

#[test]
fn balloon_rules_follow_virtualbox() {
    let g = gmm(4096);
    let vm = g.register_vm("vm", base(100)).unwrap();
    let ram = vm.create_ram_region(100).unwrap();
    ram.alloc(0, 80).unwrap();
    vm.balloon(BalloonAction::Inflate, 20).unwrap();
    let err = vm.balloon(BalloonAction::Inflate, 1).unwrap_err();
    assert!(matches!(
        err,
        Error::BalloonInflateTooMuch {
            allocated: 80,
            ballooned: 20,
            reserved: 100,
            ..
        }
    ));
    // Ballooned pages count against the reservation.
    assert!(ram.alloc(80, 1).unwrap_err().is_out_of_memory());
    vm.balloon(BalloonAction::Deflate, 5).unwrap();
    assert!(matches!(
        vm.balloon(BalloonAction::Deflate, 16),
        Err(Error::BalloonDeflateTooMuch {
            requested: 16,
            ballooned: 15
        })
    ));
    vm.balloon(BalloonAction::Reset, 0).unwrap();
    assert_eq!(vm.stats().ballooned, 0);
    assert_eq!(g.stats().ballooned_pages, 0);

    ram.balloon_inflate(10, 30).unwrap();
    assert_eq!(ram.page_state(10).unwrap(), PageState::Ballooned);
    let s = vm.stats();
    assert_eq!((s.allocated.base, s.ballooned, s.private), (50, 30, 50));
    assert!(matches!(
        ram.balloon_inflate(10, 1),
        Err(Error::PageState { index: 10, .. })
    ));
    assert!(matches!(
        ram.balloon_deflate(0, 11),
        Err(Error::PageState { index: 0, .. })
    ));
    // Private pages were parked: they come back backed (and zeroed).
    ram.balloon_deflate(10, 30).unwrap();
    assert_eq!(ram.page_state(10).unwrap(), PageState::Private);
    let s = vm.stats();
    assert_eq!((s.allocated.base, s.ballooned, s.parked), (80, 0, 0));
    // Reset gives parked pages back to the VM as well.
    ram.balloon_inflate(0, 5).unwrap();
    assert_eq!(vm.stats().parked, 5);
    vm.balloon(BalloonAction::Reset, 0).unwrap();
    assert_eq!(ram.page_state(0).unwrap(), PageState::Private);
    let s = vm.stats();
    assert_eq!((s.allocated.base, s.ballooned, s.parked), (80, 0, 0));
    // Pages ballooned after sharing are not parked: they come back empty.
    g.share_scan().unwrap();
    ram.balloon_inflate(0, 5).unwrap();
    assert_eq!(vm.stats().parked, 0);
    ram.balloon_deflate(0, 5).unwrap();
    assert_eq!(ram.page_state(0).unwrap(), PageState::Empty);
    ram.balloon_inflate(5, 5).unwrap();
    vm.balloon(BalloonAction::Reset, 0).unwrap();
    assert_eq!(ram.page_state(5).unwrap(), PageState::Empty);
}

#[test]
fn region_ranges_and_states_are_checked() {
    let g = gmm(4096);
    let vm = g.register_vm("vm", base(100)).unwrap();
    let ram = vm.create_ram_region(10).unwrap();
    assert!(matches!(
        ram.alloc(5, 6),
        Err(Error::RangeOutOfBounds {
            first: 5,
            count: 6,
            pages: 10
        })
    ));
    assert!(matches!(
        ram.alloc(u64::MAX, 2),
        Err(Error::RangeOutOfBounds { .. })
    ));
    ram.alloc(0, 5).unwrap();
    assert!(matches!(
        ram.alloc(4, 2),
        Err(Error::PageState { index: 4, .. })
    ));
    assert!(matches!(
        ram.free(4, 2),
        Err(Error::PageState { index: 5, .. })
    ));
    assert!(matches!(
        ram.write(4 * 4096, &[1; 4097]),
        Err(Error::PageState { index: 5, .. })
    ));
    assert!(ram.read(10 * 4096 - 1, &mut [0; 2]).is_err());
    assert!(vm.create_ram_region(0).is_err());
    assert!(matches!(
        vm.create_ram_region(1 << 40),
        Err(Error::RegionTooLarge { reserved: 100, .. })
    ));
}

#[test]
fn sharing_deduplicates_and_writes_stay_private() {
    let g = gmm(4096);
    let a = g.register_vm("a", base(64)).unwrap();
    let b = g.register_vm("b", base(64)).unwrap();
    let (ra, rb) = (
        a.create_ram_region(16).unwrap(),
        b.create_ram_region(16).unwrap(),
    );
    ra.alloc(0, 16).unwrap();
    rb.alloc(0, 16).unwrap();
    for i in 0..16u64 {
        // Pages 0..8 hold distinct data, 8..12 zeros, 12..16 repeat page 0.
        let fill = match i {
            0..8 => i as u8 + 1,
            8..12 => 0,
            _ => 1,
        };
        ra.write(i * 4096, &[fill; 4096]).unwrap();
        rb.write(i * 4096, &[fill; 4096]).unwrap();
    }
    let r = g.share_scan().unwrap();
    assert_eq!(r.pages_scanned, 32);
    assert_eq!(r.zero_pages, 8);
    assert_eq!(r.new_masters, 8);
    assert_eq!(r.pages_deduplicated, 16);
    let s = g.stats();
    assert_eq!(
        (s.shared_pages, s.sharing_guest_pages, s.saved_pages),
        (8, 32, 24)
    );
    assert_eq!(s.allocated_pages, 8);
    assert_eq!(
        (
            a.stats().private,
            a.stats().shared,
            a.stats().allocated.base
        ),
        (0, 16, 16)
    );
    // A second scan finds nothing new.
    let again = g.share_scan().unwrap();
    assert_eq!((again.pages_scanned, again.pages_deduplicated), (0, 0));

    // The master's original owner writes: B still sees the old data.
    ra.write(0, &[0x55; 16]).unwrap();
    rb.write(8 * 4096, &[0x66; 16]).unwrap();
    let mut buf = [0u8; 16];
    rb.read(0, &mut buf).unwrap();
    assert_eq!(buf, [1; 16]);
    ra.read(12 * 4096, &mut buf).unwrap();
    assert_eq!(buf, [1; 16]);
    ra.read(8 * 4096, &mut buf).unwrap();
    assert_eq!(buf, [0; 16]);
    ra.read(0, &mut buf).unwrap();
    assert_eq!(buf, [0x55; 16]);
    let states = |r: &RamRegion| r.page_states(0, 16).unwrap();
    let mut want = [PageState::Shared; 16];
    want[8..12].fill(PageState::Zero);
    assert_eq!(states(&ra), want, "written but not yet reconciled");
    assert_eq!(g.reconcile_shared().unwrap(), 2);
    want[0] = PageState::Private;
    assert_eq!(states(&ra), want);
    want[0] = PageState::Shared;
    want[8] = PageState::Private;
    assert_eq!(states(&rb), want);
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.private, sa.shared), (1, 15));
    assert_eq!((sb.private, sb.shared), (1, 15));
    assert_eq!(g.stats().allocated_pages, 10);
    // Freeing every user of a master gives it back.
    drop(ra);
    drop(rb);
    let s = g.stats();
    assert_eq!(
        (s.shared_pages, s.allocated_pages, s.sharing_guest_pages),
        (0, 0, 0)
    );
}

#[test]
fn never_written_pages_are_shared_as_zero_without_touching_them() {
    let g = gmm(4096);
    let vm = g.register_vm("vm", base(600)).unwrap();
    let ram = vm.create_ram_region(600).unwrap();
    ram.alloc(0, 600).unwrap();
    ram.write(0, &[9; 4096]).unwrap();
    let r = g.share_scan().unwrap();
    assert_eq!(r.zero_pages, 599);
    assert_eq!(vm.stats().private, 1);
    assert_eq!(g.stats().allocated_pages, 1);
}

#[test]
fn info_lists_global_and_vm_numbers() {
    let g = gmm(4096);
    let vm = g.register_vm("alpha", base(10)).unwrap();
    let ram = vm.create_ram_region(10).unwrap();
    ram.alloc(0, 3).unwrap();
    let mut out = String::new();
    g.format_info("", &mut out).unwrap();
    assert!(out.contains("allocated pages:           3"), "{out}");
    assert!(out.contains("VM 1 'alpha'"));
    assert!(out.contains("allocated: base 3 shadow 0 fixed 0"));
    let mut global = String::new();
    g.format_info("global", &mut global).unwrap();
    assert!(!global.contains("alpha"));
}

#[test]
fn discard_returns_memory_but_keeps_pages_backed() {
    let g = gmm(4096);
    let a = g.register_vm("a", base(16)).unwrap();
    let b = g.register_vm("b", base(16)).unwrap();
    let (ra, rb) = (
        a.create_ram_region(8).unwrap(),
        b.create_ram_region(8).unwrap(),
    );
    ra.alloc(0, 8).unwrap();
    rb.alloc(0, 8).unwrap();
    for r in [&ra, &rb] {
        r.write(0, &[7; 8 * PAGE_SIZE]).unwrap();
    }
    // Pages 0..4 of each shared; B writes page 0 again (a private copy).
    ra.write(4 * 4096, &[1; 4 * PAGE_SIZE]).unwrap();
    g.share_scan().unwrap();
    rb.write(0, &[9; 16]).unwrap();
    g.reconcile_shared().unwrap();
    let backing = g.stats().backing_bytes;
    rb.discard(0, 8).unwrap();
    ra.discard(4, 4).unwrap();
    let mut buf = [1u8; 16];
    for i in 0..8 {
        rb.read(i * 4096, &mut buf).unwrap();
        assert_eq!(buf, [0; 16], "b page {i}");
        assert_ne!(rb.page_state(i).unwrap(), PageState::Empty);
    }
    ra.read(0, &mut buf).unwrap();
    assert_eq!(buf, [7; 16], "a keeps its shared pages");
    assert!(g.stats().backing_bytes < backing);
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.allocated.base, sb.allocated.base), (8, 8));
    assert_eq!(sa.private + sa.shared, 8);
    assert_eq!(sb.private + sb.shared, 8);
    // Writable again, and accounted.
    rb.write(0, &[3; 16]).unwrap();
    rb.read(0, &mut buf).unwrap();
    assert_eq!(buf, [3; 16]);
    assert!(matches!(
        rb.discard(7, 2),
        Err(Error::RangeOutOfBounds { .. })
    ));
}

#[test]
fn residency_follows_writes_sharing_and_balloon() {
    let g = gmm(4096);
    let vm = g.register_vm("vm", base(8)).unwrap();
    let ram = vm.create_ram_region(8).unwrap();
    ram.alloc(0, 6).unwrap();
    assert_eq!(ram.resident_pages(0, 8).unwrap(), [false; 8]);
    ram.write(0, &[5; 3 * PAGE_SIZE]).unwrap();
    ram.write(3 * 4096, &[6; 16]).unwrap();
    assert_eq!(
        ram.resident_pages(0, 8).unwrap(),
        [true, true, true, true, false, false, false, false]
    );
    g.share_scan().unwrap();
    ram.balloon_inflate(3, 1).unwrap();
    // Pages 0..3 share one master; 4 and 5 were never written (zero).
    assert_eq!(
        ram.resident_pages(0, 8).unwrap(),
        [true, true, true, false, false, false, false, false]
    );
    g.return_freed_pages().unwrap();
    assert_eq!(g.stats().allocated_pages, 1);
    assert!(matches!(
        ram.resident_pages(7, 2),
        Err(Error::RangeOutOfBounds { .. })
    ));
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Gmm>();
    check::<crate::Vm>();
    check::<crate::RamRegion>();
}

#[test]
fn vms_allocate_concurrently_with_exact_totals() {
    let g = gmm(1 << 14);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let g = g.clone();
            std::thread::spawn(move || {
                let vm = g.register_vm(&format!("vm{t}"), base(1024)).unwrap();
                let mut held = Vec::new();
                for i in 0..2000u32 {
                    if i % 3 == 2 {
                        vm.free_page(held.swap_remove(0)).unwrap();
                    } else {
                        held.push(vm.alloc_page(Account::Base).unwrap().id);
                    }
                }
                assert_eq!(vm.stats().allocated.base, held.len() as u64);
                (vm, held.len() as u64)
            })
        })
        .collect();
    let done: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let total: u64 = done.iter().map(|(_, n)| n).sum();
    assert_eq!(g.stats().allocated_pages, total);
    drop(done);
    let s = g.stats();
    assert_eq!((s.allocated_pages, s.vms, s.reserved_pages), (0, 0, 0));
    assert_eq!(s.pending_pages, 0);
}
