use super::*;

fn id() -> Identity {
    Identity {
        vendor: 0x1234,
        device: 0x5678,
        revision: 3,
        class: 0x02,
        subclass: 0x00,
        prog_if: 0x01,
        subsystem_vendor: 0xaaaa,
        subsystem: 0xbbbb,
    }
}

fn read32(c: &ConfigSpace, offset: u8) -> u32 {
    let mut b = [0; 4];
    c.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn write32(c: &mut ConfigSpace, offset: u8, v: u32) {
    c.write(offset, &v.to_le_bytes());
}

/// Writes all ones to the BAR register at `offset` and reads back.
fn size_probe(c: &mut ConfigSpace, offset: u8) -> u32 {
    write32(c, offset, !0);
    read32(c, offset)
}

#[test]
fn the_header_holds_the_identity() {
    let c = ConfigSpace::new(id());
    assert_eq!(read32(&c, 0x00), 0x5678_1234);
    assert_eq!(read32(&c, 0x08), 0x0200_0103);
    assert_eq!(read32(&c, 0x2c), 0xbbbb_aaaa);
    assert_eq!(c.bytes()[0x0e], 0, "single-function type 0");
    assert_eq!(c.identity(), id());
}

#[test]
fn read_only_fields_stay_read_only() {
    let mut c = ConfigSpace::new(id());
    let before = *c.bytes();
    for offset in [0x00, 0x08, 0x0c, 0x10, 0x2c, 0x30, 0x34, 0x3c, 0x40, 0xfc] {
        write32(&mut c, offset, !0);
        c.write(offset, &[0; 4]);
    }
    let rw = [0x04, 0x05, 0x0c, 0x0d, 0x3c];
    for (at, (&now, &was)) in c.bytes().iter().zip(before.iter()).enumerate() {
        if !rw.contains(&at) {
            assert_eq!(now, was, "byte {at:#x} changed");
        }
    }
}

#[test]
fn command_takes_only_its_writable_bits() {
    let mut c = ConfigSpace::new(id());
    c.write(0x04, &[0xff, 0xff]);
    let mut cmd = [0; 2];
    c.read(0x04, &mut cmd);
    assert_eq!(u16::from_le_bytes(cmd), 0x0547);
    c.write(0x04, &[0x02]);
    c.read(0x04, &mut cmd);
    assert_eq!(
        u16::from_le_bytes(cmd),
        0x0502,
        "a byte write leaves the high byte"
    );
}

#[test]
fn status_error_bits_clear_when_written_with_ones() {
    let mut c = ConfigSpace::new(id());
    c.add_capability(0x09, &[0; 2], &[0; 2]).unwrap();
    let mut saved = *c.bytes();
    saved[0x06..0x08].copy_from_slice(&0xf900u16.to_le_bytes());
    c.restore(&saved).unwrap();
    c.write(0x06, &0x2000u16.to_le_bytes());
    let mut status = [0; 2];
    c.read(0x06, &mut status);
    assert_eq!(
        u16::from_le_bytes(status),
        0xd910,
        "bit 13 cleared, rest kept"
    );
}

#[test]
fn a_32_bit_memory_bar_sizes_and_takes_an_address() {
    let mut c = ConfigSpace::new(id());
    c.add_bar(1, BarKind::Memory32 { prefetchable: true }, 0x2000)
        .unwrap();
    assert_eq!(read32(&c, 0x14), 0x8);
    assert_eq!(size_probe(&mut c, 0x14), 0xffff_e008);
    write32(&mut c, 0x14, 0xfebf_f123);
    assert_eq!(read32(&c, 0x14), 0xfebf_e008);
    let bar = c.bars()[0];
    assert_eq!((bar.index, bar.size, bar.address), (1, 0x2000, 0xfebf_e000));
}

#[test]
fn a_64_bit_memory_bar_sizes_over_both_registers() {
    let mut c = ConfigSpace::new(id());
    c.add_bar(
        2,
        BarKind::Memory64 {
            prefetchable: false,
        },
        1 << 33,
    )
    .unwrap();
    assert_eq!(size_probe(&mut c, 0x18), 0x0000_0004);
    assert_eq!(size_probe(&mut c, 0x1c), 0xffff_fffe);
    write32(&mut c, 0x18, 0);
    write32(&mut c, 0x1c, 0x4);
    let bar = c.bars()[0];
    assert_eq!((bar.index, bar.address), (2, 0x4_0000_0000));
    assert!(matches!(bar.kind, BarKind::Memory64 { .. }));
}

#[test]
fn an_io_bar_sizes_with_its_io_bit_kept() {
    let mut c = ConfigSpace::new(id());
    c.add_bar(0, BarKind::Io, 0x20).unwrap();
    assert_eq!(size_probe(&mut c, 0x10), 0xffff_ffe1);
    write32(&mut c, 0x10, 0xc040);
    assert_eq!(read32(&c, 0x10), 0xc041);
    assert_eq!(c.bars()[0].address, 0xc040);
    // An absent BAR sizes as zero: not implemented.
    assert_eq!(size_probe(&mut c, 0x14), 0);
}

#[test]
fn bars_are_checked() {
    let mut c = ConfigSpace::new(id());
    let mem64 = BarKind::Memory64 {
        prefetchable: false,
    };
    assert!(matches!(
        c.add_bar(5, mem64, 0x1000),
        Err(PciError::BarIndex { .. })
    ));
    assert!(matches!(
        c.add_bar(0, BarKind::Io, 0x200),
        Err(PciError::BarSize { .. })
    ));
    assert!(matches!(
        c.add_bar(0, mem64, 0x1800),
        Err(PciError::BarSize { .. })
    ));
    c.add_bar(0, mem64, 0x1000).unwrap();
    assert_eq!(
        c.add_bar(1, BarKind::Io, 4),
        Err(PciError::BarTaken { index: 1 })
    );
    assert_eq!(
        c.add_bar(0, BarKind::Io, 4),
        Err(PciError::BarTaken { index: 0 })
    );
}

#[test]
fn capabilities_form_a_list() {
    let mut c = ConfigSpace::new(id());
    assert_eq!(c.bytes()[0x06] & 0x10, 0, "no list without capabilities");
    let first = c.add_capability(0x11, &[1, 2, 3], &[0, 0xff, 0]).unwrap();
    let second = c.add_capability(0x05, &[0; 6], &[0; 6]).unwrap();
    assert_eq!((first, second), (0x40, 0x48));
    let b = c.bytes();
    assert_eq!(b[0x06] & 0x10, 0x10);
    assert_eq!(b[0x34], 0x40);
    assert_eq!(&b[0x40..0x45], &[0x11, 0x48, 1, 2, 3]);
    assert_eq!(&b[0x48..0x4a], &[0x05, 0x00]);
    c.write(0x42, &[9, 9, 9]);
    assert_eq!(&c.bytes()[0x42..0x45], &[1, 9, 3], "only the writable byte");
    assert!(c.add_capability(0x05, &[0; 200], &[0; 200]).is_err());
    assert!(c.add_capability(0x05, &[0; 2], &[0; 1]).is_err());
}

#[test]
fn restore_takes_only_guest_changeable_bits_and_checks_identity() {
    let mut c = ConfigSpace::new(id());
    c.add_bar(0, BarKind::Io, 0x10).unwrap();
    let mut saved = [0xee; CONFIG_SPACE_SIZE];
    saved[..0x10].copy_from_slice(&c.bytes()[..0x10]);
    saved[0x2c..0x30].copy_from_slice(&c.bytes()[0x2c..0x30]);
    c.restore(&saved).unwrap();
    assert_eq!(read32(&c, 0x10), 0xeeee_eee1);
    assert_eq!(c.bytes()[0x3c], 0xee, "interrupt line");
    assert_eq!(c.bytes()[0x3d], 0, "interrupt pin is read-only");
    c.reset();
    assert_eq!(read32(&c, 0x10), 0x1);
    saved[0x00] = 0x35;
    assert!(matches!(
        c.restore(&saved),
        Err(PciError::RestoreIdentity { .. })
    ));
}

#[test]
fn reads_past_the_end_are_all_ones() {
    let mut c = ConfigSpace::new(id());
    let mut b = [0; 4];
    c.read(0xfe, &mut b);
    assert_eq!(b, [0, 0, 0xff, 0xff]);
    c.write(0xfe, &[1, 1, 1, 1]);
}
