//! A guest that balloons every other page must not make the VMM run out of
//! memory mappings (`vm.max_map_count`): GMM stops remapping with a clear
//! error while the process still has mappings to spare, and goes on once
//! mappings are freed. (Its own test binary: it fills this process's
//! mapping table.)

use gmm::{Error, Gmm, GmmConfig, Reservation};

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
    assert!(g.stats().pending_pages > 0);

    // Dropping the region frees its mappings; GMM remaps again.
    drop(ram);
    std::thread::sleep(std::time::Duration::from_millis(150));
    let ram = vm.create_ram_region(64).unwrap();
    ram.alloc(0, 64).unwrap();
    ram.free(0, 64).unwrap();
    assert_eq!(g.stats().pending_pages, 0);
}
