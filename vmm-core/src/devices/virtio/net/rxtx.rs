//! The network device's worker: frames between the rings and the host.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::QueueT;

use super::rx::Partial;
pub use super::stats::NetStats;
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

/// The worker's state: both queues, the host side and a frame read from
/// the host that is waiting for a receive buffer.
pub struct RxTx<B> {
    pub(super) backend: B,
    pub(super) memory: GuestRam,
    pub(crate) rx: QueueHandle,
    pub(crate) tx: QueueHandle,
    pub(super) interrupt: Arc<dyn Interrupt>,
    pub(super) stats: NetStats,
    /// Whether the driver accepted `VIRTIO_NET_F_MRG_RXBUF`: a frame may
    /// take several receive buffers.
    pub(super) mergeable: bool,
    pub(super) rx_frame: Vec<u8>,
    /// Bytes of `rx_frame` waiting for receive buffers (0: none).
    pub(super) rx_pending: usize,
    /// The receive buffers holding the first bytes of that frame.
    pub(super) rx_partial: Partial,
    /// Used receive entries added since the last interrupt decision.
    pub(super) rx_added: u16,
    tx_frame: Vec<u8>,
}

pub use crate::devices::virtio::ring::Broken;
use crate::devices::virtio::ring::pop;

impl<B: Backend> RxTx<B> {
    /// The state of a freshly activated device whose driver accepted
    /// `features`.
    pub fn new(
        backend: B,
        memory: GuestRam,
        rx: QueueHandle,
        tx: QueueHandle,
        interrupt: Arc<dyn Interrupt>,
        stats: NetStats,
        features: u64,
    ) -> Self {
        RxTx {
            backend,
            memory,
            rx,
            tx,
            interrupt,
            stats,
            mergeable: features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
            rx_frame: vec![0; MAX_FRAME],
            rx_pending: 0,
            rx_partial: Partial::default(),
            rx_added: 0,
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

    /// Sends every frame the driver queued for transmission, with the
    /// driver's notifications off while the ring is being emptied, and
    /// interrupts the driver as its event index (or its absence) says.
    pub fn transmit(&mut self) -> Result<(), Broken> {
        let ring = |e: virtio_queue::Error| Broken(format!("transmit ring: {e}"));
        // The chains borrow guest memory while the device reads them.
        let memory = self.memory.clone();
        let mut used = false;
        loop {
            self.tx.queue.disable_notification(&memory).map_err(ring)?;
            while let Some(chain) = pop(&mut self.tx.queue, &memory)? {
                let head = chain.head_index();
                self.send(chain)?;
                self.tx
                    .queue
                    .add_used(&self.memory, head, 0)
                    .map_err(|e| Broken(format!("used ring: {e}")))?;
                used = true;
            }
            if !self
                .tx
                .queue
                .enable_notification(&self.memory)
                .map_err(ring)?
            {
                break;
            }
        }
        if used
            && self
                .tx
                .queue
                .needs_notification(&self.memory)
                .map_err(ring)?
        {
            self.interrupt.signal_queue(TX_QUEUE);
        }
        Ok(())
    }

    /// Sends the frame in `chain` to the host; a chain that is no frame
    /// (no header, longer than any frame) is counted and dropped.
    fn send(&mut self, chain: virtio_queue::DescriptorChain<&GuestRam>) -> Result<(), Broken> {
        let head = chain.head_index();
        let mut reader = chain
            .reader(&self.memory)
            .map_err(|e| Broken(format!("transmit buffer {head}: {e}")))?;
        let len = reader.available_bytes();
        if len <= VNET_HDR_LEN || len > MAX_FRAME {
            self.stats.tx_errors.inc();
            return Ok(());
        }
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
        Ok(())
    }
}
