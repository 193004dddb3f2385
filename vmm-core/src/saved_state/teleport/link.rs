//! The connection of a teleport in progress, as the machine holds it: what
//! a cancel shuts down, and the socket's reader and writer that turn a
//! silent peer and a cancel into clear errors.
//!
//! A cancel sets a flag and shuts the socket down: a write or read blocked
//! on the peer returns at once, and every later one fails without waiting,
//! so the teleport unwinds and resumes the VM promptly. The hand-over
//! (the byte that tells the target to run the VM) is sent under the same
//! lock a cancel takes: either the cancel comes first and the target never
//! runs the VM, or the hand-over does and the cancel is refused.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::TeleportError;

/// Beyond the connect timeout, how long a cancel waits for the teleport to
/// unwind (resume the VM) once the socket is shut down.
const UNWIND_GRACE: Duration = Duration::from_secs(10);

/// The teleport slot of a machine: at most one teleport at a time, and a
/// way to cancel it from another thread.
#[derive(Default)]
pub(crate) struct TeleportSlot {
    current: Mutex<Option<Arc<Link>>>,
    ended: Condvar,
}

/// How a teleport the caller waited for ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// No teleport was in progress.
    NoneInProgress,
    /// It was cancelled and has unwound (the VM is back as it was).
    Cancelled,
    /// It had handed the VM over already; it has finished (this VM is off).
    HandedOver,
}

impl TeleportSlot {
    /// Registers a teleport if `ready` agrees; refused while another one is
    /// in progress. `ready` runs under the slot's lock, so that it and
    /// [`unless_in_progress`](Self::unless_in_progress) exclude each other.
    /// The slot is free again when the returned guard is dropped.
    pub(crate) fn begin(
        &self,
        connect_timeout: Duration,
        ready: impl FnOnce() -> crate::Result<()>,
    ) -> crate::Result<LinkGuard<'_>> {
        let mut current = self.current.lock();
        if current.is_some() {
            return Err(TeleportError::InProgress.into());
        }
        ready()?;
        let link = Arc::new(Link {
            state: Mutex::new(LinkState::default()),
            connect_timeout,
        });
        *current = Some(Arc::clone(&link));
        Ok(LinkGuard { slot: self, link })
    }

    /// Runs `f` unless a teleport is in progress (then refused); no
    /// teleport begins while `f` runs.
    pub(crate) fn unless_in_progress<T>(
        &self,
        f: impl FnOnce() -> crate::Result<T>,
    ) -> crate::Result<T> {
        let current = self.current.lock();
        if current.is_some() {
            return Err(TeleportError::InProgress.into());
        }
        f()
    }

    /// Cancels the teleport in progress and waits until it has unwound.
    pub(crate) fn cancel(&self) -> Result<(), TeleportError> {
        match self.end()? {
            Ended::Cancelled => Ok(()),
            Ended::NoneInProgress => Err(TeleportError::NotInProgress),
            Ended::HandedOver => Err(TeleportError::HandedOver),
        }
    }

    /// Ends the teleport in progress, if any: cancels it unless it has
    /// handed the VM over, and waits until it has finished either way.
    pub(crate) fn end(&self) -> Result<Ended, TeleportError> {
        let mut current = self.current.lock();
        let Some(link) = current.clone() else {
            return Ok(Ended::NoneInProgress);
        };
        let handed_over = {
            let mut state = link.state.lock();
            if !state.handed_over {
                state.cancelled = true;
                if let Some(stream) = &state.stream {
                    // Wakes a blocked read or write; an error means the
                    // socket is closed already, which is as good.
                    let _ = stream.shutdown(Shutdown::Both);
                }
            }
            state.handed_over
        };
        let deadline = Instant::now() + link.connect_timeout + UNWIND_GRACE;
        while current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &link)) {
            if self.ended.wait_until(&mut current, deadline).timed_out() {
                return Err(TeleportError::StillUnwinding {
                    waited: link.connect_timeout + UNWIND_GRACE,
                });
            }
        }
        Ok(if handed_over {
            Ended::HandedOver
        } else {
            Ended::Cancelled
        })
    }
}

/// One teleport's connection and what happened to it.
pub(crate) struct Link {
    state: Mutex<LinkState>,
    connect_timeout: Duration,
}

#[derive(Default)]
struct LinkState {
    /// The socket, once connected (a clone: shutting it down shuts down
    /// every handle).
    stream: Option<TcpStream>,
    cancelled: bool,
    /// The peer went silent for longer than the stall timeout.
    stalled: bool,
    handed_over: bool,
}

impl Link {
    /// Whether the teleport was cancelled.
    pub(crate) fn cancelled(&self) -> bool {
        self.state.lock().cancelled
    }

    /// Whether the peer stalled.
    pub(crate) fn stalled(&self) -> bool {
        self.state.lock().stalled
    }

    /// Records the failure `e` of the socket: a timeout is a stall; either
    /// way the socket is shut down so that nothing waits on it again.
    fn failed(&self, e: io::Error) -> io::Error {
        let mut state = self.state.lock();
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            state.stalled = true;
        }
        if let Some(stream) = &state.stream {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if state.cancelled {
            io::Error::other(TeleportError::Cancelled)
        } else {
            e
        }
    }
}

/// A registered teleport; frees the slot (and wakes cancels waiting for
/// the teleport to end) when dropped.
pub(crate) struct LinkGuard<'a> {
    slot: &'a TeleportSlot,
    link: Arc<Link>,
}

impl LinkGuard<'_> {
    /// The link's state.
    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    /// Attaches the connected socket: from now on a cancel shuts it down.
    /// Fails if the teleport was cancelled while connecting.
    pub(crate) fn attach(&self, stream: &TcpStream) -> Result<(), TeleportError> {
        let clone = stream.try_clone().map_err(TeleportError::Socket)?;
        let mut state = self.link.state.lock();
        if state.cancelled {
            let _ = clone.shutdown(Shutdown::Both);
            return Err(TeleportError::Cancelled);
        }
        state.stream = Some(clone);
        Ok(())
    }

    /// `stream` as the teleport's socket: reads and writes fail at once
    /// after a cancel or a stall.
    pub(crate) fn link_io(&self, stream: TcpStream) -> LinkIo {
        LinkIo {
            stream,
            link: Arc::clone(&self.link),
        }
    }
}

impl Drop for LinkGuard<'_> {
    fn drop(&mut self) {
        let mut current = self.slot.current.lock();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &self.link)) {
            *current = None;
        }
        self.slot.ended.notify_all();
    }
}

/// The socket of a teleport: a write or read after a cancel fails at once,
/// one that fails shuts the socket down (so that a buffered writer's last
/// flush does not wait for the stalled peer again).
pub(crate) struct LinkIo {
    stream: TcpStream,
    link: Arc<Link>,
}

impl LinkIo {
    /// A reader/writer over `stream` that reports to no slot: the target
    /// side, which cannot be cancelled.
    pub(crate) fn unregistered(stream: TcpStream) -> io::Result<Self> {
        let link = Arc::new(Link {
            state: Mutex::new(LinkState {
                stream: Some(stream.try_clone()?),
                ..LinkState::default()
            }),
            connect_timeout: Duration::ZERO,
        });
        Ok(LinkIo { stream, link })
    }

    /// The link's state.
    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    /// A second handle on the same socket and link.
    pub(crate) fn try_clone(&self) -> io::Result<Self> {
        Ok(LinkIo {
            stream: self.stream.try_clone()?,
            link: Arc::clone(&self.link),
        })
    }

    /// Sends the hand-over `byte` unless the teleport was cancelled; once
    /// it is sent, a cancel is refused.
    pub(crate) fn hand_over(&mut self, byte: u8) -> Result<(), TeleportError> {
        let mut state = self.link.state.lock();
        if state.cancelled {
            return Err(TeleportError::Cancelled);
        }
        self.stream
            .write_all(&[byte])
            .map_err(TeleportError::NotHandedOver)?;
        state.handed_over = true;
        Ok(())
    }

    fn check(&self) -> io::Result<()> {
        if self.link.cancelled() {
            return Err(io::Error::other(TeleportError::Cancelled));
        }
        Ok(())
    }
}

impl Write for LinkIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        self.stream.write(buf).map_err(|e| self.link.failed(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.check()
    }
}

impl Read for LinkIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check()?;
        self.stream.read(buf).map_err(|e| self.link.failed(e))
    }
}

#[cfg(test)]
mod tests;
