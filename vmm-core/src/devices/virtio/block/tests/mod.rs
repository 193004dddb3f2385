//! Tests of the block device: a driver over the shared test [`Ring`] in
//! guest RAM, and a temporary image file.

mod device;
mod queue;
mod random_chains;
mod requests;

use std::io::Write as _;
use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use vm_memory::{Bytes, GuestAddress};

use super::super::testing::{RAM, Recorder, Ring, guest_ram};
use super::super::{GuestRam, QueueHandle};
use super::queue::BlockQueue;
use super::{Block, BlockSpec};

/// The queue size the tests drive (the device's maximum).
pub const QSIZE: u16 = super::config::QUEUE_SIZE;
/// Request buffers start here (the rings lie below).
const SLOTS: u64 = 0x10_0000;
/// Each request slot: header at +0, status at +0x10, range list at
/// +0x100, data from +0x1000.
const SLOT_LEN: u64 = 0x2_0000;

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
        let mem = guest_ram(RAM);
        Rig {
            mem,
            image,
            block,
            irq: Recorder::new(),
            stats,
        }
    }

    /// The image's bytes as they are on the host.
    pub fn image_bytes(&self) -> Vec<u8> {
        std::fs::read(self.image.path()).unwrap()
    }

    /// The device's worker state over the driver's queue.
    pub fn serve(&self, d: &Driver<'_>) -> BlockQueue {
        let handle = d.ring.handle(0);
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

/// The driver side of the queue: request slots and their buffers over
/// a [`Ring`] of [`QSIZE`] entries at 0.
pub struct Driver<'a> {
    pub ring: Ring<'a>,
    pub mem: &'a GuestRam,
    slot: u64,
}

/// A completed request as the used ring shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub head: u16,
    pub len: u32,
}

impl<'a> Driver<'a> {
    pub fn new(mem: &'a GuestRam) -> Driver<'a> {
        Driver {
            ring: Ring::new(mem, 0, QSIZE),
            mem,
            slot: 0,
        }
    }

    /// Writes `descs` as one chain (see [`Ring::add_raw`]) and makes it
    /// available; returns its head.
    pub fn push_raw(&mut self, descs: &[(u64, u32, u16, Option<u16>)]) -> u16 {
        self.ring.add_raw(descs)
    }

    /// Writes `descs` as one chain and makes it available.
    pub fn push(&mut self, descs: &[Desc]) -> u16 {
        let bufs: Vec<_> = descs.iter().map(|d| (d.addr, d.len, d.write)).collect();
        self.ring.add(&bufs)
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
        let done = self.ring.completed();
        done.into_iter()
            .map(|(head, len)| Done { head, len })
            .collect()
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
