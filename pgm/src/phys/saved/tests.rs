//! Saved-state round trips, live passes, file mappings and corrupt streams.

use super::*;
use crate::phys::page::{PAGE_SIZE, PageState};
use crate::phys::testing::ScriptedHost;
use crate::phys::{KvmSlot, PhysMap, RomProtection};
use ssm::{Manager, SaveOptions, StreamReader};

fn layout(map: &mut PhysMap) {
    map.add_ram(0, 0x40000, "ram").unwrap();
    map.add_rom(
        0xf0000,
        0x2000,
        &[0x5a; 0x2000],
        RomProtection::ReadRomWriteIgnore,
        "rom",
    )
    .unwrap();
    let id = map.register_mmio2(0x2000, "vram").unwrap();
    map.map_mmio2(id, 0x1000_0000).unwrap();
}

fn shared() -> Arc<RwLock<PhysMap>> {
    let mut map = PhysMap::with_defaults();
    layout(&mut map);
    Arc::new(RwLock::new(map))
}

fn load_into(bytes: &[u8]) -> Arc<RwLock<PhysMap>> {
    let map = shared();
    let mut m = Manager::new();
    m.register(Box::new(PgmUnit::new(map.clone(), None)))
        .unwrap();
    m.load(StreamReader::from_slice(bytes).unwrap()).unwrap();
    map
}

fn byte(map: &Arc<RwLock<PhysMap>>, gpa: u64) -> u8 {
    let mut b = [0u8];
    map.read().read(gpa, &mut b).unwrap();
    b[0]
}

#[test]
fn full_save_restores_ram_rom_mmio2_and_states() {
    let src = shared();
    {
        let mut m = src.write();
        m.write(0x1000, &[1]).unwrap();
        m.write(0x3000, &[0]).unwrap();
        m.balloon(&[0x5000], true).unwrap();
        m.set_rom_protection(0xf0000, RomProtection::ReadRamWriteRam)
            .unwrap();
        m.write(0xf1000, &[0x77]).unwrap();
        m.set_rom_protection(0xf0000, RomProtection::ReadRomWriteRam)
            .unwrap();
        m.write(0x1000_1000, &[9]).unwrap();
    }
    let mut m = Manager::new();
    m.register(Box::new(PgmUnit::new(src.clone(), None)))
        .unwrap();
    let mut bytes = Vec::new();
    m.save(&mut bytes, &SaveOptions::default()).unwrap();
    assert!(bytes.len() < 5 * 4096, "{}", bytes.len());

    let dst = load_into(&bytes);
    assert_eq!(byte(&dst, 0x1000), 1);
    assert_eq!(byte(&dst, 0x1000_1000), 9);
    let d = dst.read();
    assert_eq!(d.page_info(0x5000).state, PageState::Ballooned);
    assert_eq!(d.page_info(0x3000).state, PageState::Zero);
    assert_eq!(d.page_info(0x1000).state, PageState::Allocated);
    assert_eq!(
        d.ranges()[1].rom_protection,
        Some(RomProtection::ReadRomWriteRam)
    );
    drop(d);
    assert_eq!(byte(&dst, 0xf1000), 0x5a);
    dst.write()
        .set_rom_protection(0xf0000, RomProtection::ReadRamWriteIgnore)
        .unwrap();
    assert_eq!(byte(&dst, 0xf1000), 0x77);
    assert_eq!(byte(&dst, 0xf0000), 0x5a);
}

#[test]
fn a_debugger_patch_in_the_rom_shadow_is_not_saved() {
    let src = shared();
    {
        let mut m = src.write();
        m.set_rom_protection(0xf0000, RomProtection::ReadRamWriteIgnore)
            .unwrap();
        m.write_past_rom_protection(0xf0010, &[0xcc]).unwrap();
    }
    assert_eq!(byte(&src, 0xf0010), 0xcc);
    let mut m = Manager::new();
    m.register(Box::new(PgmUnit::new(src.clone(), None)))
        .unwrap();
    let mut bytes = Vec::new();
    m.save(&mut bytes, &SaveOptions::default()).unwrap();
    let dst = load_into(&bytes);
    assert_eq!(byte(&dst, 0xf0010), 0x5a);
}

#[test]
fn ballooned_pages_are_ballooned_again_with_the_host() {
    let save = |map: &Arc<RwLock<PhysMap>>| {
        let mut m = Manager::new();
        m.register(Box::new(PgmUnit::new(map.clone(), None)))
            .unwrap();
        let mut bytes = Vec::new();
        m.save(&mut bytes, &SaveOptions::default()).unwrap();
        bytes
    };
    let load = |map: &Arc<RwLock<PhysMap>>, bytes: &[u8]| {
        let mut m = Manager::new();
        m.register(Box::new(PgmUnit::new(map.clone(), None)))
            .unwrap();
        m.load(StreamReader::from_slice(bytes).unwrap()).unwrap();
    };
    let src = shared();
    src.read().write(0x2000, &[4; 0x2000]).unwrap();
    src.read().balloon(&[0x5000, 0x6000, 0x9000], true).unwrap();
    let ballooned = save(&src);
    let (host, dst) = recording_map();
    load(&dst, &ballooned);
    // GMM-like providers count what the guest gave: the load tells them.
    assert_eq!(host.ballooned(), [5, 6, 9]);
    assert_eq!(dst.read().page_info(0x6000).state, PageState::Ballooned);
    // A later state where the guest took the pages back and wrote one.
    src.read()
        .balloon(&[0x5000, 0x6000, 0x9000], false)
        .unwrap();
    src.read().write(0x6000, &[8; 0x1000]).unwrap();
    load(&dst, &save(&src));
    assert!(host.ballooned().is_empty());
    assert_eq!(byte(&dst, 0x6000), 8);
    assert_eq!(dst.read().page_info(0x5000).state, PageState::Zero);
}

#[test]
fn load_rejects_a_different_layout_and_garbage() {
    let src = shared();
    let mut m = Manager::new();
    m.register(Box::new(PgmUnit::new(src, None))).unwrap();
    let mut bytes = Vec::new();
    m.save(&mut bytes, &SaveOptions::default()).unwrap();
    let other = Arc::new(RwLock::new(PhysMap::with_defaults()));
    other.write().add_ram(0, 0x1000, "ram").unwrap();
    let mut m2 = Manager::new();
    m2.register(Box::new(PgmUnit::new(other, None))).unwrap();
    assert!(m2.load(StreamReader::from_slice(&bytes).unwrap()).is_err());
}

fn recording_map() -> (Arc<ScriptedHost>, Arc<RwLock<PhysMap>>) {
    let host = Arc::new(ScriptedHost::default());
    let mut map = PhysMap::new(host.clone(), crate::phys::PhysConfig::default()).unwrap();
    layout(&mut map);
    (host, Arc::new(RwLock::new(map)))
}

/// RAM with a 20-page run at 0x10000, a short run at 0x30000 and a
/// written zero page at 0x3a000.
fn runs_source() -> Arc<RwLock<PhysMap>> {
    let src = shared();
    let m = src.read();
    for i in 0..20u64 {
        m.write(0x10000 + i * PAGE_SIZE, &[i as u8 + 1; 64])
            .unwrap();
    }
    m.write(0x30000, &[0xee; 8192]).unwrap();
    m.write(0x3a000, &[0]).unwrap();
    drop(m);
    src
}

fn check_runs_loaded(dst: &Arc<RwLock<PhysMap>>) {
    for i in 0..20u64 {
        assert_eq!(byte(dst, 0x10000 + i * PAGE_SIZE + 63), i as u8 + 1);
        assert_eq!(
            dst.read().page_info(0x10000 + i * PAGE_SIZE).state,
            PageState::Allocated
        );
    }
    assert_eq!(byte(dst, 0x31fff), 0xee);
    assert_eq!(byte(dst, 0xf1000), 0x5a);
    assert_eq!(dst.read().page_info(0x3a000).state, PageState::Zero);
}

#[test]
fn runs_are_mapped_from_a_file_and_copied_from_other_sources() {
    let src = runs_source();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgm.sav");
    let mut m = Manager::new();
    m.register(Box::new(PgmUnit::new(src.clone(), None)))
        .unwrap();
    m.save_to_file(&path, &SaveOptions::default()).unwrap();
    let report = ssm::inspect(&path).unwrap();
    assert_eq!(report.units[0].records.run_pages, 20);

    let (host, dst) = recording_map();
    let mut m = Manager::new();
    m.register(Box::new(PgmUnit::new(dst.clone(), None)))
        .unwrap();
    m.load_from_file(&path).unwrap();
    let calls = host.mapped();
    assert_eq!(calls.len(), 1);
    assert_eq!((calls[0].0, calls[0].1), (0x10000, 20 * 4096));
    assert_eq!(calls[0].2 % 4096, 0);
    assert_eq!(dst.read().pages_mapped_from_file(), 20);
    check_runs_loaded(&dst);

    // A guest write to a mapped page is private; the file is unchanged.
    dst.read().write(0x10000, &[0x99]).unwrap();
    assert_eq!(byte(&dst, 0x10000), 0x99);
    let again = load_into(&std::fs::read(&path).unwrap());
    assert_eq!(byte(&again, 0x10000), 1);

    // The same stream from memory is copied.
    let (host, dst) = recording_map();
    let mut m = Manager::new();
    m.register(Box::new(PgmUnit::new(dst.clone(), None)))
        .unwrap();
    m.load(StreamReader::from_slice(&std::fs::read(&path).unwrap()).unwrap())
        .unwrap();
    assert!(host.mapped().is_empty());
    assert_eq!(dst.read().pages_mapped_from_file(), 0);
    check_runs_loaded(&dst);
}

#[test]
fn a_compressed_save_keeps_runs_loadable_page_by_page() {
    let src = runs_source();
    let mut m = Manager::new();
    m.register(Box::new(PgmUnit::new(src, None))).unwrap();
    let mut bytes = Vec::new();
    let mut opts = SaveOptions::default();
    opts.compress = true;
    m.save(&mut bytes, &opts).unwrap();
    check_runs_loaded(&load_into(&bytes));
}

#[test]
fn a_run_outside_the_ram_is_an_error() {
    let src = runs_source();
    let mut m = Manager::new();
    m.register(Box::new(PgmUnit::new(src, None))).unwrap();
    let mut bytes = Vec::new();
    m.save(&mut bytes, &SaveOptions::default()).unwrap();
    // Make the run (its address follows from the zero pages before
    // it) longer than the RAM.
    let at = bytes
        .windows(5)
        .position(|w| w[0] == REC_RUN | REC_NEXT && w[1..] == 20u32.to_le_bytes())
        .unwrap();
    let mut bad = bytes.clone();
    bad[at + 1..at + 5].copy_from_slice(&60u32.to_le_bytes());
    let map = shared();
    let mut m = Manager::new();
    m.register(Box::new(PgmUnit::new(map, None))).unwrap();
    // pgm checks the run before the unit's CRC is checked at its end.
    let e = m.load(StreamReader::from_slice(&bad).unwrap()).unwrap_err();
    assert!(e.to_string().contains("fits no RAM range"), "{e}");
    // The same for the zero run before it (pages 0..0x10000).
    let at = bytes
        .windows(13)
        .position(|w| w[0] == REC_ZERO_RUN && w[1..9] == [0; 8] && w[9..] == 16u32.to_le_bytes())
        .unwrap();
    let mut bad = bytes.clone();
    bad[at + 9..at + 13].copy_from_slice(&1000u32.to_le_bytes());
    let mut m = Manager::new();
    m.register(Box::new(PgmUnit::new(shared(), None))).unwrap();
    let e = m.load(StreamReader::from_slice(&bad).unwrap()).unwrap_err();
    assert!(e.to_string().contains("zero run of 1000 pages"), "{e}");
}

/// Writes into the guest between passes, reporting them as a dirty log.
struct FakeGuest {
    map: Arc<RwLock<PhysMap>>,
    passes: u32,
    slots_changed: u32,
}

impl DirtyLog for FakeGuest {
    fn dirty_bitmap(&mut self, slot: &KvmSlot) -> Result<Vec<u64>, String> {
        let words = (slot.size / PAGE_SIZE).div_ceil(64) as usize;
        let mut bm = vec![0u64; words];
        if slot.guest_addr == 0 && self.passes < 3 {
            self.passes += 1;
            // the "guest" wrote page 2 through KVM: bypass pgm
            let mem = self.map.read().guest_memory().unwrap();
            use vm_memory::Bytes;
            mem.write_obj(self.passes as u8, vm_memory::GuestAddress(0x2000))
                .unwrap();
            bm[0] = 1 << 2;
        }
        Ok(bm)
    }

    fn slots_changed(&mut self, _slots: &crate::phys::SlotSet) -> Result<(), String> {
        self.slots_changed += 1;
        Ok(())
    }
}

#[test]
fn live_save_resends_dirty_pages_and_finishes() {
    let src = shared();
    src.read().write(0x1000, &[1]).unwrap();
    let guest = FakeGuest {
        map: src.clone(),
        passes: 0,
        slots_changed: 0,
    };
    let mut m = Manager::new();
    m.register(Box::new(PgmUnit::new(src.clone(), Some(Box::new(guest)))))
        .unwrap();
    let mut bytes = Vec::new();
    let mut stopped = false;
    m.save_live(&mut bytes, &SaveOptions::default(), || {
        stopped = true;
        Ok(())
    })
    .unwrap();
    assert!(stopped);
    assert!(!src.read().write_monitoring());
    let report = ssm::inspect_stream(StreamReader::from_slice(&bytes).unwrap()).unwrap();
    assert!(report.units.len() >= 2, "{report:?}");
    let dst = load_into(&bytes);
    assert_eq!(byte(&dst, 0x1000), 1);
    assert_eq!(byte(&dst, 0x2000), byte(&src, 0x2000));
    assert_ne!(byte(&dst, 0x2000), 0);
}

/// A dirty log in which the guest never writes.
struct IdleGuest;

impl DirtyLog for IdleGuest {
    fn dirty_bitmap(&mut self, slot: &KvmSlot) -> Result<Vec<u64>, String> {
        Ok(vec![0; (slot.size / PAGE_SIZE).div_ceil(64) as usize])
    }
}

#[test]
fn device_writes_after_a_live_pass_are_sent_again() {
    use vm_memory::{Bytes, GuestAddress};
    let src = shared();
    src.read().write(0x4000, &[1]).unwrap();
    let device = src.read().guest_memory().unwrap();
    let mut m = Manager::new();
    m.register(Box::new(PgmUnit::new(
        src.clone(),
        Some(Box::new(IdleGuest)),
    )))
    .unwrap();
    let mut bytes = Vec::new();
    m.save_live(&mut bytes, &SaveOptions::default(), || {
        // a device writes pages after the live passes sent them: one it
        // had written before, one in the zero state, and MMIO2
        device.write_obj(2u8, GuestAddress(0x4000)).unwrap();
        device.write_obj(3u8, GuestAddress(0x6000)).unwrap();
        device.write_obj(4u8, GuestAddress(0x1000_1000)).unwrap();
        Ok(())
    })
    .unwrap();
    let dst = load_into(&bytes);
    assert_eq!(byte(&dst, 0x4000), 2);
    assert_eq!(byte(&dst, 0x6000), 3);
    assert_eq!(byte(&dst, 0x1000_1000), 4);
}

#[test]
fn a_plain_save_keeps_device_writes_to_zero_pages() {
    use vm_memory::{Bytes, GuestAddress};
    let src = shared();
    src.read()
        .guest_memory()
        .unwrap()
        .write_obj(5u8, GuestAddress(0x7000))
        .unwrap();
    assert_eq!(src.read().page_info(0x7000).state, PageState::Zero);
    let mut m = Manager::new();
    m.register(Box::new(PgmUnit::new(src.clone(), None)))
        .unwrap();
    let mut bytes = Vec::new();
    m.save(&mut bytes, &SaveOptions::default()).unwrap();
    assert_eq!(byte(&load_into(&bytes), 0x7000), 5);
}

/// A `pgm` unit of version 2: pages, no A20 gates.
struct Version2(Arc<RwLock<PhysMap>>);

impl Unit for Version2 {
    fn name(&self) -> &str {
        "pgm"
    }

    fn version(&self) -> u32 {
        2
    }

    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        self.0.read().save_pages(w, Selection::All).map(drop)
    }

    fn load_exec(&mut self, _: &mut UnitReader<'_>, _: u32, _: u32) -> ssm::Result<()> {
        Err(ssm::Error::callback("save only"))
    }
}

fn save_with(unit: Box<dyn Unit>) -> Vec<u8> {
    let mut m = Manager::new();
    m.register(unit).unwrap();
    let mut bytes = Vec::new();
    m.save(&mut bytes, &SaveOptions::default()).unwrap();
    bytes
}

#[test]
fn a20_gates_round_trip_and_older_states_load_them_open() {
    let src = shared();
    src.write().set_a20(false);
    let bytes = save_with(Box::new(PgmUnit::new(src.clone(), None)));
    let dst = load_into(&bytes);
    let d = dst.read();
    assert!(!d.a20_enabled());
    // a load is not a change the guest made
    assert_eq!(d.a20_state(0).unwrap().changes, 0);
    // the KVM slots alias 1 MiB onto low RAM
    let low = d.kvm_slots().slots[0];
    assert!(
        d.kvm_slots()
            .slots
            .iter()
            .any(|s| s.guest_addr == crate::phys::A20_ALIAS_START && s.host_addr == low.host_addr)
    );
    drop(d);

    let old = save_with(Box::new(Version2(src.clone())));
    let mut m = Manager::new();
    m.register(Box::new(PgmUnit::new(dst.clone(), None)))
        .unwrap();
    m.load(StreamReader::from_slice(&old).unwrap()).unwrap();
    assert!(dst.read().a20_enabled());

    // a VM with another number of vCPUs refuses the gates
    let config = crate::phys::PhysConfig {
        cpus: 2,
        ..Default::default()
    };
    let mut two = PhysMap::new(Arc::new(crate::phys::MmapHostMemory::new()), config).unwrap();
    layout(&mut two);
    let two = Arc::new(RwLock::new(two));
    let mut m = Manager::new();
    m.register(Box::new(PgmUnit::new(two, None))).unwrap();
    let e = m
        .load(StreamReader::from_slice(&bytes).unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("A20 gates for 1 vCPUs"), "{e}");
}
