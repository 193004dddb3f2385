//! Ballooned memory going back to the host in the background, and parked
//! pages.

use super::*;

/// Waits (bounded) until the reclaim worker has returned every ballooned page.
fn wait_reclaimed(g: &Gmm) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while g.stats().pending_pages > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the reclaim worker never returned the ballooned pages"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn ballooned_memory_goes_back_to_the_host_in_the_background() {
    let g = gmm(4096);
    let vm = g.register_vm("vm", base(2048)).unwrap();
    let ram = vm.create_ram_region(2048).unwrap();
    ram.alloc(0, 2048).unwrap();
    ram.write(0, &vec![0x5a; 2048 * PAGE_SIZE]).unwrap();
    let before = g.stats();
    assert_eq!(before.backing_bytes, 2048 * PAGE_SIZE as u64);
    // A guest driver inflates page by page; the accounts follow at once.
    for p in 0..1024 {
        ram.balloon_inflate(p, 1).unwrap();
    }
    assert_eq!(vm.stats().ballooned, 1024);
    assert_eq!(vm.stats().allocated.base, 1024);
    // No call to return_freed_pages: the worker alone gives the memory back.
    wait_reclaimed(&g);
    let after = g.stats();
    assert_eq!(after.backing_bytes, 1024 * PAGE_SIZE as u64);
    assert_eq!(after.allocated_pages, 1024);
    assert_eq!(after.pages_returned - before.pages_returned, 1024);
    assert_eq!(after.reclaim_errors, 0);
    // The guest's view of ballooned pages is zero, the rest is intact.
    let mut buf = [1u8; 8];
    ram.read(1023 * 4096, &mut buf).unwrap();
    assert_eq!(buf, [0; 8]);
    ram.read(1024 * 4096, &mut buf).unwrap();
    assert_eq!(buf, [0x5a; 8]);
}

#[test]
fn deflating_before_the_worker_ran_never_loses_new_data() {
    let g = gmm(4096);
    let vm = g.register_vm("vm", base(512)).unwrap();
    let other = g.register_vm("other", base(512)).unwrap();
    let ram = vm.create_ram_region(512).unwrap();
    ram.alloc(0, 512).unwrap();
    ram.write(0, &vec![0x77; 512 * PAGE_SIZE]).unwrap();
    for round in 0..20u8 {
        // Inflate, then at once take the pages back and use them again,
        // racing the worker.
        ram.balloon_inflate(0, 512).unwrap();
        ram.balloon_deflate(0, 512).unwrap();
        let mut page = [0xffu8; 16];
        ram.read(0, &mut page).unwrap();
        assert_eq!(page, [0; 16], "round {round}: a deflated page reads zero");
        ram.write(0, &vec![round; 512 * PAGE_SIZE]).unwrap();
        // Another VM allocating meanwhile never sees this VM's data.
        let raw = other.alloc_pages(Account::Base, 64).unwrap();
        for p in &raw {
            // SAFETY: a page just handed to us, 4 KiB at its host address.
            let bytes = unsafe { std::slice::from_raw_parts(p.host_addr as *const u8, 4096) };
            assert!(bytes.iter().all(|&b| b == 0), "round {round}");
        }
        other
            .free_pages(&raw.iter().map(|p| p.id).collect::<Vec<_>>())
            .unwrap();
        wait_reclaimed(&g);
        let mut buf = vec![0u8; 512 * PAGE_SIZE];
        ram.read(0, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == round), "round {round}");
        // ... and it lives in the VM's own (accounted) chunk pages.
        assert_eq!(g.stats().backing_bytes, 512 * PAGE_SIZE as u64);
    }
}

#[test]
fn a_balloon_reset_or_dropped_region_settles_queued_memory() {
    let g = gmm(4096);
    let vm = g.register_vm("vm", base(256)).unwrap();
    let ram = vm.create_ram_region(256).unwrap();
    ram.alloc(0, 256).unwrap();
    ram.write(0, &vec![3; 256 * PAGE_SIZE]).unwrap();
    ram.balloon_inflate(0, 128).unwrap();
    vm.balloon(BalloonAction::Reset, 0).unwrap();
    assert_eq!(ram.page_state(0).unwrap(), PageState::Private);
    let mut buf = [9u8; 4];
    ram.read(0, &mut buf).unwrap();
    assert_eq!(buf, [0; 4]);
    ram.balloon_inflate(128, 128).unwrap();
    drop(ram);
    let s = g.stats();
    assert_eq!(
        (s.pending_pages, s.allocated_pages, s.backing_bytes),
        (0, 0, 0)
    );
}

#[test]
fn dropping_the_last_handle_stops_the_reclaim_worker() {
    for round in 0..50u64 {
        let g = gmm(4096);
        let vm = g.register_vm("vm", base(64)).unwrap();
        let ram = vm.create_ram_region(64).unwrap();
        ram.alloc(0, 64).unwrap();
        ram.write(0, &[1; 64 * PAGE_SIZE]).unwrap();
        ram.balloon_inflate(0, 32 + round % 32).unwrap();
        // Dropping everything joins the worker; a lost wake-up would hang.
        if round % 2 == 0 {
            wait_reclaimed(&g);
        }
        drop((ram, vm, g));
    }
}

/// Reads one byte of region page `page` straight through its mapping, as the
/// guest would (also for pages `RamRegion::read` would settle first).
fn guest_byte(ram: &RamRegion, page: u64) -> u8 {
    // SAFETY: the page lies inside the region, which stays mapped while
    // `ram` lives.
    unsafe { *((ram.host_addr() + page * PAGE_SIZE as u64) as *const u8) }
}

#[test]
fn parked_pages_are_never_anyone_elses() {
    let g = gmm(4096);
    let a = g.register_vm("a", base(1024)).unwrap();
    let b = g.register_vm("b", base(2048)).unwrap();
    let ram = a.create_ram_region(1024).unwrap();
    ram.alloc(0, 1024).unwrap();
    ram.write(0, &vec![0x42; 1024 * PAGE_SIZE]).unwrap();
    for p in (0..1024).step_by(2) {
        ram.balloon_inflate(p, 1).unwrap();
    }
    g.return_freed_pages().unwrap();
    let s = g.stats();
    assert_eq!(
        (s.ballooned_pages, s.parked_pages, s.allocated_pages),
        (512, 512, 512)
    );
    assert_eq!(s.backing_bytes, 512 * PAGE_SIZE as u64);
    assert_eq!(s.pending_pages, 0);
    let sa = a.stats();
    assert_eq!(
        (sa.allocated.base, sa.private, sa.ballooned, sa.parked),
        (512, 512, 512, 512)
    );
    assert_eq!(guest_byte(&ram, 0), 0);
    assert_eq!(guest_byte(&ram, 1), 0x42);

    // The other VM takes everything it may and writes it all: none of it
    // shows up in a parked page.
    let raw = b.alloc_pages(Account::Base, 2048).unwrap();
    for p in &raw {
        // SAFETY: a page just handed to `b`, 4 KiB at its host address.
        unsafe { std::ptr::write_bytes(p.host_addr as *mut u8, 0xbb, PAGE_SIZE) };
    }
    for p in (0..1024).step_by(2) {
        assert_eq!(guest_byte(&ram, p), 0, "page {p}");
    }
    // (Touching parked pages gave them memory again, until deflated; the
    // odd pages still hold `a`'s data.)
    let touched = 2048 + 512;
    assert_eq!(g.stats().backing_bytes, (touched + 512) * PAGE_SIZE as u64);
    // Inflating the rest parks a whole chunk's worth: its chunk stays.
    let chunks = g.stats().chunks;
    for p in (1..1024).step_by(2) {
        ram.balloon_inflate(p, 1).unwrap();
    }
    g.return_freed_pages().unwrap();
    let s = g.stats();
    assert_eq!(
        (s.parked_pages, s.chunks, s.allocated_pages),
        (1024, chunks, 2048)
    );
    assert_eq!(s.backing_bytes, touched * PAGE_SIZE as u64);
    let mut buf = vec![1u8; 1024 * PAGE_SIZE];
    ram.read(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&x| x == 0));
    // Reading parked pages through the region costs nothing.
    assert_eq!(g.stats().backing_bytes, touched * PAGE_SIZE as u64);

    // Deflated pages read zero, even where the guest wrote while ballooned.
    let page3 = (ram.host_addr() + 3 * PAGE_SIZE as u64) as *mut u8;
    // SAFETY: page 3 is inside the region, mapped while `ram` lives.
    unsafe { page3.write_bytes(0x99, 8) };
    ram.balloon_deflate(0, 1024).unwrap();
    assert_eq!(g.stats().backing_bytes, 2048 * PAGE_SIZE as u64);
    buf.fill(1);
    ram.read(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&x| x == 0));
    let sa = a.stats();
    assert_eq!(
        (sa.allocated.base, sa.private, sa.ballooned, sa.parked),
        (1024, 1024, 0, 0)
    );
    assert_eq!(g.stats().allocated_pages, 1024 + 2048);
    for p in &raw {
        // SAFETY: `b`'s page, still allocated.
        assert_eq!(unsafe { *(p.host_addr as *const u8) }, 0xbb);
    }

    // Dropping a region with parked pages (some not punched yet) gives
    // everything back.
    ram.balloon_inflate(0, 700).unwrap();
    drop(ram);
    let s = g.stats();
    assert_eq!(
        (
            s.ballooned_pages,
            s.parked_pages,
            s.allocated_pages,
            s.pending_pages
        ),
        (0, 0, 2048, 0)
    );
    assert_eq!(s.backing_bytes, 2048 * PAGE_SIZE as u64);
    assert_eq!(a.stats().parked, 0);
}

#[test]
fn parking_is_bounded_and_deflating_respects_the_global_maximum() {
    let mut cfg = GmmConfig::new(512);
    cfg.overcommit = true;
    let g = Gmm::new(cfg).unwrap();
    let a = g.register_vm("a", base(1024)).unwrap();
    let b = g.register_vm("b", base(512)).unwrap();
    let ram = a.create_ram_region(1024).unwrap();
    ram.alloc(0, 512).unwrap();
    ram.balloon_inflate(0, 512).unwrap();
    g.return_freed_pages().unwrap();
    assert_eq!(g.stats().allocated_pages, 0);
    // Parked pages cost no host page: the other half fits the maximum ...
    ram.alloc(512, 512).unwrap();
    // ... but only `max_pages` may be parked: these take the remap path.
    ram.balloon_inflate(512, 512).unwrap();
    g.return_freed_pages().unwrap();
    let s = g.stats();
    assert_eq!(
        (s.ballooned_pages, s.parked_pages, s.allocated_pages),
        (1024, 512, 0)
    );
    // Deflating parked pages needs room under the global maximum.
    let raw = b.alloc_pages(Account::Base, 512).unwrap();
    let err = ram.balloon_deflate(0, 1).unwrap_err();
    assert!(err.is_out_of_memory(), "{err}");
    assert_eq!(ram.page_state(0).unwrap(), PageState::Ballooned);
    let sa = a.stats();
    assert_eq!((sa.ballooned, sa.parked, sa.allocated.base), (1024, 512, 0));
    b.free_pages(&raw.iter().map(|p| p.id).collect::<Vec<_>>())
        .unwrap();
    ram.balloon_deflate(0, 1024).unwrap();
    assert_eq!(ram.page_state(0).unwrap(), PageState::Private);
    assert_eq!(ram.page_state(512).unwrap(), PageState::Empty);
    let sa = a.stats();
    assert_eq!((sa.ballooned, sa.parked, sa.allocated.base), (0, 0, 512));
    // A reset with no room under the maximum remaps parked pages instead.
    ram.balloon_inflate(0, 512).unwrap();
    g.return_freed_pages().unwrap();
    let raw = b.alloc_pages(Account::Base, 512).unwrap();
    a.balloon(BalloonAction::Reset, 0).unwrap();
    assert_eq!(ram.page_state(0).unwrap(), PageState::Empty);
    let sa = a.stats();
    assert_eq!((sa.ballooned, sa.parked, sa.allocated.base), (0, 0, 0));
    assert_eq!(g.stats().allocated_pages, 512);
    drop(raw);
}
