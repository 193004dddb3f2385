//! Building the VM's PCI platform (see [`pci::PciPlatform`](super::pci::PciPlatform)).

use std::sync::Arc;

use super::pci::{PciBus, PciPlatform};
use crate::error::{Error, Result};
use crate::memory::GuestMemoryMap;

/// The PCI platform over `memory`: bus 0 with its host bridge, the ECAM,
/// and the MMIO-exit hook that moves BARs reprogrammed through the ECAM.
pub(crate) fn pci_platform(memory: &GuestMemoryMap) -> Result<Arc<PciPlatform>> {
    use vm_memory::GuestMemoryBackend;
    let ram_end = memory.ram().last_addr().0 + 1;
    let pci = PciPlatform::new(PciBus::with_host_bridge(), memory.phys(), ram_end)
        .map_err(|e| Error::Config(e.to_string()))?;
    let weak = Arc::downgrade(&pci);
    memory.add_mmio_exit_hook(Box::new(move || {
        if let Some(p) = weak.upgrade().filter(|p| p.ecam_written()) {
            p.sync_if_changed();
        }
    }));
    Ok(pci)
}
