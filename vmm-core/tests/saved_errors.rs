//! Saved states that must be refused: unknown unit versions (named in the
//! error) and truncated files (refused before any VM is built).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Capture;
use hm_vmx::testing::kvm_available;
use ssm::{Header, PASS_FINAL, StreamWriter};
use vmm_core::saved_state::{AfterSave, SaveRequest};
use vmm_core::{Error, RunOutcome, Vm, VmConfig, guests};

/// A stream with a valid `vmm` unit for the counter guest (version
/// `vmm_version`) followed by `cpu` #0 in version `cpu_version`.
fn crafted(path: &Path, vmm_version: u32, cpu_version: u32) {
    let firmware = guests::find("counter").unwrap().firmware().unwrap();
    let mut w = StreamWriter::new(Vec::new(), &Header::for_this_host("test", 0)).unwrap();
    let mut u = w.begin_unit("vmm", 0, vmm_version, PASS_FINAL).unwrap();
    u.put_u64(16 << 20).unwrap();
    u.put_u32(1).unwrap();
    u.put_buf(&firmware).unwrap();
    u.end().unwrap();
    let mut u = w.begin_unit("cpu", 0, cpu_version, PASS_FINAL).unwrap();
    u.put_u32(0).unwrap();
    u.end().unwrap();
    std::fs::write(path, w.finish().unwrap()).unwrap();
}

fn restore_error(path: &Path) -> String {
    match Vm::restore(path, Box::new(std::io::sink()), false) {
        Ok(_) => panic!("{} restored", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_unit_versions_are_refused_naming_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    // The configuration unit is read before the VM is built: no KVM needed.
    let path = dir.path().join("vmm-v9.sav");
    crafted(&path, 9, 1);
    let err = restore_error(&path);
    assert!(err.contains("vmm") && err.contains("version 9"), "{err}");

    if !kvm_available("unknown_unit_versions_are_refused_naming_the_unit") {
        return;
    }
    let path = dir.path().join("cpu-v99.sav");
    crafted(&path, 1, 99);
    let err = restore_error(&path);
    assert!(err.contains("cpu") && err.contains("version 99"), "{err}");
}

#[test]
fn a_damaged_configuration_is_refused_before_a_vm_is_built_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.sav");
    crafted(&path, 1, 1);
    let mut bytes = std::fs::read(&path).unwrap();
    // The RAM size (16 MiB) turns into 16 TiB.
    let size = (16u64 << 20).to_le_bytes();
    let at = bytes.windows(8).position(|w| w == size).unwrap();
    bytes[at + 4] = 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let err = match vmm_core::saved_state::read_config(&path) {
        Ok(c) => panic!("a damaged configuration read: {} bytes of RAM", c.ram_bytes),
        Err(e) => e,
    };
    assert!(err.to_string().contains("CRC"), "{err}");
}

#[test]
fn a_truncated_file_is_refused_before_a_vm_is_built() {
    if !kvm_available("a_truncated_file_is_refused_before_a_vm_is_built") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.sav");
    let serial = Capture::default();
    let mut config = VmConfig::new(
        16 << 20,
        guests::find("counter").unwrap().firmware().unwrap(),
    );
    config.serial = Box::new(serial.clone());
    let mut vm = Vm::new(config).unwrap();
    let handle = vm.handle();
    let run = std::thread::spawn(move || vm.run());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !serial.text().contains("tick 0x0020") {
        assert!(Instant::now() < deadline, "{}", serial.text());
        std::thread::sleep(Duration::from_millis(10));
    }
    let request = SaveRequest {
        live: false,
        then: AfterSave::PowerOff,
    };
    handle.save(&path, request).unwrap();
    assert_eq!(run.join().unwrap().unwrap(), RunOutcome::PoweredOff);

    let whole = std::fs::read(&path).unwrap();
    for keep in [whole.len() / 2, whole.len() - 1] {
        let cut = dir.path().join(format!("cut-{keep}.sav"));
        std::fs::write(&cut, &whole[..keep]).unwrap();
        match Vm::restore(&cut, Box::new(std::io::sink()), false) {
            Err(Error::SavedState(e)) => {
                let text = e.to_string();
                assert!(
                    text.contains("truncated") || text.contains("offset"),
                    "{text}"
                );
            }
            Err(other) => panic!("not a saved-state error: {other}"),
            Ok(_) => panic!("a file cut at {keep} of {} bytes restored", whole.len()),
        }
    }
}

#[test]
fn failed_teleports_resume_the_vm_and_an_off_vm_cannot_be_saved() {
    if !kvm_available("failed_teleports_resume_the_vm_and_an_off_vm_cannot_be_saved") {
        return;
    }
    let serial = Capture::default();
    let mut config = VmConfig::new(
        16 << 20,
        guests::find("counter").unwrap().firmware().unwrap(),
    );
    config.serial = Box::new(serial.clone());
    let mut vm = Vm::new(config).unwrap();
    let handle = vm.handle();
    let run = std::thread::spawn(move || vm.run());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !serial.text().contains("started") {
        assert!(Instant::now() < deadline, "{}", serial.text());
        std::thread::sleep(Duration::from_millis(10));
    }
    // Nobody listens on a port this test just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = handle.teleport(&port.to_string()).unwrap_err().to_string();
    assert!(err.contains("cannot connect"), "{err}");
    assert_eq!(handle.state(), vmm_core::sync::vmstate::VmState::Running);
    handle.power_off().unwrap();
    assert_eq!(run.join().unwrap().unwrap(), RunOutcome::PoweredOff);
    let dir = tempfile::tempdir().unwrap();
    let refused = handle.save(&dir.path().join("off.sav"), SaveRequest::default());
    assert!(matches!(refused, Err(Error::State(_))), "{refused:?}");
    assert!(!dir.path().join("off.sav").exists());
}
