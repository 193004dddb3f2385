//! Handling one exit: the dispatch from what the vCPU reported to the port
//! bus, `pgm` and the debugger, and what the EMT must do next.
//!
//! [`handle_exit`] sees only an [`ExitContext`] (the port bus, guest
//! memory and the debugger's hooks), never the whole machine, and answers
//! with an [`ExitAction`]: carry on, sleep, end or reset the machine,
//! report a debugger stop. The EMT loop ([`super`]) carries the action
//! out. Everything here runs without `/dev/kvm` against a
//! [`ScriptedVcpu`](hm_vmx::testing::ScriptedVcpu).

use dbgf::debugger::StopCause;
use hm_vmx::vmx::ExitReason;
use hm_vmx::{Exit, IoAccess, MmioAccess};
use iom::Data;

use crate::bus::IoBus;
use crate::devices::DeviceAction;
use crate::error::Result;
use crate::memory::GuestMemoryMap;

/// The debugger as the exit path sees it.
pub(crate) trait DebugHooks {
    /// Whether a debugger is attached (debug exits are its).
    fn is_attached(&self) -> bool;
    /// Whether a port access hits an I/O-port breakpoint.
    fn io_matches(&self, port: u16, size: u8, write: bool) -> bool;
    /// Whether a guest-physical access hits a page-trap watchpoint.
    fn mem_matches(&self, addr: u64, size: u32, write: bool) -> bool;
    /// Reports a stop of vCPU `cpu` before the port access of `cause`
    /// and waits until the debugger lets the vCPU go on (the access then
    /// completes without being checked again). False when the EMT must
    /// terminate instead.
    fn stop_before_io(&self, cpu: u32, cause: StopCause) -> Result<bool>;
}

/// What one exit may touch. Generic over the debugger's hooks, so that
/// their checks on every exit are direct calls.
pub(crate) struct ExitContext<'a, D: DebugHooks> {
    /// The vCPU the exit came from.
    pub(crate) cpu: u32,
    /// The port I/O bus.
    pub(crate) io: &'a IoBus,
    /// Guest memory: MMIO exits go to `pgm`.
    pub(crate) memory: &'a GuestMemoryMap,
    /// The debugger's hooks.
    pub(crate) debug: &'a D,
}

/// A watched guest-physical access: reported once its instruction has
/// completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WatchHit {
    pub(crate) addr: u64,
    pub(crate) size: u32,
    pub(crate) write: bool,
}

/// An exit the VMM does not handle, for the error that ends the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unhandled {
    /// The exit's name.
    pub(crate) exit: String,
    /// Its VMX basic exit reason, if it has one.
    pub(crate) reason: Option<ExitReason>,
    /// Whether the guest state should be explained against the VM-entry
    /// rules (entry failures, emulation failures).
    pub(crate) diagnose: bool,
}

/// What the EMT does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExitAction {
    /// Run the guest again.
    Continue,
    /// The guest halted (no in-kernel irqchip): sleep until a forced action.
    Halt,
    /// A device asked to end or reset the machine (never
    /// [`DeviceAction::Continue`]); the rest of a string `out` is dropped.
    Device(DeviceAction),
    /// A debug exit for the attached debugger.
    DebugStop(StopCause),
    /// An access hit a page-trap watchpoint: complete its instruction, then
    /// report it.
    Watched(WatchHit),
    /// The debugger stopped the vCPU before a port access and the EMT must
    /// terminate.
    Terminate,
    /// An exit the VMM does not handle: the run ends with an error.
    Unhandled(Unhandled),
}

/// Handles `exit` of vCPU `ctx.cpu`.
pub(crate) fn handle_exit<D: DebugHooks>(
    exit: Exit<'_>,
    ctx: &ExitContext<'_, D>,
) -> Result<ExitAction> {
    Ok(match exit {
        Exit::Io(access) => return port_io(access, ctx),
        Exit::Mmio(access) => return mmio(access, ctx),
        Exit::Interrupted | Exit::InterruptWindow => ExitAction::Continue,
        // Only without an in-kernel irqchip does HLT reach the VMM.
        Exit::Hlt => ExitAction::Halt,
        Exit::Debug(d) if ctx.debug.is_attached() => ExitAction::DebugStop(StopCause::Debug {
            exception: d.exception,
            dr6: d.dr6,
            pc: d.rip,
        }),
        Exit::InternalError(e) => ExitAction::Unhandled(Unhandled {
            exit: format!("KVM internal error: {e}"),
            reason: None,
            diagnose: true,
        }),
        other => ExitAction::Unhandled(Unhandled {
            exit: other.name().to_owned(),
            reason: other.vmx_reason(),
            diagnose: matches!(other, Exit::FailEntry { .. }),
        }),
    })
}

/// A port access: checked against I/O breakpoints first, then dispatched
/// to the bus in accesses of its size (string I/O repeats).
fn port_io<D: DebugHooks>(access: IoAccess<'_>, ctx: &ExitContext<'_, D>) -> Result<ExitAction> {
    let write = access.data.is_write();
    if ctx.debug.io_matches(access.port, access.size, write) {
        let cause = StopCause::Io {
            port: access.port,
            size: access.size,
            write,
        };
        if !ctx.debug.stop_before_io(ctx.cpu, cause)? {
            return Ok(ExitAction::Terminate);
        }
    }
    // String I/O: one access of `size` bytes after the other.
    let size = usize::from(access.size.max(1));
    match access.data {
        Data::Write(bytes) => {
            for piece in bytes.chunks(size) {
                let action = ctx.io.write(access.port, piece);
                if action != DeviceAction::Continue {
                    return Ok(ExitAction::Device(action));
                }
            }
        }
        Data::Read(buf) => {
            for piece in buf.chunks_mut(size) {
                ctx.io.read(access.port, piece);
            }
        }
    }
    Ok(ExitAction::Continue)
}

/// A guest-physical access outside the memory slots, handed to `pgm`, then
/// checked against page-trap watchpoints.
fn mmio<D: DebugHooks>(access: MmioAccess<'_>, ctx: &ExitContext<'_, D>) -> Result<ExitAction> {
    let (addr, write) = (access.addr, access.data.is_write());
    let size = u32::try_from(access.data.len()).unwrap_or(u32::MAX);
    ctx.memory.mmio_exit(addr, access.data)?;
    Ok(if ctx.debug.mem_matches(addr, size, write) {
        ExitAction::Watched(WatchHit { addr, size, write })
    } else {
        ExitAction::Continue
    })
}

#[cfg(test)]
mod tests;
