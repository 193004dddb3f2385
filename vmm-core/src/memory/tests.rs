//! Writes through the `vm-memory` view reach a live save's dirty tracking.

use pgm::phys::{DirtyLog, KvmSlot, PAGE_SIZE};
use vm_memory::{Bytes, GuestAddress};

use super::GuestMemoryMap;

/// KVM's dirty log of a guest that wrote nothing.
struct QuietGuest;

impl DirtyLog for QuietGuest {
    fn dirty_bitmap(&mut self, slot: &KvmSlot) -> Result<Vec<u64>, String> {
        Ok(vec![0; (slot.size / PAGE_SIZE).div_ceil(64) as usize])
    }
}

fn memory() -> GuestMemoryMap {
    GuestMemoryMap::new(
        16 << 20,
        &[0xf4; 4096],
        1,
        &stam::Registry::new(),
        &dbgf::InfoRegistry::new(),
    )
    .unwrap()
}

#[test]
fn a_device_write_is_dirty_after_the_dirty_log_sync() {
    let memory = memory();
    let map = memory.phys();
    map.write().set_write_monitoring(true);
    let mut dirty = Vec::new();
    map.read().take_dirty_pages(&mut dirty);
    assert!(dirty.is_empty(), "{dirty:x?}");
    // a device completes a request: data and used ring through `ram()`
    memory
        .ram()
        .write_slice(b"from the device", GuestAddress(0x12_3ff8))
        .unwrap();
    memory
        .ram()
        .store(
            7u16,
            GuestAddress(0x20_0002),
            std::sync::atomic::Ordering::Release,
        )
        .unwrap();
    let reported = map.read().sync_dirty_log(&mut QuietGuest).unwrap();
    assert_eq!(reported, 3);
    map.read().take_dirty_pages(&mut dirty);
    assert_eq!(dirty, vec![0x12_3000, 0x12_4000, 0x20_0000]);
    // sent: nothing more until the device writes again
    map.read().sync_dirty_log(&mut QuietGuest).unwrap();
    assert_eq!(map.read().dirty_page_count(), 0);
}
