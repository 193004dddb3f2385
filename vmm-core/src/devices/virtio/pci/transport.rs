//! The virtio-pci transport behind BAR 0: the register regions, device
//! status transitions (feature negotiation, `DRIVER_OK`, reset),
//! notifications through ioeventfds, and parking for saves and restores.
//!
//! A save parks a running device (it is deactivated: every request it
//! took finished, its queues back with their positions); so does a load
//! of a running device's state. A parked device starts again only when
//! the VM runs ([`Transport::unpark`]): a VM whose state was saved and
//! that powers off (a teleport's source, `save --poweroff`) never touches
//! guest RAM, the disk or the network again, and a teleport's target
//! touches nothing before the source has handed the VM over.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use iom::Data;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::common_cfg::{CommonCfg, Written};
use super::interrupt::Shared;
use super::layout::{
    COMMON_OFFSET, DEVICE_CFG_OFFSET, ISR_OFFSET, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET,
    NOTIFY_MULTIPLIER, NOTIFY_OFFSET, REGION_SIZE,
};
use crate::devices::virtio::{Activation, GuestRam, QueueHandle, VirtioDevice};

const DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
const FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
const NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;

/// The transport of one device.
pub(crate) struct Transport {
    pub(crate) device: Box<dyn VirtioDevice>,
    pub(crate) common: CommonCfg,
    pub(crate) shared: Arc<Shared>,
    /// Each queue's notification eventfd.
    pub(crate) notify: Vec<Arc<EventFd>>,
    /// Where BAR 0 decodes (the ioeventfds are registered there).
    pub(crate) bar: Option<u64>,
    pub(crate) memory: GuestRam,
    /// Whether the device serves its queues (between `DRIVER_OK` and a
    /// reset or save).
    pub(crate) active: bool,
    /// The driver had the device running, but a save or load parked it
    /// until the VM runs.
    pub(crate) parked: Option<Parked>,
}

/// Why a device the driver set going is parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parked {
    /// Quiesced for a save of this VM.
    Saved,
    /// Its state was loaded from a save made elsewhere.
    Loaded,
}

impl Transport {
    /// A guest access at `offset` into BAR 0.
    pub(crate) fn bar_access(&mut self, offset: u64, data: Data<'_>) {
        let region = offset / REGION_SIZE * REGION_SIZE;
        let at = offset - region;
        match (region, data) {
            (COMMON_OFFSET, Data::Read(buf)) => self.common.read(at, buf),
            (COMMON_OFFSET, Data::Write(bytes)) => {
                if let Written::Status(status) = self.common.write(at, bytes) {
                    self.set_status(status);
                }
            }
            (ISR_OFFSET, Data::Read(buf)) => {
                buf.fill(0);
                if at == 0
                    && let Some(b) = buf.first_mut()
                {
                    *b = self.shared.take_isr();
                }
            }
            (DEVICE_CFG_OFFSET, Data::Read(buf)) => self.device.read_config(at, buf),
            (DEVICE_CFG_OFFSET, Data::Write(bytes)) => self.device.write_config(at, bytes),
            (NOTIFY_OFFSET, Data::Write(_)) => self.notify_exit(at),
            (MSIX_TABLE_OFFSET, Data::Read(buf)) => self.shared.msix.lock().table_read(at, buf),
            (MSIX_TABLE_OFFSET, Data::Write(bytes)) => {
                if let Err(e) = self.shared.msix.lock().table_write(at, bytes) {
                    tracing::warn!("{}: MSI-X: {e}", self.device.name());
                }
            }
            (MSIX_PBA_OFFSET, Data::Read(buf)) => self.shared.msix.lock().pba_read(at, buf),
            (_, Data::Read(buf)) => buf.fill(0),
            (_, Data::Write(_)) => {}
        }
    }

    /// A notification that exited (no ioeventfd caught it): signalled on
    /// the queue's eventfd all the same.
    fn notify_exit(&mut self, at: u64) {
        let queue = at / NOTIFY_MULTIPLIER;
        if let Some(fd) = self.notify.get(queue as usize) {
            self.shared.stats.notify_exits.inc();
            if let Err(e) = fd.write(1) {
                tracing::warn!("{}: notify queue {queue}: {e}", self.device.name());
            }
        }
    }

    fn status(&self) -> u8 {
        self.shared.status.load(Ordering::Acquire)
    }

    /// The driver wrote `value` to the device status.
    fn set_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status();
        // The device's own NEEDS_RESET stays; FEATURES_OK only if the
        // features are acceptable.
        let mut new = value & !NEEDS_RESET | old & NEEDS_RESET;
        if new & FEATURES_OK != 0 && old & FEATURES_OK == 0 && !self.features_acceptable() {
            new &= !FEATURES_OK;
        }
        self.shared.status.store(new, Ordering::Release);
        if new & DRIVER_OK != 0
            && old & DRIVER_OK == 0
            && new & FEATURES_OK != 0
            && let Err(e) = self.activate()
        {
            tracing::warn!("{}: activation failed: {e}", self.device.name());
            use crate::devices::virtio::Interrupt;
            self.shared.needs_reset();
        }
    }

    /// Whether the driver accepted only offered features, `VERSION_1`
    /// among them.
    fn features_acceptable(&self) -> bool {
        let (offered, taken) = (self.common.device_features, self.common.driver_features);
        taken & !offered == 0 && taken & 1 << VIRTIO_F_VERSION_1 != 0
    }

    /// `DRIVER_OK`: the enabled queues, checked, go to the device.
    pub(crate) fn activate(&mut self) -> Result<(), String> {
        let features = self.common.driver_features;
        let event_idx = features & 1 << VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::new();
        for (index, q) in self.common.queues.iter_mut().enumerate() {
            if !q.ready() {
                continue;
            }
            q.set_event_idx(event_idx);
            if !q.is_valid(&self.memory) {
                return Err(format!(
                    "queue {index} is set up wrongly (size, alignment or addresses)"
                ));
            }
            let queue = crate::devices::virtio::Queue::try_from(q.state())
                .map_err(|e| format!("queue {index}: {e:?}"))?;
            queues.push(QueueHandle {
                index: index as u16,
                queue,
                notify: Arc::clone(&self.notify[index]),
            });
        }
        self.device
            .activate(Activation {
                memory: self.memory.clone(),
                features,
                queues,
                interrupt: Arc::clone(&self.shared) as _,
            })
            .map_err(|e| e.to_string())?;
        self.active = true;
        Ok(())
    }

    /// Parks a running device for a save: it stops (every request it
    /// took finished) until [`unpark`](Self::unpark).
    pub(crate) fn park(&mut self) -> Result<(), String> {
        if self.active {
            self.parked = Some(Parked::Saved);
        }
        self.deactivate()
    }

    /// Starts a parked device again, as the VM resumes. A device whose
    /// state was loaded then also looks at every queue and interrupts the
    /// driver once per queue: a notification that was waiting in the
    /// saving VMM's eventfd, or an interrupt the saving host had not yet
    /// delivered when the vCPUs' state was taken, did not travel with the
    /// state. A look at an unchanged ring finds nothing, and virtio
    /// drivers take an interrupt without new used buffers in their
    /// stride. A device that cannot start asks the driver for a reset.
    pub(crate) fn unpark(&mut self) {
        let Some(parked) = self.parked.take() else {
            return;
        };
        if let Err(e) = self.activate() {
            tracing::warn!("{}: activation failed: {e}", self.device.name());
            use crate::devices::virtio::Interrupt;
            self.shared.needs_reset();
            return;
        }
        if parked == Parked::Loaded {
            use crate::devices::virtio::Interrupt;
            for (index, q) in self.common.queues.iter().enumerate() {
                if !q.ready() {
                    continue;
                }
                if let Err(e) = self.notify[index].write(1) {
                    tracing::warn!("{}: notify queue {index}: {e}", self.device.name());
                }
                self.shared.signal_queue(index as u16);
            }
        }
    }

    /// Stops the device and takes its queues back (with their positions).
    pub(crate) fn deactivate(&mut self) -> Result<(), String> {
        if !self.active {
            return Ok(());
        }
        self.active = false;
        let handles = self.device.deactivate().map_err(|e| e.to_string())?;
        for h in handles {
            if let Some(q) = self.common.queues.get_mut(usize::from(h.index)) {
                *q = h.queue;
            }
        }
        Ok(())
    }

    /// Device reset: the device stops, queues and registers go back to
    /// their reset values.
    pub(crate) fn reset(&mut self) {
        if let Err(e) = self.deactivate() {
            tracing::warn!("{}: reset: {e}", self.device.name());
        }
        self.parked = None;
        self.common.reset();
        self.shared.reset();
        // Notifications left from before the reset are stale.
        for fd in &self.notify {
            let _ = fd.read();
        }
    }

    /// BAR 0 decodes at `address` now: the queue notifications' ioeventfds
    /// move there.
    pub(crate) fn bar_mapped(&mut self, address: Option<u64>) {
        let routing = Arc::clone(&self.shared.routing);
        if let Some(old) = self.bar.take() {
            for (i, fd) in self.notify.iter().enumerate() {
                let at = old + NOTIFY_OFFSET + NOTIFY_MULTIPLIER * i as u64;
                if let Err(e) = routing.unregister_ioeventfd(at, fd) {
                    tracing::warn!("{}: ioeventfd at {at:#x}: {e}", self.device.name());
                }
            }
        }
        if let Some(new) = address {
            for (i, fd) in self.notify.iter().enumerate() {
                let at = new + NOTIFY_OFFSET + NOTIFY_MULTIPLIER * i as u64;
                if let Err(e) = routing.register_ioeventfd(at, fd) {
                    tracing::warn!("{}: ioeventfd at {at:#x}: {e}", self.device.name());
                }
            }
            self.bar = Some(new);
        }
    }

    /// Writes a line about the transport for `info virtio`.
    pub(crate) fn describe(&self, out: &mut dyn std::fmt::Write) -> std::fmt::Result {
        let ready = self.common.queues.iter().filter(|q| q.ready()).count();
        write!(
            out,
            "status {:#04x}{}, features {:#x}, {ready}/{} queues ready, MSI-X {}, BAR0 ",
            self.status(),
            match (self.active, self.parked) {
                (true, _) => " (active)",
                (false, Some(_)) => " (parked until the VM runs)",
                (false, None) => "",
            },
            self.common.driver_features,
            self.common.queues.len(),
            if self.shared.msix.lock().enabled() {
                "on"
            } else {
                "off (INTx)"
            },
        )?;
        match self.bar {
            Some(a) => writeln!(out, "at {a:#x}")?,
            None => writeln!(out, "not decoded")?,
        }
        self.device.describe(out)
    }
}
