//! Debugger facility (VirtualBox DBGF): info handlers, debugger core, gdb stub.
//!
//! So far this crate holds the info-handler registry ([`InfoRegistry`]): the
//! VMM's components register named handlers that print a piece of VM state,
//! and `info NAME ARGS` runs them through an [`InfoExecutor`] that puts them
//! on the right EMT.

mod info;

pub use info::{
    InfoCall, InfoError, InfoExecutor, InfoFlags, InfoHandler, InfoRegistry, MAX_INFO_NAME_LEN,
    SameThreadExecutor,
};
