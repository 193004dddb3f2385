use super::*;

#[test]
fn kvm_fields_to_access_rights() {
    let k = KvmSegmentFields {
        type_: 3,
        s: 1,
        dpl: 3,
        present: 1,
        db: 1,
        g: 1,
        ..Default::default()
    };
    assert_eq!(k.access_rights(), AccessRights(0xc0f3));
    let k = KvmSegmentFields {
        unusable: 1,
        avl: 1,
        l: 1,
        type_: 0xff,
        dpl: 0xff,
        ..Default::default()
    };
    let ar = k.access_rights();
    assert_eq!(ar.raw(), 0x1_306f);
    assert!(ar.unusable() && ar.avl() && ar.l() && !ar.present() && !ar.g());
    assert_eq!((ar.type_(), ar.dpl(), ar.reserved()), (0xf, 3, 0));
    let seg = Segment::from(KvmSegmentFields {
        selector: 0x2b,
        base: 0x1234,
        limit: 0xfffff,
        ..Default::default()
    });
    assert_eq!(
        (seg.rpl(), seg.ti(), seg.base, seg.limit),
        (3, false, 0x1234, 0xfffff)
    );
}

#[test]
fn controls_from_values() {
    let c = GuestControls::from_values(1 << 5, 1 << 31, 0b1000_0010, 1 << 9 | 1 << 15 | 1 << 2);
    assert!(c.ia32e_mode_guest && c.load_efer && c.load_debug_controls);
    assert!(c.unrestricted_guest && c.enable_ept && c.virtual_nmis);
    // Secondary controls do not count unless activated.
    let c = GuestControls::from_values(0, 0, 0b1000_0010, 0);
    assert_eq!(c, GuestControls::default());
}

#[test]
fn segment_accessors() {
    let mut gs = GuestState::long_mode_flat();
    for r in SegReg::ALL {
        gs.segment_mut(r).selector = 0x42;
        assert_eq!(gs.segment(r).selector, 0x42, "{r}");
    }
    assert!(gs.in_64bit_code() && !gs.v8086());
}
