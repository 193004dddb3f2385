//! The entropy device (virtio 1.x section 5.4, `VIRTIO_ID_RNG`): one
//! queue of device-writable buffers the device fills with random bytes
//! from the host's `getrandom`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::{
    Activation, DeviceError, GuestRam, Interrupt, QueueHandle, QueueWorker, VirtioDevice,
    WorkerControl, WorkerEvent,
};

/// The queue's largest size.
const QUEUE_SIZE: u16 = 256;
/// Random bytes are fetched and written this many at a time.
const CHUNK: usize = 4096;
/// The most bytes one request is given (a driver asking for more gets
/// this much; it asks again).
const MAX_REQUEST: u32 = 64 << 10;

/// What the worker owns while the device is active.
struct Work {
    memory: GuestRam,
    queue: QueueHandle,
    interrupt: Arc<dyn Interrupt>,
    bytes: Arc<AtomicU64>,
}

/// The entropy device.
///
/// ```
/// use vmm_core::devices::virtio::{Rng, VirtioDevice};
/// let rng = Rng::new("rng0");
/// assert_eq!(rng.device_type(), 4);
/// ```
pub struct Rng {
    name: String,
    worker: Option<WorkerControl<Work>>,
    /// Random bytes handed out (for `info virtio`).
    bytes: Arc<AtomicU64>,
}

impl Rng {
    /// An entropy device called `name`.
    pub fn new(name: &str) -> Self {
        Rng {
            name: name.to_owned(),
            worker: None,
            bytes: Arc::default(),
        }
    }
}

/// Fills `buf` from the host's entropy pool.
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match n {
            n if n > 0 => done += n as usize,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

impl Work {
    /// Serves every request in the ring, then interrupts if the driver
    /// wants it.
    fn serve(&mut self) -> Result<(), String> {
        let (mem, q) = (&self.memory, &mut self.queue.queue);
        let mut chunk = vec![0u8; CHUNK];
        loop {
            q.disable_notification(mem).map_err(|e| format!("{e:?}"))?;
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let mut written = 0u32;
                for desc in chain.writable() {
                    let mut addr = desc.addr();
                    let mut left = desc.len().min(MAX_REQUEST - written);
                    while left > 0 {
                        let n = (left as usize).min(CHUNK);
                        getrandom(&mut chunk[..n]).map_err(|e| format!("getrandom: {e}"))?;
                        mem.write_slice(&chunk[..n], addr)
                            .map_err(|e| format!("buffer at {:#x}: {e}", addr.0))?;
                        addr = GuestAddress(addr.0 + n as u64);
                        left -= n as u32;
                        written += n as u32;
                    }
                }
                q.add_used(mem, head, written)
                    .map_err(|e| format!("{e:?}"))?;
                self.bytes.fetch_add(u64::from(written), Ordering::Relaxed);
            }
            if !q.enable_notification(mem).map_err(|e| format!("{e:?}"))? {
                break;
            }
        }
        if q.needs_notification(mem).map_err(|e| format!("{e:?}"))? {
            self.interrupt.signal_queue(self.queue.index);
        }
        Ok(())
    }
}

impl VirtioDevice for Rng {
    fn name(&self) -> &str {
        &self.name
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), DeviceError> {
        let host = |what: &str, source| DeviceError::Host {
            device: self.name.clone(),
            what: what.into(),
            source,
        };
        let mut queues = activation.queues;
        let Some(queue) = queues.pop().filter(|q| q.index == 0) else {
            return Err(DeviceError::Setup {
                device: self.name.clone(),
                reason: "the request queue is not enabled".into(),
            });
        };
        let worker = QueueWorker::new(std::slice::from_ref(&queue))
            .map_err(|e| host("starting the worker", e))?;
        let work = Work {
            memory: activation.memory,
            queue,
            interrupt: activation.interrupt,
            bytes: Arc::clone(&self.bytes),
        };
        let control = worker
            .spawn(&self.name, work, |work, event| match event {
                WorkerEvent::Queue(_) => work.serve().inspect_err(|_| work.interrupt.needs_reset()),
                WorkerEvent::Host { .. } => Ok(()),
            })
            .map_err(|e| host("starting the worker", e))?;
        self.worker = Some(control);
        Ok(())
    }

    fn deactivate(&mut self) -> Result<Vec<QueueHandle>, DeviceError> {
        let Some(control) = self.worker.take() else {
            return Ok(Vec::new());
        };
        let work = control.stop().map_err(|e| DeviceError::Host {
            device: self.name.clone(),
            what: "stopping the worker".into(),
            source: e,
        })?;
        Ok(vec![work.queue])
    }

    fn save(&self) -> Vec<u8> {
        // Nothing configurable and no state beyond the queue.
        Vec::new()
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), DeviceError> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(DeviceError::Restore {
                device: self.name.clone(),
                reason: format!(
                    "{} bytes of saved state, an entropy device has none",
                    state.len()
                ),
            })
        }
    }

    fn describe(&self, out: &mut dyn std::fmt::Write) -> std::fmt::Result {
        writeln!(
            out,
            "  entropy from the host's getrandom, {} bytes served, {}",
            self.bytes.load(Ordering::Relaxed),
            if self.worker.is_some() {
                "serving"
            } else {
                "stopped"
            }
        )
    }
}

#[cfg(test)]
#[path = "rng_tests.rs"]
mod tests;
