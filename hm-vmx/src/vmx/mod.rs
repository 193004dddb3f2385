//! The VT-x architecture model: what a VMX VMM sees, as the Intel SDM names it.

mod exit_reason;

pub use exit_reason::ExitReason;
