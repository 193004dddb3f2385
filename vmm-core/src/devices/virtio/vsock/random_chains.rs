//! Random rings, and random packet headers in well-formed rings, through
//! the shared harness
//! ([`testing::vsock`](crate::devices::virtio::testing::vsock)): the
//! device never panics or hangs, returns every chain it takes or asks for
//! a reset, and another device keeps working.

use proptest::prelude::*;

use super::packet::{HDR_LEN, HOST_CID, Header, TYPE_STREAM};
use crate::devices::virtio::testing::strategies::{area, ring};
use crate::devices::virtio::testing::vsock::{GUEST_CID, LISTENING_PORT, VsockCase, run};
use crate::devices::virtio::testing::{AREA, Buf, RingSpec};

/// Each packet's slot in the area.
const SLOT: u64 = 0x1000;

fn header() -> impl Strategy<Value = Header> {
    let cid = |usual: u64| prop_oneof![4 => Just(usual), 1 => any::<u64>()];
    let port = prop_oneof![
        Just(LISTENING_PORT),
        Just(5000u32),
        Just(5001),
        any::<u32>()
    ];
    let small = prop_oneof![Just(0u32), 1..64u32, Just(0x4_0000), any::<u32>()];
    (
        (cid(GUEST_CID), cid(HOST_CID), port.clone(), port),
        (
            small.clone(),
            prop_oneof![4 => Just(TYPE_STREAM), 1 => any::<u16>()],
        ),
        (prop_oneof![8 => 0..9u16, 1 => any::<u16>()], 0..4u32),
        (small.clone(), small),
    )
        .prop_map(
            |(
                (src_cid, dst_cid, src_port, dst_port),
                (len, kind),
                (op, flags),
                (buf_alloc, fwd_cnt),
            )| Header {
                src_cid,
                dst_cid,
                src_port,
                dst_port,
                len,
                kind,
                op,
                flags,
                buf_alloc,
                fwd_cnt,
            },
        )
}

/// Packets: a header and payload bytes (which may disagree with its
/// `len`), each sent in one buffer or split after the header.
fn packets() -> impl Strategy<Value = Vec<(Header, Vec<u8>, bool)>> {
    let payload = prop_oneof![Just(0usize), 1..64usize, 1000..1100usize]
        .prop_flat_map(|n| prop::collection::vec(any::<u8>(), n));
    prop::collection::vec((header(), payload, any::<bool>()), 1..16)
}

/// The area and the transmit ring carrying `packets`.
fn transmit(packets: &[(Header, Vec<u8>, bool)]) -> (Vec<u8>, RingSpec) {
    let mut area = vec![0u8; packets.len() * SLOT as usize];
    let mut chains: Vec<Vec<Buf>> = Vec::new();
    for (k, (hdr, payload, split)) in packets.iter().enumerate() {
        let at = k * SLOT as usize;
        area[at..at + HDR_LEN].copy_from_slice(&hdr.encode());
        area[at + HDR_LEN..][..payload.len()].copy_from_slice(payload);
        let addr = AREA + at as u64;
        let total = (HDR_LEN + payload.len()) as u32;
        chains.push(if *split {
            vec![
                (addr, HDR_LEN as u32, false),
                (addr + HDR_LEN as u64, total - HDR_LEN as u32, false),
            ]
        } else {
            vec![(addr, total, false)]
        });
    }
    (area, RingSpec::chains(5, &chains))
}

/// `n` receive buffers of 4 KiB past the transmitted packets.
fn receive(n: usize) -> RingSpec {
    let base = AREA + 16 * SLOT;
    let chains: Vec<Vec<Buf>> = (0..n as u64)
        .map(|k| vec![(base + k * SLOT, SLOT as u32, true)])
        .collect();
    RingSpec::chains(5, &chains)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_rings_return_their_chains_or_break_the_device(
        rx in ring(8),
        tx in ring(8),
        event in ring(4),
        area in area(0x2000),
        restored in any::<bool>(),
    ) {
        run(&VsockCase { rx, tx, event, area, restored });
    }

    #[test]
    fn random_packets_in_well_formed_rings_never_break_the_device(
        packets in packets(),
        rx_bufs in 0..20usize,
        restored in any::<bool>(),
    ) {
        let (area, tx) = transmit(&packets);
        let event = RingSpec::chains(1, &[vec![(AREA + 0xf_f000, 8, true)]]);
        let case = VsockCase { rx: receive(rx_bufs), tx, event, area, restored };
        let out = run(&case);
        prop_assert!(!out.broken, "{:?}", out);
        // Every packet was taken; at most one answer per receive buffer.
        prop_assert_eq!(out.tx.used, packets.len() as u16);
        prop_assert!(out.rx.used <= rx_bufs as u16);
    }
}
