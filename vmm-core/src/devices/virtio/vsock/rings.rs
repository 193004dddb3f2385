//! The vsock device's worker: packets between the rings and the muxer.

use std::io::{Read, Write};
use std::sync::Arc;

use virtio_queue::{QueueOwnedT, QueueT};

use super::VsockStats;
use super::muxer::{MAX_PKT, Muxer};
use super::packet::{HDR_LEN, Header};
use crate::devices::virtio::{GuestRam, Interrupt, QueueHandle, WorkerEvent};

/// The receive queue (device to guest).
pub const RX_QUEUE: u16 = 0;
/// The transmit queue (guest to device).
pub const TX_QUEUE: u16 = 1;
/// The event queue.
pub const EVENT_QUEUE: u16 = 2;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`.
const EVENT_TRANSPORT_RESET: u32 = 0;

pub use crate::devices::virtio::ring::Broken;
use crate::devices::virtio::ring::pop;

fn broken(what: &str, e: impl std::fmt::Display) -> Broken {
    Broken(format!("{what}: {e}"))
}

/// The worker's state.
pub struct Rings {
    pub(super) muxer: Muxer,
    memory: GuestRam,
    /// Receive, transmit and event queues.
    pub(crate) queues: [QueueHandle; 3],
    interrupt: Arc<dyn Interrupt>,
    stats: VsockStats,
    /// A transport reset event is owed to the guest (after a restore).
    pub(super) reset_pending: bool,
    payload: Vec<u8>,
}

impl Rings {
    /// The state of an activated device.
    pub fn new(
        muxer: Muxer,
        memory: GuestRam,
        queues: [QueueHandle; 3],
        interrupt: Arc<dyn Interrupt>,
        stats: VsockStats,
        reset_pending: bool,
    ) -> Rings {
        Rings {
            muxer,
            memory,
            queues,
            interrupt,
            stats,
            reset_pending,
            payload: vec![0; MAX_PKT],
        }
    }

    /// Serves one worker event; a broken ring asks for a reset and ends
    /// the worker.
    pub fn handle(&mut self, event: WorkerEvent) -> Result<(), String> {
        self.serve(event).map_err(|Broken(why)| {
            self.interrupt.needs_reset();
            why
        })
    }

    /// Sends what is owed without a notification: the reset event, and
    /// packets for buffers the driver already gave.
    pub fn serve_pending(&mut self) -> Result<(), Broken> {
        self.send_reset_event()?;
        self.receive()
    }

    /// Serves `event`, then fills receive buffers with what is waiting.
    pub fn serve(&mut self, event: WorkerEvent) -> Result<(), Broken> {
        match event {
            WorkerEvent::Queue(index) => {
                self.stats.notifications.inc();
                if index == TX_QUEUE {
                    self.transmit()?;
                }
            }
            WorkerEvent::Host { .. } => self.muxer.host_events(),
        }
        self.serve_pending()
    }

    /// Takes every packet the guest queued.
    fn transmit(&mut self) -> Result<(), Broken> {
        let [_, tx, _] = &mut self.queues;
        let mut used = false;
        while let Some(chain) = pop(&mut tx.queue, &self.memory)? {
            let head = chain.head_index();
            let mut reader = chain
                .reader(&self.memory)
                .map_err(|e| broken("transmit buffer", e))?;
            let mut bytes = [0u8; HDR_LEN];
            if reader.available_bytes() < HDR_LEN {
                self.stats.bad.inc();
            } else {
                reader
                    .read_exact(&mut bytes)
                    .map_err(|e| broken("transmit buffer", e))?;
                let hdr = Header::decode(&bytes);
                let len = hdr.len as usize;
                self.stats.tx_packets.inc();
                if len > MAX_PKT || len > reader.available_bytes() {
                    self.muxer.bad_packet(&hdr);
                } else {
                    reader
                        .read_exact(&mut self.payload[..len])
                        .map_err(|e| broken("transmit buffer", e))?;
                    self.stats.tx_bytes.add(len as u64);
                    self.muxer.guest_packet(&hdr, &self.payload[..len]);
                }
            }
            tx.queue
                .add_used(&self.memory, head, 0)
                .map_err(|e| broken("used ring", e))?;
            used = true;
        }
        if used {
            self.signal(TX_QUEUE)?;
        }
        Ok(())
    }

    /// Fills receive buffers while the muxer has packets.
    fn receive(&mut self) -> Result<(), Broken> {
        let [rx, _, _] = &mut self.queues;
        let mut used = false;
        while self.muxer.has_work() {
            let Some(chain) = pop(&mut rx.queue, &self.memory)? else {
                break;
            };
            let head = chain.head_index();
            let mut writer = chain
                .writer(&self.memory)
                .map_err(|e| broken("receive buffer", e))?;
            let room = writer.available_bytes();
            let written = if room < HDR_LEN {
                self.stats.bad.inc();
                0
            } else {
                let Some((hdr, payload)) = self.muxer.next_for_guest(room - HDR_LEN) else {
                    // Nothing after all (the streams had no data): the
                    // buffer stays for the next packet.
                    rx.queue.go_to_previous_position();
                    break;
                };
                writer
                    .write_all(&hdr.encode())
                    .and_then(|()| writer.write_all(payload))
                    .map_err(|e| broken("receive buffer", e))?;
                self.stats.rx_packets.inc();
                (HDR_LEN + payload.len()) as u32
            };
            rx.queue
                .add_used(&self.memory, head, written)
                .map_err(|e| broken("used ring", e))?;
            used = true;
        }
        if used {
            self.signal(RX_QUEUE)?;
        }
        Ok(())
    }

    /// Tells the guest its connections are gone, once it has an event
    /// buffer.
    fn send_reset_event(&mut self) -> Result<(), Broken> {
        while self.reset_pending {
            let event = &mut self.queues[usize::from(EVENT_QUEUE)];
            let Some(chain) = pop(&mut event.queue, &self.memory)? else {
                return Ok(());
            };
            let head = chain.head_index();
            let mut writer = chain
                .writer(&self.memory)
                .map_err(|e| broken("event buffer", e))?;
            let written = if writer.available_bytes() < 4 {
                self.stats.bad.inc();
                0
            } else {
                writer
                    .write_all(&EVENT_TRANSPORT_RESET.to_le_bytes())
                    .map_err(|e| broken("event buffer", e))?;
                self.reset_pending = false;
                4
            };
            event
                .queue
                .add_used(&self.memory, head, written)
                .map_err(|e| broken("used ring", e))?;
            self.signal(EVENT_QUEUE)?;
        }
        Ok(())
    }

    fn signal(&mut self, index: u16) -> Result<(), Broken> {
        let queue = &mut self.queues[usize::from(index)].queue;
        if queue
            .needs_notification(&self.memory)
            .map_err(|e| broken("queue", e))?
        {
            self.interrupt.signal_queue(index);
        }
        Ok(())
    }
}
