//! [`Block`]: the virtio block device behind `vmm run --disk`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;

use super::super::{
    Activation, DeviceError, QueueHandle, QueueWorker, VirtioDevice, WorkerControl, WorkerEvent,
};
use super::config::{ConfigSpace, QUEUE_SIZE, config_space, features};
use super::disk::{DiskImage, SECTOR_SIZE};
use super::queue::BlockQueue;
use super::request::{BlockBackend, ID_LEN};
use super::spec::BlockSpec;
use super::stats::BlockStats;

/// The version of [`Block::save`]'s layout.
const STATE_VERSION: u32 = 1;
/// The bytes of a saved state: version, capacity, read-only flag.
const STATE_LEN: usize = 4 + 8 + 1;

/// A virtio block device over a raw image file, with one request queue.
///
/// Requests are served on the device's [`QueueWorker`] thread, each one
/// completely (data moved, status written, used entry added) before the
/// worker looks at its next event. [`VirtioDevice::deactivate`] therefore
/// only has to stop the worker between two notifications: no request is
/// ever half done, and the queue it returns is positioned after the last
/// completed one. Requests the driver made available but the worker had
/// not reached stay in the ring; activation (also after a restore) checks
/// the ring once, so they are served then.
///
/// ```no_run
/// use vmm_core::devices::virtio::{Block, BlockSpec, VirtioDevice};
///
/// let stats = stam::Registry::new();
/// let spec: BlockSpec = "disk.img,ro".parse()?;
/// let disk = Block::open(&spec, "blk0", &stats)?;
/// assert_eq!(disk.device_type(), 2);
/// println!("{} sectors", disk.capacity());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Block {
    backend: Arc<BlockBackend>,
    config: ConfigSpace,
    broken: Arc<AtomicBool>,
    worker: Option<WorkerControl<BlockQueue>>,
}

impl Block {
    /// Opens the image `spec` names as device `name` (`blk0`, ...) and
    /// registers its counters under `/Devices/<name>/` in `stats`. Refuses a
    /// missing file, a directory, an empty image and one whose size is not
    /// a multiple of 512 bytes.
    pub fn open(
        spec: &BlockSpec,
        name: &str,
        stats: &stam::Registry,
    ) -> Result<Block, DeviceError> {
        let disk = DiskImage::open(&spec.path, spec.read_only, name)?;
        let stats = BlockStats::register(stats, name).map_err(|e| DeviceError::Setup {
            device: name.to_owned(),
            reason: format!("statistics: {e}"),
        })?;
        let mut serial = [0u8; ID_LEN];
        let id = name.as_bytes();
        let n = id.len().min(ID_LEN);
        serial[..n].copy_from_slice(&id[..n]);
        Ok(Block {
            config: config_space(disk.sectors()),
            backend: Arc::new(BlockBackend {
                name: name.to_owned(),
                disk,
                stats,
                serial,
            }),
            broken: Arc::new(AtomicBool::new(false)),
            worker: None,
        })
    }

    /// The disk's size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.backend.disk.sectors()
    }

    /// Whether the guest may only read.
    pub fn read_only(&self) -> bool {
        self.backend.disk.read_only()
    }

    /// Whether the device stopped serving its queue (a ring it could not
    /// parse) and waits for the driver to reset it.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// The worker state serving `handle`, for tests and fuzz targets that
    /// drive the queue without a thread.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn queue_state(
        &self,
        handle: QueueHandle,
        memory: super::super::GuestRam,
        interrupt: Arc<dyn super::super::Interrupt>,
    ) -> BlockQueue {
        BlockQueue::new(
            handle,
            memory,
            Arc::clone(&self.backend),
            interrupt,
            Arc::clone(&self.broken),
        )
    }

    fn setup_error(&self, reason: impl Into<String>) -> DeviceError {
        DeviceError::setup(&self.backend.name, reason)
    }

    fn restore_error(&self, reason: String) -> DeviceError {
        DeviceError::Restore {
            device: self.backend.name.clone(),
            reason,
        }
    }

    fn host_error(&self, what: &str, source: std::io::Error) -> DeviceError {
        DeviceError::host(&self.backend.name, what, source)
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("name", &self.backend.name)
            .field("image", &self.backend.disk.path())
            .field("capacity", &self.capacity())
            .field("read_only", &self.read_only())
            .field("active", &self.worker.is_some())
            .field("broken", &self.is_broken())
            .finish()
    }
}

impl VirtioDevice for Block {
    fn name(&self) -> &str {
        &self.backend.name
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features(self.read_only())
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| self.config.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), DeviceError> {
        if self.worker.is_some() {
            return Err(self.setup_error("activated twice"));
        }
        let Activation {
            memory,
            features,
            queues,
            interrupt,
        } = activation;
        let mut queues = queues.into_iter();
        let (Some(mut handle), None) = (queues.next(), queues.next()) else {
            return Err(self.setup_error("needs exactly its one request queue"));
        };
        if handle.index != 0 {
            return Err(self.setup_error(format!("has no queue {}", handle.index)));
        }
        handle
            .queue
            .set_event_idx(features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        let worker = QueueWorker::new(std::slice::from_ref(&handle))
            .map_err(|e| self.host_error("cannot set up the worker", e))?;
        let notify = Arc::clone(&handle.notify);
        self.broken.store(false, Ordering::Release);
        let state = BlockQueue::new(
            handle,
            memory,
            Arc::clone(&self.backend),
            interrupt,
            Arc::clone(&self.broken),
        );
        let backend = Arc::clone(&self.backend);
        let control = worker
            .spawn(&self.backend.name, state, move |queue, event| match event {
                WorkerEvent::Queue(_) => {
                    backend.stats.notifications.inc();
                    queue.process().map_err(|e| e.to_string())
                }
                WorkerEvent::Host { .. } => Ok(()),
            })
            .map_err(|e| self.host_error("cannot start the worker", e))?;
        self.worker = Some(control);
        // Requests made available before activation (a restored ring) wait
        // for a notification that came before the save: look once.
        notify
            .write(1)
            .map_err(|e| self.host_error("cannot notify the worker", e))
    }

    fn deactivate(&mut self) -> Result<Vec<QueueHandle>, DeviceError> {
        let Some(control) = self.worker.take() else {
            return Ok(Vec::new());
        };
        let state = control
            .stop()
            .map_err(|e| self.host_error("cannot stop the worker", e))?;
        Ok(vec![state.handle])
    }

    fn save(&self) -> Vec<u8> {
        let mut state = Vec::with_capacity(STATE_LEN);
        state.extend_from_slice(&STATE_VERSION.to_le_bytes());
        state.extend_from_slice(&self.capacity().to_le_bytes());
        state.push(u8::from(self.read_only()));
        state
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), DeviceError> {
        let state: &[u8; STATE_LEN] = state.try_into().map_err(|_| {
            self.restore_error(format!(
                "saved state is {} bytes, expected {STATE_LEN}",
                state.len()
            ))
        })?;
        let version = u32::from_le_bytes([state[0], state[1], state[2], state[3]]);
        if version != STATE_VERSION {
            return Err(self.restore_error(format!(
                "saved state version {version}, this device writes {STATE_VERSION}"
            )));
        }
        let mut capacity = [0u8; 8];
        capacity.copy_from_slice(&state[4..12]);
        let capacity = u64::from_le_bytes(capacity);
        if capacity != self.capacity() {
            return Err(self.restore_error(format!(
                "the saved disk had {capacity} sectors, this one has {}",
                self.capacity()
            )));
        }
        let read_only = match state[12] {
            0 => false,
            1 => true,
            other => return Err(self.restore_error(format!("bad read-only flag {other}"))),
        };
        if read_only != self.read_only() {
            let mode = |ro| if ro { "read-only" } else { "read-write" };
            return Err(self.restore_error(format!(
                "the saved disk was {}, this one is {}",
                mode(read_only),
                mode(self.read_only())
            )));
        }
        Ok(())
    }

    fn describe(&self, out: &mut dyn std::fmt::Write) -> std::fmt::Result {
        let b = &self.backend;
        let s = &b.stats;
        writeln!(
            out,
            "{}: {} sectors ({} MiB), {}{}, image {}",
            b.name,
            self.capacity(),
            (self.capacity() * SECTOR_SIZE) >> 20,
            if self.read_only() {
                "read-only"
            } else {
                "read-write"
            },
            if self.is_broken() {
                ", needs reset"
            } else {
                ""
            },
            b.disk.path().display(),
        )?;
        writeln!(
            out,
            "  reads {} ({} bytes), writes {} ({} bytes), flushes {}, discards {}, \
             write-zeroes {}, errors {}, unsupported {}, notifications {}",
            s.reads.get(),
            s.bytes_read.get(),
            s.writes.get(),
            s.bytes_written.get(),
            s.flushes.get(),
            s.discards.get(),
            s.write_zeroes.get(),
            s.errors.get(),
            s.unsupported.get(),
            s.notifications.get(),
        )
    }
}
