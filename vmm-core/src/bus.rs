//! The I/O port bus: routes port accesses to devices.

use std::sync::Arc;

use parking_lot::Mutex;
use stam::{Counter, Registry, Unit};

use crate::devices::{DeviceAction, PioDevice};
use crate::error::{Error, Result};

/// A device shared between the bus and whoever else holds it.
pub type SharedPioDevice = Arc<Mutex<dyn PioDevice>>;

struct PortRange {
    base: u16,
    len: u16,
    name: &'static str,
    device: SharedPioDevice,
    reads: Counter,
    writes: Counter,
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

/// The I/O port bus of a VM. Accesses are counted per device under
/// `/IOM/Port/<device>/{Reads,Writes}` and, for ports nobody claims, under
/// `/IOM/Port/Unassigned/...`.
///
/// ```
/// use vmm_core::bus::IoBus;
/// use vmm_core::devices::{DebugExit, DeviceAction, DEBUG_EXIT_PORT};
///
/// let stats = stam::Registry::new();
/// let mut bus = IoBus::new(&stats)?;
/// bus.register(DEBUG_EXIT_PORT, 1, "debug-exit", std::sync::Arc::new(parking_lot::Mutex::new(DebugExit)))?;
/// assert_eq!(bus.write(DEBUG_EXIT_PORT, &[3]), DeviceAction::GuestExit(3));
/// assert_eq!(bus.write(0x80, &[1]), DeviceAction::Continue);
/// assert_eq!(bus.unassigned().writes, 1);
/// # Ok::<(), vmm_core::Error>(())
/// ```
pub struct IoBus {
    ranges: Vec<PortRange>,
    stats: Registry,
    unassigned_reads: Counter,
    unassigned_writes: Counter,
}

/// Registers the read and write counters of a port range.
fn port_counters(stats: &Registry, name: &str) -> Result<(Counter, Counter)> {
    let counter = |what: &str, verb: &str| {
        stats
            .counter(
                format!("/IOM/Port/{name}/{what}"),
                Unit::Occurrences,
                format!("Port {verb} handled by {name}"),
            )
            .map_err(|e| Error::Config(format!("I/O statistics for {name}: {e}")))
    };
    Ok((counter("Reads", "reads")?, counter("Writes", "writes")?))
}

impl IoBus {
    /// An empty bus counting its accesses in `stats`.
    pub fn new(stats: &Registry) -> Result<Self> {
        let (unassigned_reads, unassigned_writes) = port_counters(stats, "Unassigned")?;
        Ok(IoBus {
            ranges: Vec::new(),
            stats: stats.clone(),
            unassigned_reads,
            unassigned_writes,
        })
    }

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
        let (reads, writes) = port_counters(&self.stats, name)?;
        let at = self.ranges.partition_point(|r| r.base < base);
        let range = PortRange {
            base,
            len,
            name,
            device,
            reads,
            writes,
        };
        self.ranges.insert(at, range);
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
            Some(r) => {
                r.reads.inc();
                r.device.lock().read(port - r.base, data);
            }
            None => {
                self.unassigned_reads.inc();
                data.fill(0xff);
            }
        }
    }

    /// Dispatches an `out`; writes to unassigned ports are dropped.
    pub fn write(&self, port: u16, data: &[u8]) -> DeviceAction {
        match self.find(port) {
            Some(r) => {
                r.writes.inc();
                r.device.lock().write(port - r.base, data)
            }
            None => {
                self.unassigned_writes.inc();
                DeviceAction::Continue
            }
        }
    }

    /// Resets every device (machine reset).
    pub fn reset(&self) {
        for r in &self.ranges {
            r.device.lock().reset();
        }
    }

    /// How many accesses hit no device so far.
    pub fn unassigned(&self) -> UnassignedAccesses {
        UnassignedAccesses {
            reads: self.unassigned_reads.get(),
            writes: self.unassigned_writes.get(),
        }
    }
}
