//! How the VMM reports a stop: raw causes, the stop channel, and the watches the EMT
//! checks: the I/O-port watch on every port access, the memory watch on every MMIO exit.

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
    /// A guest access to guest-physical memory for which [`MemWatch::matches`] returned
    /// true (the page is trapped through the VMM's physical access handlers, see
    /// [`DebugTarget::set_page_traps`](super::DebugTarget::set_page_traps)). Reported
    /// after the accessing instruction completed, like an x86 data breakpoint.
    Mem {
        /// Guest-physical address of the first byte accessed.
        addr: u64,
        /// Access size in bytes.
        size: u32,
        /// A write (true) or a read (false).
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
#[non_exhaustive]
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

/// Direction filter of an I/O-port breakpoint or of a page-trap watchpoint
/// ([`MemAccess`]).
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

/// Direction filter of a page-trap watchpoint (the same three choices as for ports;
/// unlike x86 debug registers, page traps can watch reads alone).
pub type MemAccess = IoAccess;

/// One armed guest-physical range: bytes `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemRange {
    pub first: u64,
    pub last: u64,
    pub access: MemAccess,
}

impl MemRange {
    pub(crate) fn matches(&self, addr: u64, size: u32, write: bool) -> bool {
        let end = addr.saturating_add(u64::from(size.max(1)) - 1);
        self.access.matches(write) && self.first <= end && addr <= self.last
    }
}

/// A set of armed ranges checked from the EMTs: one atomic load while it is empty.
#[derive(Debug)]
struct WatchSet<R> {
    armed: AtomicBool,
    ranges: RwLock<Vec<R>>,
}

impl<R> Default for WatchSet<R> {
    fn default() -> Self {
        Self {
            armed: AtomicBool::new(false),
            ranges: RwLock::new(Vec::new()),
        }
    }
}

impl<R> WatchSet<R> {
    #[inline]
    fn any(&self, hit: impl Fn(&R) -> bool) -> bool {
        self.armed.load(Ordering::Acquire) && self.any_armed(hit)
    }

    #[inline(never)]
    fn any_armed(&self, hit: impl Fn(&R) -> bool) -> bool {
        self.ranges.read().iter().any(hit)
    }

    fn set(&self, ranges: Vec<R>) {
        let mut guard = self.ranges.write();
        self.armed.store(!ranges.is_empty(), Ordering::Release);
        *guard = ranges;
    }
}

/// The I/O-port breakpoint filter the EMT consults on every port access.
///
/// Cheap to clone and `Send + Sync`; when no I/O breakpoint exists the check is one
/// atomic load. On a match the VMM halts the VM and reports [`StopCause::Io`].
#[derive(Debug, Clone, Default)]
pub struct IoWatch(Arc<WatchSet<IoRange>>);

impl IoWatch {
    /// Whether an access of `size` bytes at `port` in direction `write` hits a breakpoint.
    #[inline]
    pub fn matches(&self, port: u16, size: u8, write: bool) -> bool {
        self.0.any(|r| r.matches(port, size, write))
    }

    pub(crate) fn set(&self, ranges: Vec<IoRange>) {
        self.0.set(ranges);
    }
}

/// The page-trap watchpoint filter the EMT consults on every MMIO exit (the exits the
/// trapped pages produce, and those of real MMIO).
///
/// Cheap to clone and `Send + Sync`; when no page-trap watchpoint exists the check is
/// one atomic load. On a match the VMM completes the access and the instruction, halts
/// the VM and reports [`StopCause::Mem`].
///
/// ```
/// use dbgf::debugger::{stop_channel, Debugger, MemAccess, MemTarget, WatchMode};
/// let (tx, _rx) = stop_channel();
/// let mut vm = MemTarget::new(1, 0x4000, tx);
/// let mut dbg = Debugger::new().with_watch_mode(WatchMode::PageTraps);
/// let watch = dbg.mem_watch(); // the VMM hands this to its EMTs
/// dbg.add_data_watch(&mut vm, 0, 0x2ffc, 8, MemAccess::Write).unwrap();
/// assert!(watch.matches(0x3000, 4, true));
/// assert!(!watch.matches(0x3000, 4, false));
/// assert!(!watch.matches(0x3004, 1, true));
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemWatch(Arc<WatchSet<MemRange>>);

impl MemWatch {
    /// Whether an access of `size` bytes at guest-physical `addr` in direction `write`
    /// hits a page-trap watchpoint.
    #[inline]
    pub fn matches(&self, addr: u64, size: u32, write: bool) -> bool {
        self.0.any(|r| r.matches(addr, size, write))
    }

    pub(crate) fn set(&self, ranges: Vec<MemRange>) {
        self.0.set(ranges);
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
    fn mem_watch_ranges_and_directions() {
        let w = MemWatch::default();
        assert!(!w.matches(0x1000, 1, true));
        w.set(vec![MemRange {
            first: 0x1ffe,
            last: 0x2001,
            access: MemAccess::Read,
        }]);
        assert!(w.matches(0x1ffe, 1, false));
        assert!(w.matches(0x1ff8, 8, false)); // 1ff8..1fff overlaps
        assert!(!w.matches(0x1ff8, 6, false));
        assert!(w.matches(0x2001, 8, false));
        assert!(!w.matches(0x2002, 8, false));
        assert!(!w.matches(0x2000, 1, true));
        assert!(!w.matches(u64::MAX, 8, false)); // no wrap-around at the top
        w.set(Vec::new());
        assert!(!w.matches(0x2000, 1, false));
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
