//! Info handlers the VM registers in the `dbgf` registry.

mod cpumguest;
mod paging;

pub(crate) use cpumguest::write_cpumguest;
pub(crate) use paging::{guest_features, register_paging_handlers};
