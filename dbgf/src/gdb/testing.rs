//! An in-memory gdb connection for tests and fuzzing (feature `testing`).

use std::io;

use gdbstub::conn::{Connection, ConnectionExt};

/// A connection whose client side is a fixed script: reads return the script's bytes,
/// then fail as a closed connection does; what the stub writes is kept, up to a limit.
///
/// ```
/// use dbgf::debugger::{stop_channel, DebugTarget, Debugger, MemTarget};
/// use dbgf::gdb::{GdbSession, testing::ScriptedConnection};
/// let (tx, rx) = stop_channel();
/// let mut vm = MemTarget::new(1, 0x1000, tx);
/// vm.write_phys(0, &[0x12, 0x34])?;
/// let mut session = GdbSession::new(vm, Debugger::new(), rx);
/// let mut conn = ScriptedConnection::new(b"$m0,2#fb");
/// assert!(session.run(&mut conn).is_err(), "the script ends without a detach");
/// assert_eq!(conn.output(), b"+$1234#ca");
/// # Ok::<(), dbgf::debugger::TargetError>(())
/// ```
#[derive(Debug)]
pub struct ScriptedConnection {
    input: Vec<u8>,
    pos: usize,
    output: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl ScriptedConnection {
    /// Output kept by default: far more than any reply to a short script.
    pub const DEFAULT_LIMIT: usize = 16 << 20;

    /// A connection over which gdb sends `input`.
    pub fn new(input: &[u8]) -> Self {
        Self::with_limit(input, Self::DEFAULT_LIMIT)
    }

    /// Like [`ScriptedConnection::new`]; writes beyond `limit` bytes fail (and
    /// [`ScriptedConnection::overflowed`] says so).
    pub fn with_limit(input: &[u8], limit: usize) -> Self {
        Self {
            input: input.to_vec(),
            pos: 0,
            output: Vec::new(),
            limit,
            overflowed: false,
        }
    }

    /// What the stub wrote.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Whether the stub tried to write more than the limit.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    fn end() -> io::Error {
        io::Error::new(io::ErrorKind::UnexpectedEof, "the script ended")
    }
}

impl Connection for ScriptedConnection {
    type Error = io::Error;

    fn write(&mut self, byte: u8) -> io::Result<()> {
        self.write_all(&[byte])
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.output.len() + buf.len() > self.limit {
            self.overflowed = true;
            return Err(io::Error::other("output limit reached"));
        }
        self.output.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ConnectionExt for ScriptedConnection {
    fn read(&mut self) -> io::Result<u8> {
        let b = self.peek()?.ok_or_else(Self::end)?;
        self.pos += 1;
        Ok(b)
    }

    /// The next byte; at the script's end an error (gdb hung up), never "nothing yet".
    fn peek(&mut self) -> io::Result<Option<u8>> {
        self.input
            .get(self.pos)
            .copied()
            .map(Some)
            .ok_or_else(Self::end)
    }
}
