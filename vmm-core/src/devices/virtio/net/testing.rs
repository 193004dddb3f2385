//! Test helpers shared by the network and vsock device tests: guest RAM,
//! driver-side rings built with `virtio_queue::mock`, and an interrupt
//! that records what the device signalled.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{RawDescriptor, split::Descriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::{GuestRam, Interrupt, Queue, QueueHandle};

/// 16 MiB of guest RAM at 0.
pub fn guest_ram() -> GuestRam {
    GuestRam::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

/// A driver's view of one queue: its rings at `base` (descriptor table,
/// available and used rings), its buffers wherever the test puts them.
pub struct Ring<'m> {
    mem: &'m GuestRam,
    mock: MockSplitQueue<'m, GuestRam>,
    next_desc: u16,
}

/// One buffer of a chain: guest address, length, device-writable.
pub type Buf = (u64, u32, bool);

impl<'m> Ring<'m> {
    /// A ring of 16 entries at `base`.
    pub fn new(mem: &'m GuestRam, base: u64) -> Self {
        Ring {
            mem,
            mock: MockSplitQueue::create(mem, GuestAddress(base), 16),
            next_desc: 0,
        }
    }

    /// The queue handle the transport would give the device.
    pub fn handle(&self, index: u16) -> QueueHandle {
        QueueHandle {
            index,
            queue: self.mock.create_queue::<Queue>().unwrap(),
            notify: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
        }
    }

    /// Makes a chain of `bufs` available; returns its head index.
    pub fn add(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writable))| {
                let last = i + 1 == bufs.len();
                let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
                if !last {
                    flags |= VRING_DESC_F_NEXT;
                }
                let next = head + i as u16 + 1;
                Descriptor::new(addr, len, flags as u16, if last { 0 } else { next }).into()
            })
            .collect();
        self.add_raw(&descs);
        head
    }

    /// Makes raw descriptors available (a chain per descriptor without
    /// `NEXT`), at the next free table slots.
    pub fn add_raw(&mut self, descs: &[RawDescriptor]) {
        self.mock.add_desc_chains(descs, self.next_desc).unwrap();
        self.next_desc += descs.len() as u16;
    }

    /// How many chains the device has returned.
    pub fn used_count(&self) -> u16 {
        self.mock.used().idx().load()
    }

    /// The `i`th used entry: head index and length written.
    pub fn used(&self, i: u16) -> (u32, u32) {
        let elem = self
            .mock
            .used()
            .ring()
            .ref_at(usize::from(i))
            .unwrap()
            .load();
        (elem.id(), elem.len())
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
}

/// An interrupt that remembers the queues signalled and reset requests.
#[derive(Default)]
pub struct Recorder {
    signals: Mutex<Vec<u16>>,
    resets: AtomicUsize,
}

impl Recorder {
    /// A new recorder, shared.
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    /// The queues signalled so far (and forgets them).
    pub fn take_signals(&self) -> Vec<u16> {
        std::mem::take(&mut *self.signals.lock())
    }

    /// How many times the device asked for a reset.
    pub fn resets(&self) -> usize {
        self.resets.load(Ordering::SeqCst)
    }
}

impl Interrupt for Recorder {
    fn signal_queue(&self, queue: u16) {
        self.signals.lock().push(queue);
    }

    fn signal_config(&self) {}

    fn needs_reset(&self) {
        self.resets.fetch_add(1, Ordering::SeqCst);
    }
}
