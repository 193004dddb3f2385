use std::sync::Arc;

use iom::Data;
use parking_lot::{Mutex, RwLock};
use pgm::phys::PhysMap;

use super::*;
use crate::devices::pci::layout::MMIO_HOLE_START;
use crate::devices::pci::{ConfigSpace, Identity};

type Seen = Arc<Mutex<Vec<String>>>;

/// A function with a 32-bit memory BAR 0 of 4 KiB and a 64-bit BAR 2 of
/// 16 KiB that records BAR accesses and moves.
struct Recorder {
    config: ConfigSpace,
    seen: Seen,
}

fn recorder(seen: &Seen, io: bool) -> Box<Recorder> {
    let mut config = ConfigSpace::new(Identity {
        vendor: 0x1af4,
        device: 0x1044,
        revision: 1,
        class: 0xff,
        subclass: 0,
        prog_if: 0,
        subsystem_vendor: 0x1af4,
        subsystem: 0x1100,
    });
    let kind = BarKind::Memory32 {
        prefetchable: false,
    };
    config.add_bar(0, kind, 0x1000).unwrap();
    let wide = BarKind::Memory64 { prefetchable: true };
    config.add_bar(2, wide, 0x4000).unwrap();
    if io {
        config.add_bar(4, BarKind::Io, 0x20).unwrap();
    }
    Box::new(Recorder {
        config,
        seen: Arc::clone(seen),
    })
}

impl PciFunction for Recorder {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn bar_access(&mut self, bar: usize, offset: u64, data: Data<'_>) {
        match data {
            Data::Read(buf) => buf.fill(bar as u8 + 0x10),
            Data::Write(bytes) => self
                .seen
                .lock()
                .push(format!("write BAR{bar}+{offset:#x} {bytes:?}")),
        }
    }
    fn bar_mapped(&mut self, bar: usize, address: Option<u64>) {
        self.seen.lock().push(format!("BAR{bar} at {:x?}", address));
    }
}

fn platform() -> (SharedPhysMap, Arc<PciPlatform>, Seen) {
    let map: SharedPhysMap = Arc::new(RwLock::new(PhysMap::with_defaults()));
    let p = PciPlatform::new(PciBus::with_host_bridge(), &map, 1 << 30).unwrap();
    let seen = Seen::default();
    p.add(DevFn::new(1, 0).unwrap(), recorder(&seen, false))
        .unwrap();
    (map, p, seen)
}

fn read8(map: &SharedPhysMap, gpa: u64) -> u8 {
    let mut b = [0];
    map.read().mmio_exit(gpa, Data::Read(&mut b)).unwrap();
    b[0]
}

/// A dword write through mechanism #1 to 00:01.0 register `reg`.
fn conf1_write(conf1: &mut PciConf1, reg: u8, value: u32) {
    conf1.write(0, &(0x8000_0800u32 | u32::from(reg)).to_le_bytes());
    conf1.write(4, &value.to_le_bytes());
}

#[test]
fn bars_get_addresses_in_the_windows_and_decode() {
    let (map, p, seen) = platform();
    let bars = p.mapped_bars();
    let at = DevFn::new(1, 0).unwrap();
    assert_eq!(bars, [(at, 0, MMIO_HOLE_START), (at, 2, 1 << 32)]);
    assert_eq!(read8(&map, MMIO_HOLE_START + 5), 0x10);
    assert_eq!(read8(&map, (1 << 32) + 0x3fff), 0x12);
    map.read()
        .mmio_exit(MMIO_HOLE_START + 8, Data::Write(&[7, 8]))
        .unwrap();
    let seen = seen.lock();
    assert!(
        seen.contains(&"BAR0 at Some(c0000000)".to_string()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"write BAR0+0x8 [7, 8]".to_string()),
        "{seen:?}"
    );
}

#[test]
fn a_moved_bar_moves_its_range_and_decoding_off_removes_it() {
    let (map, p, seen) = platform();
    let mut conf1 = PciConf1::new(Arc::clone(&p));
    conf1_write(&mut conf1, 0x10, 0xc010_0000);
    assert_eq!(read8(&map, 0xc010_0000), 0x10);
    assert_eq!(read8(&map, MMIO_HOLE_START), 0xff, "old place unassigned");
    assert_eq!(seen.lock().last().unwrap(), "BAR0 at Some(c0100000)");
    // Memory decoding off: nothing decodes.
    conf1_write(&mut conf1, 0x04, 0);
    assert_eq!(read8(&map, 0xc010_0000), 0xff);
    assert!(p.mapped_bars().is_empty());
    assert!(seen.lock().contains(&"BAR2 at None".to_string()));
    // A reset puts the BARs back where the platform placed them.
    conf1.reset();
    assert_eq!(read8(&map, MMIO_HOLE_START), 0x10);
}

#[test]
fn ecam_reaches_the_same_spaces_and_its_writes_move_bars_after_the_exit() {
    let (map, p, _) = platform();
    let ecam_dev1 = ECAM_BASE + 0x8000;
    let mut id = [0; 4];
    map.read()
        .mmio_exit(ecam_dev1, Data::Read(&mut id))
        .unwrap();
    assert_eq!(u32::from_le_bytes(id), 0x1044_1af4);
    map.read()
        .mmio_exit(ecam_dev1 + 0x10, Data::Write(&0xc020_0000u32.to_le_bytes()))
        .unwrap();
    assert!(p.ecam_written());
    // Not yet moved: the range changes only once the map is unlocked.
    assert_eq!(read8(&map, 0xc020_0000), 0xff);
    p.sync_if_changed();
    assert!(!p.ecam_written());
    assert_eq!(read8(&map, 0xc020_0000), 0x10);
}

#[test]
fn bars_that_cannot_decode_are_left_out_and_io_bars_refused() {
    let (map, p, _) = platform();
    let mut conf1 = PciConf1::new(Arc::clone(&p));
    // Over the ECAM: pgm refuses, the BAR decodes nowhere.
    conf1_write(&mut conf1, 0x10, ECAM_BASE as u32);
    assert_eq!(p.mapped_bars().len(), 1);
    let mut id = [0; 2];
    map.read()
        .mmio_exit(ECAM_BASE, Data::Read(&mut id))
        .unwrap();
    assert_eq!(u16::from_le_bytes(id), 0x1b36, "the ECAM still answers");
    let seen = Seen::default();
    let err = p
        .add(DevFn::new(2, 0).unwrap(), recorder(&seen, true))
        .unwrap_err();
    assert!(
        matches!(err, PciError::BarPlacement { index: 4, .. }),
        "{err}"
    );
}
