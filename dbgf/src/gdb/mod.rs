//! gdb remote stub over the debugger core (`gdbstub`, x86-64 with SSE, one thread per
//! vCPU).
//!
//! The VMM creates the VM with its vCPUs halted, [`GdbListener::bind`]s the address,
//! [`GdbListener::accept`]s gdb (the guest has not run a single instruction yet) and
//! hands the connection, its [`DebugTarget`], a [`Debugger`] and the [`StopListener`]
//! to [`GdbSession::serve`] on a thread of its own. The guest starts when gdb says
//! `continue`/`stepi`; the VMM reports every stop through the matching
//! [`StopNotifier`](crate::debugger::StopNotifier). When gdb detaches or goes away the
//! VM runs on and the next gdb may connect (it finds the VM halted). Every wait can be
//! ended through a [`GdbCancel`]. [`GdbSession::with_info`] makes the DBGF info
//! handlers available as `monitor info NAME ARGS`; `monitor help` lists the other
//! monitor commands (breakpoint list with hit counts, port I/O breakpoints,
//! watchpoints on guest-physical addresses).
//!
//! ```no_run
//! use dbgf::debugger::{stop_channel, Debugger, MemTarget};
//! use dbgf::gdb::{GdbAddr, GdbCancel, GdbListener, GdbSession};
//! let (tx, rx) = stop_channel();
//! let vm = MemTarget::new(1, 0x10000, tx); // vmm-core passes its VM here
//! let listener = GdbListener::bind(&"127.0.0.1:1234".parse::<GdbAddr>()?)?;
//! let cancel = GdbCancel::new();             // raised when the VM's run ends
//! let conn = listener.accept(&cancel)?;      // waits for `target remote :1234`
//! let mut session = GdbSession::new(vm, Debugger::new(), rx);
//! let end = session.serve(&listener, conn, &cancel, |one| println!("gdb session: {one:?}"))?;
//! println!("gdb stub ended: {end:?}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod event_loop;
mod guard;
mod monitor;
mod net;
mod regs;
mod target;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::io;
use std::time::{Duration, Instant};

use gdbstub::conn::ConnectionExt;
use gdbstub::stub::{DisconnectReason, GdbStub};

use crate::debugger::{
    DebugTarget, Debugger, DebuggerError, Resume, StopCause, StopChannelError, StopListener,
    StopReason,
};
use crate::{InfoExecutor, InfoRegistry};
pub use guard::MAX_MEM_READ;
use guard::{PACKET_BUFFER, PacketGuard};
pub use net::{GdbAddr, GdbCancel, GdbConnection, GdbListener};
pub use regs::{from_gdb, to_gdb};
pub use target::GdbTarget;

/// Errors of the gdb stub.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// The wait was cancelled through a [`GdbCancel`].
    #[error("the gdb stub was stopped")]
    Cancelled,
}

/// How long halting a running VM (to detach, or for a new gdb) waits for its stop.
const HALT_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// A running VM (left running by an earlier session) is halted first: gdb finds it
    /// stopped, as after `vmm run --gdb`. Packets are checked before the protocol sees
    /// them (see [`MAX_MEM_READ`]; a bad checksum is answered `-` and gdb sends the
    /// packet again). If gdb vanishes or the protocol fails, the debugger detaches (no
    /// `int3` stays in the guest, the VM runs on) and the error is returned.
    pub fn run<C>(&mut self, conn: &mut C) -> Result<SessionEnd, GdbServerError>
    where
        C: ConnectionExt<Error = io::Error>,
    {
        if !self.halt()? {
            return Ok(SessionEnd::PoweredOff);
        }
        let stub = GdbStub::builder(PacketGuard::new(conn))
            .packet_buffer_size(PACKET_BUFFER)
            .build()
            .map_err(|e| GdbServerError::Protocol(e.to_string()))?;
        let result = stub.run_blocking::<event_loop::StopOrData<T, _>>(&mut self.inner);
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

    /// Serves one gdb after another on `listener`, starting with `conn`, until gdb
    /// kills the VM ([`SessionEnd::Killed`]: the caller powers it off), the VM powers
    /// off or `cancel` is raised ([`SessionEnd::PoweredOff`]).
    ///
    /// After a detach, a disconnect or a failed session the VM runs on without
    /// breakpoints (like QEMU's stub) and the next gdb may connect; `on_end` hears how
    /// each session ended.
    pub fn serve(
        &mut self,
        listener: &GdbListener,
        mut conn: GdbConnection,
        cancel: &GdbCancel,
        mut on_end: impl FnMut(&Result<SessionEnd, GdbServerError>),
    ) -> Result<SessionEnd, GdbServerError> {
        loop {
            let end = self.run(&mut conn);
            conn.close();
            on_end(&end);
            match end {
                Ok(end @ (SessionEnd::Killed | SessionEnd::PoweredOff)) => return Ok(end),
                Err(GdbServerError::StopChannel(_)) => return Ok(SessionEnd::PoweredOff),
                Ok(SessionEnd::Detached) | Err(_) => {}
            }
            conn = match self.await_gdb(listener, cancel)? {
                Some(next) => next,
                None => return Ok(SessionEnd::PoweredOff),
            };
        }
    }

    /// Waits for the next gdb while the VM runs; `None` once the VM powered off or
    /// `cancel` was raised.
    fn await_gdb(
        &mut self,
        listener: &GdbListener,
        cancel: &GdbCancel,
    ) -> Result<Option<GdbConnection>, GdbServerError> {
        loop {
            match listener.try_accept(cancel) {
                Ok(Some(conn)) => return Ok(Some(conn)),
                Ok(None) => {}
                Err(GdbServerError::Cancelled) => return Ok(None),
                Err(e) => return Err(e),
            }
            let t = &mut self.inner;
            let raw = match t.stops.recv_timeout(net::CANCEL_POLL) {
                Ok(Some(raw)) => raw,
                Ok(None) => continue,
                Err(StopChannelError::Disconnected) => return Ok(None),
            };
            if raw.cause == StopCause::PoweredOff {
                return Ok(None);
            }
            // Nothing of gdb's is armed any more: whatever halted the VM, it runs on.
            if t.dbg.handle_stop(&mut t.target, raw)?.is_some() {
                t.dbg.resume(&mut t.target, Resume::Continue)?;
            }
        }
    }

    /// Halts a running VM and waits for its stop (breakpoints are only touched while it
    /// is halted). False when the VM powered off instead.
    fn halt(&mut self) -> Result<bool, GdbServerError> {
        let t = &mut self.inner;
        if !t.dbg.is_running() {
            return Ok(true);
        }
        t.dbg.halt(&mut t.target)?;
        let deadline = Instant::now() + HALT_TIMEOUT;
        while t.dbg.is_running() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(raw) = t.stops.recv_timeout(left)? else {
                return Err(GdbServerError::HaltTimeout(HALT_TIMEOUT));
            };
            let stop = t.dbg.handle_stop(&mut t.target, raw)?;
            if stop.is_some_and(|s| s.reason == StopReason::PoweredOff) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Halts a running VM, then removes every breakpoint and lets it run.
    fn detach(&mut self) -> Result<(), GdbServerError> {
        if !self.halt()? {
            return Ok(());
        }
        let t = &mut self.inner;
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
    use std::net::SocketAddr;

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
