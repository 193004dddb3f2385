//! `pgm`'s dirty log on KVM: `KVM_GET_DIRTY_LOG`, and the slots
//! re-registered when write monitoring switches dirty logging on or off.

use std::sync::Arc;

use hm_vmx::MemorySlot;
use pgm::phys::{DirtyLog, KvmSlot, SlotSet};

/// Feeds KVM's dirty bitmaps to `pgm` during a live save.
pub(crate) struct KvmDirtyLog {
    backend: Arc<hm_vmx::Vm>,
    /// The slot set KVM has now.
    applied: SlotSet,
}

impl KvmDirtyLog {
    /// A dirty log for `backend`, whose slots are `applied`.
    pub(crate) fn new(backend: Arc<hm_vmx::Vm>, applied: SlotSet) -> Self {
        KvmDirtyLog { backend, applied }
    }
}

fn memory_slot(s: &KvmSlot, size: u64) -> MemorySlot {
    MemorySlot {
        slot: s.slot,
        guest_addr: s.guest_addr,
        size,
        host_addr: s.host_addr,
        read_only: s.read_only,
        log_dirty: s.log_dirty,
    }
}

impl DirtyLog for KvmDirtyLog {
    fn dirty_bitmap(&mut self, slot: &KvmSlot) -> Result<Vec<u64>, String> {
        self.backend
            .dirty_log(slot.slot, slot.size)
            .map_err(|e| e.to_string())
    }

    fn slots_changed(&mut self, slots: &SlotSet) -> Result<(), String> {
        let changes = slots.changes_from(&self.applied);
        // A slot that only changes flags (dirty logging) is updated in
        // place: KVM allows that for the same number, address and size, and
        // the guest never sees the memory disappear.
        for gone in changes
            .remove
            .iter()
            .filter(|r| !changes.add.iter().any(|a| a.slot == r.slot))
        {
            // SAFETY: size 0 unmaps the slot; no host memory is handed out.
            unsafe { self.backend.set_memory_slot(&memory_slot(gone, 0)) }
                .map_err(|e| e.to_string())?;
        }
        for added in &changes.add {
            // SAFETY: the host ranges belong to `pgm`'s map, which outlives
            // the backend VM (the machine drops the backend before memory).
            unsafe {
                self.backend
                    .set_memory_slot(&memory_slot(added, added.size))
            }
            .map_err(|e| e.to_string())?;
        }
        self.applied = slots.clone();
        Ok(())
    }
}
