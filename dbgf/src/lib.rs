//! Debugger facility (VirtualBox DBGF): info handlers, debugger core, gdb stub.
