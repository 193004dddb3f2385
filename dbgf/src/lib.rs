//! Debugger facility (VirtualBox DBGF): info handlers, debugger core, gdb stub.
//!
//! `dbgf` is how people look inside a running VM. It knows nothing about KVM
//! or about the VMM's types: components hand it text-producing callbacks,
//! and the debugger works through a target trait the VMM implements.
//!
//! # Main types
//!
//! - [`InfoRegistry`]: the VMM's components register named handlers that
//!   print a piece of VM state (VirtualBox's names: `mode`, `phys`,
//!   `handlers`, ...); `info NAME ARGS` runs one through an
//!   [`InfoExecutor`], which decides the thread it runs on (an EMT for
//!   handlers flagged [`InfoFlags::RUN_ON_EMT`], every EMT for
//!   [`InfoFlags::ALL_EMTS`]). [`SameThreadExecutor`] runs everything on the
//!   caller's thread. Always available.
//! - `debugger` (feature `debugger`): the debugger core over a
//!   `DebugTarget` the VMM implements: software, hardware, I/O breakpoints
//!   and data watchpoints (debug registers or page traps), stepping, memory
//!   and register access, and turning raw vCPU stops into stop reasons.
//! - `gdb` (feature `debugger`): a gdb remote stub over the debugger core,
//!   with the info handlers as `monitor info NAME`.
//! - `disas` (feature `debugger`): disassembly of guest code.
//!
//! # How data flows
//!
//! Info: a component registers a handler once; a front end (the CLI, the
//! control API, the gdb stub's `monitor`) calls [`InfoRegistry::run`] with a
//! name and arguments; the executor runs the handler where it may read the
//! state, and the text comes back through a `fmt::Write`.
//!
//! Debugger: a front end (the gdb stub) asks the `Debugger` to set
//! breakpoints or resume; the `Debugger` programs the target (guest-debug
//! registers, `int3` patches, page traps); the VMM's vCPU threads report
//! each stop through a `StopNotifier`; the front end hands the stop to
//! `Debugger::handle_stop`, which says what it means (breakpoint hit, step
//! done, watchpoint, foreign trap).
//!
//! # Using it alone
//!
//! ```
//! use dbgf::{InfoCall, InfoError, InfoFlags, InfoRegistry, SameThreadExecutor};
//!
//! let info = InfoRegistry::new();
//! info.register("uptime", "Seconds since start.", InfoFlags::empty(), |call, out| {
//!     if !call.args.is_empty() {
//!         return Err(InfoError::BadArgs("uptime takes no arguments".into()));
//!     }
//!     writeln!(out, "42 s")?;
//!     Ok(())
//! })?;
//! let mut out = String::new();
//! info.run("uptime", "", &mut out, &SameThreadExecutor::new(1))?;
//! assert_eq!(out, "42 s\n");
//! let mut help = String::new();
//! info.run("help", "", &mut help, &SameThreadExecutor::new(1))?;
//! assert!(help.contains("Seconds since start."));
//! # Ok::<(), InfoError>(())
//! ```
//!
//! The debugger module's documentation shows the debugger over its
//! in-memory target, the gdb module's a gdb session.
//!
//! # Features
//!
//! - `debugger` (default): the debugger core, disassembly and the gdb stub;
//!   pulls in `iced-x86` (decoder, Intel formatter, instruction info) and
//!   `gdbstub`. Without it the crate is the info registry alone, which is
//!   all a component that only registers info handlers (such as `pgm`)
//!   needs.

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

// The README's example runs as a doctest, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
