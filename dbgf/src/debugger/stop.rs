//! How the VMM reports a stop: raw causes, the stop channel and the I/O-port watch the
//! EMT checks on every port access.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use parking_lot::RwLock;

/// Why a vCPU stopped, as the VMM sees it (before the debugger interprets it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// `KVM_EXIT_DEBUG`: `exception` is 1 (`#DB`, with `dr6`) or 3 (`#BP`); `pc` is the
    /// linear RIP KVM reports (`kvm_debug_exit_arch`).
    Debug {
        /// Exception vector.
        exception: u32,
        /// DR6 at the exit (only meaningful for `#DB`).
        dr6: u64,
        /// Linear address of the instruction.
        pc: u64,
    },
    /// An I/O port access for which [`IoWatch::matches`] returned true. The VMM halts
    /// before completing the access and, when resumed, completes that one access
    /// without checking it again (so the breakpoint does not fire twice).
    Io {
        /// First port accessed.
        port: u16,
        /// Access size in bytes.
        size: u8,
        /// `out` (true) or `in` (false).
        write: bool,
    },
    /// The VM halted because [`DebugTarget::halt`](super::DebugTarget::halt) asked.
    Halted,
    /// The VM powered off or was reset beyond recovery; the debugging session ends.
    PoweredOff,
}

/// A stop report: which vCPU stopped and why. The VMM sends it once every vCPU is halted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuStop {
    /// The vCPU that caused the stop.
    pub cpu: u32,
    /// The raw cause.
    pub cause: StopCause,
}

/// Sending side of the stop channel; cheap to clone, one per EMT if you like.
#[derive(Debug, Clone)]
pub struct StopNotifier(mpsc::Sender<VcpuStop>);

/// Receiving side of the stop channel, owned by whoever drives the debugger.
#[derive(Debug)]
pub struct StopListener(mpsc::Receiver<VcpuStop>);

/// Errors of the stop channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StopChannelError {
    /// The other side is gone (the VM or the debugger was dropped).
    #[error("stop channel disconnected")]
    Disconnected,
}

/// Creates a stop channel.
///
/// ```
/// use dbgf::debugger::{stop_channel, StopCause, VcpuStop};
/// let (tx, rx) = stop_channel();
/// std::thread::spawn(move || tx.notify(VcpuStop { cpu: 0, cause: StopCause::Halted }));
/// assert_eq!(rx.recv().unwrap().cause, StopCause::Halted);
/// ```
pub fn stop_channel() -> (StopNotifier, StopListener) {
    let (tx, rx) = mpsc::channel();
    (StopNotifier(tx), StopListener(rx))
}

impl StopNotifier {
    /// Reports a stop. Fails only when the listener is gone.
    pub fn notify(&self, stop: VcpuStop) -> Result<(), StopChannelError> {
        self.0
            .send(stop)
            .map_err(|_| StopChannelError::Disconnected)
    }
}

impl StopListener {
    /// Waits for the next stop.
    pub fn recv(&self) -> Result<VcpuStop, StopChannelError> {
        self.0.recv().map_err(|_| StopChannelError::Disconnected)
    }

    /// Waits at most `timeout`; `Ok(None)` when nothing arrived.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<VcpuStop>, StopChannelError> {
        match self.0.recv_timeout(timeout) {
            Ok(s) => Ok(Some(s)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(StopChannelError::Disconnected),
        }
    }

    /// Returns a pending stop without waiting.
    pub fn try_recv(&self) -> Result<Option<VcpuStop>, StopChannelError> {
        match self.0.try_recv() {
            Ok(s) => Ok(Some(s)),
            Err(mpsc::TryRecvError::Empty) => Ok(None),
            Err(mpsc::TryRecvError::Disconnected) => Err(StopChannelError::Disconnected),
        }
    }
}

/// Direction filter of an I/O-port breakpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoAccess {
    /// `in` only.
    Read,
    /// `out` only.
    Write,
    /// Both directions.
    ReadWrite,
}

impl IoAccess {
    /// Whether an access in direction `write` matches.
    pub fn matches(self, write: bool) -> bool {
        match self {
            Self::Read => !write,
            Self::Write => write,
            Self::ReadWrite => true,
        }
    }
}

/// One armed I/O range: ports `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IoRange {
    pub first: u16,
    pub last: u16,
    pub access: IoAccess,
}

impl IoRange {
    pub(crate) fn matches(&self, port: u16, size: u8, write: bool) -> bool {
        let end = u32::from(port) + u32::from(size.max(1)) - 1;
        self.access.matches(write) && u32::from(self.first) <= end && port <= self.last
    }
}

#[derive(Debug, Default)]
struct IoWatchInner {
    armed: AtomicBool,
    ranges: RwLock<Vec<IoRange>>,
}

/// The I/O-port breakpoint filter the EMT consults on every port access.
///
/// Cheap to clone and `Send + Sync`; when no I/O breakpoint exists the check is one
/// atomic load. On a match the VMM halts the VM and reports [`StopCause::Io`].
#[derive(Debug, Clone, Default)]
pub struct IoWatch(Arc<IoWatchInner>);

impl IoWatch {
    /// Whether an access of `size` bytes at `port` in direction `write` hits a breakpoint.
    #[inline]
    pub fn matches(&self, port: u16, size: u8, write: bool) -> bool {
        self.0.armed.load(Ordering::Acquire) && self.matches_armed(port, size, write)
    }

    #[inline(never)]
    fn matches_armed(&self, port: u16, size: u8, write: bool) -> bool {
        self.0
            .ranges
            .read()
            .iter()
            .any(|r| r.matches(port, size, write))
    }

    pub(crate) fn set(&self, ranges: Vec<IoRange>) {
        let mut guard = self.0.ranges.write();
        self.0.armed.store(!ranges.is_empty(), Ordering::Release);
        *guard = ranges;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_watch_ranges_and_directions() {
        let w = IoWatch::default();
        assert!(!w.matches(0x3f8, 1, true));
        w.set(vec![IoRange {
            first: 0x3f8,
            last: 0x3ff,
            access: IoAccess::Write,
        }]);
        assert!(w.matches(0x3f8, 1, true));
        assert!(w.matches(0x3ff, 1, true));
        assert!(w.matches(0x3f6, 4, true)); // 3f6..3f9 overlaps
        assert!(!w.matches(0x3f6, 2, true));
        assert!(!w.matches(0x400, 1, true));
        assert!(!w.matches(0x3f8, 1, false));
        assert!(!w.matches(0xffff, 4, true)); // no wrap-around at the top of the port space
        w.set(Vec::new());
        assert!(!w.matches(0x3f8, 1, true));
    }

    #[test]
    fn channel_reports_disconnect() {
        let (tx, rx) = stop_channel();
        assert_eq!(rx.try_recv(), Ok(None));
        tx.notify(VcpuStop {
            cpu: 1,
            cause: StopCause::PoweredOff,
        })
        .unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(1))
                .unwrap()
                .unwrap()
                .cpu,
            1
        );
        drop(tx);
        assert_eq!(rx.recv(), Err(StopChannelError::Disconnected));
    }
}
