//! Test and fuzzing helpers for the virtio devices: guest RAM, driver-side
//! rings over `virtio_queue::mock`, an [`Interrupt`] that records what a
//! device signalled, and one harness per device ([`block`], [`net`],
//! [`vsock`]) that hands a device whatever rings a [`RingSpec`] describes,
//! runs its queue processing synchronously and checks what every device
//! must guarantee: it returns (within [`TIME_LIMIT`]), without a panic,
//! and either completes the chains it took or asks for a reset; and a
//! second instance of the device still works afterwards.
//!
//! Built for the crate's tests and, with the `fuzzing` feature, for the
//! fuzz targets in `vmm-core/fuzz`; not part of the VMM's API.

pub mod block;
pub mod net;
#[cfg(test)]
pub mod strategies;
pub mod vsock;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::QueueT;
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::{GuestRam, Interrupt, Queue, QueueHandle};

/// Guest RAM of the harnesses: 4 MiB from 0.
pub const RAM: u64 = 4 << 20;
/// Where the harnesses put queue `k`'s rings: `k * RING_STRIDE` (a
/// 256-entry queue needs less than 8 KiB).
pub const RING_STRIDE: u64 = 0x1_0000;
/// The rings of the second, well-behaved device instance.
pub const SPARE_RINGS: u64 = 0x8_0000;
/// Random buffers point here; [`RingSpec`] users write their bytes here.
pub const AREA: u64 = 0x10_0000;
/// The area's length.
pub const AREA_LEN: u64 = 0x10_0000;
/// The buffers of the second device instance.
pub const SPARE_BUFS: u64 = 0x30_0000;
/// How long one harness run may take before it counts as a hang.
pub const TIME_LIMIT: Duration = Duration::from_secs(20);

/// `bytes` of guest RAM at 0.
pub fn guest_ram(bytes: u64) -> GuestRam {
    GuestRam::from_ranges(&[(GuestAddress(0), bytes as usize)]).unwrap()
}

/// Runs `f` on its own thread and returns its result; panics (with
/// `f`'s own panic, or saying it hung) if `f` panics or does not return
/// within `limit`.
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(value) => {
            // It has sent its result: the join is immediate (and frees the
            // thread, which a leak checker would otherwise report).
            let _ = thread.join();
            value
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("the device did not return within {limit:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread ended without a result"),
        },
    }
}

/// One buffer of a chain: guest address, length, device-writable.
pub type Buf = (u64, u32, bool);

/// A queue as a driver, careless or hostile, may leave it.
#[derive(Debug, Clone, Default)]
pub struct RingSpec {
    /// log2 of the queue size, modulo 9 (1 to 256 entries).
    pub size_log2: u8,
    /// The descriptor table from index 0; entries past the size are
    /// ignored, missing ones are zero.
    pub table: Vec<Descriptor>,
    /// The available ring's entries from slot 0 (past the size ignored).
    pub heads: Vec<u16>,
    /// Where both ring indices start, and the device with them (near
    /// `u16::MAX` they wrap).
    pub start: u16,
    /// How many chains the driver offers: the available index is
    /// `start + offered` (more than the size is a broken ring).
    pub offered: u16,
    /// Whether `VIRTIO_RING_F_EVENT_IDX` was negotiated.
    pub event_idx: bool,
}

impl RingSpec {
    /// The queue size.
    pub fn size(&self) -> u16 {
        1 << (self.size_log2 % 9)
    }

    /// A ring of `2^size_log2` entries offering `chains`, each a
    /// well-formed chain of `bufs` at consecutive table slots (chains
    /// that do not fit the table are left out).
    pub fn chains(size_log2: u8, chains: &[Vec<Buf>]) -> RingSpec {
        let mut spec = RingSpec {
            size_log2,
            ..RingSpec::default()
        };
        for bufs in chains {
            let head = spec.table.len();
            if bufs.is_empty() || head + bufs.len() > usize::from(spec.size()) {
                break;
            }
            spec.heads.push(head as u16);
            spec.table.extend(bufs.iter().enumerate().map(|(i, b)| {
                let last = i + 1 == bufs.len();
                let flags = flags(b.2, !last);
                Descriptor::new(
                    b.0,
                    b.1,
                    flags,
                    if last { 0 } else { (head + i + 1) as u16 },
                )
            }));
        }
        spec.offered = spec.heads.len() as u16;
        spec
    }
}

fn flags(writable: bool, next: bool) -> u16 {
    let mut flags = 0;
    if writable {
        flags |= VRING_DESC_F_WRITE;
    }
    if next {
        flags |= VRING_DESC_F_NEXT;
    }
    flags as u16
}

/// A driver's view of one queue: its rings at `base` (descriptor table,
/// available ring, used ring), its buffers wherever the test puts them.
/// It keeps its own available index, wrapping around the ring.
pub struct Ring<'m> {
    mem: &'m GuestRam,
    mock: MockSplitQueue<'m, GuestRam>,
    size: u16,
    used_addr: u64,
    start: u16,
    event_idx: bool,
    next_desc: u16,
    avail: u16,
    used_seen: u16,
}

impl<'m> Ring<'m> {
    /// An empty ring of `size` entries at `base`.
    pub fn new(mem: &'m GuestRam, base: u64, size: u16) -> Self {
        let mock = MockSplitQueue::create(mem, GuestAddress(base), size);
        // The mock's used ring overlaps the end of its available ring (it
        // counts the available entries as bytes): put it after the
        // available ring's `4 + 2 * size + 2` bytes.
        let avail_end = mock.avail_addr().0 + 6 + 2 * u64::from(size);
        let used_addr = avail_end.next_multiple_of(4);
        let ring = Ring {
            mem,
            mock,
            size,
            used_addr,
            start: 0,
            event_idx: false,
            next_desc: 0,
            avail: 0,
            used_seen: 0,
        };
        ring.write(used_addr, &vec![0; 6 + 8 * usize::from(size)]);
        ring
    }

    /// The ring `spec` describes, at `base`.
    pub fn from_spec(mem: &'m GuestRam, base: u64, spec: &RingSpec) -> Self {
        let mut ring = Ring::new(mem, base, spec.size());
        ring.start_at(spec.start);
        ring.event_idx = spec.event_idx;
        for (i, d) in spec.table.iter().take(usize::from(ring.size)).enumerate() {
            ring.store(i as u16, *d);
        }
        for (slot, &head) in spec.heads.iter().take(usize::from(ring.size)).enumerate() {
            ring.set_avail_entry(slot as u16, head);
        }
        ring.set_avail_idx(spec.start.wrapping_add(spec.offered));
        ring
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Whether the queue [`Ring::queue`] makes has
    /// `VIRTIO_RING_F_EVENT_IDX` on.
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    /// Writes the driver's `used_event` (interrupt me once the used index
    /// passes it; with `VIRTIO_RING_F_EVENT_IDX`).
    pub fn set_used_event(&self, idx: u16) {
        let at = self.avail_addr() + 4 + 2 * u64::from(self.size);
        self.write(at, &idx.to_le_bytes());
    }

    /// The device's `avail_event` (notify me once the available index
    /// passes it).
    pub fn avail_event(&self) -> u16 {
        self.read_u16(self.used_addr + 4 + 8 * u64::from(self.size))
    }

    /// The available ring's guest address.
    pub fn avail_addr(&self) -> u64 {
        self.mock.avail_addr().0
    }

    /// The used ring's guest address.
    pub fn used_addr(&self) -> u64 {
        self.used_addr
    }

    /// The queue the transport would program, positioned at the ring's
    /// start.
    pub fn queue(&self) -> Queue {
        let mut queue: Queue = self.mock.create_queue().unwrap();
        queue.set_used_ring_address(Some(self.used_addr as u32), Some(0));
        queue.set_next_avail(self.start);
        queue.set_next_used(self.start);
        queue.set_event_idx(self.event_idx);
        queue
    }

    /// The queue handle the transport would give the device.
    pub fn handle(&self, index: u16) -> QueueHandle {
        QueueHandle {
            index,
            queue: self.queue(),
            notify: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
        }
    }

    /// Starts both ring indices at `idx` (call before [`Ring::queue`]).
    pub fn start_at(&mut self, idx: u16) {
        self.start = idx;
        self.avail = idx;
        self.used_seen = idx;
        self.set_avail_idx(idx);
        self.write(self.used_addr + 2, &idx.to_le_bytes());
    }

    /// Writes descriptor `index` of the table as it is.
    pub fn store(&self, index: u16, desc: Descriptor) {
        self.mock
            .desc_table()
            .store(index, RawDescriptor::from(desc))
            .unwrap();
    }

    /// Writes available ring entry `slot`.
    pub fn set_avail_entry(&self, slot: u16, head: u16) {
        let at = self.avail_addr() + 4 + 2 * u64::from(slot);
        self.write(at, &head.to_le_bytes());
    }

    /// Writes the available index.
    pub fn set_avail_idx(&self, idx: u16) {
        self.mock.avail().idx().store(idx);
    }

    /// Makes a well-formed chain of `bufs` available at the next table
    /// slots (wrapping); returns its head.
    pub fn add(&mut self, bufs: &[Buf]) -> u16 {
        let raw: Vec<_> = bufs
            .iter()
            .map(|&(addr, len, writable)| (addr, len, flags(writable, false), None))
            .collect();
        self.add_raw(&raw)
    }

    /// Writes `descs` (address, length, flags, next) as one chain at the
    /// next table slots and makes it available: every descriptor but the
    /// last gets `NEXT`, `next` defaults to the following slot. Returns
    /// the head.
    pub fn add_raw(&mut self, descs: &[(u64, u32, u16, Option<u16>)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let flags = if i + 1 == descs.len() {
                flags
            } else {
                flags | VRING_DESC_F_NEXT as u16
            };
            let next = next.unwrap_or((index + 1) % self.size);
            self.store(index, Descriptor::new(addr, len, flags, next));
        }
        self.next_desc = (head + descs.len() as u16) % self.size;
        self.offer(head);
        head
    }

    /// Puts `head` into the available ring and publishes it.
    pub fn offer(&mut self, head: u16) {
        self.set_avail_entry(self.avail % self.size, head);
        self.avail = self.avail.wrapping_add(1);
        self.set_avail_idx(self.avail);
    }

    /// The used index (how many chains the device has returned, wrapping).
    pub fn used_count(&self) -> u16 {
        self.read_u16(self.used_addr + 2)
    }

    /// The used entry at index `i` (modulo the size): head and length.
    pub fn used(&self, i: u16) -> (u32, u32) {
        let at = self.used_addr + 4 + 8 * u64::from(i % self.size);
        let e = self.read(at, 8);
        let word = |k: usize| u32::from_le_bytes([e[k], e[k + 1], e[k + 2], e[k + 3]]);
        (word(0), word(4))
    }

    /// The used entries added since the last call: head and length.
    pub fn completed(&mut self) -> Vec<(u16, u32)> {
        let mut done = Vec::new();
        while self.used_seen != self.used_count() {
            let (head, len) = self.used(self.used_seen);
            done.push((head as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        done
    }

    /// Writes `data` into guest RAM at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    /// Reads `len` bytes of guest RAM at `addr`.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0; len];
        self.mem.read_slice(&mut data, GuestAddress(addr)).unwrap();
        data
    }

    fn read_u16(&self, addr: u64) -> u16 {
        let b = self.read(addr, 2);
        u16::from_le_bytes([b[0], b[1]])
    }
}

/// How far a device got with one queue, by its own positions (not by
/// what the guest-writable rings say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Chains offered.
    pub offered: u16,
    /// Chains the device took from the available ring.
    pub taken: u16,
    /// Chains it returned in the used ring.
    pub used: u16,
}

impl Progress {
    /// The progress of `queue`, which started at `spec.start`.
    pub fn of(queue: &Queue, spec: &RingSpec) -> Progress {
        Progress {
            offered: spec.offered,
            taken: queue.next_avail().wrapping_sub(spec.start),
            used: queue.next_used().wrapping_sub(spec.start),
        }
    }

    /// Panics unless every offered chain was taken and returned.
    pub fn assert_all_used(&self, what: &str) {
        assert!(
            self.taken == self.offered && self.used == self.offered,
            "{what}: a device that is not broken left chains behind: {self:?}"
        );
    }
}

/// An interrupt that remembers the queues signalled and reset requests.
#[derive(Default)]
pub struct Recorder {
    signals: Mutex<Vec<u16>>,
    signalled: AtomicUsize,
    resets: AtomicUsize,
}

impl Recorder {
    /// A new recorder, shared.
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    /// The queues signalled since the last call.
    pub fn take_signals(&self) -> Vec<u16> {
        std::mem::take(&mut *self.signals.lock())
    }

    /// How many queue signals there were in all.
    pub fn signals(&self) -> usize {
        self.signalled.load(Ordering::SeqCst)
    }

    /// How many times the device asked for a reset.
    pub fn resets(&self) -> usize {
        self.resets.load(Ordering::SeqCst)
    }
}

impl Interrupt for Recorder {
    fn signal_queue(&self, queue: u16) {
        self.signals.lock().push(queue);
        self.signalled.fetch_add(1, Ordering::SeqCst);
    }

    fn signal_config(&self) {}

    fn needs_reset(&self) {
        self.resets.fetch_add(1, Ordering::SeqCst);
    }
}
