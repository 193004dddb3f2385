//! The receive path: frames from the host into the driver's receive
//! buffers.
//!
//! Without `VIRTIO_NET_F_MRG_RXBUF` a frame takes one buffer (its header's
//! `num_buffers` is 1) and one larger than its buffer is dropped. With it,
//! a frame fills buffers one after the other, `num_buffers` in its header
//! says how many, and they go back to the used ring together once the
//! last is filled ([`add_used_all`]), so the driver never sees part of a
//! frame. A frame that empties the ring part-way keeps the buffers it has
//! until the driver adds more; one that would need more buffers than the
//! ring holds, or meets a buffer smaller than the 12-byte header (which
//! the driver must not offer), is dropped and its buffers go back empty.

use std::io::{self, Write};

use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::rxtx::{Backend, Broken, RX_QUEUE, RxTx};
use super::tap::VNET_HDR_LEN;
use crate::devices::virtio::GuestRam;
use crate::devices::virtio::ring::{add_used_all, pop, wants_interrupt, writable_byte};

/// Where `num_buffers` is in the virtio-net header.
const NUM_BUFFERS: usize = 10;

/// The receive buffers holding the beginning of a frame.
#[derive(Debug, Default)]
pub struct Partial {
    /// The frame's bytes written so far.
    done: usize,
    /// The buffers, in order: head index and bytes written.
    chains: Vec<(u16, u32)>,
    /// The guest addresses of the first buffer's `num_buffers` bytes.
    num_buffers_at: Option<[GuestAddress; 2]>,
}

fn ring_error(e: virtio_queue::Error) -> Broken {
    Broken(format!("receive ring: {e}"))
}

impl<B: Backend> RxTx<B> {
    /// Moves frames from the host into receive buffers until the host has
    /// none or the ring is empty; a frame that finds no buffer waits (and
    /// the host is not read) until the driver adds buffers, which it then
    /// notifies. Interrupts the driver as its event index (or its
    /// absence) says.
    pub fn receive(&mut self) -> Result<(), Broken> {
        // The chains borrow guest memory while the device fills them.
        let memory = self.memory.clone();
        let mut waited = false;
        loop {
            if self.rx_pending == 0 && !self.read_host_frame() {
                break;
            }
            let Some(chain) = pop(&mut self.rx.queue, &memory)? else {
                // Ask for a notification when the driver adds buffers; go
                // on if it added some meanwhile.
                if waited
                    || !self
                        .rx
                        .queue
                        .enable_notification(&self.memory)
                        .map_err(ring_error)?
                {
                    break;
                }
                waited = true;
                continue;
            };
            waited = false;
            if self.mergeable {
                self.fill(chain)?;
            } else {
                self.fill_one(chain)?;
            }
        }
        self.interrupt_rx()
    }

    /// Returns the buffers of a frame not yet complete, empty (the device
    /// stops: every buffer it took goes back).
    pub fn release_partial(&mut self) -> Result<(), Broken> {
        let chains = std::mem::take(&mut self.rx_partial).chains;
        if !chains.is_empty() {
            self.rx_pending = 0;
            self.put_used(&chains.iter().map(|&(h, _)| (h, 0)).collect::<Vec<_>>())?;
        }
        self.interrupt_rx()
    }

    /// How many receive buffers the device holds for a frame not yet
    /// complete.
    pub fn rx_held(&self) -> usize {
        self.rx_partial.chains.len()
    }

    /// The waiting frame into one buffer, or dropped if it does not fit.
    fn fill_one(&mut self, chain: DescriptorChain<&GuestRam>) -> Result<(), Broken> {
        let head = chain.head_index();
        let len = std::mem::take(&mut self.rx_pending);
        let mut writer = chain.writer(&self.memory).map_err(|e| buffer(head, e))?;
        let written = if writer.available_bytes() < len {
            self.stats.rx_drops.inc();
            0
        } else {
            self.rx_frame[NUM_BUFFERS..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            writer
                .write_all(&self.rx_frame[..len])
                .map_err(|e| buffer(head, e))?;
            self.delivered(len);
            len as u32
        };
        self.put_used(&[(head, written)])
    }

    /// The waiting frame's next bytes into `chain`; the frame's buffers
    /// go to the used ring when it is complete.
    fn fill(&mut self, chain: DescriptorChain<&GuestRam>) -> Result<(), Broken> {
        let head = chain.head_index();
        let first = self.rx_partial.chains.is_empty();
        let num_buffers_at = if first {
            let byte = |k: usize| writable_byte(&chain, k as u64);
            byte(NUM_BUFFERS)
                .zip(byte(NUM_BUFFERS + 1))
                .map(<[_; 2]>::from)
        } else {
            None
        };
        let mut writer = chain.writer(&self.memory).map_err(|e| buffer(head, e))?;
        let room = writer.available_bytes();
        if room < VNET_HDR_LEN {
            return self.drop_frame(Some(head));
        }
        let len = self.rx_pending;
        if first {
            self.rx_frame[NUM_BUFFERS..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            self.rx_partial.num_buffers_at = num_buffers_at;
        }
        let from = self.rx_partial.done;
        let n = room.min(len - from);
        writer
            .write_all(&self.rx_frame[from..from + n])
            .map_err(|e| buffer(head, e))?;
        self.rx_partial.done += n;
        self.rx_partial.chains.push((head, n as u32));
        if self.rx_partial.done < len {
            // The driver cannot add buffers the device holds: a frame that
            // needs more than the whole ring never completes.
            if self.rx_held() >= usize::from(self.rx.queue.size()) {
                return self.drop_frame(None);
            }
            return Ok(());
        }
        let partial = std::mem::take(&mut self.rx_partial);
        self.rx_pending = 0;
        if let (Ok(count @ 2..), Some(at)) =
            (u16::try_from(partial.chains.len()), partial.num_buffers_at)
        {
            for (byte, at) in count.to_le_bytes().into_iter().zip(at) {
                self.memory
                    .write_obj(byte, at)
                    .map_err(|e| buffer(partial.chains[0].0, e))?;
            }
        }
        self.delivered(len);
        self.put_used(&partial.chains)
    }

    /// Drops the waiting frame: its buffers (and `head`'s) go back empty.
    fn drop_frame(&mut self, head: Option<u16>) -> Result<(), Broken> {
        self.stats.rx_drops.inc();
        self.rx_pending = 0;
        let mut chains = std::mem::take(&mut self.rx_partial).chains;
        chains.extend(head.map(|h| (h, 0)));
        for chain in &mut chains {
            chain.1 = 0;
        }
        self.put_used(&chains)
    }

    fn put_used(&mut self, entries: &[(u16, u32)]) -> Result<(), Broken> {
        add_used_all(&mut self.rx.queue, &self.memory, entries)?;
        self.rx_added = self.rx_added.wrapping_add(entries.len() as u16);
        Ok(())
    }

    fn delivered(&mut self, len: usize) {
        self.stats.rx_packets.inc();
        self.stats.rx_bytes.add((len - VNET_HDR_LEN) as u64);
    }

    /// Interrupts the driver for the receive buffers used since the last
    /// time, if it wants one.
    fn interrupt_rx(&mut self) -> Result<(), Broken> {
        let added = std::mem::take(&mut self.rx_added);
        if added > 0 && wants_interrupt(&mut self.rx.queue, &self.memory, added)? {
            self.interrupt.signal_queue(RX_QUEUE);
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
}

fn buffer(head: u16, e: impl std::fmt::Display) -> Broken {
    Broken(format!("receive buffer {head}: {e}"))
}
