//! Info handlers the VM registers in the `dbgf` registry.

mod cpuid;
mod cpumguest;
mod paging;

pub(crate) use cpuid::register_cpuid_handler;
pub(crate) use cpumguest::write_cpumguest;
pub(crate) use paging::{guest_features, register_paging_handlers};
