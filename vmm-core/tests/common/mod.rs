//! Helpers shared by the guest-booting tests.

use std::io::Write;
use std::sync::Arc;

use parking_lot::Mutex;

#[allow(dead_code)] // not every test binary drives a virtio device
pub mod virtio;

/// A serial sink the test can read back.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `len` pseudo-random bytes from `seed` (xorshift): nothing a save could
/// compress.
#[allow(dead_code)] // for the tests that fill guest RAM
pub fn noise_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The value of a counter, gauge or callback statistic of the VM.
#[allow(dead_code)] // not every test binary reads statistics
pub fn stat(vm: &vmm_core::VmHandle, name: &str) -> u64 {
    match vm.stats().snapshot(name).get(name).map(|s| &s.value) {
        Some(
            stam::Value::Counter { value }
            | stam::Value::Gauge { value, .. }
            | stam::Value::Callback { value, .. },
        ) => *value,
        other => panic!("{name}: {other:?}"),
    }
}

/// A VM of 16 MiB running the embedded guest `name`, and its serial
/// output.
#[allow(dead_code)] // not every test binary builds its VM this way
pub fn guest_vm(name: &str) -> (vmm_core::Vm, Capture) {
    let (config, serial) = guest_config(name, 16 << 20);
    (vmm_core::Vm::new(config).expect("VM builds"), serial)
}

/// The configuration of a VM of `ram` bytes running the embedded guest
/// `name`, its serial output captured.
#[allow(dead_code)] // not every test binary builds its VM this way
pub fn guest_config(name: &str, ram: u64) -> (vmm_core::VmConfig, Capture) {
    let serial = Capture::default();
    let mut config = vmm_core::VmConfig::new(
        ram,
        vmm_core::guests::find(name).unwrap().firmware().unwrap(),
    );
    config.serial = Box::new(serial.clone());
    (config, serial)
}

/// Runs `vm` until its serial output shows `marker`, saves it with a power
/// off and returns the VM restored from that state (serial output
/// discarded).
#[allow(dead_code)] // not every test binary saves
pub fn run_save_restore(vm: vmm_core::Vm, serial: &Capture, marker: &str) -> vmm_core::Vm {
    let dir = tempfile::tempdir().unwrap();
    let path = run_and_save(vm, serial, marker, dir.path());
    vmm_core::Vm::restore(&path, Box::new(std::io::sink()), false).expect("restore")
}

/// Runs `vm` until its serial output shows `marker`, saves it into `dir`
/// with a power off, and returns the saved state's path.
#[allow(dead_code)] // not every test binary saves
pub fn run_and_save(
    mut vm: vmm_core::Vm,
    serial: &Capture,
    marker: &str,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    use std::time::{Duration, Instant};
    use vmm_core::saved_state::{AfterSave, SaveRequest};

    let handle = vm.handle();
    let run = std::thread::spawn(move || vm.run());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !serial.text().contains(marker) {
        assert!(Instant::now() < deadline, "{}", serial.text());
        std::thread::sleep(Duration::from_millis(10));
    }
    let path = dir.join("vm.sav");
    let request = SaveRequest {
        live: false,
        then: AfterSave::PowerOff,
    };
    handle.save(&path, request).expect("save");
    assert_eq!(
        run.join().unwrap().unwrap(),
        vmm_core::RunOutcome::PoweredOff
    );
    path
}

/// Polls `cond` for up to 30 s (guests run slowly on software KVM); the
/// guest's serial output is in the failure.
#[allow(dead_code)] // not every test binary waits on a guest
pub fn wait_until(what: &str, serial: &Capture, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; serial output:\n{}",
            serial.text()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The idle guest on 16 MiB running on its own thread with a balloon of
/// `bytes` it has inflated: the VM's handle, serial output and run thread.
#[allow(dead_code)] // not every test binary balloons
pub fn ballooned_idle_vm(
    bytes: u64,
) -> (
    vmm_core::VmHandle,
    Capture,
    std::thread::JoinHandle<vmm_core::Result<vmm_core::RunOutcome>>,
) {
    let (mut config, serial) = guest_config("idle", 16 << 20);
    config.balloon_bytes = bytes;
    let mut vm = vmm_core::Vm::new(config).expect("VM builds");
    let handle = vm.handle();
    let run = std::thread::spawn(move || vm.run());
    wait_until(&format!("a balloon of {bytes} bytes"), &serial, || {
        handle.balloon() == (bytes, bytes)
    });
    (handle, serial, run)
}
