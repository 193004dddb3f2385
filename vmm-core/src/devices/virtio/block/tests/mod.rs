//! Tests of the block device: a driver over `MockSplitQueue` in
//! `GuestMemoryMmap`, and a temporary image file.

mod device;
mod queue;
mod random_chains;
mod requests;

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::{Descriptor, VirtqUsedElem};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::super::{GuestRam, Interrupt, Queue, QueueHandle};
use super::queue::BlockQueue;
use super::{Block, BlockSpec};

/// The queue size the tests drive (the device's maximum).
pub const QSIZE: u16 = super::config::QUEUE_SIZE;
/// Guest RAM in the tests: 4 MiB from 0.
pub const RAM: u64 = 4 << 20;
/// Request buffers start here (the rings lie below).
const SLOTS: u64 = 0x10_0000;
/// The used ring. `MockSplitQueue` puts it right after the available
/// ring's first `size` bytes (not `2 * size`), over the ring's second half,
/// so the tests move it out of the way.
pub const USED: u64 = 0x8_0000;
/// Each request slot: header at +0, status at +0x10, range list at
/// +0x100, data from +0x1000.
const SLOT_LEN: u64 = 0x2_0000;

/// An `Interrupt` that counts what the device asked for.
#[derive(Default)]
pub struct Recorder {
    pub signals: AtomicUsize,
    pub resets: AtomicUsize,
}

impl Interrupt for Recorder {
    fn signal_queue(&self, queue: u16) {
        assert_eq!(queue, 0);
        self.signals.fetch_add(1, Ordering::SeqCst);
    }
    fn signal_config(&self) {}
    fn needs_reset(&self) {
        self.resets.fetch_add(1, Ordering::SeqCst);
    }
}

impl Recorder {
    pub fn resets(&self) -> usize {
        self.resets.load(Ordering::SeqCst)
    }
    pub fn signals(&self) -> usize {
        self.signals.load(Ordering::SeqCst)
    }
}

/// A guest RAM, an image and a device.
pub struct Rig {
    pub mem: GuestRam,
    pub image: tempfile::NamedTempFile,
    pub block: Block,
    pub irq: Arc<Recorder>,
    pub stats: stam::Registry,
}

/// Bytes `seed`, `seed + 1`, ... (wrapping) of length `len`.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

impl Rig {
    /// An image of `sectors` sectors filled with `pattern(7, ..)`.
    pub fn new(sectors: u64, read_only: bool) -> Rig {
        let mut image = tempfile::NamedTempFile::new().unwrap();
        image
            .write_all(&pattern(7, (sectors * 512) as usize))
            .unwrap();
        image.flush().unwrap();
        let spec = BlockSpec {
            path: image.path().to_owned(),
            read_only,
        };
        let stats = stam::Registry::new();
        let block = Block::open(&spec, "blk0", &stats).unwrap();
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        Rig {
            mem,
            image,
            block,
            irq: Arc::new(Recorder::default()),
            stats,
        }
    }

    /// The image's bytes as they are on the host.
    pub fn image_bytes(&self) -> Vec<u8> {
        std::fs::read(self.image.path()).unwrap()
    }

    /// The device's worker state over the queue `vq` describes.
    pub fn serve(&self, vq: &MockSplitQueue<'_, GuestRam>) -> BlockQueue {
        let queue = queue_of(vq);
        let handle = QueueHandle {
            index: 0,
            queue,
            notify: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
        };
        self.block
            .queue_state(handle, self.mem.clone(), self.irq.clone())
    }

    /// A counter of `/Devices/blk0/<leaf>`.
    pub fn stat(&self, leaf: &str) -> u64 {
        let name = format!("/Devices/blk0/{leaf}");
        let snapshot = self.stats.snapshot_all("/Devices/blk0/*");
        match snapshot.samples.iter().find(|s| *s.name == *name) {
            Some(stam::SampleSnapshot {
                value: stam::Value::Counter { value },
                ..
            }) => *value,
            other => panic!("{name}: {other:?}"),
        }
    }
}

/// The queue `vq` describes, with its used ring at [`USED`].
pub fn queue_of(vq: &MockSplitQueue<'_, GuestRam>) -> Queue {
    use virtio_queue::QueueT;
    let mut queue: Queue = vq.create_queue().unwrap();
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    queue
}

/// The used ring's index.
pub fn used_idx(mem: &GuestRam) -> u16 {
    mem.read_obj(GuestAddress(USED + 2)).unwrap()
}

/// The used ring's entry at `slot` (index modulo the queue size).
pub fn used_elem(mem: &GuestRam, slot: u16) -> VirtqUsedElem {
    mem.read_obj(GuestAddress(USED + 4 + 8 * u64::from(slot)))
        .unwrap()
}

/// One descriptor as a driver writes it (`next` is filled in).
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

impl Desc {
    pub fn r(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            write: false,
        }
    }
    pub fn w(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            write: true,
        }
    }
}

/// The driver side of the queue: fills descriptors and the available
/// ring (wrapping), reads the used ring.
pub struct Driver<'a> {
    pub vq: &'a MockSplitQueue<'a, GuestRam>,
    pub mem: &'a GuestRam,
    next_desc: u16,
    pub avail: u16,
    pub used_seen: u16,
    slot: u64,
}

/// A completed request as the used ring shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub head: u16,
    pub len: u32,
}

impl<'a> Driver<'a> {
    pub fn new(vq: &'a MockSplitQueue<'a, GuestRam>, mem: &'a GuestRam) -> Driver<'a> {
        Driver {
            vq,
            mem,
            next_desc: 0,
            avail: 0,
            used_seen: 0,
            slot: 0,
        }
    }

    /// Starts both rings at index `idx` (for wrapping tests); `queue`
    /// follows.
    pub fn start_at(&mut self, idx: u16, queue: &mut BlockQueue) {
        use virtio_queue::QueueT;
        self.avail = idx;
        self.used_seen = idx;
        self.vq.avail().idx().store(idx);
        self.mem.write_obj(idx, GuestAddress(USED + 2)).unwrap();
        queue.handle.queue.set_next_avail(idx);
        queue.handle.queue.set_next_used(idx);
    }

    /// Writes `descs` as one chain (raw flags `extra` or'ed into each)
    /// and makes it available; returns its head.
    pub fn push_raw(&mut self, descs: &[(u64, u32, u16, Option<u16>)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let index = (self.next_desc + i as u16) % QSIZE;
            let last = i + 1 == descs.len();
            let next = next.unwrap_or((index + 1) % QSIZE);
            let flags = if last && !descs.is_empty() {
                flags
            } else {
                flags | VRING_DESC_F_NEXT as u16
            };
            let d = Descriptor::new(addr, len, flags, next);
            self.vq
                .desc_table()
                .store(index, RawDescriptor::from(d))
                .unwrap();
        }
        self.next_desc = (self.next_desc + descs.len() as u16) % QSIZE;
        self.offer(head);
        head
    }

    /// Puts `head` into the available ring.
    pub fn offer(&mut self, head: u16) {
        self.vq
            .avail()
            .ring()
            .ref_at(usize::from(self.avail % QSIZE))
            .unwrap()
            .store(head.to_le());
        self.avail = self.avail.wrapping_add(1);
        self.vq.avail().idx().store(self.avail);
    }

    /// Writes `descs` as one chain and makes it available.
    pub fn push(&mut self, descs: &[Desc]) -> u16 {
        let raw: Vec<_> = descs
            .iter()
            .map(|d| {
                let flags = if d.write {
                    VRING_DESC_F_WRITE as u16
                } else {
                    0
                };
                (d.addr, d.len, flags, None)
            })
            .collect();
        self.push_raw(&raw)
    }

    /// The next request slot's base address (slots are reused round robin).
    pub fn slot(&mut self) -> u64 {
        let base = SLOTS + (self.slot % ((RAM - SLOTS) / SLOT_LEN)) * SLOT_LEN;
        self.slot += 1;
        self.mem
            .write_slice(&[0xee], GuestAddress(base + 0x10))
            .unwrap();
        base
    }

    /// Writes a request header at `at`.
    pub fn header(&self, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(at)).unwrap();
    }

    /// A well-formed read of `len` bytes from `sector`; returns the slot.
    pub fn read(&mut self, sector: u64, len: u32) -> u64 {
        let s = self.slot();
        self.header(s, VIRTIO_BLK_T_IN, sector);
        self.push(&[
            Desc::r(s, 16),
            Desc::w(s + 0x1000, len),
            Desc::w(s + 0x10, 1),
        ]);
        s
    }

    /// A well-formed write of `data` at `sector`; returns the slot.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> u64 {
        let s = self.slot();
        self.header(s, VIRTIO_BLK_T_OUT, sector);
        self.mem
            .write_slice(data, GuestAddress(s + 0x1000))
            .unwrap();
        let len = data.len() as u32;
        self.push(&[
            Desc::r(s, 16),
            Desc::r(s + 0x1000, len),
            Desc::w(s + 0x10, 1),
        ]);
        s
    }

    /// A request of `kind` without data; returns the slot.
    pub fn command(&mut self, kind: u32) -> u64 {
        let s = self.slot();
        self.header(s, kind, 0);
        self.push(&[Desc::r(s, 16), Desc::w(s + 0x10, 1)]);
        s
    }

    /// A discard or write-zeroes request over `ranges` (sector, count,
    /// flags); returns the slot.
    pub fn ranges(&mut self, kind: u32, ranges: &[(u64, u32, u32)]) -> u64 {
        let s = self.slot();
        self.header(s, kind, 0);
        let mut list = Vec::new();
        for &(sector, count, flags) in ranges {
            list.extend_from_slice(&sector.to_le_bytes());
            list.extend_from_slice(&count.to_le_bytes());
            list.extend_from_slice(&flags.to_le_bytes());
        }
        self.mem
            .write_slice(&list, GuestAddress(s + 0x100))
            .unwrap();
        self.push(&[
            Desc::r(s, 16),
            Desc::r(s + 0x100, list.len() as u32),
            Desc::w(s + 0x10, 1),
        ]);
        s
    }

    /// The status byte of the request in `slot`.
    pub fn status(&self, slot: u64) -> u8 {
        self.mem.read_obj(GuestAddress(slot + 0x10)).unwrap()
    }

    /// `len` data bytes of the request in `slot`.
    pub fn data(&self, slot: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.mem
            .read_slice(&mut buf, GuestAddress(slot + 0x1000))
            .unwrap();
        buf
    }

    /// The used entries the device added since the last call.
    pub fn completed(&mut self) -> Vec<Done> {
        let used = used_idx(self.mem);
        let mut done = Vec::new();
        while self.used_seen != used {
            let e = used_elem(self.mem, self.used_seen % QSIZE);
            done.push(Done {
                head: e.id() as u16,
                len: e.len(),
            });
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        done
    }

    /// The one request completed since the last call.
    pub fn one(&mut self) -> Done {
        let done = self.completed();
        assert_eq!(done.len(), 1, "{done:?}");
        done[0]
    }
}

pub const OK: u8 = VIRTIO_BLK_S_OK as u8;
pub const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
pub const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
