//! Random rings and requests through the shared harness
//! ([`testing::block`]): the device never panics or hangs, completes
//! every request it takes or marks itself broken, and another device
//! keeps working.

use proptest::prelude::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;

use super::super::super::testing::block::{BlockCase, run};
use super::super::super::testing::{AREA, RingSpec, strategies};

/// Request headers every 256 bytes of the area.
const HEADERS: usize = 64;

fn header() -> impl Strategy<Value = (u32, u64)> {
    (
        prop_oneof![
            Just(0u32),
            Just(1),
            Just(4),
            Just(8),
            Just(11),
            Just(13),
            any::<u32>()
        ],
        prop_oneof![Just(0u64), Just(1), Just(63), Just(64), any::<u64>()],
    )
}

/// The area with `headers` at every 256 bytes.
fn area(headers: &[(u32, u64)]) -> Vec<u8> {
    let mut area = vec![0u8; HEADERS * 256];
    for (k, &(kind, sector)) in headers.iter().enumerate() {
        area[k * 256..][..4].copy_from_slice(&kind.to_le_bytes());
        area[k * 256 + 8..][..8].copy_from_slice(&sector.to_le_bytes());
    }
    area
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_rings_complete_or_break_the_device(
        ring in strategies::ring(8),
        headers in prop::collection::vec(header(), HEADERS),
        read_only in any::<bool>(),
    ) {
        run(&BlockCase { ring, area: area(&headers), read_only });
    }

    #[test]
    fn well_formed_chains_with_random_headers_always_complete(
        requests in prop::collection::vec((header(), 0..4u32, any::<bool>()), 1..5),
        start in strategies::start(),
    ) {
        // Header, a data buffer of random sectors in a random direction,
        // status: whatever the header says, the device answers.
        let mut table = Vec::new();
        let mut headers = Vec::new();
        for (k, (hdr, sectors, write)) in requests.iter().enumerate() {
            let base = AREA + k as u64 * 256;
            let data = AREA + 0x2_0000 + k as u64 * 0x1000;
            let i = table.len() as u16;
            let (next, w) = (VRING_DESC_F_NEXT as u16, VRING_DESC_F_WRITE as u16);
            table.push(Descriptor::new(base, 16, next, i + 1));
            let dir = if *write { 0 } else { w };
            table.push(Descriptor::new(data, sectors * 512, next | dir, i + 2));
            table.push(Descriptor::new(base + 0x80, 1, w, 0));
            headers.push(*hdr);
        }
        let ring = RingSpec {
            size_log2: 4,
            heads: (0..requests.len() as u16).map(|k| 3 * k).collect(),
            table,
            start,
            offered: requests.len() as u16,
            event_idx: false,
        };
        let out = run(&BlockCase { ring, area: area(&headers), read_only: false });
        prop_assert!(!out.broken, "well-formed chains broke the device: {:?}", out);
    }
}
