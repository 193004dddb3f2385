//! A host-side driver for the virtio entropy device at 00:01.0 (the
//! project's guests have no virtio driver): its registers through MMIO
//! exits, one queue whose rings live in guest RAM.

use std::time::{Duration, Instant};

use iom::Data;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_core::devices::pci::layout::MMIO_HOLE_START;
use vmm_core::memory::GuestMemoryMap;

/// BAR 0 of 00:01.0: the first address of the 32-bit window.
pub const BAR0: u64 = MMIO_HOLE_START;
/// Entries of the queue.
const QUEUE_SIZE: u16 = 16;

pub fn mmio_write(mem: &GuestMemoryMap, gpa: u64, value: u64, len: usize) {
    mem.mmio_exit(gpa, Data::Write(&value.to_le_bytes()[..len]))
        .unwrap();
}

pub fn mmio_read(mem: &GuestMemoryMap, gpa: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    mem.mmio_exit(gpa, Data::Read(&mut b[..len])).unwrap();
    u64::from_le_bytes(b)
}

/// The queue's rings in guest RAM.
#[derive(Debug, Clone, Copy)]
pub struct RngQueue {
    pub desc_table: u64,
    pub avail: u64,
    pub used: u64,
}

impl RngQueue {
    /// Negotiates features, sets up queue 0 with its rings at `rings` (no
    /// buffer offered yet) and sets `DRIVER_OK`.
    pub fn start(mem: &GuestMemoryMap, rings: u64) -> RngQueue {
        mmio_write(mem, BAR0 + 0x14, 1 | 2, 1);
        mmio_write(mem, BAR0 + 0x08, 1, 4);
        mmio_write(mem, BAR0 + 0x0c, 1, 4); // VERSION_1
        mmio_write(mem, BAR0 + 0x14, 1 | 2 | 8, 1);
        assert_eq!(mmio_read(mem, BAR0 + 0x14, 1), 1 | 2 | 8);
        let mock = MockSplitQueue::create(mem.ram(), GuestAddress(rings), QUEUE_SIZE);
        let q = RngQueue {
            desc_table: mock.desc_table_addr().0,
            avail: mock.avail_addr().0,
            used: mock.used_addr().0,
        };
        mmio_write(mem, BAR0 + 0x16, 0, 2);
        mmio_write(mem, BAR0 + 0x18, u64::from(QUEUE_SIZE), 2);
        mmio_write(mem, BAR0 + 0x20, q.desc_table, 4);
        mmio_write(mem, BAR0 + 0x28, q.avail, 4);
        mmio_write(mem, BAR0 + 0x30, q.used, 4);
        mmio_write(mem, BAR0 + 0x1c, 1, 2);
        mmio_write(mem, BAR0 + 0x14, 1 | 2 | 8 | 4, 1);
        q
    }

    /// Offers the device-writable buffer `addr`/`len` as descriptor and
    /// avail entry `n` (the `n`-th buffer offered, from 0), as a driver
    /// does, and notifies the device through an MMIO exit.
    pub fn offer(&self, mem: &GuestMemoryMap, n: u16, addr: u64, len: u32) {
        self.make_available(mem, n, addr, len);
        self.notify(mem);
    }

    /// Notifies the device of queue 0 through an MMIO exit.
    pub fn notify(&self, mem: &GuestMemoryMap) {
        mmio_write(mem, BAR0 + 0x3000, 0, 2);
    }

    /// [`offer`](Self::offer) without the notification.
    pub fn make_available(&self, mem: &GuestMemoryMap, n: u16, addr: u64, len: u32) {
        let ram = mem.ram();
        let entry = GuestAddress(self.desc_table + 16 * u64::from(n % QUEUE_SIZE));
        ram.write_obj(addr, entry).unwrap();
        ram.write_obj(len, GuestAddress(entry.0 + 8)).unwrap();
        ram.write_obj(VRING_DESC_F_WRITE as u16, GuestAddress(entry.0 + 12))
            .unwrap();
        ram.write_obj(
            n % QUEUE_SIZE,
            GuestAddress(self.avail + 4 + 2 * u64::from(n % QUEUE_SIZE)),
        )
        .unwrap();
        ram.write_obj(n.wrapping_add(1), GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// The used ring's index in guest RAM.
    pub fn used_idx(&self, mem: &GuestMemoryMap) -> u16 {
        mem.ram().read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Waits until the device used `idx` buffers in all; `why` explains a
    /// timeout.
    pub fn wait_used(&self, mem: &GuestMemoryMap, idx: u16, why: impl Fn() -> String) {
        let start = Instant::now();
        while self.used_idx(mem) != idx {
            assert!(start.elapsed() < Duration::from_secs(5), "{}", why());
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
