//! Save progress as statistics (`/SSM/Save/...`), so that whoever waits for a
//! save — the `vmm save` client, a monitoring script — can follow it.

use std::io::{self, Write};

use stam::{Gauge, Registry, Unit};

/// The save-progress gauges of a VM.
pub(crate) struct SaveProgress {
    written: Gauge,
    expected: Gauge,
}

impl SaveProgress {
    /// Registers `/SSM/Save/cbWritten` and `/SSM/Save/cbExpected`.
    pub(crate) fn register(stats: &Registry) -> Result<Self, stam::Error> {
        Ok(SaveProgress {
            written: stats.gauge_u64(
                "/SSM/Save/cbWritten",
                Unit::Bytes,
                "Bytes the save in progress (or the last save) has written",
            )?,
            expected: stats.gauge_u64(
                "/SSM/Save/cbExpected",
                Unit::Bytes,
                "Bytes the save in progress is expected to write in its first pass (guest pages holding data)",
            )?,
        })
    }

    /// Starts a save expected to write about `expected` bytes into `sink`.
    pub(crate) fn track<W: Write>(&self, expected: u64, sink: W) -> Counting<'_, W> {
        self.written.set(0);
        self.expected.set(expected);
        Counting {
            sink,
            progress: self,
        }
    }
}

/// A sink that counts what goes through it into the progress gauges.
pub(crate) struct Counting<'a, W> {
    sink: W,
    progress: &'a SaveProgress,
}

impl<W> Counting<'_, W> {
    /// The wrapped sink.
    pub(crate) fn into_inner(self) -> W {
        self.sink
    }
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.sink.write(buf)?;
        self.progress.written.add(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}
