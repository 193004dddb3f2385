//! Random descriptor tables and available rings: the device never panics
//! or hangs, and either completes every request it was offered or marks
//! itself broken.

use proptest::prelude::*;
use virtio_queue::QueueT;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;

/// A small queue, so that random `next` indices often leave the table.
const SMALL: u16 = 16;
/// Where the random requests' headers and buffers live.
const AREA: u64 = 0x10_0000;
/// Headers every 256 bytes in the area.
const HEADERS: u64 = 64;

fn address() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0..HEADERS).prop_map(|k| AREA + k * 256),
        2 => AREA..AREA + 0x4_0000,
        1 => Just(RAM - 1),
        1 => RAM - 0x1000..RAM + 0x1000,
        1 => any::<u64>(),
        // In RAM below the area, clear of the rings (which end below
        // 0x200): a guest may aim its buffers at its own rings, but then
        // the ring contents this test checks are no longer its own.
        1 => Just(0x1000u64),
    ]
}

fn length() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(16),
        Just(32),
        Just(512),
        Just(1024),
        0..0x2000u32,
        any::<u32>(),
    ]
}

fn descriptor() -> impl Strategy<Value = Descriptor> {
    // Flags: NEXT, WRITE, INDIRECT and unknown bits.
    (address(), length(), 0..16u16, 0..SMALL + 4)
        .prop_map(|(addr, len, flags, next)| Descriptor::new(addr, len, flags, next))
}

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

fn check(
    table: &[Descriptor],
    heads: &[u16],
    offered: u16,
    headers: &[(u32, u64)],
    must_complete: bool,
) -> Result<(), TestCaseError> {
    let rig = Rig::new(64, false);
    let size = rig.image_bytes().len();
    let vq = MockSplitQueue::new(&rig.mem, SMALL);
    let mut q = rig.serve(&vq);
    for (k, &(kind, sector)) in headers.iter().enumerate() {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        rig.mem
            .write_slice(&h, GuestAddress(AREA + k as u64 * 256))
            .unwrap();
    }
    for (i, d) in table.iter().enumerate() {
        vq.desc_table()
            .store(i as u16, RawDescriptor::from(*d))
            .unwrap();
    }
    for (i, &head) in heads.iter().enumerate() {
        vq.avail().ring().ref_at(i).unwrap().store(head);
    }
    vq.avail().idx().store(offered);

    let result = q.process();
    let used = used_idx(&rig.mem);
    match result {
        Ok(()) => {
            prop_assert_eq!(rig.irq.resets(), 0);
            prop_assert_eq!(q.handle.queue.next_avail(), offered);
            prop_assert_eq!(used, offered, "every request offered is used");
            for i in 0..offered {
                let e = used_elem(&rig.mem, i % SMALL);
                prop_assert_eq!(e.id(), u32::from(heads[usize::from(i % SMALL)]));
            }
        }
        Err(e) => {
            prop_assert!(!must_complete, "well-formed chains broke the device: {}", e);
            prop_assert_eq!(rig.irq.resets(), 1);
            prop_assert!(rig.block.is_broken());
            prop_assert!(used <= offered);
        }
    }
    prop_assert_eq!(rig.image_bytes().len(), size);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_chains_complete_or_break_the_device(
        table in prop::collection::vec(descriptor(), SMALL as usize),
        heads in prop::collection::vec(0..SMALL + 2, SMALL as usize),
        offered in prop_oneof![8 => 0..=SMALL, 1 => any::<u16>()],
        headers in prop::collection::vec(header(), HEADERS as usize),
    ) {
        check(&table, &heads, offered, &headers, false)?;
    }

    #[test]
    fn well_formed_chains_with_random_headers_always_complete(
        requests in prop::collection::vec((header(), 0..4u32, any::<bool>()), 1..SMALL as usize),
    ) {
        // Header, a data buffer of random sectors in a random direction,
        // status: whatever the header says, the device answers.
        let mut table = Vec::new();
        let mut heads = Vec::new();
        let mut headers = Vec::new();
        for (k, (hdr, sectors, write)) in requests.iter().enumerate() {
            let base = AREA + k as u64 * 256;
            let data = AREA + 0x2_0000 + k as u64 * 0x1000;
            let i = table.len() as u16;
            heads.push(i);
            let next = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
            let w = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
            table.push(Descriptor::new(base, 16, next, i + 1));
            let dir = if *write { 0 } else { w };
            table.push(Descriptor::new(data, sectors * 512, next | dir, i + 2));
            table.push(Descriptor::new(base + 0x80, 1, w, 0));
            headers.push(*hdr);
        }
        table.truncate(SMALL as usize);
        heads.retain(|h| h + 2 < SMALL);
        headers.resize(HEADERS as usize, (0, 0));
        let offered = heads.len() as u16;
        heads.resize(SMALL as usize, 0);
        check(&table, &heads, offered, &headers, true)?;
    }
}
