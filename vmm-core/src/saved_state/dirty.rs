//! `pgm`'s dirty log on KVM: `KVM_GET_DIRTY_LOG`, and the slots
//! re-registered when write monitoring switches dirty logging on or off.

use std::sync::Arc;

use parking_lot::Mutex;
use pgm::phys::{DirtyLog, KvmSlot, SlotSet};

use crate::memory::apply_slot_changes;

/// Feeds KVM's dirty bitmaps to `pgm` during a live save.
pub(crate) struct KvmDirtyLog {
    backend: Arc<hm_vmx::Vm>,
    /// The slot set KVM has now (shared with the VM's memory).
    applied: Arc<Mutex<SlotSet>>,
}

impl KvmDirtyLog {
    /// A dirty log for `backend`, whose slots are `applied`.
    pub(crate) fn new(backend: Arc<hm_vmx::Vm>, applied: Arc<Mutex<SlotSet>>) -> Self {
        KvmDirtyLog { backend, applied }
    }
}

impl DirtyLog for KvmDirtyLog {
    fn dirty_bitmap(&mut self, slot: &KvmSlot) -> Result<Vec<u64>, String> {
        // KVM's slots do not change under the read (an A20 change applies
        // its slots holding this lock).
        let _applied = self.applied.lock();
        self.backend
            .dirty_log(slot.slot, slot.size)
            .map_err(|e| e.to_string())
    }

    fn slots_changed(&mut self, slots: &SlotSet) -> Result<(), String> {
        let mut applied = self.applied.lock();
        apply_slot_changes(&self.backend, &applied, slots).map_err(|e| e.to_string())?;
        *applied = slots.clone();
        Ok(())
    }
}
