//! The order of a save that resumes the VM: the guest runs again before
//! the file is durable, and a commit that fails then fails the save while
//! the VM runs on.

use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hm_vmx::testing::kvm_available;

use super::save_and_resume;
use crate::saved_state::{AfterSave, SaveRequest};
use crate::sync::vmstate::VmState;
use crate::{Result, RunOutcome, Vm, VmConfig, VmHandle, guests};

/// A running VM of the `idle` guest and the thread that runs it.
fn running_idle_vm() -> (VmHandle, JoinHandle<Result<RunOutcome>>) {
    let firmware = guests::find("idle").unwrap().firmware().unwrap();
    let mut vm = Vm::new(VmConfig::new(16 << 20, firmware)).unwrap();
    let handle = vm.handle();
    let run = std::thread::spawn(move || vm.run());
    let deadline = Instant::now() + Duration::from_secs(20);
    while handle.state() != VmState::Running {
        assert!(Instant::now() < deadline, "the VM did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    (handle, run)
}

fn resumed(live: bool) -> SaveRequest {
    SaveRequest {
        live,
        then: AfterSave::Resume,
    }
}

/// Saves `vm` to `path`, resuming it: checks that it runs again while the
/// file is written but not yet at `path`, and returns the unsynced file.
fn save_resumed(vm: &VmHandle, path: &Path, live: bool) -> ssm::WrittenFile {
    let (report, unsynced) = save_and_resume(&vm.machine, path, resumed(live)).unwrap();
    let unsynced = unsynced.expect("a VM that runs on gets its file committed after");
    assert_eq!(vm.state(), VmState::Running);
    assert!(
        !path.exists(),
        "{} exists before the commit",
        path.display()
    );
    let len = std::fs::metadata(unsynced.temp_path()).unwrap().len();
    assert_eq!(
        len, report.bytes,
        "the last byte is written before the resume"
    );
    unsynced
}

#[test]
fn a_resumed_save_runs_the_guest_before_its_file_is_durable() {
    if !kvm_available("a_resumed_save_runs_the_guest_before_its_file_is_durable") {
        return;
    }
    let (vm, run) = running_idle_vm();
    let dir = tempfile::tempdir().unwrap();
    for live in [false, true] {
        let path = dir.path().join(format!("live-{live}.sav"));
        save_resumed(&vm, &path, live).commit().unwrap();
        crate::saved_state::verify(&path).unwrap();
    }
    // A VM that powers off does so only once its file is durable.
    let path = dir.path().join("off.sav");
    let request = SaveRequest {
        live: true,
        then: AfterSave::PowerOff,
    };
    let (_, unsynced) = save_and_resume(&vm.machine, &path, request).unwrap();
    assert!(unsynced.is_none());
    crate::saved_state::verify(&path).unwrap();
    assert_eq!(run.join().unwrap().unwrap(), RunOutcome::PoweredOff);
}

#[test]
fn a_commit_failing_after_the_resume_fails_the_save_and_the_vm_runs_on() {
    if !kvm_available("a_commit_failing_after_the_resume_fails_the_save_and_the_vm_runs_on") {
        return;
    }
    let (vm, run) = running_idle_vm();
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("saves");
    for live in [false, true] {
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("vm.sav");
        let unsynced = save_resumed(&vm, &path, live);
        // The directory goes away while the guest runs on.
        std::fs::remove_dir_all(&dir).unwrap();
        let err = unsynced.commit().unwrap_err();
        assert!(matches!(err, ssm::Error::Io(_)), "{err:?}");
        assert!(!path.exists());
        assert_eq!(vm.state(), VmState::Running);
    }
    // The VM runs on and saves again.
    let path = parent.path().join("again.sav");
    let report = vm.save(&path, resumed(true)).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), report.bytes);
    assert_eq!(vm.state(), VmState::Running);
    vm.power_off().unwrap();
    assert_eq!(run.join().unwrap().unwrap(), RunOutcome::PoweredOff);
}
