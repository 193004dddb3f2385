//! The network device's worker: frames between the rings and the host.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::QueueT;

use super::tap::VNET_HDR_LEN;
use crate::devices::virtio::{GuestRam, Interrupt, QueueHandle, WorkerEvent};

/// The receive queue's index.
pub const RX_QUEUE: u16 = 0;
/// The transmit queue's index.
pub const TX_QUEUE: u16 = 1;
/// The worker's token for the host side.
pub const HOST_TOKEN: u32 = 0;

/// The largest frame (virtio-net header included) the device moves: a
/// 64 KiB IP packet in an Ethernet frame with a VLAN tag.
pub const MAX_FRAME: usize = VNET_HDR_LEN + 14 + 4 + 65535;

/// Where frames go to and come from on the host: a tap, or a datagram
/// socket in tests. Every frame begins with a 12-byte virtio-net header.
pub trait Backend: AsRawFd + Send + 'static {
    /// Reads one frame into `buf`; `WouldBlock` when there is none.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends one frame.
    fn send(&mut self, frame: &[u8]) -> io::Result<usize>;
}

/// The device's counters under `/Devices/<name>/`.
#[derive(Clone)]
pub struct NetStats {
    pub(super) rx_packets: stam::Counter,
    pub(super) rx_bytes: stam::Counter,
    pub(super) rx_drops: stam::Counter,
    pub(super) rx_errors: stam::Counter,
    pub(super) rx_notifications: stam::Counter,
    pub(super) tx_packets: stam::Counter,
    pub(super) tx_bytes: stam::Counter,
    pub(super) tx_drops: stam::Counter,
    pub(super) tx_errors: stam::Counter,
    pub(super) tx_notifications: stam::Counter,
}

impl NetStats {
    /// Registers the counters of device `name`.
    pub fn register(stats: &stam::Registry, name: &str) -> Result<NetStats, stam::Error> {
        use stam::Unit::{Bytes, Errors, Occurrences};
        let c = |leaf: &str, unit, what: &str| {
            stats.counter(format!("/Devices/{name}/{leaf}"), unit, what)
        };
        Ok(NetStats {
            rx_packets: c("ReceivePackets", Occurrences, "Frames given to the guest")?,
            rx_bytes: c(
                "ReceiveBytes",
                Bytes,
                "Bytes given to the guest (headers excluded)",
            )?,
            rx_drops: c(
                "ReceiveDrops",
                Occurrences,
                "Frames from the host that did not fit the guest's receive buffer",
            )?,
            rx_errors: c("ReceiveErrors", Errors, "Failed reads from the host side")?,
            rx_notifications: c(
                "ReceiveNotifications",
                Occurrences,
                "Receive queue notifications (buffers refilled)",
            )?,
            tx_packets: c("TransmitPackets", Occurrences, "Frames sent by the guest")?,
            tx_bytes: c(
                "TransmitBytes",
                Bytes,
                "Bytes sent by the guest (headers excluded)",
            )?,
            tx_drops: c(
                "TransmitDrops",
                Occurrences,
                "Guest frames the host side refused",
            )?,
            tx_errors: c(
                "TransmitErrors",
                Errors,
                "Guest transmit chains without a header or longer than a frame",
            )?,
            tx_notifications: c(
                "TransmitNotifications",
                Occurrences,
                "Transmit queue notifications",
            )?,
        })
    }
}

/// The worker's state: both queues, the host side and a frame read from
/// the host that is waiting for a receive buffer.
pub struct RxTx<B> {
    pub(super) backend: B,
    pub(super) memory: GuestRam,
    pub(crate) rx: QueueHandle,
    pub(crate) tx: QueueHandle,
    interrupt: Arc<dyn Interrupt>,
    stats: NetStats,
    rx_frame: Vec<u8>,
    /// Bytes of `rx_frame` waiting for a receive buffer (0: none).
    rx_pending: usize,
    tx_frame: Vec<u8>,
}

pub use crate::devices::virtio::ring::Broken;
use crate::devices::virtio::ring::pop;

impl<B: Backend> RxTx<B> {
    /// The state of a freshly activated device.
    pub fn new(
        backend: B,
        memory: GuestRam,
        rx: QueueHandle,
        tx: QueueHandle,
        interrupt: Arc<dyn Interrupt>,
        stats: NetStats,
    ) -> Self {
        RxTx {
            backend,
            memory,
            rx,
            tx,
            interrupt,
            stats,
            rx_frame: vec![0; MAX_FRAME],
            rx_pending: 0,
            tx_frame: vec![0; MAX_FRAME],
        }
    }

    /// Serves one worker event; a broken ring asks for a reset and ends
    /// the worker.
    pub fn handle(&mut self, event: WorkerEvent) -> Result<(), String> {
        let result = match event {
            WorkerEvent::Queue(RX_QUEUE) => {
                self.stats.rx_notifications.inc();
                self.receive()
            }
            WorkerEvent::Queue(TX_QUEUE) => {
                self.stats.tx_notifications.inc();
                self.transmit()
            }
            WorkerEvent::Host { .. } => self.receive(),
            WorkerEvent::Queue(_) => Ok(()),
        };
        result.map_err(|Broken(why)| {
            self.interrupt.needs_reset();
            why
        })
    }

    /// Moves frames from the host into receive buffers until the host has
    /// none or the ring is empty; a frame that finds no buffer waits (and
    /// the host is not read) until the driver adds buffers.
    pub fn receive(&mut self) -> Result<(), Broken> {
        let mut used = false;
        loop {
            if self.rx_pending == 0 && !self.read_host_frame() {
                break;
            }
            let Some(chain) = pop(&mut self.rx.queue, &self.memory)? else {
                break;
            };
            let head = chain.head_index();
            let len = self.rx_pending;
            self.rx_pending = 0;
            let mut writer = chain
                .writer(&self.memory)
                .map_err(|e| Broken(format!("receive buffer {head}: {e}")))?;
            let written = if writer.available_bytes() < len {
                self.stats.rx_drops.inc();
                0
            } else {
                // One buffer per frame: num_buffers is 1.
                self.rx_frame[10..12].copy_from_slice(&1u16.to_le_bytes());
                writer
                    .write_all(&self.rx_frame[..len])
                    .map_err(|e| Broken(format!("receive buffer {head}: {e}")))?;
                self.stats.rx_packets.inc();
                self.stats.rx_bytes.add((len - VNET_HDR_LEN) as u64);
                len as u32
            };
            self.rx
                .queue
                .add_used(&self.memory, head, written)
                .map_err(|e| Broken(format!("used ring: {e}")))?;
            used = true;
        }
        if used {
            self.signal(RX_QUEUE)?;
        }
        Ok(())
    }

    /// Reads the next host frame into `rx_frame`; false when there is none.
    fn read_host_frame(&mut self) -> bool {
        loop {
            match self.backend.recv(&mut self.rx_frame) {
                Ok(n) if n > VNET_HDR_LEN => {
                    self.rx_pending = n;
                    return true;
                }
                // A frame without a body (or a truncated header): nothing
                // a guest could use.
                Ok(_) => self.stats.rx_errors.inc(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.stats.rx_errors.inc();
                    tracing::debug!("net: reading the host side: {e}");
                    return false;
                }
            }
        }
    }

    /// Sends every frame the driver queued for transmission.
    pub fn transmit(&mut self) -> Result<(), Broken> {
        let mut used = false;
        while let Some(chain) = pop(&mut self.tx.queue, &self.memory)? {
            let head = chain.head_index();
            let mut reader = chain
                .reader(&self.memory)
                .map_err(|e| Broken(format!("transmit buffer {head}: {e}")))?;
            let len = reader.available_bytes();
            if len <= VNET_HDR_LEN || len > MAX_FRAME {
                self.stats.tx_errors.inc();
            } else {
                reader
                    .read_exact(&mut self.tx_frame[..len])
                    .map_err(|e| Broken(format!("transmit buffer {head}: {e}")))?;
                match self.backend.send(&self.tx_frame[..len]) {
                    Ok(_) => {
                        self.stats.tx_packets.inc();
                        self.stats.tx_bytes.add((len - VNET_HDR_LEN) as u64);
                    }
                    Err(e) => {
                        self.stats.tx_drops.inc();
                        tracing::debug!("net: sending to the host side: {e}");
                    }
                }
            }
            self.tx
                .queue
                .add_used(&self.memory, head, 0)
                .map_err(|e| Broken(format!("used ring: {e}")))?;
            used = true;
        }
        if used {
            self.signal(TX_QUEUE)?;
        }
        Ok(())
    }

    fn signal(&mut self, index: u16) -> Result<(), Broken> {
        let queue = if index == RX_QUEUE {
            &mut self.rx.queue
        } else {
            &mut self.tx.queue
        };
        if queue
            .needs_notification(&self.memory)
            .map_err(|e| Broken(format!("queue {index}: {e}")))?
        {
            self.interrupt.signal_queue(index);
        }
        Ok(())
    }
}
