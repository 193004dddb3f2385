//! The VM: configuration, EMT threads, buses, minimal PC devices and the
//! embedded guests, on top of the `hm-vmx` execution backend.
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
pub mod devices;
mod emt;
mod error;
pub mod guests;
pub mod memory;
mod vm;

pub use config::VmConfig;
pub use emt::RunOutcome;
pub use error::{Error, Result};
pub use vm::Vm;
