//! A device that writes guest RAM while a save stops the VM loses nothing.
//!
//! A virtio device serves the requests it already took while the vCPUs
//! stop, and a Linux guest zeroes the pages it hands to a device
//! (`init_on_alloc`). The save brings `pgm`'s page states up to date
//! before its first pass; a scan that gave all-zero pages back to the host
//! there dropped whatever a device wrote into a page between its check and
//! the discard (a disk read into a fresh page-cache page came back as
//! zeros, and the guest oopsed after the restore). Here a thread stands in
//! for the device: it zeroes pages of a region the guest does not use and
//! writes them again, round after round, through the tracked `vm-memory`
//! view, and checks each page still holds its last value before it writes
//! the next, while plain and live saves run.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::guest_config;
use hm_vmx::testing::kvm_available;
use vm_memory::{Bytes, GuestAddress};
use vmm_core::Vm;
use vmm_core::saved_state::{AfterSave, SaveRequest};
use vmm_core::sync::vmstate::VmState;

const RAM: u64 = 128 << 20;
/// The device's pages: above what the idle guest touches.
const REGION: u64 = 64 << 20;
const PAGES: u64 = 1024;
const PAGE: u64 = 4096;

/// Zeroes and rewrites the region's pages until `stop`; returns the
/// rounds done and the pages found without their last value.
fn device(ram: &pgm::phys::TrackedMemory, stop: &AtomicBool) -> (u64, Vec<String>) {
    let at = |page: u64| GuestAddress(REGION + page * PAGE);
    let mut lost = Vec::new();
    let mut round = 0u64;
    while !stop.load(Ordering::Acquire) && lost.len() < 8 {
        for page in 0..PAGES {
            let held: u64 = ram.read_obj(at(page)).unwrap();
            if held != round {
                lost.push(format!(
                    "page {page} of round {round} holds {held:#x}, not {round:#x}"
                ));
            }
            ram.write_obj(0u64, at(page)).unwrap();
        }
        round += 1;
        // The zeroed pages wait a moment for the device, as a guest's
        // freshly allocated buffers do.
        std::thread::sleep(Duration::from_millis(1));
        for page in 0..PAGES {
            ram.write_obj(round, at(page)).unwrap();
        }
        // A pause between rounds, as a device between requests: a live
        // save converges.
        std::thread::sleep(Duration::from_millis(5));
    }
    (round, lost)
}

#[test]
fn device_writes_during_plain_and_live_saves_are_kept() {
    if !kvm_available("device_writes_during_plain_and_live_saves_are_kept") {
        return;
    }
    let (config, _serial) = guest_config("idle", RAM);
    let mut vm = Vm::new(config).expect("VM builds");
    let handle = vm.handle();
    let ram = vm.memory().ram().clone();
    let dir = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let run = s.spawn(|| vm.run());
        let writer = s.spawn(|| device(&ram, &stop));
        let deadline = Instant::now() + Duration::from_secs(30);
        while handle.state() != VmState::Running {
            assert!(Instant::now() < deadline, "the VM did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        let saves = (0..16)
            .map(|i| i % 8 == 7)
            .enumerate()
            .try_for_each(|(i, live)| {
                let request = SaveRequest {
                    live,
                    then: AfterSave::Resume,
                };
                let path = dir.path().join(format!("{i}.sav"));
                handle.save(&path, request).map(drop)
            });
        stop.store(true, Ordering::Release);
        let (rounds, lost) = writer.join().unwrap();
        handle.power_off().unwrap();
        run.join().unwrap().expect("run");
        saves.expect("save");
        assert!(rounds > 0);
        assert!(lost.is_empty(), "device writes lost:\n{}", lost.join("\n"));
    });
}
