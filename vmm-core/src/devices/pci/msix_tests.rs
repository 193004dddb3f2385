use super::*;
use crate::devices::pci::irq::fake::FakeRouting;

fn msix(count: u16) -> (Arc<FakeRouting>, Msix) {
    let routing = Arc::new(FakeRouting::default());
    let m = Msix::new(count, routing.clone()).unwrap();
    (routing, m)
}

/// Programs vector `v` with an address and data, leaving its mask as is.
fn program(m: &mut Msix, v: u64, data: u32) {
    let at = v * ENTRY_SIZE as u64;
    m.table_write(at, &0xfee0_0000u32.to_le_bytes()).unwrap();
    m.table_write(at + 4, &0u32.to_le_bytes()).unwrap();
    m.table_write(at + 8, &data.to_le_bytes()).unwrap();
}

fn set_mask(m: &mut Msix, v: u64, masked: bool) {
    let at = v * ENTRY_SIZE as u64 + 12;
    m.table_write(at, &u32::from(masked).to_le_bytes()).unwrap();
}

#[test]
fn the_capability_describes_size_table_and_pba() {
    let (_, m) = msix(3);
    let at = MsixPlacement {
        table_bar: 0,
        table_offset: 0x4000,
        pba_bar: 0,
        pba_offset: 0x5000,
    };
    let (body, writable) = m.capability(at);
    assert_eq!(u16::from_le_bytes([body[0], body[1]]), 2, "table size - 1");
    assert_eq!(&body[2..6], &0x4000u32.to_le_bytes());
    assert_eq!(&body[6..10], &0x5000u32.to_le_bytes());
    assert_eq!(writable[..2], [0, 0xc0], "enable and function mask only");
    assert_eq!(m.table_size(), 48);
    assert_eq!(m.pba_size(), 8);
}

#[test]
fn programmed_entries_become_routes_and_fire_when_unmasked() {
    let (routing, mut m) = msix(2);
    m.set_control(CONTROL_ENABLE);
    program(&mut m, 1, 0x45);
    assert_eq!(routing.routes.lock().get(&25), Some(&(0xfee0_0000, 0x45)));
    assert!(
        routing.routes.lock().get(&24).is_none(),
        "vector 0 never programmed"
    );
    // Masked at power-on: the signal is held pending.
    assert!(m.signal(1));
    assert_eq!(routing.fired(25), 0);
    assert!(m.is_pending(1));
    let mut pba = [0; 8];
    m.pba_read(0, &mut pba);
    assert_eq!(pba[0], 0b10);
    // Unmasking delivers it and clears the bit.
    set_mask(&mut m, 1, false);
    assert_eq!(routing.fired(25), 1);
    assert!(!m.is_pending(1));
    assert!(m.signal(1));
    assert_eq!(routing.fired(25), 1);
    let mut back = [0; 4];
    m.table_read(16 + 8, &mut back);
    assert_eq!(u32::from_le_bytes(back), 0x45);
}

#[test]
fn the_function_mask_holds_every_vector() {
    let (routing, mut m) = msix(1);
    program(&mut m, 0, 0x30);
    set_mask(&mut m, 0, false);
    m.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
    assert_eq!(m.control(), 0xc000);
    assert!(m.signal(0));
    assert_eq!(routing.fired(24), 0);
    assert!(m.is_pending(0));
    m.set_control(CONTROL_ENABLE);
    assert_eq!(routing.fired(24), 1);
    assert!(!m.is_pending(0));
}

#[test]
fn disabled_msix_leaves_the_signal_to_intx_and_reset_masks_all() {
    let (routing, mut m) = msix(1);
    program(&mut m, 0, 0x30);
    set_mask(&mut m, 0, false);
    assert!(!m.signal(0), "MSI-X disabled");
    m.set_control(CONTROL_ENABLE);
    // A vector past the table is dropped, not an error.
    assert!(m.signal(7));
    m.reset();
    assert!(routing.routes.lock().is_empty());
    let mut ctrl = [0; 4];
    m.table_read(12, &mut ctrl);
    assert_eq!(ctrl[0], VECTOR_MASKED);
    assert!(!m.enabled());
}

#[test]
fn a_restored_state_is_routed_again() {
    let (_, mut m) = msix(2);
    program(&mut m, 0, 0x51);
    set_mask(&mut m, 0, false);
    m.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
    m.signal(0);
    let state = m.state();
    let (routing, mut other) = msix(2);
    other.set_state(&state, CONTROL_ENABLE).unwrap();
    assert_eq!(routing.routes.lock().get(&24), Some(&(0xfee0_0000, 0x51)));
    assert_eq!(
        routing.fired(24),
        1,
        "the pending message went out at unmask"
    );
    let (_, mut small) = msix(1);
    assert!(small.set_state(&state, 0).is_err());
}
