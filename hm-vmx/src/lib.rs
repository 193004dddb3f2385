//! Hardware-assisted execution backend with VT-x semantics over KVM.

pub mod vmx;
