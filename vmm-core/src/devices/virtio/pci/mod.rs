//! Virtio over PCI, the modern (virtio 1.x, section 4.1) transport only.
//!
//! A [`VirtioPci`] is a PCI function with vendor 0x1af4 and device
//! 0x1040 + the device type, revision 1, one 32-bit memory BAR (BAR 0)
//! holding every register region ([`layout`]), the virtio vendor
//! capabilities pointing into it and an MSI-X capability whose table and
//! PBA are in it too. Queue notifications reach the device through
//! ioeventfds at the notify addresses; interrupts go out as MSI-X messages
//! through KVM's MSI routes, or on INTA# with the ISR when the driver does
//! not enable MSI-X.

mod common_cfg;
mod interrupt;
pub(crate) mod transport;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use parking_lot::Mutex;

pub use interrupt::NO_VECTOR;
use interrupt::{Shared, Stats};
use transport::Transport;

use super::{DeviceError, GuestRam, VirtioDevice};
use crate::devices::pci::layout::intx_gsi;
use crate::devices::pci::{
    BarKind, ConfigSpace, DevFn, Identity, IrqRouting, MSIX_CAP_ID, Msix, MsixPlacement,
    PciFunction,
};

/// Where the register regions are in BAR 0.
pub mod layout {
    /// Each region's size (and alignment).
    pub const REGION_SIZE: u64 = 0x1000;
    /// The common configuration.
    pub const COMMON_OFFSET: u64 = 0x0000;
    /// The ISR status byte.
    pub const ISR_OFFSET: u64 = 0x1000;
    /// The device-specific configuration.
    pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
    /// The notification addresses: queue `i` at
    /// `NOTIFY_OFFSET + NOTIFY_MULTIPLIER * i`.
    pub const NOTIFY_OFFSET: u64 = 0x3000;
    /// `notify_off_multiplier`: bytes between queues' notify addresses.
    pub const NOTIFY_MULTIPLIER: u64 = 4;
    /// The MSI-X table.
    pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
    /// The MSI-X pending-bit array.
    pub const MSIX_PBA_OFFSET: u64 = 0x5000;
    /// Bytes of BAR 0.
    pub const BAR_SIZE: u64 = 0x8000;
}

/// Virtio's PCI vendor ID.
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// Modern device IDs are this plus the device type.
pub const VIRTIO_DEVICE_BASE: u16 = 0x1040;
/// Vendor-specific capability ID (the virtio capabilities).
const VENDOR_CAP_ID: u8 = 0x09;
/// Capability types (`cfg_type`).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
/// The most queues (one MSI-X vector each, plus one for configuration
/// changes, in a 4 KiB table).
pub const MAX_QUEUES: usize = 255;
/// Offset of the MSI-X message control in its capability.
const MSIX_CONTROL: u8 = 2;

/// A virtio device on the PCI bus.
pub struct VirtioPci {
    config: ConfigSpace,
    /// Offset of the MSI-X capability.
    msix_cap: u8,
    transport: Arc<Mutex<Transport>>,
}

/// The PCI class of a device type (what `lspci` shows); others are
/// "unclassified".
fn class_of(device_type: u32) -> (u8, u8) {
    use virtio_bindings::virtio_ids::{VIRTIO_ID_BLOCK, VIRTIO_ID_CONSOLE, VIRTIO_ID_NET};
    match device_type {
        VIRTIO_ID_NET => (0x02, 0x00),
        VIRTIO_ID_BLOCK => (0x01, 0x00),
        VIRTIO_ID_CONSOLE => (0x07, 0x80),
        _ => (0xff, 0x00),
    }
}

/// A virtio capability's body (after ID and next): `cfg_type` pointing at
/// `length` bytes at `offset` in BAR 0, with `extra` appended.
fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let cap_len = 16 + extra.len() as u8;
    let mut body = vec![cap_len, cfg_type, 0, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

impl VirtioPci {
    /// `device` as function `at` of the bus: its configuration space and
    /// MSI-X vectors (one per queue and one for configuration changes),
    /// statistics under `/Devices/<name>/`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        at: DevFn,
        memory: GuestRam,
        routing: Arc<dyn IrqRouting>,
        stats: &stam::Registry,
    ) -> Result<Self, DeviceError> {
        let name = device.name().to_owned();
        let setup = |reason: String| DeviceError::Setup {
            device: name.clone(),
            reason,
        };
        let max_sizes = device.queue_max_sizes().to_vec();
        if max_sizes.is_empty() || max_sizes.len() > MAX_QUEUES {
            return Err(setup(format!(
                "{} queues (1 to {MAX_QUEUES})",
                max_sizes.len()
            )));
        }
        if let Some(bad) = max_sizes
            .iter()
            .find(|m| !m.is_power_of_two() || **m > 32768)
        {
            return Err(setup(format!(
                "queue size {bad} (a power of two up to 32768)"
            )));
        }
        let device_type = device.device_type();
        let device_id = u16::try_from(device_type)
            .ok()
            .and_then(|t| VIRTIO_DEVICE_BASE.checked_add(t))
            .ok_or_else(|| setup(format!("device type {device_type}")))?;
        let (class, subclass) = class_of(device_type);
        let mut config = ConfigSpace::new(Identity {
            vendor: VIRTIO_VENDOR,
            device: device_id,
            revision: 1,
            class,
            subclass,
            prog_if: 0,
            subsystem_vendor: VIRTIO_VENDOR,
            subsystem: 0x1100,
        });
        let pci = |e: crate::devices::pci::PciError| setup(e.to_string());
        let kind = BarKind::Memory32 {
            prefetchable: false,
        };
        config.add_bar(0, kind, layout::BAR_SIZE).map_err(pci)?;
        let region = layout::REGION_SIZE;
        let multiplier = (layout::NOTIFY_MULTIPLIER as u32).to_le_bytes();
        let notify_len = layout::NOTIFY_MULTIPLIER * max_sizes.len() as u64;
        for body in [
            virtio_cap(CAP_COMMON, layout::COMMON_OFFSET, region, &[]),
            virtio_cap(CAP_NOTIFY, layout::NOTIFY_OFFSET, notify_len, &multiplier),
            virtio_cap(CAP_ISR, layout::ISR_OFFSET, region, &[]),
            virtio_cap(CAP_DEVICE, layout::DEVICE_CFG_OFFSET, region, &[]),
        ] {
            config
                .add_capability(VENDOR_CAP_ID, &body, &vec![0; body.len()])
                .map_err(pci)?;
        }
        let vectors = max_sizes.len() as u16 + 1;
        let msix = Msix::new(vectors, Arc::clone(&routing)).map_err(&setup)?;
        let (body, writable) = msix.capability(MsixPlacement {
            table_bar: 0,
            table_offset: layout::MSIX_TABLE_OFFSET as u32,
            pba_bar: 0,
            pba_offset: layout::MSIX_PBA_OFFSET as u32,
        });
        let msix_cap = config
            .add_capability(MSIX_CAP_ID, &body, &writable)
            .map_err(pci)?;
        // INTA#.
        config.set_interrupt_pin(1);
        let stats = Stats::register(stats, &name).map_err(|e| setup(e.to_string()))?;
        let gsi = intx_gsi(at.bits() >> 3, 0);
        let shared = Arc::new(Shared::new(max_sizes.len(), msix, routing, gsi, stats));
        let notify = (0..max_sizes.len())
            .map(|_| vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| setup(format!("eventfd: {e}")))?;
        let common = common_cfg::CommonCfg::new(device.features(), &max_sizes, Arc::clone(&shared));
        let transport = Transport {
            device,
            common,
            shared,
            notify,
            bar: None,
            memory,
            active: false,
            parked: None,
        };
        Ok(VirtioPci {
            config,
            msix_cap,
            transport: Arc::new(Mutex::new(transport)),
        })
    }

    /// The transport, for the saved-state unit and `info virtio`.
    pub(crate) fn transport(&self) -> Arc<Mutex<Transport>> {
        Arc::clone(&self.transport)
    }

    /// The MSI-X message control as the guest wrote it.
    fn msix_control(&self) -> u16 {
        let mut b = [0; 2];
        self.config.read(self.msix_cap + MSIX_CONTROL, &mut b);
        u16::from_le_bytes(b)
    }
}

impl PciFunction for VirtioPci {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn write_config(&mut self, offset: u8, data: &[u8]) {
        self.config.write(offset, data);
        let control = u16::from(self.msix_cap + MSIX_CONTROL);
        let end = u16::from(offset) + data.len() as u16;
        if u16::from(offset) < control + 2 && control < end {
            let value = self.msix_control();
            let t = self.transport.lock();
            t.shared.msix.lock().set_control(value);
        }
    }

    fn bar_access(&mut self, bar: usize, offset: u64, mut data: iom::Data<'_>) {
        if bar == 0 {
            self.transport.lock().bar_access(offset, data);
        } else {
            data.fill_read(0xff);
        }
    }

    fn bar_mapped(&mut self, bar: usize, address: Option<u64>) {
        if bar == 0 {
            self.transport.lock().bar_mapped(address);
        }
    }

    fn reset(&mut self) {
        self.config.reset();
        let mut t = self.transport.lock();
        t.reset();
        t.shared.msix.lock().reset();
    }
}
