//! Fuzz the virtio vsock device: any receive, transmit and event rings,
//! or well-formed transmit chains carrying any packet headers and
//! payloads (to a port a host program listens on, or not). The harness
//! (`vmm_core::devices::virtio::testing::vsock`) panics if the device
//! panics, hangs, leaves a taken chain without a used entry while not
//! broken, breaks without asking for a reset, or if a second vsock device
//! stops working.

#![no_main]

mod common;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use vmm_core::devices::virtio::testing::vsock::{VsockCase, run};
use vmm_core::devices::virtio::testing::{AREA, Buf, RingSpec};
use vmm_core::devices::virtio::vsock::packet::{HDR_LEN, Header};

/// A packet header's fields (CIDs and ports as the fuzzer picks them).
#[derive(Arbitrary, Debug)]
struct Packet {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    kind: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    payload: Vec<u8>,
    /// The payload in a second descriptor.
    split: bool,
}

#[derive(Arbitrary, Debug)]
enum Transmit {
    /// Any ring over the area's bytes.
    Ring(common::Ring, Vec<u8>),
    /// Packets in well-formed chains, 4 KiB apart in the area.
    Packets(Vec<Packet>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    restored: bool,
    rx: common::Ring,
    event: common::Ring,
    tx: Transmit,
}

/// The area and the ring carrying `packets` (at most 32, payloads cut to
/// fit their 4 KiB slot).
fn packets(packets: &[Packet]) -> (Vec<u8>, RingSpec) {
    const SLOT: usize = 0x1000;
    let packets = &packets[..packets.len().min(32)];
    let mut area = vec![0u8; packets.len() * SLOT];
    let mut chains: Vec<Vec<Buf>> = Vec::new();
    for (k, p) in packets.iter().enumerate() {
        let hdr = Header {
            src_cid: p.src_cid,
            dst_cid: p.dst_cid,
            src_port: p.src_port,
            dst_port: p.dst_port,
            len: p.len,
            kind: p.kind,
            op: p.op,
            flags: p.flags,
            buf_alloc: p.buf_alloc,
            fwd_cnt: p.fwd_cnt,
        };
        let payload = &p.payload[..p.payload.len().min(SLOT - HDR_LEN)];
        let at = k * SLOT;
        area[at..at + HDR_LEN].copy_from_slice(&hdr.encode());
        area[at + HDR_LEN..][..payload.len()].copy_from_slice(payload);
        let addr = AREA + at as u64;
        let hdr_len = HDR_LEN as u32;
        chains.push(if p.split {
            vec![
                (addr, hdr_len, false),
                (addr + u64::from(hdr_len), payload.len() as u32, false),
            ]
        } else {
            vec![(addr, hdr_len + payload.len() as u32, false)]
        });
    }
    (area, RingSpec::chains(6, &chains))
}

fuzz_target!(|input: Input| {
    let (area, tx) = match &input.tx {
        Transmit::Ring(ring, area) => (area.clone(), ring.spec()),
        Transmit::Packets(list) => packets(list),
    };
    run(&VsockCase {
        rx: input.rx.spec(),
        tx,
        event: input.event.spec(),
        area,
        restored: input.restored,
    });
});
