//! The I/O port bus: routes port accesses to devices.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::devices::{DeviceAction, PioDevice};
use crate::error::{Error, Result};

/// A device shared between the bus and whoever else holds it.
pub type SharedPioDevice = Arc<Mutex<dyn PioDevice>>;

struct PortRange {
    base: u16,
    len: u16,
    name: &'static str,
    device: SharedPioDevice,
}

impl PortRange {
    fn contains(&self, port: u16) -> bool {
        port >= self.base && u32::from(port) < u32::from(self.base) + u32::from(self.len)
    }
}

/// Counts of accesses that hit no device.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnassignedAccesses {
    /// `in` from a port no device claims (the guest read 0xff bytes).
    pub reads: u64,
    /// `out` to a port no device claims (the write was dropped).
    pub writes: u64,
}

/// The I/O port bus of a VM.
///
/// ```
/// use vmm_core::bus::IoBus;
/// use vmm_core::devices::{DebugExit, DeviceAction, DEBUG_EXIT_PORT};
///
/// let mut bus = IoBus::default();
/// bus.register(DEBUG_EXIT_PORT, 1, "debug-exit", std::sync::Arc::new(parking_lot::Mutex::new(DebugExit)))?;
/// assert_eq!(bus.write(DEBUG_EXIT_PORT, &[3]), DeviceAction::GuestExit(3));
/// assert_eq!(bus.write(0x80, &[1]), DeviceAction::Continue);
/// assert_eq!(bus.unassigned().writes, 1);
/// # Ok::<(), vmm_core::Error>(())
/// ```
#[derive(Default)]
pub struct IoBus {
    ranges: Vec<PortRange>,
    unassigned_reads: AtomicU64,
    unassigned_writes: AtomicU64,
}

impl IoBus {
    /// Attaches `device` to ports `base .. base + len`.
    pub fn register(
        &mut self,
        base: u16,
        len: u16,
        name: &'static str,
        device: SharedPioDevice,
    ) -> Result<()> {
        let end = u32::from(base) + u32::from(len);
        if len == 0 || end > 0x1_0000 {
            return Err(Error::Config(format!(
                "port range {base:#x}+{len:#x} of {name} is invalid"
            )));
        }
        if let Some(other) = self.ranges.iter().find(|r| {
            u32::from(r.base) < end && u32::from(base) < u32::from(r.base) + u32::from(r.len)
        }) {
            return Err(Error::Config(format!(
                "ports {base:#x}+{len:#x} of {name} overlap {} at {:#x}",
                other.name, other.base
            )));
        }
        let at = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(
            at,
            PortRange {
                base,
                len,
                name,
                device,
            },
        );
        Ok(())
    }

    fn find(&self, port: u16) -> Option<&PortRange> {
        let i = self.ranges.partition_point(|r| r.base <= port);
        i.checked_sub(1)
            .map(|i| &self.ranges[i])
            .filter(|r| r.contains(port))
    }

    /// Dispatches an `in`; unassigned ports read as all ones.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.find(port) {
            Some(r) => r.device.lock().read(port - r.base, data),
            None => {
                self.unassigned_reads.fetch_add(1, Ordering::Relaxed);
                data.fill(0xff);
            }
        }
    }

    /// Dispatches an `out`; writes to unassigned ports are dropped.
    pub fn write(&self, port: u16, data: &[u8]) -> DeviceAction {
        match self.find(port) {
            Some(r) => r.device.lock().write(port - r.base, data),
            None => {
                self.unassigned_writes.fetch_add(1, Ordering::Relaxed);
                DeviceAction::Continue
            }
        }
    }

    /// How many accesses hit no device so far.
    pub fn unassigned(&self) -> UnassignedAccesses {
        UnassignedAccesses {
            reads: self.unassigned_reads.load(Ordering::Relaxed),
            writes: self.unassigned_writes.load(Ordering::Relaxed),
        }
    }
}
