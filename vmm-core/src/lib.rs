//! The VM: EMTs, buses, devices, boot and orchestration.
