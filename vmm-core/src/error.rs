//! Errors of the VM.

use hm_vmx::vmx::ExitReason;

/// Why a VM could not be built or why its run ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration asks for something impossible.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The execution backend failed.
    #[error(transparent)]
    Backend(#[from] hm_vmx::Error),
    /// The firmware image cannot be used.
    #[error(transparent)]
    Firmware(#[from] crate::firmware::FirmwareError),
    /// Guest memory could not be set up.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The guest caused an exit the VMM cannot handle.
    #[error(
        "vCPU {cpu}: unhandled exit: {exit}{} at RIP {rip:#x}{}",
        reason.map(|r| format!(" (VMX exit reason {})", r as u16)).unwrap_or_default(),
        diagnosis.as_ref().map(|d| format!("\n{d}")).unwrap_or_default()
    )]
    UnhandledExit {
        /// The vCPU.
        cpu: u32,
        /// What happened, in words.
        exit: String,
        /// The VMX basic exit reason, when the exit has one.
        reason: Option<ExitReason>,
        /// The guest's instruction pointer (CS base + RIP for real mode is not
        /// applied: this is the architectural RIP).
        rip: u64,
        /// For failed entries and KVM internal errors: the vCPU state checked
        /// against the SDM's guest-state rules.
        diagnosis: Option<String>,
    },
    /// A vCPU stays inside one guest entry and the VMM cannot free it.
    #[error("vCPU {cpu} is stuck at RIP {rip:#x}: {why}")]
    GuestStuck {
        /// The vCPU.
        cpu: u32,
        /// The guest's instruction pointer.
        rip: u64,
        /// Why, in words.
        why: String,
    },
    /// A direct kernel boot could not be prepared.
    #[error(transparent)]
    Boot(#[from] crate::boot::Error),
    /// Forced-action bookkeeping failed (an EMT registered twice, a bad vCPU).
    #[error(transparent)]
    ForcedActions(#[from] crate::sync::ffs::FfError),
    /// An EMT rendezvous failed.
    #[error(transparent)]
    Rendezvous(#[from] crate::sync::rendezvous::RendezvousError),
    /// A request to an EMT failed.
    #[error(transparent)]
    Request(#[from] crate::sync::request::RequestError),
    /// The VM is not in a state that allows the operation.
    #[error(transparent)]
    State(#[from] crate::sync::vmstate::VmStateError),
    /// Saving or restoring the VM's state failed.
    #[error("saved state: {0}")]
    SavedState(#[from] ssm::Error),
    /// A teleport failed, or could not be cancelled.
    #[error(transparent)]
    Teleport(#[from] crate::saved_state::TeleportError),
    /// The EMT thread died unexpectedly.
    #[error("EMT {0} terminated abnormally")]
    EmtPanicked(u32),
}

/// Result type of the VM.
pub type Result<T> = std::result::Result<T, Error>;
