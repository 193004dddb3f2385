//! The blocking event loop: wait for "the VM stopped" or "gdb sent a byte".

use std::marker::PhantomData;
use std::time::Duration;

use gdbstub::conn::{Connection, ConnectionExt};
use gdbstub::stub::MultiThreadStopReason;
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::target::Target;

use super::target::GdbTarget;
use crate::debugger::{DebugTarget, StopChannelError};

/// How long to wait for a stop before looking for gdb input again (bounds the latency
/// of gdb packets, such as Ctrl-C, while the VM runs).
const POLL: Duration = Duration::from_millis(5);

/// Event loop over the stop channel and the gdb connection.
pub(super) struct StopOrData<T, C>(PhantomData<(T, C)>);

type WaitError<T, C> =
    WaitForStopReasonError<<GdbTarget<T> as Target>::Error, <C as Connection>::Error>;

impl<T: DebugTarget, C: ConnectionExt> BlockingEventLoop for StopOrData<T, C> {
    type Target = GdbTarget<T>;
    type Connection = C;
    type StopReason = MultiThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut GdbTarget<T>,
        conn: &mut C,
    ) -> Result<Event<Self::StopReason>, WaitError<T, C>> {
        loop {
            if conn
                .peek()
                .map_err(WaitForStopReasonError::Connection)?
                .is_some()
            {
                let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(Event::IncomingData(byte));
            }
            let raw = match target.stops.recv_timeout(POLL) {
                Ok(Some(raw)) => raw,
                Ok(None) => continue,
                // The VM is gone: end the session as an exit.
                Err(StopChannelError::Disconnected) => {
                    return Ok(Event::TargetStopped(MultiThreadStopReason::Exited(0)));
                }
            };
            let stop = target
                .dbg
                .handle_stop(&mut target.target, raw)
                .map_err(WaitForStopReasonError::Target)?;
            if let Some(stop) = stop {
                return Ok(Event::TargetStopped(target.gdb_stop(stop)));
            }
        }
    }

    /// Ctrl-C: ask the VM to halt; the stop arrives through the channel.
    fn on_interrupt(
        target: &mut GdbTarget<T>,
    ) -> Result<Option<Self::StopReason>, <GdbTarget<T> as Target>::Error> {
        target.dbg.halt(&mut target.target)?;
        Ok(None)
    }
}
