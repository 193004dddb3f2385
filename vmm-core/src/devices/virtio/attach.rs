//! Attaching a VM's virtio devices to its PCI bus.

use std::sync::Arc;

use super::{VirtioDevice, VirtioPci, VirtioSlot};
use crate::devices::pci::{DevFn, IrqRouting, PciPlatform};
use crate::error::{Error, Result};
use crate::memory::GuestMemoryMap;

/// Attaches `devices` over PCI at 00:01.0, 00:02.0, ...; returns each
/// one's slot and transport.
pub(crate) fn attach_virtio(
    pci: &PciPlatform,
    devices: Vec<Box<dyn VirtioDevice>>,
    memory: &GuestMemoryMap,
    backend: &Arc<hm_vmx::Vm>,
    stats: &stam::Registry,
) -> Result<Vec<VirtioSlot>> {
    let mut attached = Vec::new();
    for (slot, device) in (1u8..).zip(devices) {
        let at = DevFn::new(slot, 0).map_err(|e| Error::Config(e.to_string()))?;
        let routing: Arc<dyn IrqRouting> = Arc::clone(backend) as _;
        let function = VirtioPci::new(device, at, memory.ram().clone(), routing, stats)
            .map_err(|e| Error::Config(format!("virtio device at {at}: {e}")))?;
        attached.push(VirtioSlot {
            at,
            transport: function.transport(),
        });
        pci.add(at, Box::new(function))
            .map_err(|e| Error::Config(e.to_string()))?;
    }
    Ok(attached)
}
