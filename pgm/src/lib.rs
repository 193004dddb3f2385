//! Page manager (VirtualBox PGM): the guest-physical map, physical access
//! handlers and guest paging.

pub mod paging;
pub mod phys;
mod walker_memory;

pub use phys::{PhysConfig, PhysError, PhysMap, SharedPhysMap};
