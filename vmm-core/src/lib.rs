//! The VM: configuration, EMT threads, VM state machine, forced actions,
//! requests and rendezvous, buses, minimal PC devices and the embedded
//! guests, on top of the `hm-vmx` execution backend.
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
pub mod ffs;
mod gmm_host;
pub mod guests;
pub mod halt;
mod info;
mod machine;
pub mod memory;
pub mod rendezvous;
pub mod request;
mod reset;
pub mod saved_state;
mod vm;
pub mod vmstate;

pub use config::{OnReboot, VmConfig};
pub use emt::RunOutcome;
pub use error::{Error, Result};
pub use machine::VmHandle;
pub use vm::Vm;
