//! The virtio vsock device with Firecracker's hybrid convention: guest
//! vsock streams meet host programs on Unix sockets.
//!
//! - A host program connects to the device's socket `PATH` and sends
//!   `CONNECT <port>\n`; the device asks the guest for a connection from a
//!   host port it picks to guest port `<port>` (`OP_REQUEST`), and when the
//!   guest accepts (`OP_RESPONSE`) answers the program `OK <host port>\n`;
//!   the stream then carries the connection's bytes both ways.
//! - A guest connecting to host (CID 2) port `P` reaches the Unix socket
//!   `PATH_P`; if nothing listens there the guest gets `OP_RST`.
//! - Either side may stop sending and go on receiving: a host program's
//!   `shutdown(SHUT_WR)` reaches the guest as `OP_SHUTDOWN` with the
//!   send flag only, and the guest's as the end of the host stream; a
//!   host program that closes its stream ends both directions.
//!
//! Data flows under the guest's and the device's credit (virtio 1.2 5.10.6.3); a
//! guest that overruns its credit, sends a packet the connection's state
//! does not allow or a malformed packet gets its connection reset. At most
//! [`MAX_CONNECTIONS`] connections, each holding at most 128 KiB of the
//! guest's bytes, so a guest cannot make the device hold more than 16 MiB.
//!
//! Saving: connections live in host sockets that cannot move to another
//! process. A device deactivated and activated again in the same process
//! (a live save that goes on running) keeps them; a restored device has
//! none, and tells the guest with `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` on
//! the event queue, after which the guest drops its connections (as
//! Firecracker does on a snapshot restore).
//!
//! ```no_run
//! use vmm_core::devices::virtio::vsock::{Vsock, VsockSpec};
//! use vmm_core::devices::virtio::VirtioDevice;
//! let stats = stam::Registry::new();
//! let spec: VsockSpec = "cid=3,socket=/tmp/vm.vsock".parse()?;
//! let vsock = Vsock::open(&spec, "vsock0", &stats)?;
//! assert_eq!(vsock.queue_max_sizes().len(), 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod conn;
mod host;
mod muxer;
pub mod packet;
mod rings;
mod spec;

#[cfg(test)]
mod random_chains;
#[cfg(test)]
mod tests;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use vmm_sys_util::epoll::EventSet;

use super::{Activation, DeviceError, QueueHandle, QueueWorker, VirtioDevice, WorkerControl};
use host::Listener;
pub use muxer::MAX_CONNECTIONS;
use muxer::Muxer;
use rings::Rings;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use rings::{EVENT_QUEUE, RX_QUEUE, TX_QUEUE};
pub use spec::{VsockSpec, VsockSpecError};

/// Each queue's size.
pub const QUEUE_SIZE: u16 = 256;
/// The saved state's first bytes (then the guest CID).
const STATE_MAGIC: &[u8; 4] = b"VSK1";

/// The device's statistics under `/Devices/<name>/`.
#[derive(Clone)]
pub struct VsockStats {
    rx_packets: stam::Counter,
    rx_bytes: stam::Counter,
    tx_packets: stam::Counter,
    tx_bytes: stam::Counter,
    notifications: stam::Counter,
    connections: stam::Gauge<u64>,
    opened: stam::Counter,
    resets: stam::Counter,
    refused: stam::Counter,
    bad: stam::Counter,
    dropped: stam::Counter,
}

impl VsockStats {
    fn register(stats: &stam::Registry, name: &str) -> Result<VsockStats, stam::Error> {
        use stam::Unit::{Bytes, Count, Errors, Occurrences};
        let n = |leaf: &str| format!("/Devices/{name}/{leaf}");
        Ok(VsockStats {
            rx_packets: stats.counter(
                n("ReceivePackets"),
                Occurrences,
                "Packets given to the guest",
            )?,
            rx_bytes: stats.counter(n("ReceiveBytes"), Bytes, "Stream bytes given to the guest")?,
            tx_packets: stats.counter(
                n("TransmitPackets"),
                Occurrences,
                "Packets from the guest",
            )?,
            tx_bytes: stats.counter(n("TransmitBytes"), Bytes, "Payload bytes from the guest")?,
            notifications: stats.counter(n("Notifications"), Occurrences, "Queue notifications")?,
            connections: stats.gauge_u64(n("Connections"), Count, "Open connections")?,
            opened: stats.counter(n("ConnectionsOpened"), Occurrences, "Connections opened")?,
            resets: stats.counter(n("Resets"), Occurrences, "Resets sent to the guest")?,
            refused: stats.counter(
                n("Refused"),
                Occurrences,
                "Connections refused (no listener at PATH_port, bad CONNECT line, limit reached)",
            )?,
            bad: stats.counter(n("BadPackets"), Errors, "Malformed or disallowed packets")?,
            dropped: stats.counter(
                n("DroppedControl"),
                Occurrences,
                "Control packets dropped because the guest gave no receive buffers",
            )?,
        })
    }
}

/// A virtio vsock device.
pub struct Vsock {
    name: String,
    spec: VsockSpec,
    stats: VsockStats,
    /// The host side while the device is not active.
    muxer: Option<Muxer>,
    worker: Option<WorkerControl<Rings>>,
    reset_pending: bool,
}

impl Vsock {
    /// Makes device `name`: binds its listening socket at `spec.socket`
    /// (replacing a stale socket file, refusing a live one) and registers
    /// its statistics under `/Devices/<name>/`.
    pub fn open(
        spec: &VsockSpec,
        name: &str,
        stats: &stam::Registry,
    ) -> Result<Vsock, DeviceError> {
        let host_error = |what: String, source| DeviceError::Host {
            device: name.to_owned(),
            what,
            source,
        };
        let listener = Listener::bind(&spec.socket)
            .map_err(|e| host_error(format!("socket {}", spec.socket.display()), e))?;
        let stats = VsockStats::register(stats, name).map_err(|e| DeviceError::Setup {
            device: name.to_owned(),
            reason: format!("statistics: {e}"),
        })?;
        let muxer = Muxer::new(spec.cid, spec.socket.clone(), listener, stats.clone())
            .map_err(|e| host_error("epoll".into(), e))?;
        Ok(Vsock {
            name: name.to_owned(),
            spec: spec.clone(),
            stats,
            muxer: Some(muxer),
            worker: None,
            reset_pending: false,
        })
    }

    /// The device's configuration.
    pub fn spec(&self) -> &VsockSpec {
        &self.spec
    }

    /// The worker state over `queues`, for tests and fuzz targets that
    /// serve the rings without a thread; `None` while the device is active.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn worker_state(
        &mut self,
        memory: super::GuestRam,
        queues: [QueueHandle; 3],
        interrupt: std::sync::Arc<dyn super::Interrupt>,
    ) -> Option<Rings> {
        let muxer = self.muxer.take()?;
        let stats = self.stats.clone();
        Some(Rings::new(
            muxer,
            memory,
            queues,
            interrupt,
            stats,
            self.reset_pending,
        ))
    }

    fn setup_error(&self, reason: &str) -> DeviceError {
        DeviceError::setup(&self.name, reason)
    }
}

impl VirtioDevice for Vsock {
    fn name(&self) -> &str {
        &self.name
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.spec.cid.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| config.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), DeviceError> {
        let Ok(queues) = <[QueueHandle; 3]>::try_from(activation.queues) else {
            return Err(self.setup_error("needs its receive, transmit and event queues"));
        };
        if queues.iter().map(|q| q.index).ne(0..3) {
            return Err(self.setup_error("needs queues 0, 1 and 2"));
        }
        let Some(muxer) = self.muxer.take() else {
            return Err(self.setup_error("activated twice"));
        };
        let worker = QueueWorker::new(&queues)
            .and_then(|mut w| w.watch(muxer.epoll_fd(), 0, EventSet::IN).map(|()| w));
        let worker = match worker {
            Ok(w) => w,
            Err(source) => {
                self.muxer = Some(muxer);
                return Err(DeviceError::Host {
                    device: self.name.clone(),
                    what: "worker".into(),
                    source,
                });
            }
        };
        let mut rings = Rings::new(
            muxer,
            activation.memory,
            queues,
            activation.interrupt,
            self.stats.clone(),
            self.reset_pending,
        );
        // The event buffers are there since the driver's start: owe the
        // reset event no notification.
        if let Err(e) = rings.serve_pending() {
            tracing::warn!("{}: {}", self.name, e.0);
        }
        let control = worker
            .spawn(&self.name, rings, Rings::handle)
            .map_err(|source| DeviceError::Host {
                device: self.name.clone(),
                what: "worker thread".into(),
                source,
            })?;
        self.worker = Some(control);
        Ok(())
    }

    fn deactivate(&mut self) -> Result<Vec<QueueHandle>, DeviceError> {
        let Some(control) = self.worker.take() else {
            return Ok(Vec::new());
        };
        let rings = control.stop().map_err(|source| DeviceError::Host {
            device: self.name.clone(),
            what: "stopping the worker".into(),
            source,
        })?;
        self.reset_pending = rings.reset_pending;
        self.muxer = Some(rings.muxer);
        Ok(rings.queues.into())
    }

    fn save(&self) -> Vec<u8> {
        let mut state = STATE_MAGIC.to_vec();
        state.extend_from_slice(&self.spec.cid.to_le_bytes());
        state
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), DeviceError> {
        let refuse = |reason: String| DeviceError::Restore {
            device: self.name.clone(),
            reason,
        };
        let cid = match state.split_first_chunk::<4>() {
            Some((magic, cid)) if magic == STATE_MAGIC => <[u8; 8]>::try_from(cid)
                .map(u64::from_le_bytes)
                .map_err(|_| refuse("the saved state is truncated".into()))?,
            _ => return Err(refuse("not a saved vsock device state".into())),
        };
        if cid != self.spec.cid {
            return Err(refuse(format!(
                "saved with guest CID {cid}, configured with {}",
                self.spec.cid
            )));
        }
        // Connections do not survive into another process: drop any and
        // tell the guest at activation.
        if let Some(muxer) = &mut self.muxer {
            muxer.reset_all();
        }
        self.reset_pending = true;
        Ok(())
    }

    fn describe(&self, out: &mut dyn std::fmt::Write) -> std::fmt::Result {
        writeln!(
            out,
            "{}: virtio-vsock, guest CID {}, socket {}, {}; {} connections open, {} opened, {} resets",
            self.name,
            self.spec.cid,
            self.spec.socket.display(),
            if self.worker.is_some() {
                "active"
            } else {
                "inactive"
            },
            self.stats.connections.get(),
            self.stats.opened.get(),
            self.stats.resets.get(),
        )
    }
}
