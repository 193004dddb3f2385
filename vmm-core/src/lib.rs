//! The VM: EMTs, buses, devices, boot and orchestration.

pub mod vmstate;
