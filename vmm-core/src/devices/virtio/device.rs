//! [`VirtioDevice`]: what a virtio device offers its transport.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::{GuestRam, Queue};

/// How a device signals the driver. The transport implements it (an
/// MSI-X vector through an irqfd, or the legacy INTx line with the ISR
/// status bit); devices call it from their worker threads.
pub trait Interrupt: Send + Sync {
    /// The device put buffers into the used ring of queue `queue` (the
    /// transport honours `VIRTQ_AVAIL_F_NO_INTERRUPT` / event index only
    /// through what the device asks: call it when `Queue::needs_notification`
    /// said so).
    fn signal_queue(&self, queue: u16);
    /// The device's configuration space changed.
    fn signal_config(&self);
    /// The device met something it cannot go on from (a malformed ring, a
    /// descriptor chain it cannot parse): the transport sets
    /// `DEVICE_NEEDS_RESET` in the device status and signals a
    /// configuration change, as virtio 1.x section 2.1.2 says.
    fn needs_reset(&self);
}

/// One queue handed to a device: its index, the `virtio-queue` state the
/// driver programmed, and the eventfd its notifications arrive on.
pub struct QueueHandle {
    /// The queue's index in the device.
    pub index: u16,
    /// The queue, positioned where the driver and device left it.
    pub queue: Queue,
    /// Signalled on every driver notification of this queue.
    pub notify: Arc<EventFd>,
}

/// What a device gets when the driver sets `DRIVER_OK`.
pub struct Activation {
    /// Guest RAM, for the descriptors and buffers.
    pub memory: GuestRam,
    /// The features the driver accepted (a subset of
    /// [`VirtioDevice::features`], `VIRTIO_F_VERSION_1` included).
    pub features: u64,
    /// The queues the driver enabled, in index order.
    pub queues: Vec<QueueHandle>,
    /// Interrupts to the driver.
    pub interrupt: Arc<dyn Interrupt>,
}

/// What can go wrong with a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The driver set up the device in a way it cannot work with (a
    /// missing queue, a feature combination it cannot serve).
    #[error("{device}: {reason}")]
    Setup {
        /// The device's name.
        device: String,
        /// What is wrong, in words.
        reason: String,
    },
    /// The host side failed (a file, a socket, a thread).
    #[error("{device}: {what}: {source}")]
    Host {
        /// The device's name.
        device: String,
        /// What the device was doing.
        what: String,
        /// The host's error.
        source: std::io::Error,
    },
    /// A saved device state cannot be restored into this device.
    #[error("{device}: {reason}")]
    Restore {
        /// The device's name.
        device: String,
        /// Why, in words (a different configuration, corrupt bytes).
        reason: String,
    },
}

impl DeviceError {
    /// A [`DeviceError::Setup`] of `device`.
    pub fn setup(device: &str, reason: impl Into<String>) -> DeviceError {
        DeviceError::Setup {
            device: device.to_owned(),
            reason: reason.into(),
        }
    }

    /// A [`DeviceError::Host`] of `device`, failing at `what`.
    pub fn host(device: &str, what: &str, source: std::io::Error) -> DeviceError {
        DeviceError::Host {
            device: device.to_owned(),
            what: what.to_owned(),
            source,
        }
    }
}

/// A virtio device, independent of its transport.
///
/// The transport calls these from the EMT that handles the driver's
/// register access, or from the thread that saves the VM; the device's
/// own work runs on its worker thread between [`activate`] and
/// [`deactivate`].
///
/// [`activate`]: VirtioDevice::activate
/// [`deactivate`]: VirtioDevice::deactivate
pub trait VirtioDevice: Send {
    /// The device's name for statistics (`/Devices/<name>/...`), info
    /// handlers and errors: unique per VM (`blk0`, `net0`, `rng`, ...).
    fn name(&self) -> &str;

    /// The virtio device ID (`virtio_bindings::virtio_ids::VIRTIO_ID_*`).
    fn device_type(&self) -> u32;

    /// The largest size of each queue the device has (their number is the
    /// number of queues).
    fn queue_max_sizes(&self) -> &[u16];

    /// The feature bits the device offers, `VIRTIO_F_VERSION_1` included.
    fn features(&self) -> u64;

    /// Reads `data.len()` bytes of the device-specific configuration at
    /// `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// A driver write into the device-specific configuration; ignored
    /// where the device has nothing writable.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }

    /// The driver set `DRIVER_OK`: start serving the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), DeviceError>;

    /// Stops serving the queues: completes every request taken from a
    /// ring (their used entries written), stops the worker, and returns
    /// the queues as they stand (positions included), in index order.
    /// Returns no queues when the device is not active.
    fn deactivate(&mut self) -> Result<Vec<QueueHandle>, DeviceError>;

    /// The device's own saved state (everything beyond the transport's
    /// registers and queue positions), taken while it is deactivated; it
    /// begins with what identifies the device's configuration (a disk's
    /// size and mode, a MAC address), so that [`VirtioDevice::restore`]
    /// can refuse another.
    fn save(&self) -> Vec<u8>;

    /// Restores what [`VirtioDevice::save`] wrote, before activation;
    /// refuses a state of a differently configured device.
    fn restore(&mut self, state: &[u8]) -> Result<(), DeviceError>;

    /// A line or two about the device's configuration and activity for
    /// `info virtio`.
    fn describe(&self, out: &mut dyn std::fmt::Write) -> std::fmt::Result;
}
