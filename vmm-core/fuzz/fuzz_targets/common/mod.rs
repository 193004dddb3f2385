//! Fuzz input shapes shared by the virtio targets: a ring as
//! `arbitrary` decodes it from the fuzzer's bytes, turned into the
//! harness's `RingSpec` with addresses steered into guest RAM often
//! enough to reach the devices' request handling.

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use virtio_queue::desc::split::Descriptor;
use vmm_core::devices::virtio::testing::{AREA, AREA_LEN, RAM, RING_STRIDE, RingSpec};

/// Where a buffer lies.
#[derive(Arbitrary, Debug)]
pub enum Addr {
    /// In the area the target fills with bytes (offset modulo its length).
    Area(u32),
    /// On the rings themselves.
    Rings(u16),
    /// Around the end of guest RAM.
    End(u16),
    /// Anywhere.
    Raw(u64),
}

impl Addr {
    fn resolve(&self) -> u64 {
        match *self {
            Addr::Area(o) => AREA + u64::from(o) % AREA_LEN,
            Addr::Rings(o) => u64::from(o) % (3 * RING_STRIDE),
            Addr::End(o) => RAM - 0x800 + u64::from(o % 0x1000),
            Addr::Raw(a) => a,
        }
    }
}

/// One descriptor: any flags, `next` anywhere up to twice the size.
#[derive(Arbitrary, Debug)]
pub struct Desc {
    addr: Addr,
    len: u32,
    flags: u16,
    next: u16,
}

/// A ring as a hostile driver leaves it.
#[derive(Arbitrary, Debug)]
pub struct Ring {
    size_log2: u8,
    table: Vec<Desc>,
    heads: Vec<u16>,
    start: u16,
    offered: u16,
    /// Offer `offered` as it is (usually more than the ring holds), not
    /// modulo the size.
    far: bool,
    event_idx: bool,
}

impl Ring {
    /// The harness's description of this ring.
    pub fn spec(&self) -> RingSpec {
        let size_log2 = self.size_log2 % 9;
        let size = 1u16 << size_log2;
        let table = self
            .table
            .iter()
            .map(|d| Descriptor::new(d.addr.resolve(), d.len, d.flags, d.next % (2 * size)))
            .collect();
        let heads = self.heads.iter().map(|h| h % (size + 2)).collect();
        RingSpec {
            size_log2,
            table,
            heads,
            start: self.start,
            offered: if self.far {
                self.offered
            } else {
                self.offered % (size + 1)
            },
            event_idx: self.event_idx,
        }
    }
}
