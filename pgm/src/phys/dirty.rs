//! Write monitoring through the KVM dirty log, for live save.
//!
//! `pgm` does not own the KVM VM: the VMM implements [`DirtyLog`] (with
//! `VmFd::get_dirty_log`) or pushes bitmaps in with
//! [`PhysMap::apply_dirty_bitmap`].
//!
//! KVM only logs the guest's own writes. Writes the VMM makes through the
//! `vm-memory` view ([`PhysMap::guest_memory`]: virtio devices, loaders)
//! land in the regions' [`WriteBitmap`](super::WriteBitmap)s instead;
//! [`PhysMap::sync_dirty_log`] drains those together with KVM's log, and
//! [`PhysMap::set_write_monitoring`] drains them into the page states
//! before it clears the dirty bits (as switching KVM's logging on starts
//! its log afresh), so a page a device writes after a pass sent it is
//! sent again, and a page in the zero state a device wrote is not sent as
//! zero.

use super::error::PhysError;
use super::map::PhysMap;
use super::page::{PAGE_SHIFT, PAGE_SIZE, PageState};
use super::range::Backing;
use super::slots::{KvmSlot, SlotSet};

/// Source of KVM dirty bitmaps (one bit per 4 KiB page of a slot, bit 0 of
/// word 0 is the slot's first page; reading clears KVM's log).
pub trait DirtyLog {
    /// Returns and clears the dirty bitmap of `slot`.
    fn dirty_bitmap(&mut self, slot: &KvmSlot) -> Result<Vec<u64>, String>;

    /// Called when the slot set changed under a live save (write
    /// monitoring switched on or off): the VMM re-registers the slots with
    /// the new dirty-logging flags. The default does nothing.
    fn slots_changed(&mut self, _slots: &SlotSet) -> Result<(), String> {
        Ok(())
    }
}

impl PhysMap {
    /// Starts or stops write monitoring. Starting arms every allocated
    /// page (state write-monitored), clears the dirty bits and asks KVM to
    /// log dirty pages on every writable slot (the slot set changes).
    ///
    /// Writes made through the `vm-memory` view so far are drained first
    /// ([`PhysMap::sync_vm_memory_writes`]): the pages they touched become
    /// allocated (a zero-state page a device wrote is no longer sent as
    /// zero); their dirty bits are then cleared with the others.
    pub fn set_write_monitoring(&mut self, enabled: bool) {
        self.sync_vm_memory_writes();
        self.monitoring = enabled;
        for mem in self.ranges.iter().filter_map(|r| r.writable_memory()) {
            for p in mem.pages.iter() {
                p.update(|mut i| {
                    i.dirty = false;
                    i.state = match (i.state, enabled) {
                        (PageState::Allocated, true) => PageState::WriteMonitored,
                        (PageState::WriteMonitored, false) => PageState::Allocated,
                        (s, _) => s,
                    };
                    i
                });
            }
        }
        self.refresh_slots();
    }

    /// Whether write monitoring is on.
    pub fn write_monitoring(&self) -> bool {
        self.monitoring
    }

    /// Pulls the dirty bitmap of every logging slot from `log` and marks the
    /// pages written, then does the same for the writes made through the
    /// `vm-memory` view ([`PhysMap::sync_vm_memory_writes`]). Returns the
    /// number of dirty pages reported (a page both logs report counts
    /// twice).
    pub fn sync_dirty_log(&self, log: &mut dyn DirtyLog) -> Result<u64, PhysError> {
        let mut total = 0;
        for slot in self.slots.current.slots.iter().filter(|s| s.log_dirty) {
            let bitmap = log
                .dirty_bitmap(slot)
                .map_err(|message| PhysError::DirtyLog {
                    slot: slot.slot,
                    message,
                })?;
            total += self.apply_dirty_bitmap(slot.slot, &bitmap)?;
        }
        Ok(total + self.sync_vm_memory_writes())
    }

    /// Marks written (allocated and dirty) every page written through the
    /// `vm-memory` view of [`PhysMap::guest_memory`] since the last call,
    /// and clears those bits. Returns the number of pages. Only the parts
    /// of the bitmaps that saw writes are read (see
    /// [`WriteBitmap`](super::WriteBitmap)).
    ///
    /// ```
    /// use pgm::phys::PhysMap;
    /// use vm_memory::{Bytes, GuestAddress};
    /// let mut map = PhysMap::with_defaults();
    /// map.add_ram(0, 0x10_0000, "ram").unwrap();
    /// map.set_write_monitoring(true);
    /// map.guest_memory().unwrap().write_obj(1u8, GuestAddress(0x5000)).unwrap();
    /// assert_eq!(map.sync_vm_memory_writes(), 1);
    /// let mut dirty = Vec::new();
    /// map.take_dirty_pages(&mut dirty);
    /// assert_eq!(dirty, vec![0x5000]);
    /// ```
    pub fn sync_vm_memory_writes(&self) -> u64 {
        self.vm_memory_ranges()
            .map(|(_, mem)| {
                mem.region.bitmap().take(|page| {
                    if let Some(p) = mem.pages.get(page) {
                        p.note_write();
                    }
                })
            })
            .sum()
    }

    /// Marks the pages set in `bitmap` (for KVM slot `slot` of the current
    /// set) written. Returns the number of bits set.
    pub fn apply_dirty_bitmap(&self, slot: u32, bitmap: &[u64]) -> Result<u64, PhysError> {
        let s = self
            .slots
            .current
            .get(slot)
            .ok_or_else(|| PhysError::NoSuchRange(format!("KVM slot {slot}")))?;
        self.apply_slot_dirty_bitmap(s, bitmap)
    }

    /// Marks the pages set in `bitmap` for `slot` written, also for a slot
    /// no longer in the set (its log read just before KVM drops it). A bit
    /// marks the page whose memory the slot maps, found by host address:
    /// a write through the A20 alias at 1 MiB dirties the low page it
    /// reached. Returns the number of bits set.
    pub fn apply_slot_dirty_bitmap(
        &self,
        slot: &KvmSlot,
        bitmap: &[u64],
    ) -> Result<u64, PhysError> {
        let pages = slot.size >> PAGE_SHIFT;
        let need = pages.div_ceil(64) as usize;
        if bitmap.len() < need {
            return Err(PhysError::DirtyBitmapSize {
                slot: slot.slot,
                got: bitmap.len(),
                need,
            });
        }
        let Some((mem, base)) = self.ranges.iter().find_map(|r| {
            let m = r.writable_memory()?;
            let offset = slot.host_addr.checked_sub(m.host_addr())?;
            (offset < m.size()).then_some((m, offset))
        }) else {
            return Ok(0);
        };
        let mut count = 0;
        for (w, &word) in bitmap.iter().take(need).enumerate() {
            let mut bits = word;
            while bits != 0 {
                let bit = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                let page = w as u64 * 64 + bit;
                if page >= pages {
                    break;
                }
                if let Some(p) = mem.page(base + page * PAGE_SIZE) {
                    p.note_write();
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    /// Appends the guest-physical address of every dirty RAM/MMIO2/ROM-shadow
    /// page to `out`, clears their dirty bits and re-arms them
    /// (write-monitored) when monitoring is on. Returns how many were added.
    pub fn take_dirty_pages(&self, out: &mut Vec<u64>) -> usize {
        let before = out.len();
        for r in &self.ranges {
            let Some(mem) = r.writable_memory() else {
                continue;
            };
            if matches!(r.backing, Backing::Mmio) {
                continue;
            }
            for (i, p) in mem.pages.iter().enumerate() {
                if !p.get().dirty {
                    continue;
                }
                p.update(|mut info| {
                    info.dirty = false;
                    if self.monitoring && info.state == PageState::Allocated {
                        info.state = PageState::WriteMonitored;
                    }
                    info
                });
                out.push(r.start + i as u64 * PAGE_SIZE);
            }
        }
        out.len() - before
    }

    /// Number of dirty pages, without clearing them.
    pub fn dirty_page_count(&self) -> u64 {
        self.ranges
            .iter()
            .filter_map(|r| r.writable_memory())
            .map(|m| m.pages.iter().filter(|p| p.get().dirty).count() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<u64>);

    impl DirtyLog for Fixed {
        fn dirty_bitmap(&mut self, _slot: &KvmSlot) -> Result<Vec<u64>, String> {
            Ok(std::mem::take(&mut self.0))
        }
    }

    struct Broken;

    impl DirtyLog for Broken {
        fn dirty_bitmap(&mut self, _slot: &KvmSlot) -> Result<Vec<u64>, String> {
            Err("no log".into())
        }
    }

    #[test]
    fn monitoring_tracks_dirty_pages() {
        let mut map = PhysMap::with_defaults();
        map.add_ram(0, 0x10_0000, "ram").unwrap();
        map.write(0x3000, &[1]).unwrap();
        map.set_write_monitoring(true);
        assert!(map.kvm_slots().slots.iter().all(|s| s.log_dirty));
        assert_eq!(map.page_info(0x3000).state, PageState::WriteMonitored);
        assert_eq!(map.dirty_page_count(), 0);
        let slot = map.kvm_slots().slots[0].slot;
        let n = map
            .sync_dirty_log(&mut Fixed(vec![0b101, 1 << 63, 0, 0]))
            .unwrap();
        assert_eq!(n, 3);
        map.write(0x5000, &[2]).unwrap();
        let mut dirty = Vec::new();
        map.take_dirty_pages(&mut dirty);
        assert_eq!(dirty, vec![0, 0x2000, 0x5000, 127 * 0x1000]);
        assert_eq!(map.page_info(0x2000).state, PageState::WriteMonitored);
        assert_eq!(map.dirty_page_count(), 0);
        assert!(map.apply_dirty_bitmap(slot, &[0]).is_err());
        assert!(map.apply_dirty_bitmap(999, &[0; 4]).is_err());
        assert!(map.sync_dirty_log(&mut Broken).is_err());
        map.set_write_monitoring(false);
        assert!(map.kvm_slots().slots.iter().all(|s| !s.log_dirty));
        assert_eq!(map.page_info(0x2000).state, PageState::Allocated);
    }

    #[test]
    fn vm_memory_writes_join_the_dirty_log() {
        use vm_memory::{Bytes, GuestAddress};
        let mut map = PhysMap::with_defaults();
        map.add_ram(0, 0x10_0000, "ram").unwrap();
        let mem = map.guest_memory().unwrap();
        // before monitoring: the zero-state page becomes allocated, and
        // the write does not count as dirty once monitoring starts
        mem.write_obj(1u8, GuestAddress(0x7000)).unwrap();
        assert_eq!(map.page_info(0x7000).state, PageState::Zero);
        map.set_write_monitoring(true);
        assert_eq!(map.page_info(0x7000).state, PageState::WriteMonitored);
        assert_eq!(map.dirty_page_count(), 0);
        // a device write after the page was sent: KVM's log is empty,
        // the sync reports it anyway
        mem.write_slice(&[2; 8], GuestAddress(0x8ffc)).unwrap();
        assert_eq!(map.sync_dirty_log(&mut Fixed(vec![0; 4])).unwrap(), 2);
        let mut dirty = Vec::new();
        map.take_dirty_pages(&mut dirty);
        assert_eq!(dirty, vec![0x8000, 0x9000]);
        // drained: the next sync reports nothing, until the next write
        assert_eq!(map.sync_dirty_log(&mut Fixed(vec![0; 4])).unwrap(), 0);
        mem.write_obj(3u32, GuestAddress(0x8000)).unwrap();
        assert_eq!(map.sync_dirty_log(&mut Fixed(vec![0; 4])).unwrap(), 1);
        assert_eq!(map.dirty_page_count(), 1);
    }
}
