//! Exits from guest execution, decoded and named after their VMX basic exit reason.

use std::fmt;

use iom::Data;

use crate::vmx::ExitReason;

/// Why the vCPU stopped running guest code.
///
/// Data slices borrow the vCPU's shared run page: fill the
/// [`Data::Read`] buffer of an `in` or an MMIO read before the next
/// [`Vcpu::run`](crate::Vcpu::run) and the guest sees the value.
#[derive(Debug)]
pub enum Exit<'a> {
    /// Port I/O (`in`, `out`, `ins`, `outs`): VMX reason 30.
    Io(IoAccess<'a>),
    /// An access KVM could not satisfy from a memory slot (no slot, or a
    /// write to a read-only slot): VMX reason 48, EPT violation.
    Mmio(MmioAccess<'a>),
    /// The guest executed `hlt` with no interrupt pending: VMX reason 12.
    Hlt,
    /// Triple fault (KVM's shutdown exit): VMX reason 2.
    Shutdown,
    /// A debug exception (single step, hardware or software breakpoint)
    /// intercepted for the debugger: VMX reason 0.
    Debug(DebugExit),
    /// VM entry failed (KVM_EXIT_FAIL_ENTRY): VMX reason 33.
    FailEntry {
        /// The hardware's entry-failure reason.
        hardware_reason: u64,
        /// The host CPU the entry was attempted on.
        cpu: u32,
    },
    /// KVM could not handle an exit itself, typically an instruction its
    /// emulator does not implement (KVM_EXIT_INTERNAL_ERROR). No VMX reason.
    InternalError(InternalError),
    /// `KVM_RUN` was interrupted by a signal or `immediate_exit` before or
    /// while running the guest: VMX reason 1, external interrupt.
    Interrupted,
    /// The guest can take an interrupt now: VMX reason 7.
    InterruptWindow,
    /// A system event such as a guest-requested reset or shutdown. No VMX reason.
    SystemEvent {
        /// The KVM system-event type.
        kind: u32,
    },
    /// A KVM exit this backend does not decode. No VMX reason.
    Other {
        /// The KVM exit reason number.
        kvm_reason: u32,
    },
}

impl Exit<'_> {
    /// The VMX basic exit reason a VT-x VMM would have seen, if there is one.
    pub fn vmx_reason(&self) -> Option<ExitReason> {
        Some(match self {
            Exit::Io(_) => ExitReason::IoInstruction,
            Exit::Mmio(_) => ExitReason::EptViolation,
            Exit::Hlt => ExitReason::Hlt,
            Exit::Shutdown => ExitReason::TripleFault,
            Exit::Debug(_) => ExitReason::ExceptionOrNmi,
            Exit::FailEntry { .. } => ExitReason::EntryFailureGuestState,
            Exit::Interrupted => ExitReason::ExternalInterrupt,
            Exit::InterruptWindow => ExitReason::InterruptWindow,
            Exit::InternalError(_) | Exit::SystemEvent { .. } | Exit::Other { .. } => return None,
        })
    }

    /// A short name for messages and statistics: the VMX name where there is
    /// one, KVM's otherwise.
    pub fn name(&self) -> &'static str {
        match self {
            Exit::InternalError(_) => "KVM internal error",
            Exit::SystemEvent { .. } => "KVM system event",
            Exit::Other { .. } => "unknown KVM exit",
            other => other.vmx_reason().map_or("unknown", ExitReason::name),
        }
    }
}

/// A port I/O exit.
#[derive(Debug)]
pub struct IoAccess<'a> {
    /// The I/O port.
    pub port: u16,
    /// Access size in bytes (1, 2 or 4).
    pub size: u8,
    /// `in`: [`Data::Read`], `out`: [`Data::Write`]; `size` bytes per
    /// access, several accesses for string I/O.
    pub data: Data<'a>,
}

/// A guest-physical access that left the memory slots.
#[derive(Debug)]
pub struct MmioAccess<'a> {
    /// Guest-physical address.
    pub addr: u64,
    /// The data: a read fills it, a write carries it.
    pub data: Data<'a>,
}

/// A debug exit's architectural details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugExit {
    /// The exception vector (1 for #DB, 3 for #BP).
    pub exception: u32,
    /// The guest RIP of the event.
    pub rip: u64,
    /// DR6 at the exit.
    pub dr6: u64,
    /// DR7 at the exit.
    pub dr7: u64,
}

/// The details of a KVM internal error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InternalError {
    /// KVM's sub-error code (1 = emulation failure, 2 = simultaneous #PF,
    /// 3 = delivery event, 4 = unexpected exit reason).
    pub suberror: u32,
    data: [u64; 16],
    ndata: usize,
}

impl InternalError {
    pub(crate) fn new(suberror: u32, raw: &[u64]) -> Self {
        let mut data = [0; 16];
        let ndata = raw.len().min(data.len());
        data[..ndata].copy_from_slice(&raw[..ndata]);
        InternalError {
            suberror,
            data,
            ndata,
        }
    }

    /// Extra words KVM supplied with the error.
    pub fn data(&self) -> &[u64] {
        &self.data[..self.ndata]
    }

    /// KVM's name for the sub-error.
    pub fn description(&self) -> &'static str {
        match self.suberror {
            1 => "instruction emulation failed",
            2 => "page fault while delivering a page fault",
            3 => "exit while delivering an event",
            4 => "unexpected hardware exit reason",
            _ => "unknown internal error",
        }
    }
}

impl fmt::Display for InternalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (suberror {})", self.description(), self.suberror)?;
        if self.ndata > 0 {
            write!(f, ", data")?;
            for word in self.data() {
                write!(f, " {word:#x}")?;
            }
        }
        Ok(())
    }
}
