use super::*;
use pgm::phys::RomProtection;

fn trap(page: u64, reads: bool) -> PageTrap {
    PageTrap { page, reads }
}

/// RAM at 0..64K and 64K..128K (two ranges), MMIO at 1M, ROM at 2M.
fn test_map() -> PhysMap {
    let mut map = PhysMap::with_defaults();
    map.add_ram(0, 0x1_0000, "low").unwrap();
    map.add_ram(0x1_0000, 0x1_0000, "next").unwrap();
    let mmio = map.register_handler_type(HandlerKind::Mmio, "dev", |_| Ok(HandlerAction::Default));
    map.map_mmio(0x10_0000, 0x1000, mmio, 0, "dev").unwrap();
    map.add_rom(
        0x20_0000,
        0x1000,
        &[0; 0x1000],
        RomProtection::ReadRomWriteIgnore,
        "rom",
    )
    .unwrap();
    map
}

#[test]
fn handler_runs_merge_ram_pages_and_skip_what_exits_anyway() {
    let map = test_map();
    let ranges = map.ranges();
    let traps = [
        trap(0xe000, false),
        trap(0xf000, false),
        trap(0x1_0000, false),   // adjacent, but another range
        trap(0x1_1000, true),    // reads: another run
        trap(0x10_0000, true),   // MMIO: exits anyway
        trap(0x20_0000, false),  // ROM writes exit anyway
        trap(0x4000_0000, true), // unassigned
    ];
    assert_eq!(
        handler_runs(&traps, &ranges).unwrap(),
        vec![
            (0xe000, 0xffff, false),
            (0x1_0000, 0x1_0fff, false),
            (0x1_1000, 0x1_1fff, true)
        ]
    );
    assert!(matches!(
        handler_runs(&[trap(0x20_0000, true)], &ranges),
        Err(TargetError::Unsupported(_))
    ));
}

#[test]
fn page_trap_handlers_change_the_slots_and_give_them_back() {
    let mut map = test_map();
    let before = map.kvm_slots().slots.clone();
    let mut traps = PageTraps::default();
    let runs = handler_runs(&[trap(0x3000, false), trap(0x5000, true)], &map.ranges());
    traps.replace(&mut map, runs.unwrap()).unwrap();
    let slots = &map.kvm_slots().slots;
    let covering = |gpa: u64| {
        slots
            .iter()
            .find(|s| s.guest_addr <= gpa && gpa < s.guest_addr + s.size)
    };
    assert!(covering(0x3000).is_some_and(|s| s.read_only && s.size == 0x1000));
    assert!(
        covering(0x5000).is_none(),
        "read traps leave the page unmapped"
    );
    assert!(covering(0x4000).is_some_and(|s| !s.read_only));
    // A failing set (a handler of someone else's on the page) keeps the old one.
    let other =
        map.register_handler_type(HandlerKind::Write, "other", |_| Ok(HandlerAction::Default));
    map.register_handler(other, 0x8000, 0x8fff, 0, "other")
        .unwrap();
    let clash = handler_runs(&[trap(0x8000, false)], &map.ranges()).unwrap();
    assert!(traps.replace(&mut map, clash).is_err());
    assert_eq!(traps.registered.len(), 2);
    assert!(map.lookup_handler(0x3000).is_some() && map.lookup_handler(0x5000).is_some());
    map.deregister_handler(0x8000).unwrap();
    traps.replace(&mut map, Vec::new()).unwrap();
    assert_eq!(map.kvm_slots().slots, before);
    assert!(map.handlers().all(|h| h.desc != "debugger watchpoint"));
}
