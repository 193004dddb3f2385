//! Fuzz the virtio network device's receive and transmit queues: any
//! rings, any frames from the host. The harness
//! (`vmm_core::devices::virtio::testing::net`) panics if the device
//! panics, hangs, leaves a taken chain without a used entry while not
//! broken, breaks without asking for a reset, or if a second network
//! device stops working.

#![no_main]

mod common;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use vmm_core::devices::virtio::testing::net::{NetCase, run};

#[derive(Arbitrary, Debug)]
struct Input {
    rx: common::Ring,
    tx: common::Ring,
    /// Frames the host sends the guest, virtio-net header included.
    frames: Vec<Vec<u8>>,
    /// Transmitted frames' bytes at the area's start.
    area: Vec<u8>,
    /// Whether the driver accepted `VIRTIO_NET_F_MRG_RXBUF`.
    mergeable: bool,
}

fuzz_target!(|input: Input| {
    run(&NetCase {
        rx: input.rx.spec(),
        tx: input.tx.spec(),
        area: input.area,
        frames: input.frames,
        mergeable: input.mergeable,
    });
});
