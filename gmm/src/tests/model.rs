//! A state-machine property: random operations on a GMM keep its accounts
//! equal to those of a simple model.

use proptest::prelude::*;

use super::*;

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
            prop_assert_eq!(g.state.lock().check_free_index(), Ok(()));
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
