//! Teleport: a live save over TCP into a VM waiting with
//! [`Vm::incoming`](crate::Vm::incoming).
//!
//! The exchange:
//!
//! 1. the source connects and sends the saved state (live passes while its
//!    guest runs, then the final pass with the guest stopped);
//! 2. the target loads it and answers [`TELEPORT_ACK`];
//! 3. the source hands the VM over: it sends [`TELEPORT_GO`] and powers
//!    off; the target runs the VM only once that byte arrived.
//!
//! Until the hand-over the source can still resume its VM (a failure, a
//! stall, a cancel), and a target that loaded the state without being
//! handed the VM fails instead of running a second copy of it.
//!
//! Every wait on the other side is bounded: [`TeleportOptions`] says for
//! how long. A teleport in progress can be cancelled from another thread
//! ([`VmHandle::cancel_teleport`](crate::VmHandle::cancel_teleport)); the
//! source VM then runs on as before.

mod link;

pub(crate) use link::{Ended, TeleportSlot};

use std::io::{self, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use ssm::StreamReader;

use super::save::live_to;
use super::{SaveReport, manager};
use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::sync::vmstate::{VmState, VmStateError};
use link::LinkIo;

/// The byte a teleport target sends back once it loaded the state.
const TELEPORT_ACK: u8 = 0x06;
/// The byte with which the source hands the VM over to the target.
const TELEPORT_GO: u8 = 0x07;

/// How long a teleport waits for its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TeleportOptions {
    /// How long the source waits to connect to the target (default 10 s).
    pub connect_timeout: Duration,
    /// How long either side waits for the other to take or send its next
    /// bytes before giving up (default 30 s): a peer that stops reading or
    /// answering fails the teleport, and the source VM runs on.
    pub stall_timeout: Duration,
}

impl Default for TeleportOptions {
    fn default() -> Self {
        TeleportOptions {
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a teleport failed or could not be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum TeleportError {
    /// The target's address does not resolve.
    #[error("teleport target {address:?}: {reason}")]
    Address {
        /// The address given.
        address: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The source could not connect to the target.
    #[error("cannot connect to the teleport target {address}: {source}")]
    Connect {
        /// The target's address.
        address: String,
        /// Why.
        source: io::Error,
    },
    /// Setting up the socket failed.
    #[error("teleport socket: {0}")]
    Socket(io::Error),
    /// The target took no data (or gave no answer) for the stall timeout.
    #[error(
        "the teleport target took no data and sent no answer for {} s: it stalled; the VM runs on",
        timeout.as_secs_f64()
    )]
    TargetStalled {
        /// The stall timeout.
        timeout: Duration,
    },
    /// The source sent nothing for the stall timeout.
    #[error("the teleport source sent nothing for {} s: it stalled", timeout.as_secs_f64())]
    SourceStalled {
        /// The stall timeout.
        timeout: Duration,
    },
    /// The teleport was cancelled; the source VM runs on.
    #[error("the teleport was cancelled")]
    Cancelled,
    /// The peer sent something other than the protocol's next byte.
    #[error("the teleport {peer} answered {got:#04x}, which is not the teleport protocol")]
    BadAnswer {
        /// `source` or `target`.
        peer: &'static str,
        /// The byte it sent.
        got: u8,
    },
    /// The target did not confirm that it loaded the state.
    #[error("the teleport target did not confirm the state (it failed to load it?): {0}")]
    NotConfirmed(io::Error),
    /// The hand-over byte could not be sent (the target does not run the VM).
    #[error("cannot hand the VM over to the teleport target: {0}")]
    NotHandedOver(io::Error),
    /// The target loaded the state but the source never handed the VM over.
    #[error("the teleport source did not hand the VM over after the state was loaded: {0}")]
    NotReceived(io::Error),
    /// A teleport is already in progress.
    #[error("a teleport is in progress; cancel it first")]
    InProgress,
    /// A cancel found no teleport to cancel.
    #[error("no teleport is in progress")]
    NotInProgress,
    /// A cancel came after the VM was handed over to the target.
    #[error("too late to cancel the teleport: the VM was handed over to the target")]
    HandedOver,
    /// The cancelled teleport did not unwind in time.
    #[error("the cancelled teleport did not end within {} s", waited.as_secs_f64())]
    StillUnwinding {
        /// How long the cancel waited.
        waited: Duration,
    },
}

/// Teleports a running VM to the target listening at `address` (see the
/// module documentation): once the target has the VM this one powers off;
/// on any failure, a stall or a cancel it runs on.
pub(crate) fn teleport(
    machine: &Arc<Machine>,
    address: &str,
    options: &TeleportOptions,
) -> Result<SaveReport> {
    let target = address
        .to_socket_addrs()
        .map_err(|e| e.to_string())
        .and_then(|mut addrs| addrs.next().ok_or_else(|| "resolves to nothing".to_owned()))
        .map_err(|reason| TeleportError::Address {
            address: address.to_owned(),
            reason,
        })?;
    // Checked under the slot's lock: a pause cannot come in between.
    let guard = machine.teleport.begin(options.connect_timeout, || {
        let current = machine.state.state();
        if current != VmState::Running {
            return Err(VmStateError::WrongState {
                who: "teleport",
                current,
                expected: vec![VmState::Running],
            }
            .into());
        }
        Ok(())
    })?;
    let stream =
        TcpStream::connect_timeout(&target, options.connect_timeout).map_err(|source| {
            TeleportError::Connect {
                address: address.to_owned(),
                source,
            }
        })?;
    guard.attach(&stream)?;
    set_timeouts(&stream, options.stall_timeout)?;
    stream.set_nodelay(true).map_err(TeleportError::Socket)?;
    let sink = guard.link_io(stream);
    let mut answers = sink.try_clone().map_err(TeleportError::Socket)?;
    let outcome = live_to(machine, BufWriter::new(sink), |_flushed| {
        let mut ack = [0u8; 1];
        answers
            .read_exact(&mut ack)
            .map_err(TeleportError::NotConfirmed)?;
        if ack[0] != TELEPORT_ACK {
            return Err(TeleportError::BadAnswer {
                peer: "target",
                got: ack[0],
            }
            .into());
        }
        Ok(answers.hand_over(TELEPORT_GO)?)
    });
    let link = guard.link();
    match outcome {
        Ok(handed_over) => {
            machine.power_off()?;
            Ok(handed_over.end().0)
        }
        Err(e) => {
            crate::VmHandle::new(Arc::clone(machine)).resume()?;
            Err(if link.cancelled() {
                TeleportError::Cancelled.into()
            } else if link.stalled() {
                TeleportError::TargetStalled {
                    timeout: options.stall_timeout,
                }
                .into()
            } else {
                e
            })
        }
    }
}

fn set_timeouts(stream: &TcpStream, timeout: Duration) -> Result<()> {
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| TeleportError::Socket(e).into())
}

/// Waits for one teleport on `listener` and loads the state into a freshly
/// created VM; the source is told once the state is in, and the VM is
/// ready to run once the source handed it over. Waiting for the source to
/// connect has no limit (that is what the target is for); once it has
/// connected, every wait is bounded by the stall timeout.
pub(crate) fn incoming(
    machine: &Machine,
    listener: &TcpListener,
    options: &TeleportOptions,
) -> Result<ssm::LoadStats> {
    let (stream, _) = listener.accept().map_err(TeleportError::Socket)?;
    set_timeouts(&stream, options.stall_timeout)?;
    let source = LinkIo::unregistered(stream).map_err(TeleportError::Socket)?;
    let answer = source.try_clone().map_err(TeleportError::Socket)?;
    machine
        .state
        .try_transition(&[(VmState::Created, VmState::Loading)])?;
    match receive(machine, source, answer) {
        Ok(stats) => {
            machine.state.set(VmState::Suspended)?;
            Ok(stats)
        }
        Err((e, stalled)) => {
            machine.state.set(VmState::LoadFailure)?;
            Err(if stalled {
                TeleportError::SourceStalled {
                    timeout: options.stall_timeout,
                }
                .into()
            } else {
                e
            })
        }
    }
}

/// Loads the state from `source`, acknowledges it on `answer` and waits
/// for the hand-over; an error says whether the source stalled.
fn receive(
    machine: &Machine,
    source: LinkIo,
    mut answer: LinkIo,
) -> std::result::Result<ssm::LoadStats, (Error, bool)> {
    let received = (|| {
        let reader = StreamReader::buffered(source, false)?;
        let stats = manager(machine, None)?.load(reader)?;
        answer
            .write_all(&[TELEPORT_ACK])
            .map_err(TeleportError::NotConfirmed)?;
        let mut go = [0u8; 1];
        answer
            .read_exact(&mut go)
            .map_err(TeleportError::NotReceived)?;
        if go[0] != TELEPORT_GO {
            return Err(TeleportError::BadAnswer {
                peer: "source",
                got: go[0],
            }
            .into());
        }
        Ok(stats)
    })();
    received.map_err(|e: Error| (e, answer.link().stalled()))
}
