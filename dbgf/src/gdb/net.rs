//! Where gdb connects: the address, the listener and the connection, with every wait
//! bounded or cancellable through a [`GdbCancel`].

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gdbstub::conn::{Connection, ConnectionExt};

use super::GdbServerError;

/// How often a blocked read or accept looks whether it was cancelled.
pub(super) const CANCEL_POLL: Duration = Duration::from_millis(50);
/// How long a reply may wait for gdb to take it before the session ends.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing waits for gdb's last acks and its own close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes read from the socket at once.
const READ_CHUNK: usize = 4096;

/// Where the stub listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GdbAddr {
    /// A TCP port on a loopback address (`127.0.0.1:1234`, `[::1]:1234`).
    Tcp(SocketAddr),
    /// A Unix socket path (`unix:/tmp/vm.gdb`).
    Unix(PathBuf),
}

impl FromStr for GdbAddr {
    type Err = GdbServerError;

    /// `unix:PATH`, `HOST:PORT` with a loopback host, or a bare `PORT` (127.0.0.1).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(GdbServerError::BadAddr(s.into()));
            }
            return Ok(Self::Unix(path.into()));
        }
        let addr: SocketAddr = match s.parse::<u16>() {
            Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
            Err(_) => s.parse().map_err(|_| GdbServerError::BadAddr(s.into()))?,
        };
        if !addr.ip().is_loopback() {
            return Err(GdbServerError::BadAddr(s.into()));
        }
        Ok(Self::Tcp(addr))
    }
}

/// Ends the stub's waits (for a connection, for gdb's next byte) from another thread,
/// for instance when the VM's run ended. Clones share the one flag.
#[derive(Debug, Clone, Default)]
pub struct GdbCancel(Arc<AtomicBool>);

impl GdbCancel {
    /// A flag not yet raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every wait watching this flag end within one poll interval (`CANCEL_POLL`) or so.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`GdbCancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A bound listener waiting for gdb.
#[derive(Debug)]
pub enum GdbListener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix socket (the path is removed when the listener is dropped).
    Unix(UnixListener, PathBuf),
}

impl GdbListener {
    /// Binds `addr` (a stale Unix socket file at the path is replaced).
    pub fn bind(addr: &GdbAddr) -> Result<Self, GdbServerError> {
        let listener = match addr {
            GdbAddr::Tcp(a) => Self::Tcp(TcpListener::bind(a)?),
            GdbAddr::Unix(p) => {
                match std::fs::remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
                Self::Unix(UnixListener::bind(p)?, p.clone())
            }
        };
        // Accepting polls, so that a wait for gdb can be cancelled.
        match &listener {
            Self::Tcp(l) => l.set_nonblocking(true)?,
            Self::Unix(l, _) => l.set_nonblocking(true)?,
        }
        Ok(listener)
    }

    /// The bound TCP address (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(l) => l.local_addr().ok(),
            Self::Unix(..) => None,
        }
    }

    /// Waits for gdb to connect; [`GdbServerError::Cancelled`] once `cancel` is raised.
    /// The connection's reads end when `cancel` is raised, too.
    pub fn accept(&self, cancel: &GdbCancel) -> Result<GdbConnection, GdbServerError> {
        loop {
            if let Some(conn) = self.try_accept(cancel)? {
                return Ok(conn);
            }
            std::thread::sleep(CANCEL_POLL);
        }
    }

    /// Takes a pending connection if there is one; [`GdbServerError::Cancelled`] once
    /// `cancel` is raised.
    pub fn try_accept(&self, cancel: &GdbCancel) -> Result<Option<GdbConnection>, GdbServerError> {
        if cancel.is_cancelled() {
            return Err(GdbServerError::Cancelled);
        }
        let accepted = match self {
            Self::Tcp(l) => l.accept().and_then(|(s, _)| {
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }),
            Self::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
        };
        match accepted {
            Ok(stream) => Ok(Some(GdbConnection::new(stream, cancel.clone())?)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for GdbListener {
    fn drop(&mut self) {
        if let Self::Unix(_, path) = self {
            // Best effort: the socket file is ours and useless once we stop listening.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The socket under a [`GdbConnection`].
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_nonblocking(on),
            Self::Unix(s) => s.set_nonblocking(on),
        }
    }

    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Self::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        }
    }

    fn set_timeouts(&self, read: Duration, write: Duration) -> io::Result<()> {
        match self {
            Self::Tcp(s) => {
                s.set_read_timeout(Some(read))?;
                s.set_write_timeout(Some(write))
            }
            Self::Unix(s) => {
                s.set_read_timeout(Some(read))?;
                s.set_write_timeout(Some(write))
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => Read::read(s, buf),
            Self::Unix(s) => Read::read(s, buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Self::Tcp(s) => Write::write_all(s, buf),
            Self::Unix(s) => Write::write_all(s, buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => Write::flush(s),
            Self::Unix(s) => Write::flush(s),
        }
    }
}

/// An accepted gdb connection (`Send`, so the session can run on its own thread).
///
/// Reads wait for gdb as long as it takes but end once the [`GdbCancel`] it was
/// accepted with is raised; a reply gdb does not take within 10 s ends the session.
#[derive(Debug)]
pub struct GdbConnection {
    stream: Stream,
    cancel: GdbCancel,
    buf: Box<[u8]>,
    /// `buf[pos..len]` is received and not yet consumed.
    pos: usize,
    len: usize,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "gdb closed the connection")
}

impl GdbConnection {
    fn new(stream: Stream, cancel: GdbCancel) -> io::Result<Self> {
        // An accepted socket may inherit the listener's non-blocking mode.
        stream.set_nonblocking(false)?;
        stream.set_timeouts(CANCEL_POLL, WRITE_TIMEOUT)?;
        Ok(Self {
            stream,
            cancel,
            buf: vec![0; READ_CHUNK].into_boxed_slice(),
            pos: 0,
            len: 0,
        })
    }

    /// Ends the connection gracefully: says we are done, then takes what gdb still
    /// sends (the ack of our last reply) until it closes too, for a second at most.
    /// Closing with gdb's ack unread would reset the connection under gdb.
    pub fn close(mut self) {
        if self.stream.shutdown_write().is_err() {
            return;
        }
        let deadline = std::time::Instant::now() + CLOSE_TIMEOUT;
        while std::time::Instant::now() < deadline {
            self.pos = self.len;
            if self.fill().is_err() {
                return;
            }
        }
    }

    /// Takes the next buffered byte.
    fn buffered(&mut self) -> Option<u8> {
        (self.pos < self.len).then(|| {
            self.pos += 1;
            self.buf[self.pos - 1]
        })
    }

    /// Reads what the socket has into the buffer: `Ok(false)` when nothing came.
    fn fill(&mut self) -> io::Result<bool> {
        match self.stream.read(&mut self.buf) {
            Ok(0) => Err(closed()),
            Ok(n) => {
                (self.pos, self.len) = (0, n);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

impl Connection for GdbConnection {
    type Error = io::Error;

    fn write(&mut self, byte: u8) -> io::Result<()> {
        self.stream.write_all(&[byte])
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.stream.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl ConnectionExt for GdbConnection {
    /// Waits for gdb's next byte (each read times out after `CANCEL_POLL` to look
    /// at the cancel flag).
    fn read(&mut self) -> io::Result<u8> {
        loop {
            if let Some(b) = self.buffered() {
                return Ok(b);
            }
            if self.cancel.is_cancelled() {
                return Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "the gdb stub was stopped",
                ));
            }
            self.fill()?;
        }
    }

    fn peek(&mut self) -> io::Result<Option<u8>> {
        if self.pos == self.len {
            self.stream.set_nonblocking(true)?;
            let filled = self.fill();
            self.stream.set_nonblocking(false)?;
            filled?;
        }
        Ok((self.pos < self.len).then(|| self.buf[self.pos]))
    }
}
