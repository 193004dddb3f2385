//! The host bridge at 00:00.0: what tells a guest that configuration
//! mechanism #1 works (Linux looks for a host bridge or VGA class, or an
//! Intel or Compaq vendor, on bus 0 before it trusts the mechanism).

use super::{ConfigSpace, Identity, PciFunction};

/// Red Hat's PCI vendor ID (the one QEMU's own devices use).
pub const HOST_BRIDGE_VENDOR: u16 = 0x1b36;
/// The device ID QEMU gives its generic host bridge ("QEMU PCIe Host
/// bridge"): a well-known ID that needs no chipset emulation behind it.
pub const HOST_BRIDGE_DEVICE: u16 = 0x0008;

/// The host bridge: class 06/00 (bridge, host), no BARs.
pub struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    /// A host bridge in its power-on state.
    pub fn new() -> Self {
        HostBridge {
            config: ConfigSpace::new(Identity {
                vendor: HOST_BRIDGE_VENDOR,
                device: HOST_BRIDGE_DEVICE,
                revision: 0,
                class: 0x06,
                subclass: 0x00,
                prog_if: 0,
                // Red Hat/Qumranet and "QEMU", as on QEMU's machine devices.
                subsystem_vendor: 0x1af4,
                subsystem: 0x1100,
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciFunction for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
}
