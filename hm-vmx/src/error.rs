//! Errors of the execution backend.

use kvm_ioctls::Error as KvmError;

use crate::entry_check::EntryCheckFailure;
use crate::vmx::{CapsError, ControlError};

/// What can go wrong while creating or driving a VM through the backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM available and accessible to this user?)")]
    OpenKvm(#[source] KvmError),
    /// The host's KVM speaks an API version this backend does not know.
    #[error("unsupported KVM API version {0} (expected 12)")]
    ApiVersion(i32),
    /// The host's KVM lacks a capability the backend relies on.
    #[error("the host's KVM lacks a required capability: {0}")]
    MissingCapability(&'static str),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Ioctl {
        /// The operation that failed, for the message.
        op: &'static str,
        /// The error the kernel returned.
        #[source]
        source: KvmError,
    },
    /// Registering a statistic failed (a duplicate name: two VMs sharing one
    /// registry).
    #[error("statistics: {0}")]
    Stats(#[from] stam::Error),
    /// Kicks could not be set up.
    #[error("{0}")]
    Kick(String),
    /// A guest-memory slot request was malformed.
    #[error("invalid memory slot: {0}")]
    InvalidSlot(String),
    /// The host reports VMX capability MSRs that do not form a valid profile.
    #[error("the host's VMX capability MSRs are inconsistent: {0}")]
    VmxCapabilities(#[source] CapsError),
    /// The VMX capability profile lacks a control the backend's VT-x model
    /// requires, so guest states cannot be checked against it.
    #[error("the VMX capability profile cannot be used for guest-state checks: {0}")]
    VmxControls(#[source] ControlError),
    /// The guest state breaks VM-entry rules: found by the pre-entry check,
    /// or explaining why KVM refused the state.
    #[error(transparent)]
    EntryState(Box<EntryCheckFailure>),
    /// A saved vCPU or interrupt-controller state is malformed or was
    /// refused by KVM.
    #[error("vCPU state: {0}")]
    BadCpuState(String),
    /// A [`ScriptedVcpu`](crate::testing::ScriptedVcpu) was run past the
    /// end of its script.
    #[error("{0}")]
    ScriptEnded(String),
    /// KVM refused to write an MSR (an unknown index or a value the vCPU
    /// does not accept).
    #[error("KVM refused MSR {index:#x} = {value:#x}")]
    MsrRefused {
        /// The MSR's index.
        index: u32,
        /// The value that was refused.
        value: u64,
    },
    /// An interrupt line or route was asked for a GSI the in-kernel
    /// irqchip does not route (the IOAPIC has pins 0–23; MSI GSIs come
    /// from `Vm::allocate_msi_gsi`), or no MSI GSI is left.
    #[error(
        "GSI {0} is not routed: the in-kernel IOAPIC has GSIs 0-23, MSI GSIs are allocated from 24 to 4095"
    )]
    UnroutedGsi(u32),
    /// An eventfd for an interrupt line could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// Result type of the backend.
pub type Result<T> = std::result::Result<T, Error>;

/// Builds a closure that wraps a KVM error as [`Error::Ioctl`] for `op`.
pub(crate) fn ioctl(op: &'static str) -> impl FnOnce(KvmError) -> Error {
    move |source| Error::Ioctl { op, source }
}
