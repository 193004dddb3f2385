//! Where `vmm run` sends the guest's serial output: stdout, or the file of
//! `--serial FILE`.
//!
//! The first write that fails (a full disk, a pipe whose reader went away)
//! is reported once on stderr with its reason; from then on output is
//! dropped without another try, and the guest runs on. The UART counts the
//! lost bytes in `/Devices/Serial0/cbDropped`.

use std::fs::File;
use std::io::{self, ErrorKind, Write};
use std::path::Path;

use anyhow::Context;
use vmm_core::config::SerialSink;

/// A serial sink that reports its first failure on stderr and then drops
/// everything.
pub struct SerialOutput {
    out: SerialSink,
    /// What the output goes to, for the message: `stdout` or a file name.
    name: String,
    failed: bool,
}

impl SerialOutput {
    /// Output to stdout.
    pub fn stdout() -> Self {
        Self::new(Box::new(io::stdout()), "stdout".into())
    }

    /// Output to the file at `path`, created (or truncated).
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = File::create(path)
            .with_context(|| format!("cannot create serial output file {}", path.display()))?;
        Ok(Self::new(Box::new(file), path.display().to_string()))
    }

    fn new(out: SerialSink, name: String) -> Self {
        SerialOutput {
            out,
            name,
            failed: false,
        }
    }

    /// Passes `result` on, reporting the first real failure.
    fn check<T>(&mut self, result: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &result
            && e.kind() != ErrorKind::Interrupted
        {
            self.failed = true;
            eprintln!(
                "vmm: serial output to {} failed: {e}; further output dropped",
                self.name
            );
        }
        result
    }

    fn dropped(&self) -> io::Error {
        io::Error::other(format!(
            "serial output to {} dropped after an earlier failure",
            self.name
        ))
    }
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(self.dropped());
        }
        let written = self.out.write(buf);
        self.check(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.failed {
            return Err(self.dropped());
        }
        let flushed = self.out.flush();
        self.check(flushed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails the first write as `error`, then would accept everything.
    struct FailsOnce(Option<io::Error>, Vec<u8>);

    impl Write for FailsOnce {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            match self.0.take() {
                Some(e) => Err(e),
                None => {
                    self.1.extend_from_slice(buf);
                    Ok(buf.len())
                }
            }
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn output(error: io::Error) -> SerialOutput {
        SerialOutput::new(Box::new(FailsOnce(Some(error), Vec::new())), "t".into())
    }

    #[test]
    fn after_a_failure_everything_is_dropped() {
        let mut out = output(io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(out.write(b"a").is_err());
        // The disk may have room again: output stays dropped all the same,
        // as the message said.
        let later = out.write(b"b").unwrap_err();
        assert!(later.to_string().contains("earlier failure"), "{later}");
        assert!(out.flush().is_err());
    }

    #[test]
    fn an_interrupted_write_is_not_a_failure() {
        let mut out = output(io::Error::from(ErrorKind::Interrupted));
        out.write_all(b"ok").unwrap();
        assert!(!out.failed);
    }
}
