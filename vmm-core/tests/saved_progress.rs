//! A save reports its progress in `/SSM/Save/...` statistics.

mod common;

use std::time::{Duration, Instant};

use common::{Capture, stat};
use hm_vmx::testing::kvm_available;
use vmm_core::saved_state::{AfterSave, SaveRequest};
use vmm_core::sync::vmstate::VmState;
use vmm_core::{RunOutcome, Vm, VmConfig, guests};

#[test]
fn a_save_reports_bytes_written_and_expected() {
    if !kvm_available("a_save_reports_bytes_written_and_expected") {
        return;
    }
    let serial = Capture::default();
    let mut config = VmConfig::new(16 << 20, guests::find("idle").unwrap().firmware().unwrap());
    config.serial = Box::new(serial.clone());
    let mut vm = Vm::new(config).unwrap();
    let handle = vm.handle();
    let run = std::thread::spawn(move || vm.run());
    let deadline = Instant::now() + Duration::from_secs(20);
    while handle.state() != VmState::Running || !serial.text().contains("started") {
        assert!(Instant::now() < deadline, "the guest did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let dir = tempfile::tempdir().unwrap();
    let request = SaveRequest {
        live: false,
        then: AfterSave::PowerOff,
    };
    let report = handle.save(&dir.path().join("vm.sav"), request).unwrap();
    assert_eq!(stat(&handle, "/SSM/Save/cbWritten"), report.bytes);
    // The guest's ROM and the pages it wrote: more than nothing, less than RAM.
    let expected = stat(&handle, "/SSM/Save/cbExpected");
    assert!(expected > 0 && expected < 16 << 20, "{expected}");
    assert_eq!(run.join().unwrap().unwrap(), RunOutcome::PoweredOff);
}
