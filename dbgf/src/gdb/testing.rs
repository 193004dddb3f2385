//! Test helpers (feature `testing`): an in-memory gdb connection for tests and
//! fuzzing, and a packet-level gdb client.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

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

/// gdb's side of a connection to the stub, packet by packet, in ack mode: for tests
/// that send what a real gdb would not (bad checksums, huge reads).
///
/// Every read gives up after the timeout given to [`GdbClient::connect`]; a reply
/// longer than [`GdbClient::REPLY_LIMIT`] is an error.
#[derive(Debug)]
pub struct GdbClient(TcpStream);

/// Frames `body` as a packet: `$body#checksum`.
pub fn framed(body: &str) -> Vec<u8> {
    let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    format!("${body}#{sum:02x}").into_bytes()
}

/// Expands gdb's run-length encoding (`X*N`: N - 29 more copies of X).
fn unrle(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut bytes = body.iter();
    while let Some(&b) = bytes.next() {
        match (b, out.last().copied(), bytes.clone().next()) {
            (b'*', Some(last), Some(&n)) => {
                bytes.next();
                out.extend(std::iter::repeat_n(last, usize::from(n.saturating_sub(29))));
            }
            _ => out.push(b),
        }
    }
    out
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl GdbClient {
    /// Far more than any reply of a working stub.
    pub const REPLY_LIMIT: usize = 64 << 10;

    /// Connects to the stub at `addr`.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Self(s))
    }

    /// Sends bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        Write::write_all(&mut self.0, bytes)
    }

    /// Reads one byte.
    pub fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8];
        self.0.read_exact(&mut b)?;
        Ok(b[0])
    }

    /// Reads one byte and checks it is `want` (an ack `+`, a NAK `-`).
    pub fn expect(&mut self, want: u8) -> io::Result<()> {
        match self.byte()? {
            b if b == want => Ok(()),
            b => Err(invalid(format!(
                "expected {:?}, got {:?}",
                char::from(want),
                char::from(b)
            ))),
        }
    }

    /// Reads one reply packet, checks and acks it, and returns its body with the
    /// run-length encoding expanded.
    pub fn reply(&mut self) -> io::Result<String> {
        self.expect(b'$')?;
        let mut body = Vec::new();
        loop {
            match self.byte()? {
                b'#' => break,
                b => body.push(b),
            }
            if body.len() > Self::REPLY_LIMIT {
                return Err(invalid(format!(
                    "a reply longer than {} bytes",
                    Self::REPLY_LIMIT
                )));
            }
        }
        let sum = [self.byte()?, self.byte()?];
        let want = format!("{:02x}", body.iter().fold(0u8, |a, b| a.wrapping_add(*b)));
        if sum != want.as_bytes() {
            return Err(invalid(format!("reply checksum {sum:?}, expected {want}")));
        }
        self.send_raw(b"+")?;
        String::from_utf8(unrle(&body)).map_err(|e| invalid(e.to_string()))
    }

    /// Sends `body` as a packet, expects its ack and returns the reply.
    pub fn ask(&mut self, body: &str) -> io::Result<String> {
        self.send_raw(&framed(body))?;
        self.expect(b'+')?;
        self.reply()
    }

    /// Sends `body` as a packet and expects its ack alone (`k`, `vCont;c`).
    pub fn tell(&mut self, body: &str) -> io::Result<()> {
        self.send_raw(&framed(body))?;
        self.expect(b'+')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_length_encoding_expands() {
        assert_eq!(unrle(b"0* 1"), b"00001");
        assert_eq!(unrle(b"*"), b"*");
        assert_eq!(unrle(b"ab"), b"ab");
    }
}
