//! Handler-table properties, page tracking size and range validation.

use super::*;
use crate::phys::handler::IntegrityError;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Add {
        page: u64,
        off: u64,
        len: u64,
        all: bool,
    },
    Remove(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..32, 0u64..0x1000, 1u64..0x3000, any::<bool>()).prop_map(|(page, off, len, all)| {
            Op::Add {
                page,
                off,
                len,
                all,
            }
        }),
        (0usize..32).prop_map(Op::Remove),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random registrations and removals on a map keep the handler table,
    /// the page handler states and the KVM slots consistent, and lookups
    /// agree with a linear scan.
    #[test]
    fn map_handlers_stay_consistent(ops in proptest::collection::vec(op(), 1..60),
                                    probes in proptest::collection::vec(0u64..0x22000, 32)) {
        let mut map = PhysMap::new(
            Arc::new(MmapHostMemory::new()),
            PhysConfig { max_handlers: 32, ..PhysConfig::default() },
        ).unwrap();
        map.add_ram(0, 0x20000, "ram").unwrap();
        let w = map.register_handler_type(HandlerKind::Write, "w", |_| Ok(HandlerAction::Default));
        let a = map.register_handler_type(HandlerKind::All, "a", |_| Ok(HandlerAction::Default));
        let mut model: Vec<(u64, u64)> = Vec::new();
        for op in ops {
            match op {
                Op::Add { page, off, len, all } => {
                    let first = page * PAGE_SIZE + off;
                    let last = first + len - 1;
                    let ok = last < 0x20000
                        && model.len() < 32
                        && !model.iter().any(|&(f, l)| f <= last && first <= l);
                    let res = map.register_handler(if all { a } else { w }, first, last, 0, "h");
                    prop_assert_eq!(res.is_ok(), ok);
                    if ok {
                        model.push((first, last));
                    }
                }
                Op::Remove(i) if !model.is_empty() => {
                    let (f, _) = model.swap_remove(i % model.len());
                    map.deregister_handler(f).unwrap();
                }
                Op::Remove(_) => prop_assert!(map.deregister_handler(0x100).is_err()),
            }
            prop_assert_eq!(map.check_handlers(), Ok(()));
        }
        for p in probes {
            let linear = model.iter().find(|&&(f, l)| f <= p && p <= l).map(|&(f, _)| f);
            prop_assert_eq!(map.lookup_handler(p).map(|h| h.first), linear);
        }
        // every page is mapped as its handler state says, at its host page
        let slots = &map.kvm_slots().slots;
        let host0 = slots.iter().find(|s| s.guest_addr == 0).map(|s| s.host_addr);
        for pg in 0..0x20u64 {
            let gpa = pg * PAGE_SIZE;
            let slot = slots.iter().find(|s| s.guest_addr <= gpa && gpa < s.guest_addr + s.size);
            let got = slot.map(|s| (s.read_only, s.host_addr + (gpa - s.guest_addr)));
            let want = match map.page_info(gpa).handler {
                PageHandlerState::None => Some(false),
                PageHandlerState::Write => Some(true),
                PageHandlerState::All => None,
            };
            prop_assert_eq!(got.map(|g| g.0), want, "page {:#x}", gpa);
            if let (Some((_, h)), Some(h0)) = (got, host0) {
                prop_assert_eq!(h, h0 + gpa);
            }
        }
        prop_assert!(slots.windows(2).all(|w| w[0].guest_addr + w[0].size <= w[1].guest_addr));
    }
}

#[test]
fn page_tracking_stays_within_16_bytes_per_page() {
    let mut map = PhysMap::with_defaults();
    map.add_ram(0, 64 << 20, "ram").unwrap();
    map.add_rom(
        0xfff0_0000,
        0x10_0000,
        &[],
        RomProtection::ReadRomWriteIgnore,
        "rom",
    )
    .unwrap();
    let pages = map.memory_pages();
    assert!(
        map.tracking_bytes() as u64 <= 16 * pages,
        "{} bytes for {pages} pages",
        map.tracking_bytes()
    );
}

#[test]
fn bad_ranges_are_rejected() {
    let mut map = PhysMap::with_defaults();
    assert!(matches!(
        map.add_ram(0x1001, 0x1000, "x"),
        Err(PhysError::Misaligned { .. })
    ));
    assert!(matches!(
        map.add_ram(0, 0, "x"),
        Err(PhysError::InvalidRange { .. })
    ));
    assert!(
        map.add_ram(MAX_GUEST_PHYS + 1 - 0x1000, 0x2000, "x")
            .is_err()
    );
    assert!(map.add_ram(!0xfff, 0x1000, "x").is_err());
    map.add_ram(0x10000, 0x10000, "a").unwrap();
    assert!(matches!(
        map.add_ram(0x1f000, 0x2000, "b"),
        Err(PhysError::RangeOverlap { .. })
    ));
    assert!(
        map.add_rom(
            0x40000,
            0x1000,
            &[0; 0x1001],
            RomProtection::ReadRomWriteIgnore,
            "r"
        )
        .is_err()
    );
    let id = map.register_mmio2(0x2000, "vram").unwrap();
    let w = map.register_handler_type(HandlerKind::Write, "w", |_| Ok(HandlerAction::Default));
    map.map_mmio2(id, 0x100000).unwrap();
    assert!(map.map_mmio2(id, 0x200000).is_err());
    map.register_handler(w, 0x100000, 0x100fff, 0, "h").unwrap();
    map.unmap_mmio2(id).unwrap();
    assert!(map.unmap_mmio2(id).is_err());
    map.map_mmio2(id, 0x200000).unwrap();
    assert!(map.kvm_slots().slots.iter().all(|s| !s.read_only));
    map.check_handlers().unwrap();
}

#[test]
fn check_handlers_reports_bad_page_state() {
    let mut map = PhysMap::with_defaults();
    map.add_ram(0, 0x4000, "ram").unwrap();
    let w = map.register_handler_type(HandlerKind::Write, "w", |_| Ok(HandlerAction::Default));
    map.register_handler(w, 0x1000, 0x1fff, 0, "h").unwrap();
    map.check_handlers().unwrap();
    if let Backing::Ram(mem) = &map.ranges[0].backing {
        mem.pages[1].update(|mut i| {
            i.handler = PageHandlerState::None;
            i
        });
    }
    assert!(matches!(
        map.check_handlers(),
        Err(IntegrityError::Placement { first: 0x1000, .. })
    ));
}
