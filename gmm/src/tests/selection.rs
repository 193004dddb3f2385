//! Chunk selection stays cheap however many chunks a VM holds: the work of
//! picking where a page goes is counted (`chunk_probes`), not timed.

use super::{base, gmm};
use crate::{Account, CHUNK_PAGES};

/// The most chunks one page allocation may examine: the VM's chunk cache
/// (four ways) and one lookup beyond it.
const MAX_PROBES_PER_PAGE: u64 = 5;

/// Chunks examined to allocate one page once the VM fills `full` chunks.
fn probes_for_next_page(full: u64) -> u64 {
    let pages = full * CHUNK_PAGES as u64;
    let g = gmm(pages + 1);
    let vm = g.register_vm("vm", base(pages + 1)).unwrap();
    let ram = vm.create_ram_region(pages + 1).unwrap();
    ram.alloc(0, pages).unwrap();
    assert_eq!(g.stats().partial_chunks, 0, "{full} chunks exactly full");
    let before = g.stats().chunk_probes;
    ram.alloc(pages, 1).unwrap();
    g.stats().chunk_probes - before
}

#[test]
fn picking_a_chunk_does_not_scan_the_vms_full_chunks() {
    for full in [8, 64, 512] {
        let probes = probes_for_next_page(full);
        assert!(
            probes <= MAX_PROBES_PER_PAGE,
            "with {full} full chunks one page took {probes} chunk probes"
        );
    }
}

#[test]
fn the_index_of_chunks_with_free_pages_follows_shared_chunks() {
    let mut cfg = crate::GmmConfig::new(16 * CHUNK_PAGES as u64);
    // Others' partly used chunks are used as soon as anything is free there.
    cfg.plenty_free_pages = 1;
    let g = crate::Gmm::new(cfg).unwrap();
    let a = g.register_vm("a", base(4 * CHUNK_PAGES as u64)).unwrap();
    let b = g.register_vm("b", base(4 * CHUNK_PAGES as u64)).unwrap();
    let check = || g.state.lock().check_free_index().unwrap();
    let held = a
        .alloc_pages(Account::Base, CHUNK_PAGES as u64 + 10)
        .unwrap();
    check();
    // `b` lands in `a`'s partly used second chunk, then fills it.
    let b_pages = b.alloc_pages(Account::Base, CHUNK_PAGES as u64).unwrap();
    check();
    let chunk = |p: &crate::HostPage| p.id.chunk();
    assert_eq!(chunk(&b_pages[0]), chunk(&held[CHUNK_PAGES]));
    // Freeing pages in the shared chunk gives both VMs room there again.
    a.free_pages(&[held[CHUNK_PAGES].id]).unwrap();
    check();
    b.free_pages(&b_pages.iter().map(|p| p.id).collect::<Vec<_>>())
        .unwrap();
    check();
    let ids: Vec<_> = held.iter().map(|p| p.id).skip(CHUNK_PAGES + 1).collect();
    a.free_pages(&ids).unwrap();
    check();
    drop(b);
    check();
}
