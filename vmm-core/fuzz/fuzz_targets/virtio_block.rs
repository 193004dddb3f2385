//! Fuzz the virtio block device's request queue: any ring, any request
//! bytes. The harness (`vmm_core::devices::virtio::testing::block`)
//! panics if the device panics, hangs, leaves a taken request without a
//! used entry while not broken, breaks without asking for a reset, or if
//! a second block device stops working.

#![no_main]

mod common;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use vmm_core::devices::virtio::testing::block::{BlockCase, run};

#[derive(Arbitrary, Debug)]
struct Input {
    read_only: bool,
    ring: common::Ring,
    /// Request headers, data and discard ranges at the area's start.
    area: Vec<u8>,
}

fuzz_target!(|input: Input| {
    run(&BlockCase {
        ring: input.ring.spec(),
        area: input.area,
        read_only: input.read_only,
    });
});
