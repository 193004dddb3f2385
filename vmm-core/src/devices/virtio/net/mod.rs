//! The virtio network device on a host tap.
//!
//! Two queues, receive (0) and transmit (1), each frame with a 12-byte
//! `virtio_net_hdr_v1` in front, which the tap (opened with
//! `IFF_VNET_HDR`) reads and writes as it is. The device offers
//! `VIRTIO_F_VERSION_1`, `VIRTIO_RING_F_EVENT_IDX`, `VIRTIO_NET_F_MAC`,
//! `VIRTIO_NET_F_STATUS` (the link is always up), `VIRTIO_NET_F_MRG_RXBUF`
//! and the offloads a tap has: checksums and TCP segmentation both ways
//! (`CSUM`, `HOST_TSO4/6`, `HOST_ECN`: the tap takes unfinished frames
//! from the guest; `GUEST_CSUM`, `GUEST_TSO4/6`, `GUEST_ECN`: the tap is
//! told with `TUNSETOFFLOAD` to hand the guest the same, as far as its
//! driver accepted them, see [`offloads_for`]).
//!
//! The tap is watched edge-triggered: the worker reads it only while the
//! receive ring has buffers; a frame that finds the ring empty waits in
//! the device, and the tap is not read again, until the driver adds
//! buffers and notifies the receive queue. Without `MRG_RXBUF` a frame
//! larger than the buffer it is offered is dropped and counted; with it a
//! frame spreads over as many buffers as it needs (see `rx.rs`).
//!
//! ```no_run
//! use vmm_core::devices::virtio::net::{Net, NetSpec};
//! use vmm_core::devices::virtio::VirtioDevice;
//! let stats = stam::Registry::new();
//! let spec: NetSpec = "tap=tap0".parse()?;
//! let net = Net::open(&spec, "net0", &stats)?;
//! assert_eq!(net.queue_max_sizes(), &[256, 256]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod rx;
mod rxtx;
mod spec;
mod stats;
mod tap;

#[cfg(test)]
mod feature_tests;
#[cfg(test)]
mod random_chains;
#[cfg(test)]
mod tap_tests;
#[cfg(test)]
mod tests;

use std::os::fd::AsRawFd;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vmm_sys_util::epoll::EventSet;

use super::{Activation, DeviceError, QueueHandle, QueueWorker, VirtioDevice, WorkerControl};
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use rxtx::Backend;
use rxtx::HOST_TOKEN;
pub use rxtx::NetStats;
pub(crate) use rxtx::{RX_QUEUE, RxTx, TX_QUEUE};
pub use spec::{MacAddress, NetSpec, NetSpecError};
pub use tap::{Tap, offloads_for};

/// Each queue's size.
pub const QUEUE_SIZE: u16 = 256;
/// The feature bits the device offers.
const FEATURES: [u32; 13] = [
    VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_STATUS,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_ECN,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_ECN,
];
/// The saved state's first bytes (then the MAC).
const STATE_MAGIC: &[u8; 4] = b"NET1";
/// `mac[6]`, `status: u16`, `max_virtqueue_pairs: u16`.
const CONFIG_LEN: usize = 10;

/// A virtio network device on a tap.
pub struct Net {
    name: String,
    spec: NetSpec,
    /// The tap while the device is not active (the worker has it then).
    tap: Option<Tap>,
    stats: NetStats,
    worker: Option<WorkerControl<RxTx<Tap>>>,
}

impl Net {
    /// Attaches device `name` to the existing tap `spec.tap` and registers
    /// its statistics under `/Devices/<name>/`; fails, naming the tap, if
    /// it does not exist or cannot be opened.
    pub fn open(spec: &NetSpec, name: &str, stats: &stam::Registry) -> Result<Net, DeviceError> {
        let tap = Tap::open(&spec.tap).map_err(|source| DeviceError::Host {
            device: name.to_owned(),
            what: format!("tap {}", spec.tap),
            source,
        })?;
        let stats = NetStats::register(stats, name).map_err(|e| DeviceError::Setup {
            device: name.to_owned(),
            reason: format!("statistics: {e}"),
        })?;
        Ok(Net {
            name: name.to_owned(),
            spec: spec.clone(),
            tap: Some(tap),
            stats,
            worker: None,
        })
    }

    /// The device's configuration.
    pub fn spec(&self) -> &NetSpec {
        &self.spec
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0; CONFIG_LEN];
        config[..6].copy_from_slice(&self.spec.mac.octets());
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config
    }

    fn setup_error(&self, reason: impl Into<String>) -> DeviceError {
        DeviceError::setup(&self.name, reason)
    }

    fn host_error(&self, what: &str, source: std::io::Error) -> DeviceError {
        DeviceError::host(&self.name, what, source)
    }
}

impl VirtioDevice for Net {
    fn name(&self) -> &str {
        &self.name
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        FEATURES.iter().fold(0, |all, bit| all | 1 << bit)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| config.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), DeviceError> {
        if self.worker.is_some() {
            return Err(self.setup_error("activated twice"));
        }
        let mut queues = activation.queues.into_iter();
        let (Some(rx), Some(tx), None) = (queues.next(), queues.next(), queues.next()) else {
            return Err(self.setup_error("needs exactly its receive and transmit queues"));
        };
        if (rx.index, tx.index) != (RX_QUEUE, TX_QUEUE) {
            return Err(self.setup_error("needs queues 0 (receive) and 1 (transmit)"));
        }
        let Some(tap) = self.tap.take() else {
            return Err(self.setup_error("the tap is gone (a worker did not stop)"));
        };
        if let Err(e) = tap.set_offloads(offloads_for(activation.features)) {
            self.tap = Some(tap);
            return Err(self.host_error("offloads", e));
        }
        let handles = [rx, tx];
        let worker = QueueWorker::new(&handles).and_then(|mut w| {
            let events = EventSet::IN | EventSet::EDGE_TRIGGERED;
            w.watch(tap.as_raw_fd(), HOST_TOKEN, events).map(|()| w)
        });
        let worker = match worker {
            Ok(w) => w,
            Err(e) => {
                self.tap = Some(tap);
                return Err(self.host_error("worker", e));
            }
        };
        let [rx, tx] = handles;
        let mut state = RxTx::new(
            tap,
            activation.memory,
            rx,
            tx,
            activation.interrupt,
            self.stats.clone(),
            activation.features,
        );
        // Frames queued before activation: edge-triggered epoll reports a
        // tap that is already readable when it is added, but the ring may
        // only now have buffers.
        if let Err(e) = state.receive() {
            tracing::warn!("{}: {}", self.name, e.0);
        }
        let control = worker
            .spawn(&self.name, state, RxTx::handle)
            .map_err(|e| self.host_error("worker thread", e))?;
        self.worker = Some(control);
        Ok(())
    }

    fn deactivate(&mut self) -> Result<Vec<QueueHandle>, DeviceError> {
        let Some(control) = self.worker.take() else {
            return Ok(Vec::new());
        };
        let mut state = control
            .stop()
            .map_err(|e| self.host_error("stopping the worker", e))?;
        if let Err(e) = state.release_partial() {
            tracing::warn!("{}: {}", self.name, e.0);
        }
        self.tap = Some(state.backend);
        Ok(vec![state.rx, state.tx])
    }

    fn save(&self) -> Vec<u8> {
        let mut state = STATE_MAGIC.to_vec();
        state.extend_from_slice(&self.spec.mac.octets());
        state
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), DeviceError> {
        let refuse = |reason: String| DeviceError::Restore {
            device: self.name.clone(),
            reason,
        };
        let (magic, mac) = state
            .split_first_chunk::<4>()
            .ok_or_else(|| refuse("the saved state is truncated".into()))?;
        let mac: [u8; 6] = match (magic == STATE_MAGIC, <[u8; 6]>::try_from(mac)) {
            (true, Ok(mac)) => mac,
            _ => return Err(refuse("not a saved network device state".into())),
        };
        let mac = MacAddress::from(mac);
        if mac != self.spec.mac {
            return Err(refuse(format!(
                "saved with MAC {mac}, configured with {}",
                self.spec.mac
            )));
        }
        Ok(())
    }

    fn describe(&self, out: &mut dyn std::fmt::Write) -> std::fmt::Result {
        writeln!(
            out,
            "{}: virtio-net on tap {}, MAC {}, {}; rx {} frames ({} dropped), tx {} frames ({} dropped)",
            self.name,
            self.spec.tap,
            self.spec.mac,
            if self.worker.is_some() {
                "active"
            } else {
                "inactive"
            },
            self.stats.rx_packets.get(),
            self.stats.rx_drops.get(),
            self.stats.tx_packets.get(),
            self.stats.tx_drops.get(),
        )
    }
}
