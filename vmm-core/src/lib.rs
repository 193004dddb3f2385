//! The VM: configuration, EMT threads, VM state machine, forced actions,
//! requests and rendezvous, buses, minimal PC devices and the embedded
//! guests, on top of the `hm-vmx` execution backend.
//!
//! # How it is built
//!
//! * [`sync`]: the EMT synchronisation layer (forced actions, halts,
//!   requests, rendezvous, the VM state machine). It knows nothing of KVM.
//! * The EMT (one thread per vCPU, private module `emt`): a small state
//!   machine that serves forced actions, enters the guest through
//!   [`hm_vmx::VirtualCpu`] and hands each exit to one exit handler. The
//!   handler sees a narrow context only (the port bus, guest memory, the
//!   debugger's hooks) and answers what to do next; its tests replay
//!   scripted exits without `/dev/kvm`.
//! * An access travels as [`iom::Data`] from the vCPU exit to the device:
//!   port I/O through the [`bus::IoBus`] to [`devices`], everything a KVM
//!   memory slot does not cover through [`memory`] to `pgm`'s handlers.
//! * [`boot`]: direct Linux boot (bzImage, zero page, e820, MP table and
//!   ACPI tables); [`guests`]: the embedded guests, among them the test
//!   kernel that checks the boot path from inside.
//! * [`saved_state`]: save, restore, live save and teleport over `ssm`,
//!   one unit per device. [`debug`]: the debugger target for `dbgf`.
//! * [`Vm`] puts it together; [`VmHandle`] steers a running VM from other
//!   threads (pause, save, power off, info, statistics).
//!
//! ```no_run
//! use vmm_core::{Vm, VmConfig, RunOutcome, guests};
//!
//! let config = VmConfig::new(16 << 20, guests::find("demo")?.firmware()?);
//! assert_eq!(Vm::new(config)?.run()?, RunOutcome::GuestExit(0));
//! # Ok::<(), vmm_core::Error>(())
//! ```

pub mod boot;
pub mod bus;
pub mod config;
pub mod debug;
pub mod devices;
mod emt;
mod error;
pub mod firmware;
mod gmm_host;
pub mod guests;
mod info;
mod machine;
pub mod memory;
mod outcome;
mod reset;
pub mod saved_state;
pub mod sync;
mod vm;

pub use config::{OnReboot, VmConfig};
pub use error::{Error, Result};
pub use machine::VmHandle;
pub use outcome::RunOutcome;
pub use vm::Vm;

// The README's example runs as a doctest, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
