//! Debugger facility (VirtualBox DBGF): info handlers, debugger core, gdb stub.
//!
//! - [`InfoRegistry`]: the VMM's components register named handlers that print a
//!   piece of VM state, and `info NAME ARGS` runs them through an [`InfoExecutor`]
//!   that puts them on the right EMT.
//! - [`debugger`]: the debugger core over a target trait the VMM implements
//!   (breakpoints, stepping, memory and register access, stop interpretation).
//! - [`gdb`]: a gdb remote stub over the debugger core.
//! - [`disas`]: disassembly of guest code.

#[cfg(feature = "debugger")]
pub mod debugger;
#[cfg(feature = "debugger")]
pub mod disas;
#[cfg(feature = "debugger")]
pub mod gdb;
mod info;

pub use info::{
    InfoCall, InfoError, InfoExecutor, InfoFlags, InfoHandler, InfoRegistry, MAX_INFO_NAME_LEN,
    SameThreadExecutor,
};
