//! Unit tests of the public behaviour (accounting, limits, allocation order,
//! ballooning, sharing) and a state-machine property against a simple model.

use proptest::prelude::*;

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

// ----- state machine property -----

const PAGES: u64 = 48;
const RESERVED: u64 = PAGES;

#[derive(Clone, Debug)]
enum Op {
    Alloc(u64, u64),
    Free(u64, u64),
    Discard(u64, u64),
    Inflate(u64, u64),
    Deflate(u64, u64),
    Balloon(BalloonAction, u64),
    RawAlloc(u64),
    RawFree(usize),
    Write(u64, u8),
    Scan,
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..PAGES, 0..12u64);
    prop_oneof![
        range.clone().prop_map(|(f, c)| Op::Alloc(f, c)),
        range.clone().prop_map(|(f, c)| Op::Free(f, c)),
        range.clone().prop_map(|(f, c)| Op::Discard(f, c)),
        range.clone().prop_map(|(f, c)| Op::Inflate(f, c)),
        range.prop_map(|(f, c)| Op::Deflate(f, c)),
        (
            prop_oneof![
                Just(BalloonAction::Inflate),
                Just(BalloonAction::Deflate),
                Just(BalloonAction::Reset)
            ],
            0..8u64
        )
            .prop_map(|(a, n)| Op::Balloon(a, n)),
        (0..4u64).prop_map(Op::RawAlloc),
        (0..8usize).prop_map(Op::RawFree),
        (0..PAGES, 0..3u8).prop_map(|(p, v)| Op::Write(p, v)),
        Just(Op::Scan),
    ]
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum M {
    Empty,
    Alloc(u8),
    Ballooned,
}

struct Model {
    slots: Vec<M>,
    raw: Vec<crate::PageId>,
    ballooned: u64,
}

impl Model {
    fn allocated(&self) -> u64 {
        self.slots
            .iter()
            .filter(|s| matches!(s, M::Alloc(_)))
            .count() as u64
            + self.raw.len() as u64
    }
    fn range(&self, f: u64, c: u64) -> Option<&[M]> {
        (f + c <= PAGES).then(|| &self.slots[f as usize..(f + c) as usize])
    }
    fn all(&self, f: u64, c: u64, p: fn(&M) -> bool) -> bool {
        self.range(f, c).is_some_and(|s| s.iter().all(p))
    }
    fn set(&mut self, f: u64, c: u64, m: M) {
        self.slots[f as usize..(f + c) as usize].fill(m);
    }
    /// Takes the state of formerly ballooned pages `f..f+c` from the region:
    /// parked pages come back backed (reading zero), others empty. Returns
    /// how many came back backed.
    fn unballoon(&mut self, ram: &crate::RamRegion, f: u64, c: u64) -> u64 {
        let states = ram.page_states(f, c).unwrap();
        let mut backed = 0;
        for (i, st) in (f..).zip(states) {
            if self.slots[i as usize] != M::Ballooned {
                continue;
            }
            self.slots[i as usize] = match st {
                PageState::Private => {
                    backed += 1;
                    M::Alloc(0)
                }
                PageState::Empty => M::Empty,
                other => panic!("page {i} came back out of the balloon {other:?}"),
            };
        }
        backed
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn accounts_match_a_simple_model(ops in proptest::collection::vec(op(), 1..40)) {
        let g = gmm(4096);
        let vm = g.register_vm("vm", base(RESERVED)).unwrap();
        let ram = vm.create_ram_region(PAGES).unwrap();
        let mut m = Model { slots: vec![M::Empty; PAGES as usize], raw: Vec::new(), ballooned: 0 };
        // Until a sharing scan ran every region page is private, so every
        // ballooned page is parked.
        let mut scanned = false;
        for op in ops {
            match op {
                Op::Alloc(f, c) => {
                    let ok = m.all(f, c, |s| *s == M::Empty) && m.allocated() + m.ballooned + c <= RESERVED;
                    prop_assert_eq!(ram.alloc(f, c).is_ok(), ok);
                    if ok { m.set(f, c, M::Alloc(0)); }
                }
                Op::Free(f, c) => {
                    let ok = m.all(f, c, |s| matches!(s, M::Alloc(_)));
                    prop_assert_eq!(ram.free(f, c).is_ok(), ok);
                    if ok { m.set(f, c, M::Empty); }
                }
                Op::Discard(f, c) => {
                    let ok = m.all(f, c, |s| matches!(s, M::Alloc(_)));
                    prop_assert_eq!(ram.discard(f, c).is_ok(), ok);
                    if ok { m.set(f, c, M::Alloc(0)); }
                }
                Op::Inflate(f, c) => {
                    let ok = m.all(f, c, |s| matches!(s, M::Alloc(_)));
                    prop_assert_eq!(ram.balloon_inflate(f, c).is_ok(), ok);
                    if ok { m.set(f, c, M::Ballooned); m.ballooned += c; }
                }
                Op::Deflate(f, c) => {
                    let ok = m.all(f, c, |s| *s == M::Ballooned) && m.ballooned >= c;
                    let parked = vm.stats().parked;
                    prop_assert_eq!(ram.balloon_deflate(f, c).is_ok(), ok);
                    if ok {
                        let backed = m.unballoon(&ram, f, c);
                        prop_assert_eq!(parked - vm.stats().parked, backed);
                        if !scanned { prop_assert_eq!(backed, c); }
                        m.ballooned -= c;
                    }
                }
                Op::Balloon(a, n) => {
                    let ok = match a {
                        BalloonAction::Inflate => m.allocated() + m.ballooned + n <= RESERVED,
                        BalloonAction::Deflate => m.ballooned >= n,
                        BalloonAction::Reset => true,
                    };
                    prop_assert_eq!(vm.balloon(a, n).is_ok(), ok);
                    if ok {
                        match a {
                            BalloonAction::Inflate => m.ballooned += n,
                            BalloonAction::Deflate => m.ballooned -= n,
                            BalloonAction::Reset => {
                                m.ballooned = 0;
                                m.unballoon(&ram, 0, PAGES);
                                prop_assert_eq!(vm.stats().parked, 0);
                            }
                        }
                    }
                }
                Op::RawAlloc(n) => {
                    let ok = m.allocated() + m.ballooned + n <= RESERVED;
                    let r = vm.alloc_pages(Account::Base, n);
                    prop_assert_eq!(r.is_ok(), ok);
                    if let Ok(p) = r { m.raw.extend(p.iter().map(|p| p.id)); }
                }
                Op::RawFree(k) => {
                    if !m.raw.is_empty() {
                        let p = m.raw.swap_remove(k % m.raw.len());
                        prop_assert!(vm.free_page(p).is_ok());
                    }
                }
                Op::Write(p, v) => {
                    let ok = matches!(m.slots[p as usize], M::Alloc(_));
                    prop_assert_eq!(ram.write(p * 4096, &[v; 4096]).is_ok(), ok);
                    if ok { m.slots[p as usize] = M::Alloc(v); }
                }
                Op::Scan => { g.share_scan().unwrap(); scanned = true; }
            }
            let s = vm.stats();
            let gs = g.stats();
            prop_assert_eq!(s.allocated.base, m.allocated());
            prop_assert_eq!(s.ballooned, m.ballooned);
            prop_assert_eq!(gs.ballooned_pages, m.ballooned);
            prop_assert_eq!(gs.parked_pages, s.parked);
            let in_balloon = m.slots.iter().filter(|s| **s == M::Ballooned).count() as u64;
            prop_assert!(s.parked <= in_balloon);
            if !scanned { prop_assert_eq!(s.parked, in_balloon); }
            prop_assert_eq!(s.private + s.shared, s.allocated.base);
            // Host pages follow once ballooned memory is back with the host.
            g.return_freed_pages().unwrap();
            let gs = g.stats();
            prop_assert_eq!(gs.pending_pages, 0);
            prop_assert_eq!(gs.allocated_pages, s.private + gs.shared_pages);
            prop_assert_eq!(gs.sharing_guest_pages, s.shared);
            for (i, slot) in m.slots.iter().enumerate() {
                let want = match slot { M::Alloc(v) => *v, _ => 0 };
                let mut b = [0u8; 2];
                ram.read(i as u64 * 4096, &mut b[..1]).unwrap();
                ram.read(i as u64 * 4096 + 4095, &mut b[1..]).unwrap();
                prop_assert_eq!(b, [want, want], "page {}", i);
            }
        }
        g.reconcile_shared().unwrap();
        let s = vm.stats();
        prop_assert_eq!(g.stats().allocated_pages, s.private + g.stats().shared_pages);
    }
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
