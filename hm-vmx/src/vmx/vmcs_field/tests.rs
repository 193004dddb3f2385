use super::*;

#[test]
fn named_table_is_consistent() {
    let mut seen = std::collections::HashSet::new();
    for &(f, name) in VmcsField::NAMED {
        assert!(seen.insert(f), "duplicate encoding {f:?}");
        assert_eq!(VmcsField::from_raw(f.raw()), Ok(f), "{name}");
        assert_eq!(f.access(), FieldAccess::Full, "{name}");
        assert_eq!(
            VmcsField::new(f.width(), f.field_type(), f.index()),
            f,
            "{name}"
        );
        // Name prefixes follow the field type.
        match f.field_type() {
            FieldType::GuestState => {
                assert!(
                    name.starts_with("GUEST_")
                        || name == "VMCS_LINK_POINTER"
                        || name == "VMX_PREEMPTION_TIMER_VALUE",
                    "{name}"
                )
            }
            FieldType::HostState => assert!(name.starts_with("HOST_"), "{name}"),
            _ => {}
        }
    }
}

#[test]
fn from_raw_rejects_bad_encodings() {
    assert_eq!(
        VmcsField::from_raw(0x1000),
        Err(VmcsFieldError::ReservedBits(0x1000))
    );
    assert_eq!(
        VmcsField::from_raw(0x8000),
        Err(VmcsFieldError::ReservedBits(0x8000))
    );
    assert_eq!(
        VmcsField::from_raw(0x681f),
        Err(VmcsFieldError::HighAccessOnNon64(0x681f))
    );
    assert!(VmcsField::from_raw(0x2801).is_ok());
}

#[test]
fn high_and_display() {
    assert_eq!(VmcsField::GUEST_RIP.high(), None);
    let hi = VmcsField::TSC_OFFSET.high().unwrap();
    assert_eq!(hi.raw(), 0x2011);
    assert_eq!(hi.high(), None);
    assert_eq!(hi.full(), VmcsField::TSC_OFFSET);
    assert_eq!(hi.to_string(), "TSC_OFFSET_HIGH (0x2011)");
    assert_eq!(VmcsField::GUEST_CR0.to_string(), "GUEST_CR0 (0x6800)");
    assert_eq!(VmcsField(0x6dfe).to_string(), "0x6dfe");
    assert_eq!(VmcsField(0x6dfe).name(), None);
}
