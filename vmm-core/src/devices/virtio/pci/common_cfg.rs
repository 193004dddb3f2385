//! The common configuration structure (virtio 1.x section 4.1.4.3): the
//! registers through which the driver negotiates features, sets the
//! device status and programs its queues.
//!
//! The queue registers live in the `virtio-queue` [`Queue`]s themselves
//! (size, addresses, ready); the vectors and the status in [`Shared`],
//! where the device's threads see them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use virtio_queue::QueueT;

use super::interrupt::{NO_VECTOR, Shared};
use crate::devices::virtio::Queue;

/// Register offsets.
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;
/// Bytes of the structure.
pub const COMMON_CFG_SIZE: u64 = 0x38;

/// The registers of the common configuration.
pub(crate) struct CommonCfg {
    pub(crate) device_features: u64,
    pub(crate) device_feature_select: u32,
    pub(crate) driver_feature_select: u32,
    pub(crate) driver_features: u64,
    pub(crate) queue_select: u16,
    pub(crate) queues: Vec<Queue>,
    pub(crate) shared: Arc<Shared>,
}

/// What a register write asks of the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// Nothing beyond the register.
    Register,
    /// The driver wrote `value` to the device status.
    Status(u8),
}

/// The 32-bit half `select` of `value` (0 low, 1 high, others none).
fn half(value: u64, select: u32) -> u32 {
    match select {
        0 => value as u32,
        1 => (value >> 32) as u32,
        _ => 0,
    }
}

impl CommonCfg {
    /// Registers at their reset values for queues of `max_sizes`.
    pub(crate) fn new(device_features: u64, max_sizes: &[u16], shared: Arc<Shared>) -> Self {
        CommonCfg {
            device_features,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            queues: fresh_queues(max_sizes),
            shared,
        }
    }

    /// The queues back to their reset state, the feature registers
    /// cleared (device reset; the status is the transport's).
    pub(crate) fn reset(&mut self) {
        let max: Vec<u16> = self.queues.iter().map(Queue::max_size).collect();
        self.queues = fresh_queues(&max);
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
    }

    fn selected(&self) -> Option<&Queue> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// The value of the register at `offset` (the structure's fields
    /// packed little-endian; a read may start inside a field).
    fn register(&self, offset: u64) -> (u64, u64) {
        let q = self.selected();
        let vector = |v: Option<u16>| u64::from(v.unwrap_or(NO_VECTOR));
        let s = &self.shared;
        let qv = s
            .queue_vectors
            .get(usize::from(self.queue_select))
            .map(|v| v.load(Ordering::Acquire));
        match offset {
            DEVICE_FEATURE_SELECT..DEVICE_FEATURE => {
                (DEVICE_FEATURE_SELECT, u64::from(self.device_feature_select))
            }
            DEVICE_FEATURE..DRIVER_FEATURE_SELECT => (
                DEVICE_FEATURE,
                u64::from(half(self.device_features, self.device_feature_select)),
            ),
            DRIVER_FEATURE_SELECT..DRIVER_FEATURE => {
                (DRIVER_FEATURE_SELECT, u64::from(self.driver_feature_select))
            }
            DRIVER_FEATURE..CONFIG_MSIX_VECTOR => (
                DRIVER_FEATURE,
                u64::from(half(self.driver_features, self.driver_feature_select)),
            ),
            CONFIG_MSIX_VECTOR..NUM_QUEUES => (
                CONFIG_MSIX_VECTOR,
                u64::from(s.config_vector.load(Ordering::Acquire)),
            ),
            NUM_QUEUES..DEVICE_STATUS => (NUM_QUEUES, self.queues.len() as u64),
            DEVICE_STATUS => (DEVICE_STATUS, u64::from(s.status.load(Ordering::Acquire))),
            CONFIG_GENERATION => (CONFIG_GENERATION, 0),
            QUEUE_SELECT..QUEUE_SIZE => (QUEUE_SELECT, u64::from(self.queue_select)),
            QUEUE_SIZE..QUEUE_MSIX_VECTOR => (QUEUE_SIZE, q.map_or(0, |q| u64::from(q.size()))),
            QUEUE_MSIX_VECTOR..QUEUE_ENABLE => (QUEUE_MSIX_VECTOR, vector(qv)),
            QUEUE_ENABLE..QUEUE_NOTIFY_OFF => (QUEUE_ENABLE, q.map_or(0, |q| u64::from(q.ready()))),
            // Queue i notifies at notify_off_multiplier * i.
            QUEUE_NOTIFY_OFF..QUEUE_DESC => (QUEUE_NOTIFY_OFF, u64::from(self.queue_select)),
            QUEUE_DESC..QUEUE_DRIVER => (QUEUE_DESC, q.map_or(0, |q| q.desc_table())),
            QUEUE_DRIVER..QUEUE_DEVICE => (QUEUE_DRIVER, q.map_or(0, |q| q.avail_ring())),
            QUEUE_DEVICE..COMMON_CFG_SIZE => (QUEUE_DEVICE, q.map_or(0, |q| q.used_ring())),
            _ => (offset, 0),
        }
    }

    /// A driver read of `data.len()` bytes at `offset`.
    pub(crate) fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            let (start, value) = self.register(at);
            *b = value
                .to_le_bytes()
                .get((at - start) as usize)
                .copied()
                .unwrap_or(0);
        }
    }

    /// A driver write of `data` at `offset`: whole fields or 32-bit halves
    /// of the 64-bit addresses; other widths are ignored.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> Written {
        let mut v = [0u8; 8];
        let Some(bytes) = v.get_mut(..data.len()) else {
            return Written::Register;
        };
        bytes.copy_from_slice(data);
        let value = u64::from_le_bytes(v);
        let (v32, v16) = (value as u32, value as u16);
        let qs = usize::from(self.queue_select);
        let s = Arc::clone(&self.shared);
        let msix_count = s.msix.lock().count();
        let valid_vector = |v: u16| if v < msix_count { v } else { NO_VECTOR };
        match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = v32,
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = v32,
            (DRIVER_FEATURE, 4) => {
                let shift = match self.driver_feature_select {
                    0 => 0,
                    1 => 32,
                    _ => return Written::Register,
                };
                let mask = 0xffff_ffffu64 << shift;
                self.driver_features = self.driver_features & !mask | u64::from(v32) << shift;
            }
            (CONFIG_MSIX_VECTOR, 2) => s.config_vector.store(valid_vector(v16), Ordering::Release),
            (DEVICE_STATUS, 1) => return Written::Status(value as u8),
            (QUEUE_SELECT, 2) => self.queue_select = v16,
            (QUEUE_SIZE, 2) => {
                if let Some(q) = self.queues.get_mut(qs) {
                    q.set_size(v16);
                }
            }
            (QUEUE_MSIX_VECTOR, 2) => {
                if let Some(v) = s.queue_vectors.get(qs) {
                    v.store(valid_vector(v16), Ordering::Release);
                }
            }
            (QUEUE_ENABLE, 2) => {
                // Only enabling: disabling is done by a reset.
                if let Some(q) = self.queues.get_mut(qs).filter(|_| v16 == 1) {
                    q.set_ready(true);
                }
            }
            (QUEUE_DESC..COMMON_CFG_SIZE, 4 | 8) if offset.is_multiple_of(4) => {
                self.write_address(offset, data.len(), value);
            }
            _ => {}
        }
        Written::Register
    }

    /// A write of one of the queue address registers (a 32-bit half or
    /// the whole 64 bits).
    fn write_address(&mut self, offset: u64, len: usize, value: u64) {
        let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) else {
            return;
        };
        let field = offset & !7;
        let (low, high) = match (len, offset & 4) {
            (8, _) => (Some(value as u32), Some((value >> 32) as u32)),
            (_, 0) => (Some(value as u32), None),
            _ => (None, Some(value as u32)),
        };
        match field {
            QUEUE_DESC => q.set_desc_table_address(low, high),
            QUEUE_DRIVER => q.set_avail_ring_address(low, high),
            QUEUE_DEVICE => q.set_used_ring_address(low, high),
            _ => {}
        }
    }
}

/// Queues of `max_sizes`, not ready.
pub(crate) fn fresh_queues(max_sizes: &[u16]) -> Vec<Queue> {
    max_sizes
        .iter()
        .filter_map(|&m| Queue::new(m).ok())
        .collect()
}
