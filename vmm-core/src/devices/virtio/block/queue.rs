//! [`BlockQueue`]: the request queue as the worker thread serves it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};

use super::super::{GuestRam, Interrupt, Queue, QueueHandle};
use super::request::{self, BlockBackend, Unfollowable};

/// Why the device stopped serving its queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue's rings are misaligned or outside guest memory.
    #[error("the queue's rings are misaligned or not in guest RAM")]
    Invalid,
    /// `virtio-queue` refused the ring (an available index more than a
    /// queue ahead, an unreadable ring, a used entry it cannot write).
    #[error("queue: {0}")]
    Ring(#[from] virtio_queue::Error),
    /// The available ring has an entry `virtio-queue` cannot read.
    #[error("an available ring entry cannot be read")]
    AvailEntry,
    /// A descriptor chain cannot be followed.
    #[error(transparent)]
    Chain(#[from] Unfollowable),
    /// The device had already stopped.
    #[error("the device needs a reset")]
    Broken,
}

/// The worker's state: the queue and everything a request needs.
pub struct BlockQueue {
    /// The queue as the transport handed it over.
    pub handle: QueueHandle,
    memory: GuestRam,
    backend: Arc<BlockBackend>,
    interrupt: Arc<dyn Interrupt>,
    broken: Arc<AtomicBool>,
}

impl BlockQueue {
    /// Serves `handle` for `backend`; sets `broken` (and asks the driver
    /// for a reset) when the queue cannot be served any more.
    pub fn new(
        handle: QueueHandle,
        memory: GuestRam,
        backend: Arc<BlockBackend>,
        interrupt: Arc<dyn Interrupt>,
        broken: Arc<AtomicBool>,
    ) -> BlockQueue {
        BlockQueue {
            handle,
            memory,
            backend,
            interrupt,
            broken,
        }
    }

    /// Serves every request the driver made available, synchronously, and
    /// signals the driver when the event index (or its absence) says so.
    /// On a queue it cannot parse, marks the device broken, calls
    /// [`Interrupt::needs_reset`] and serves nothing more.
    pub fn process(&mut self) -> Result<(), QueueError> {
        if self.broken.load(Ordering::Acquire) {
            return Err(QueueError::Broken);
        }
        let served = self.drain();
        if let Err(e) = &served {
            tracing::warn!("{}: {e}; the device needs a reset", self.backend.name);
            self.backend.stats.errors.inc();
            self.broken.store(true, Ordering::Release);
            self.interrupt.needs_reset();
        }
        served
    }

    fn drain(&mut self) -> Result<(), QueueError> {
        let mem = &self.memory;
        let queue = &mut self.handle.queue;
        if !queue.is_valid(mem) {
            return Err(QueueError::Invalid);
        }
        let mut used = 0u32;
        loop {
            queue.disable_notification(mem)?;
            while let Some(chain) = next_chain(queue, mem)? {
                let head = chain.head_index();
                let len = request::serve(&self.backend, mem, chain)?;
                queue.add_used(mem, head, len)?;
                used = used.wrapping_add(1);
            }
            if !queue.enable_notification(mem)? {
                break;
            }
        }
        if used > 0 && queue.needs_notification(mem)? {
            self.interrupt.signal_queue(self.handle.index);
        }
        Ok(())
    }
}

/// The next available chain; an error when the ring says there is one
/// but `virtio-queue` cannot produce it.
fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestRam,
) -> Result<Option<DescriptorChain<&'m GuestRam>>, QueueError> {
    let avail = queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire)?;
    if avail.0 == queue.next_avail() {
        return Ok(None);
    }
    queue
        .iter(mem)?
        .next()
        .map(Some)
        .ok_or(QueueError::AvailEntry)
}
