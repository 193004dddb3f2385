//! Helpers shared by the guest-booting tests.

use std::io::Write;
use std::sync::Arc;

use parking_lot::Mutex;

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
