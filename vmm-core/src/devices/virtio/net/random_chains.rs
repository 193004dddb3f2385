//! Random rings and host frames through the shared harness
//! ([`testing::net`](crate::devices::virtio::testing::net)): the device
//! never panics or hangs, returns every chain it takes or asks for a
//! reset, and another device keeps working.

use proptest::prelude::*;

use crate::devices::virtio::testing::net::{NetCase, run};
use crate::devices::virtio::testing::strategies::{area, ring, well_formed};

fn frames() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let len = prop_oneof![0..=12usize, 13..100usize, 1500..1600usize, Just(4096usize)];
    let frame = len.prop_flat_map(|n| prop::collection::vec(any::<u8>(), n));
    prop::collection::vec(frame, 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_rings_return_their_chains_or_break_the_device(
        rx in ring(8),
        tx in ring(8),
        area in area(0x2000),
        frames in frames(),
        mergeable in any::<bool>(),
    ) {
        run(&NetCase { rx, tx, area, frames, mergeable });
    }

    #[test]
    fn well_formed_chains_in_either_direction_never_break_the_device(
        rx in well_formed(3),
        tx in well_formed(3),
        area in area(0x2000),
        frames in frames(),
        mergeable in any::<bool>(),
    ) {
        let out = run(&NetCase { rx, tx, area, frames, mergeable });
        prop_assert!(!out.broken, "{:?}", out);
    }
}
