//! Host memory really goes down: sharing, balloon and freed chunks, measured
//! with `/proc/self/smaps_rollup` (Pss, so a page mapped at two addresses of
//! this process counts once). One test function, so nothing else in this
//! process allocates while it measures.

use gmm::{Gmm, GmmConfig, PAGE_SIZE, Reservation};

const PAGES: u64 = 8192; // 32 MiB per VM
const MIB: i64 = 1024 * 1024;

fn pss_bytes() -> i64 {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").expect("smaps_rollup readable");
    let line = text
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .expect("Pss line in smaps_rollup");
    let kb: i64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("Pss value");
    kb * 1024
}

/// Pss after reading one byte of every page of `regions`, so that pages held
/// but not yet mapped by this process count too.
fn pss_touched(regions: &[&gmm::RamRegion]) -> i64 {
    let mut b = [0u8; 1];
    for r in regions {
        for i in 0..r.pages() {
            r.read(i * PAGE_SIZE as u64, &mut b).unwrap();
        }
    }
    pss_bytes()
}

fn page_pattern(i: u64, salt: u64) -> Vec<u8> {
    let word = ((i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt).to_le_bytes();
    word.repeat(PAGE_SIZE / 8)
}

#[test]
fn sharing_balloon_and_free_return_host_memory() {
    let g = Gmm::new(GmmConfig::new(4 * PAGES)).unwrap();
    let res = Reservation {
        base: PAGES,
        ..Default::default()
    };
    let (a, b) = (
        g.register_vm("a", res).unwrap(),
        g.register_vm("b", res).unwrap(),
    );
    let (ra, rb) = (
        a.create_ram_region(PAGES).unwrap(),
        b.create_ram_region(PAGES).unwrap(),
    );
    let start = pss_bytes();
    ra.alloc(0, PAGES).unwrap();
    rb.alloc(0, PAGES).unwrap();
    for i in 0..PAGES {
        let p = page_pattern(i, 0);
        ra.write(i * PAGE_SIZE as u64, &p).unwrap();
        rb.write(i * PAGE_SIZE as u64, &p).unwrap();
    }
    let filled = pss_touched(&[&ra, &rb]);
    eprintln!("two VMs filled: +{} MiB", (filled - start) / MIB);
    assert!(
        filled - start >= 60 * MIB,
        "filling 64 MiB only added {} bytes",
        filled - start
    );

    // Sharing: B's pages are backed by A's; 32 MiB less host memory.
    let report = g.share_scan().unwrap();
    assert_eq!(report.pages_deduplicated, PAGES);
    assert_eq!(g.stats().saved_bytes(), PAGES * PAGE_SIZE as u64);
    assert_eq!(g.stats().backing_bytes, PAGES * PAGE_SIZE as u64);
    let shared = pss_touched(&[&ra, &rb]);
    eprintln!("after sharing scan: -{} MiB", (filled - shared) / MIB);
    assert!(
        filled - shared >= 26 * MIB,
        "sharing saved only {} bytes",
        filled - shared
    );

    // B rewrites its pages: it gets its own copies, A still reads its data.
    for i in 0..PAGES {
        rb.write(i * PAGE_SIZE as u64, &page_pattern(i, 1)).unwrap();
    }
    let mut buf = vec![0u8; PAGE_SIZE];
    for i in 0..PAGES {
        ra.read(i * PAGE_SIZE as u64, &mut buf).unwrap();
        assert_eq!(buf, page_pattern(i, 0), "VM a page {i} changed");
        rb.read(i * PAGE_SIZE as u64, &mut buf).unwrap();
        assert_eq!(buf, page_pattern(i, 1), "VM b page {i}");
    }
    assert_eq!(g.reconcile_shared().unwrap(), PAGES);
    assert_eq!(b.stats().private, PAGES);
    let rewritten = pss_touched(&[&ra, &rb]);
    eprintln!("after b rewrote: +{} MiB", (rewritten - shared) / MIB);
    assert!(rewritten - shared >= 26 * MIB);

    // Balloon: half of B's memory goes back to the host.
    rb.balloon_inflate(0, PAGES / 2).unwrap();
    let ballooned = pss_touched(&[&ra, &rb]);
    eprintln!(
        "after inflating 16 MiB: -{} MiB",
        (rewritten - ballooned) / MIB
    );
    assert!(rewritten - ballooned >= 14 * MIB);

    // Freeing A's region empties its chunks (A's pages were the masters,
    // now used by A alone): the chunks' memory is returned.
    let chunks_before = g.stats().chunks;
    drop(ra);
    let freed = pss_touched(&[&rb]);
    eprintln!("after freeing a: -{} MiB", (ballooned - freed) / MIB);
    assert!(ballooned - freed >= 26 * MIB);
    let s = g.stats();
    assert!(s.empty_chunks > 0 && s.chunks <= chunks_before);
    assert_eq!(s.allocated_pages, PAGES / 2);
    drop(rb);
    assert!(g.stats().backing_bytes == 0, "{:?}", g.stats());
}
