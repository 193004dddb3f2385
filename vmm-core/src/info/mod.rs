//! Info handlers the VM registers in the `dbgf` registry.

mod cpumguest;

pub(crate) use cpumguest::write_cpumguest;
