//! The VM: EMTs, buses, devices, boot and orchestration.

pub mod ffs;
pub mod halt;
pub mod rendezvous;
pub mod request;
pub mod vmstate;
