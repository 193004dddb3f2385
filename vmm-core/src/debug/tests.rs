use super::*;
use pgm::phys::RomProtection;
use proptest::prelude::*;

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

#[test]
fn x87_tags_classify_values() {
    let mut v = [0u8; 10];
    assert_eq!(x87_tag(&v), 1); // +0
    v[7] = 0x80;
    v[8] = 0xff;
    v[9] = 0x3f; // 1.0
    assert_eq!(x87_tag(&v), 0);
    v[7] = 0; // unnormal
    assert_eq!(x87_tag(&v), 2);
    v[8] = 0xff;
    v[9] = 0x7f; // infinity / NaN exponent
    assert_eq!(x87_tag(&v), 2);
}

proptest! {
    #[test]
    fn register_file_round_trips(
        gprs in proptest::array::uniform16(any::<u64>()),
        rip in any::<u64>(),
        rflags in any::<u64>(),
        sel in any::<u16>(),
        base in any::<u64>(),
        cr in proptest::array::uniform4(any::<u64>()),
        ftwx in any::<u8>(),
        top in 0u16..8,
        xmm0 in any::<u128>(),
    ) {
        let mut regs = Regs::default();
        let mut sregs = Sregs::default();
        let mut fpu = Fpu::default();
        [regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rsp, regs.rbp,
         regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15] = gprs;
        regs.rip = rip;
        regs.rflags = rflags;
        sregs.cs.selector = sel;
        sregs.cs.base = base;
        sregs.cs.type_ = 0xb;
        sregs.cs.present = 1;
        [sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer] = cr;
        fpu.ftwx = ftwx;
        fpu.fsw = top << 11;
        fpu.xmm[0] = xmm0.to_le_bytes();
        fpu.fpr[3][..10].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 0x80, 0xff, 0x3f]);
        let r = to_registers(&regs, &sregs, &fpu);
        prop_assert_eq!(r.cs.selector, sel);
        let (mut regs2, mut sregs2, mut fpu2) = (Regs::default(), sregs, Fpu::default());
        from_registers(&r, &mut regs2, &mut sregs2, &mut fpu2);
        prop_assert_eq!(regs2, regs);
        prop_assert_eq!(sregs2, sregs);
        prop_assert!(fpu_eq(&fpu2, &fpu));
    }
}
