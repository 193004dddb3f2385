//! [`BlockStats`]: the counters of a block device under `/Devices/<name>/`.

use stam::{Counter, Registry, Unit};

/// A block device's counters.
#[derive(Debug, Clone)]
pub struct BlockStats {
    /// Read requests served (`VIRTIO_BLK_T_IN`).
    pub reads: Counter,
    /// Write requests served (`VIRTIO_BLK_T_OUT`).
    pub writes: Counter,
    /// Flush requests.
    pub flushes: Counter,
    /// Discard requests.
    pub discards: Counter,
    /// Write-zeroes requests.
    pub write_zeroes: Counter,
    /// Bytes read from the image into guest memory.
    pub bytes_read: Counter,
    /// Bytes written from guest memory into the image.
    pub bytes_written: Counter,
    /// Requests that ended with `VIRTIO_BLK_S_IOERR` or could not be
    /// answered at all.
    pub errors: Counter,
    /// Requests of a type the device does not serve (`VIRTIO_BLK_S_UNSUPP`).
    pub unsupported: Counter,
    /// Queue notifications from the driver.
    pub notifications: Counter,
}

impl BlockStats {
    /// Registers the counters of device `name` in `registry`.
    pub fn register(registry: &Registry, name: &str) -> Result<BlockStats, stam::Error> {
        let counter = |leaf: &str, unit, what: &str| {
            registry.counter(format!("/Devices/{name}/{leaf}"), unit, what)
        };
        Ok(BlockStats {
            reads: counter("cReads", Unit::Calls, "Read requests")?,
            writes: counter("cWrites", Unit::Calls, "Write requests")?,
            flushes: counter("cFlushes", Unit::Calls, "Flush requests")?,
            discards: counter("cDiscards", Unit::Calls, "Discard requests")?,
            write_zeroes: counter("cWriteZeroes", Unit::Calls, "Write-zeroes requests")?,
            bytes_read: counter("cbRead", Unit::Bytes, "Bytes read from the image")?,
            bytes_written: counter("cbWritten", Unit::Bytes, "Bytes written to the image")?,
            errors: counter(
                "cErrors",
                Unit::Errors,
                "Requests failed with an I/O error or left unanswered",
            )?,
            unsupported: counter(
                "cUnsupported",
                Unit::Calls,
                "Requests of a type the device does not serve",
            )?,
            notifications: counter(
                "cNotifications",
                Unit::Occurrences,
                "Queue notifications from the driver",
            )?,
        })
    }
}
