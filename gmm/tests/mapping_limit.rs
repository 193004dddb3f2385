//! A guest that balloons every other page must not make the VMM run out of
//! memory mappings (`vm.max_map_count`): private pages are parked (punched
//! out of the memfd, no remap), so ballooning them costs no mapping at all;
//! the remap path that other pages still take stops with a clear error while
//! the process still has mappings to spare, and goes on once mappings are
//! freed. (Its own test binary: it fills this process's mapping table.)

use gmm::{Error, Gmm, GmmConfig, PAGE_SIZE, PageState, Reservation};

fn map_count() -> u64 {
    std::fs::read_to_string("/proc/self/maps")
        .map(|s| s.lines().count() as u64)
        .unwrap_or(0)
}

#[test]
fn fragmenting_a_region_stops_short_of_the_mapping_limit() {
    let limit: u64 = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65530);
    if limit > 1 << 20 {
        eprintln!("vm.max_map_count is {limit}: too high to fill in a test, not checked");
        return;
    }
    // Enough pages that remapping every other one would pass the limit.
    let pages = (limit + 4096).next_power_of_two() * 2;
    let g = Gmm::new(GmmConfig::new(2 * pages)).unwrap();
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

    // Private pages: scattered single-page inflates park them, the memory
    // goes back, and no mapping is split.
    let maps_before = map_count();
    for p in (0..pages).step_by(64) {
        ram.write(p * PAGE_SIZE as u64, &[0xa5; 16]).unwrap();
    }
    let written = pages.div_ceil(64);
    assert_eq!(g.stats().backing_bytes, written * PAGE_SIZE as u64);
    for p in (0..pages).step_by(2) {
        ram.balloon_inflate(p, 1).unwrap();
    }
    g.return_freed_pages().unwrap();
    let s = g.stats();
    assert_eq!((s.ballooned_pages, s.parked_pages), (pages / 2, pages / 2));
    assert_eq!(s.pending_pages, 0);
    // Every written page was ballooned (even): all of it is back.
    assert_eq!(s.backing_bytes, 0);
    assert_eq!(s.allocated_pages, pages / 2);
    assert!(map_count() < maps_before + 64, "inflating split mappings");

    // Deflating page by page needs no remap either: the pages come back
    // backed, reading zero even where the guest wrote while ballooned.
    // A misbehaving guest writes a parked page (it is still mapped).
    let parked = (ram.host_addr() + 128 * PAGE_SIZE as u64) as *mut u8;
    // SAFETY: page 128 lies inside the region, which stays mapped while
    // `ram` lives; nothing else accesses it meanwhile.
    unsafe { parked.write_bytes(0x5a, 16) };
    assert_eq!(g.stats().backing_bytes, PAGE_SIZE as u64);
    for p in (0..pages).step_by(2) {
        ram.balloon_deflate(p, 1).unwrap();
    }
    assert!(map_count() < maps_before + 64, "deflating split mappings");
    let s = g.stats();
    assert_eq!((s.ballooned_pages, s.parked_pages), (0, 0));
    assert_eq!((s.allocated_pages, s.backing_bytes), (pages, 0));
    assert_eq!(ram.page_state(128).unwrap(), PageState::Private);
    let mut buf = [0xffu8; 16];
    ram.read(128 * PAGE_SIZE as u64, &mut buf).unwrap();
    assert_eq!(buf, [0; 16]);
    ram.read(129 * PAGE_SIZE as u64, &mut buf[..1]).unwrap();
    assert_eq!(buf[0], 0);

    // Pages mapped from a file (a restored saved state) have no chunk page
    // of their own to park: ballooning them remaps, and GMM stops before the
    // kernel's limit.
    let file = tempfile::tempfile().unwrap();
    file.set_len(pages * PAGE_SIZE as u64).unwrap();
    ram.map_file(0, pages, &file, 0).unwrap();
    for p in (0..pages).step_by(2) {
        // Bookkeeping only: the guest's inflates always succeed.
        ram.balloon_inflate(p, 1).unwrap();
    }
    let err = g.return_freed_pages().unwrap_err();
    let Error::MappingsExhausted { mappings, limit: l } = err else {
        panic!("{err}");
    };
    assert_eq!(l, limit);
    assert!(mappings < limit, "{mappings} of {limit}");
    // The process can still map memory (the allocator does).
    let big = vec![7u8; 8 << 20];
    assert_eq!(big[(8 << 20) - 1], 7);
    assert_eq!(vm.stats().ballooned, pages / 2);
    assert_eq!(vm.stats().parked, 0);
    assert!(g.stats().pending_pages > 0);

    // Dropping the region frees its mappings; GMM remaps again.
    drop(ram);
    std::thread::sleep(std::time::Duration::from_millis(150));
    let ram = vm.create_ram_region(64).unwrap();
    ram.alloc(0, 64).unwrap();
    ram.free(0, 64).unwrap();
    assert_eq!(g.stats().pending_pages, 0);
}
