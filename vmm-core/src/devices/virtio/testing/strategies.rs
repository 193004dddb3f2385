//! Proptest strategies for hostile rings: random descriptor tables
//! (`NEXT` loops, `INDIRECT`, unknown flags, indices past the table),
//! buffers in and out of guest RAM, zero and huge lengths, either
//! direction, random heads, and indices that wrap.

use proptest::prelude::*;
use virtio_queue::desc::split::Descriptor;

use super::{AREA, AREA_LEN, Buf, RAM, RING_STRIDE, RingSpec};

/// A buffer address: mostly in the area, sometimes on the rings, at the
/// end of RAM, past it, or anywhere.
pub fn address() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0..64u64).prop_map(|k| AREA + k * 256),
        2 => AREA..AREA + AREA_LEN,
        1 => 0..3 * RING_STRIDE,
        1 => Just(RAM - 1),
        1 => RAM - 0x1000..RAM + 0x1000,
        1 => any::<u64>(),
    ]
}

/// A buffer length: zero, small, typical, or huge.
pub fn length() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(16),
        Just(44),
        Just(512),
        Just(1526),
        0..0x2000u32,
        any::<u32>(),
    ]
}

/// A descriptor of a table of `size` entries: any flags (`NEXT`,
/// `WRITE`, `INDIRECT`, unknown bits), `next` sometimes past the table.
pub fn descriptor(size: u16) -> impl Strategy<Value = Descriptor> {
    (address(), length(), 0..16u16, 0..size + 4)
        .prop_map(|(addr, len, flags, next)| Descriptor::new(addr, len, flags, next))
}

/// A starting index: 0, just before the wrap, or anywhere.
pub fn start() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(0u16),
        (1..=32u16).prop_map(|k| 0u16.wrapping_sub(k)),
        any::<u16>()
    ]
}

/// Anything a driver could leave in one queue (up to 2^`max_log2`
/// entries).
pub fn ring(max_log2: u8) -> impl Strategy<Value = RingSpec> {
    (0..=max_log2).prop_flat_map(|size_log2| {
        let size = 1u16 << size_log2;
        (
            prop::collection::vec(descriptor(size), 0..=usize::from(size)),
            prop::collection::vec(0..size + 2, usize::from(size)),
            start(),
            prop_oneof![8 => 0..=size, 1 => any::<u16>()],
            any::<bool>(),
        )
            .prop_map(move |(table, heads, start, offered, event_idx)| RingSpec {
                size_log2,
                table,
                heads,
                start,
                offered,
                event_idx,
            })
    })
}

/// Well-formed chains of up to `max_bufs` buffers in the area, in random
/// directions and with random lengths, on a ring of 16 entries.
pub fn well_formed(max_bufs: usize) -> impl Strategy<Value = RingSpec> {
    let buf = (0..AREA_LEN / 0x1000, 0..0x1000u32, any::<bool>())
        .prop_map(|(page, len, w)| -> Buf { (AREA + page * 0x1000, len, w) });
    let chain = prop::collection::vec(buf, 1..=max_bufs);
    (prop::collection::vec(chain, 0..16), start()).prop_map(|(chains, start)| RingSpec {
        start,
        ..RingSpec::chains(4, &chains)
    })
}

/// Random bytes for the area: its first `len` bytes.
pub fn area(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), len)
}
