//! gdb remote stub over the debugger core (`gdbstub`, x86-64 with SSE, one thread per
//! vCPU).
//!
//! The VMM creates the VM with its vCPUs halted, [`GdbListener::bind`]s the address,
//! [`GdbListener::accept`]s gdb (the guest has not run a single instruction yet) and
//! hands the connection, its [`DebugTarget`], a [`Debugger`] and the [`StopListener`]
//! to [`GdbSession::run`] on a thread of its own. The guest starts when gdb says
//! `continue`/`stepi`; the VMM reports every stop through the matching
//! [`StopNotifier`](crate::debugger::StopNotifier). [`GdbSession::with_info`] makes the
//! DBGF info handlers available as `monitor info NAME ARGS`; `monitor help` lists the
//! other monitor commands (breakpoint list with hit counts, port I/O breakpoints,
//! watchpoints on guest-physical addresses).
//!
//! ```no_run
//! use dbgf::debugger::{stop_channel, Debugger, MemTarget};
//! use dbgf::gdb::{GdbAddr, GdbListener, GdbSession};
//! let (tx, rx) = stop_channel();
//! let vm = MemTarget::new(1, 0x10000, tx); // vmm-core passes its VM here
//! let listener = GdbListener::bind(&"127.0.0.1:1234".parse::<GdbAddr>()?)?;
//! let conn = listener.accept()?;             // waits for `target remote :1234`
//! let mut session = GdbSession::new(vm, Debugger::new(), rx);
//! let end = session.run(conn)?;
//! println!("gdb session ended: {end:?}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod event_loop;
mod monitor;
mod regs;
mod target;

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use gdbstub::conn::{Connection, ConnectionExt};
use gdbstub::stub::{DisconnectReason, GdbStub};

use crate::debugger::{DebugTarget, Debugger, DebuggerError, StopChannelError, StopListener};
use crate::{InfoExecutor, InfoRegistry};
pub use regs::{from_gdb, to_gdb};
pub use target::GdbTarget;

/// Where the stub listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GdbAddr {
    /// A TCP port on a loopback address (`127.0.0.1:1234`, `[::1]:1234`).
    Tcp(SocketAddr),
    /// A Unix socket path (`unix:/tmp/vm.gdb`).
    Unix(PathBuf),
}

/// Errors of the gdb stub.
#[derive(Debug, thiserror::Error)]
pub enum GdbServerError {
    /// The address does not parse or is not a loopback address.
    #[error("invalid gdb address {0:?}: expected HOST:PORT on loopback or unix:PATH")]
    BadAddr(String),
    /// Socket setup or I/O failed.
    #[error("gdb connection: {0}")]
    Io(#[from] io::Error),
    /// The debugger core failed.
    #[error(transparent)]
    Debugger(#[from] DebuggerError),
    /// The remote protocol failed (a malformed packet, an unexpected request).
    #[error("gdb protocol: {0}")]
    Protocol(String),
    /// The VM did not report a stop after a halt request, so the debugger could not
    /// remove its breakpoints.
    #[error("the VM did not halt within {0:?}")]
    HaltTimeout(Duration),
    /// The VM's stop channel closed while waiting for it to halt.
    #[error(transparent)]
    StopChannel(#[from] StopChannelError),
}

/// How long detaching waits for a running VM to halt.
const HALT_TIMEOUT: Duration = Duration::from_secs(5);

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

/// A bound listener waiting for gdb.
#[derive(Debug)]
pub enum GdbListener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix socket (the path is removed when the listener is dropped).
    Unix(UnixListener, PathBuf),
}

/// An accepted gdb connection (`Send`, so the session can run on its own thread).
#[derive(Debug)]
pub enum GdbConnection {
    /// TCP.
    Tcp(TcpStream),
    /// Unix socket.
    Unix(UnixStream),
}

impl Connection for GdbConnection {
    type Error = io::Error;

    fn write(&mut self, byte: u8) -> io::Result<()> {
        match self {
            Self::Tcp(s) => Connection::write(s, byte),
            Self::Unix(s) => Connection::write(s, byte),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Self::Tcp(s) => Connection::write_all(s, buf),
            Self::Unix(s) => Connection::write_all(s, buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => Connection::flush(s),
            Self::Unix(s) => Connection::flush(s),
        }
    }

    fn on_session_start(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.on_session_start(),
            Self::Unix(s) => s.on_session_start(),
        }
    }
}

impl ConnectionExt for GdbConnection {
    fn read(&mut self) -> io::Result<u8> {
        match self {
            Self::Tcp(s) => ConnectionExt::read(s),
            Self::Unix(s) => ConnectionExt::read(s),
        }
    }

    fn peek(&mut self) -> io::Result<Option<u8>> {
        match self {
            Self::Tcp(s) => ConnectionExt::peek(s),
            Self::Unix(s) => ConnectionExt::peek(s),
        }
    }
}

impl GdbListener {
    /// Binds `addr` (a stale Unix socket file at the path is replaced).
    pub fn bind(addr: &GdbAddr) -> Result<Self, GdbServerError> {
        match addr {
            GdbAddr::Tcp(a) => Ok(Self::Tcp(TcpListener::bind(a)?)),
            GdbAddr::Unix(p) => {
                match std::fs::remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
                Ok(Self::Unix(UnixListener::bind(p)?, p.clone()))
            }
        }
    }

    /// The bound TCP address (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(l) => l.local_addr().ok(),
            Self::Unix(..) => None,
        }
    }

    /// Waits for gdb to connect.
    pub fn accept(&self) -> Result<GdbConnection, GdbServerError> {
        Ok(match self {
            Self::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                GdbConnection::Tcp(s)
            }
            Self::Unix(l, _) => GdbConnection::Unix(l.accept()?.0),
        })
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

/// How a gdb session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// gdb detached (or went away); breakpoints are removed and the VM is running.
    Detached,
    /// gdb asked to kill the VM; breakpoints are removed, the VM is still halted and the
    /// caller powers it off.
    Killed,
    /// The VM powered off.
    PoweredOff,
}

/// One gdb session over a target.
#[derive(Debug)]
pub struct GdbSession<T: DebugTarget> {
    inner: GdbTarget<T>,
}

impl<T: DebugTarget> GdbSession<T> {
    /// Wraps the target, the debugger core and the stop listener of the VM.
    pub fn new(target: T, debugger: Debugger, stops: StopListener) -> Self {
        Self {
            inner: GdbTarget::new(target, debugger, stops),
        }
    }

    /// Makes the DBGF info handlers available as `monitor info NAME ARGS`, run through
    /// `executor` (which puts EMT-bound handlers on their EMT).
    pub fn with_info(mut self, info: InfoRegistry, executor: Box<dyn InfoExecutor + Send>) -> Self {
        self.inner.info = Some((info, executor));
        self
    }

    /// Serves gdb on `conn` until it detaches, kills the VM or the VM powers off.
    ///
    /// If gdb vanishes or the protocol fails, the debugger detaches (no `int3` stays in
    /// the guest, the VM runs on) and the error is returned.
    pub fn run<C>(&mut self, conn: C) -> Result<SessionEnd, GdbServerError>
    where
        C: ConnectionExt<Error = io::Error>,
    {
        let result =
            GdbStub::new(conn).run_blocking::<event_loop::StopOrData<T, C>>(&mut self.inner);
        let end = match result {
            Ok(DisconnectReason::Disconnect) => SessionEnd::Detached,
            Ok(DisconnectReason::Kill) => {
                // The VM stays halted for the caller to power off, without our int3s.
                let t = &mut self.inner;
                t.dbg.remove_all(&mut t.target)?;
                t.forget_breakpoints();
                return Ok(SessionEnd::Killed);
            }
            Ok(DisconnectReason::TargetExited(_) | DisconnectReason::TargetTerminated(_)) => {
                return Ok(SessionEnd::PoweredOff);
            }
            Err(e) => {
                self.detach()?;
                let msg = e.to_string();
                return Err(if e.is_target_error() {
                    e.into_target_error()
                        .map_or(GdbServerError::Protocol(msg), GdbServerError::Debugger)
                } else if e.is_connection_error() {
                    e.into_connection_error()
                        .map_or(GdbServerError::Protocol(msg), |(io, _)| {
                            GdbServerError::Io(io)
                        })
                } else {
                    GdbServerError::Protocol(msg)
                });
            }
        };
        self.detach()?;
        Ok(end)
    }

    /// Halts a running VM (breakpoints are only touched while it is halted), then
    /// removes every breakpoint and lets it run.
    fn detach(&mut self) -> Result<(), GdbServerError> {
        let t = &mut self.inner;
        if t.dbg.is_running() {
            t.dbg.halt(&mut t.target)?;
            let deadline = Instant::now() + HALT_TIMEOUT;
            while t.dbg.is_running() {
                let left = deadline.saturating_duration_since(Instant::now());
                let Some(raw) = t.stops.recv_timeout(left)? else {
                    return Err(GdbServerError::HaltTimeout(HALT_TIMEOUT));
                };
                t.dbg.handle_stop(&mut t.target, raw)?;
            }
        }
        t.dbg.detach(&mut t.target)?;
        t.forget_breakpoints();
        Ok(())
    }

    /// The debugger core (breakpoints and their hit counts).
    pub fn debugger(&self) -> &Debugger {
        &self.inner.dbg
    }

    /// Gives back the target, the debugger and the stop listener.
    pub fn into_parts(self) -> (T, Debugger, StopListener) {
        (self.inner.target, self.inner.dbg, self.inner.stops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_loopback_is_enforced() {
        assert_eq!(
            "1234".parse::<GdbAddr>().unwrap(),
            GdbAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 1234)))
        );
        assert!(matches!("[::1]:9".parse::<GdbAddr>(), Ok(GdbAddr::Tcp(_))));
        assert_eq!(
            "unix:/tmp/x".parse::<GdbAddr>().unwrap(),
            GdbAddr::Unix("/tmp/x".into())
        );
        for bad in ["0.0.0.0:1234", "10.0.0.1:1", "unix:", "nonsense", ""] {
            assert!(bad.parse::<GdbAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tids_map_to_cpus() {
        for cpu in [0, 1, 7] {
            assert_eq!(target::tid_to_cpu(target::cpu_to_tid(cpu)), cpu);
        }
    }
}
