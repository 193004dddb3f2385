//! `virtio-pci` (instance = the device's slot): a virtio device's
//! transport registers, queue positions, MSI-X table and the device's own
//! state.
//!
//! Saving parks the device first ([`VirtioDevice::deactivate`]: every
//! request it took is finished, its worker stopped, the queues handed
//! back with their positions); the vCPUs are stopped throughout. The
//! device is parked in `save_prep`, which runs for every unit before any
//! unit's `save_exec`: the writes to guest RAM that finishing its requests
//! makes land before `pgm`'s final pass reads the dirty pages (device
//! writes are tracked in `pgm`'s write bitmaps), so none is lost. It
//! starts again only when the VM resumes ([`start_parked`]), not when the
//! save is done: a VM that powers off after the save (a teleport's
//! source) must not take requests the saved state hands to another VMM,
//! which would then serve them twice (a disk write replayed over a newer
//! one, frames read from the tap that no guest sees).
//!
//! A load refuses a device of another type, name or offered features, or
//! queues that do not fit in guest RAM; a running device's state leaves
//! it parked until the VM runs ([`Vm::run`](crate::Vm::run)): a
//! teleport's target serves nothing before the source handed the VM
//! over, and then looks at every queue and interrupts the driver once
//! per queue (see [`Transport::unpark`]).
//!
//! [`VirtioDevice::deactivate`]: crate::devices::virtio::VirtioDevice::deactivate

use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;
use ssm::{Unit, UnitReader, UnitWriter};
use virtio_queue::{QueueState, QueueT};

use super::units::failed;
use crate::devices::pci::{MSIX_ENTRY_SIZE as ENTRY_SIZE, MsixState};
use crate::devices::virtio::pci::transport::{Parked, Transport};
use crate::devices::virtio::{Queue, VirtioSlot};

/// The unit's name.
pub(crate) const VIRTIO_UNIT: &str = "virtio-pci";
/// Longest device name and device state accepted.
const MAX_NAME: usize = 64;
const MAX_DEVICE_STATE: usize = 16 << 20;
/// `DRIVER_OK` and `DEVICE_NEEDS_RESET` in the status.
const DRIVER_OK: u8 = 4;
const NEEDS_RESET: u8 = 0x40;

/// Version 1: name (str), device type (u32), offered features (u64);
/// status (u8), feature selects (u32, u32), driver features (u64), queue
/// select (u16), config vector (u16), ISR (u8); queue count (u16) and per
/// queue its vector (u16) and `virtio-queue` state (max size, next avail,
/// next used, event idx, size, ready, three addresses); the MSI-X message
/// control (u16, as in configuration space), vector count (u16), each
/// entry's 16 bytes and pending bit; the device's bytes.
pub(crate) struct VirtioUnit {
    pub(crate) slot: u32,
    pub(crate) transport: Arc<Mutex<Transport>>,
}

/// Starts the parked devices of `slots` (call as the VM resumes, before
/// its vCPUs run).
pub(crate) fn start_parked(slots: &[VirtioSlot]) {
    for slot in slots {
        slot.transport.lock().unpark();
    }
}

/// Runs `f` with the devices of `slots` parked, so that none writes guest
/// RAM meanwhile (a scan that compares pages and then remaps them would
/// lose such a write), and starts them again after. A device that cannot
/// be parked (its worker does not stop) is an error, and `f` does not run.
pub(crate) fn with_devices_parked<T>(
    slots: &[VirtioSlot],
    f: impl FnOnce() -> T,
) -> Result<T, String> {
    let parked = slots.iter().try_for_each(|slot| {
        slot.transport
            .lock()
            .park()
            .map_err(|e| format!("virtio device at {}: {e}", slot.at))
    });
    let result = parked.map(|()| f());
    start_parked(slots);
    result
}

fn put_queue(w: &mut UnitWriter<'_>, s: &QueueState) -> ssm::Result<()> {
    w.put_u16(s.max_size)?;
    w.put_u16(s.next_avail)?;
    w.put_u16(s.next_used)?;
    w.put_bool(s.event_idx_enabled)?;
    w.put_u16(s.size)?;
    w.put_bool(s.ready)?;
    w.put_u64(s.desc_table)?;
    w.put_u64(s.avail_ring)?;
    w.put_u64(s.used_ring)
}

fn get_queue(r: &mut UnitReader<'_>) -> ssm::Result<QueueState> {
    Ok(QueueState {
        max_size: r.get_u16()?,
        next_avail: r.get_u16()?,
        next_used: r.get_u16()?,
        event_idx_enabled: r.get_bool()?,
        size: r.get_u16()?,
        ready: r.get_bool()?,
        desc_table: r.get_u64()?,
        avail_ring: r.get_u64()?,
        used_ring: r.get_u64()?,
    })
}

impl VirtioUnit {
    fn save_quiesced(t: &Transport, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        let d = &t.device;
        w.put_str(d.name())?;
        w.put_u32(d.device_type())?;
        w.put_u64(d.features())?;
        let (c, s) = (&t.common, &t.shared);
        w.put_u8(s.status.load(Ordering::Acquire))?;
        w.put_u32(c.device_feature_select)?;
        w.put_u32(c.driver_feature_select)?;
        w.put_u64(c.driver_features)?;
        w.put_u16(c.queue_select)?;
        w.put_u16(s.config_vector.load(Ordering::Acquire))?;
        w.put_u8(s.isr.load(Ordering::Acquire))?;
        w.put_u16(c.queues.len() as u16)?;
        for (q, v) in c.queues.iter().zip(&s.queue_vectors) {
            w.put_u16(v.load(Ordering::Acquire))?;
            put_queue(w, &q.state())?;
        }
        let (msix, control) = {
            let m = s.msix.lock();
            (m.state(), m.control())
        };
        w.put_u16(control)?;
        w.put_u16(msix.table.len() as u16)?;
        for (entry, pending) in msix.table.iter().zip(&msix.pending) {
            w.put_bytes(entry)?;
            w.put_bool(*pending)?;
        }
        w.put_buf(&d.save())
    }
}

impl Unit for VirtioUnit {
    fn name(&self) -> &str {
        VIRTIO_UNIT
    }

    fn instance(&self) -> u32 {
        self.slot
    }

    fn version(&self) -> u32 {
        1
    }

    fn save_prep(&mut self) -> ssm::Result<()> {
        self.transport.lock().park().map_err(failed)
    }

    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        let t = self.transport.lock();
        if t.active {
            return Err(failed(format!(
                "{}: saved without being quiesced first",
                t.device.name()
            )));
        }
        Self::save_quiesced(&t, w)
    }

    fn load_exec(&mut self, r: &mut UnitReader<'_>, _version: u32, _pass: u32) -> ssm::Result<()> {
        let mut t = self.transport.lock();
        let (name, kind, offered) = (r.get_str(MAX_NAME)?, r.get_u32()?, r.get_u64()?);
        let d = &t.device;
        if (name.as_str(), kind, offered) != (d.name(), d.device_type(), d.features()) {
            return Err(failed(format!(
                "slot {}: the saved virtio device is '{name}' (type {kind}, features {offered:#x}), this VM's '{}' (type {}, features {:#x})",
                self.slot,
                d.name(),
                d.device_type(),
                d.features()
            )));
        }
        t.deactivate().map_err(failed)?;
        t.parked = None;
        let status = r.get_u8()?;
        t.common.device_feature_select = r.get_u32()?;
        t.common.driver_feature_select = r.get_u32()?;
        t.common.driver_features = r.get_u64()?;
        t.common.queue_select = r.get_u16()?;
        let config_vector = r.get_u16()?;
        let isr = r.get_u8()?;
        let count = usize::from(r.get_u16()?);
        if count != t.common.queues.len() {
            return Err(failed(format!(
                "{name}: {count} queues saved, the device has {}",
                t.common.queues.len()
            )));
        }
        for i in 0..count {
            let vector = r.get_u16()?;
            let state = get_queue(r)?;
            if state.max_size != t.common.queues[i].max_size() {
                return Err(failed(format!(
                    "{name}: queue {i} has another maximum size"
                )));
            }
            let queue = Queue::try_from(state).map_err(|e| failed(format!("{e:?}")))?;
            if queue.ready() && !queue.is_valid(&t.memory) {
                return Err(failed(format!(
                    "{name}: queue {i} does not fit in guest RAM (size, alignment or addresses)"
                )));
            }
            t.common.queues[i] = queue;
            t.shared.queue_vectors[i].store(vector, Ordering::Release);
        }
        let control = r.get_u16()?;
        let vectors = usize::from(r.get_u16()?);
        let mut msix = MsixState {
            table: Vec::with_capacity(vectors.min(2048)),
            pending: Vec::with_capacity(vectors.min(2048)),
        };
        for _ in 0..vectors {
            let mut entry = [0; ENTRY_SIZE];
            r.get_bytes(&mut entry)?;
            msix.table.push(entry);
            msix.pending.push(r.get_bool()?);
        }
        let device_state = r.get_buf(MAX_DEVICE_STATE)?;
        t.device.restore(&device_state).map_err(failed)?;
        {
            let s = &t.shared;
            s.status.store(status, Ordering::Release);
            s.config_vector.store(config_vector, Ordering::Release);
            s.isr.store(isr, Ordering::Release);
            // The table's messages are routed again.
            let mut m = s.msix.lock();
            m.set_state(&msix, control).map_err(failed)?;
            if isr != 0 && !m.enabled() {
                drop(m);
                s.set_intx(true);
            }
        }
        // Started when the VM runs: a device that completed a request now
        // would interrupt a vCPU whose local APIC a later unit still
        // overwrites, and a teleport's target must not serve requests
        // before the source has handed the VM over.
        let running = status & DRIVER_OK != 0 && status & NEEDS_RESET == 0;
        t.parked = running.then_some(Parked::Loaded);
        Ok(())
    }
}
