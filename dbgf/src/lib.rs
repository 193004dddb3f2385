//! Debugger facility (VirtualBox DBGF): info handlers, debugger core, gdb stub.

pub mod debugger;
pub mod disas;
pub mod gdb;
