//! The PCI bus: configuration mechanism #1 on ports 0xCF8-0xCFF and ECAM
//! ([`layout`] says where everything is), a host bridge at 00:00.0, and
//! type-0 configuration spaces for the functions on bus 0; BARs placed by
//! [`PciPlatform`] and decoded as `pgm` MMIO ranges; MSI-X through KVM's
//! MSI routes ([`Msix`]).

mod bus;
mod config_space;
mod ecam;
mod host_bridge;
pub(crate) mod irq;
pub mod layout;
mod msix;
mod platform;

pub use bus::{PCI_CONFIG_PORT, PCI_CONFIG_PORTS, PciBus, PciBusState};
pub use irq::IrqRouting;
pub use msix::{ENTRY_SIZE as MSIX_ENTRY_SIZE, MSIX_CAP_ID, Msix, MsixPlacement, MsixState};
pub use platform::{PciConf1, PciPlatform};

pub use config_space::{BAR_COUNT, Bar, BarKind, CONFIG_SPACE_SIZE, ConfigSpace, Identity};
pub use host_bridge::{HOST_BRIDGE_DEVICE, HOST_BRIDGE_VENDOR, HostBridge};

/// A PCI function: its configuration space, read and written a byte, word
/// or dword at a time, and the BARs the guest programmed.
pub trait PciFunction: Send {
    /// The function's configuration space.
    fn config(&self) -> &ConfigSpace;
    /// The function's configuration space, to change.
    fn config_mut(&mut self) -> &mut ConfigSpace;

    /// Reads `data.len()` (1, 2 or 4) bytes of configuration space at
    /// `offset`.
    fn read_config(&self, offset: u8, data: &mut [u8]) {
        self.config().read(offset, data);
    }

    /// Writes `data` (1, 2 or 4 bytes) into configuration space at
    /// `offset`.
    fn write_config(&mut self, offset: u8, data: &[u8]) {
        self.config_mut().write(offset, data);
    }

    /// The BARs with the addresses the guest gave them.
    fn bars(&self) -> Vec<Bar> {
        self.config().bars()
    }

    /// Back to the power-on state (machine reset).
    fn reset(&mut self) {
        self.config_mut().reset();
    }

    /// A guest access at `offset` into memory BAR `bar`. Functions without
    /// memory BARs read all ones.
    fn bar_access(&mut self, bar: usize, offset: u64, mut data: iom::Data<'_>) {
        let _ = (bar, offset);
        data.fill_read(0xff);
    }

    /// BAR `bar` now decodes at `address` (`None`: it decodes nowhere, the
    /// guest turned memory decoding off or moved it out of reach).
    fn bar_mapped(&mut self, bar: usize, address: Option<u64>) {
        let _ = (bar, address);
    }
}

/// A function's place on bus 0: device 0-31, function 0-7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DevFn(u8);

impl DevFn {
    /// Device `device` (0-31), function `function` (0-7).
    pub fn new(device: u8, function: u8) -> Result<Self, PciError> {
        if device >= 32 || function >= 8 {
            return Err(PciError::DevFn { device, function });
        }
        Ok(DevFn(device << 3 | function))
    }

    /// The device and function packed as in a configuration address (bits
    /// 7:3 device, 2:0 function).
    pub fn from_bits(bits: u8) -> Self {
        DevFn(bits)
    }

    /// The packed bits.
    pub fn bits(self) -> u8 {
        self.0
    }
}

impl std::fmt::Display for DevFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "00:{:02x}.{}", self.0 >> 3, self.0 & 7)
    }
}

/// What can go wrong building or restoring the PCI bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// No such device or function number.
    #[error("PCI device {device} function {function} does not exist (devices 0-31, functions 0-7)")]
    DevFn {
        /// The device number asked for.
        device: u8,
        /// The function number asked for.
        function: u8,
    },
    /// Two functions at one address.
    #[error("PCI function {0} is taken")]
    SlotTaken(DevFn),
    /// A BAR index out of range for its kind.
    #[error(
        "BAR {index} cannot be a {kind:?} BAR (a type-0 header has BARs 0-5; a 64-bit BAR takes two)"
    )]
    BarIndex {
        /// The BAR asked for.
        index: usize,
        /// Its kind.
        kind: BarKind,
    },
    /// A BAR size that is not a power of two or out of the kind's range.
    #[error(
        "BAR {index} ({kind:?}) cannot decode {size:#x} bytes (a power of two: 4-256 for I/O, at least 16 for memory)"
    )]
    BarSize {
        /// The BAR asked for.
        index: usize,
        /// Its kind.
        kind: BarKind,
        /// The size asked for.
        size: u64,
    },
    /// The platform has no room or no support for a BAR.
    #[error("{function}: BAR {index} of {size:#x} bytes cannot be placed: {reason}")]
    BarPlacement {
        /// The function.
        function: DevFn,
        /// The BAR.
        index: usize,
        /// Its size.
        size: u64,
        /// Why.
        reason: String,
    },
    /// `pgm` refused a range of the platform (the ECAM).
    #[error("PCI: {0}")]
    Map(String),
    /// A BAR register in use already.
    #[error("BAR {index} overlaps a BAR given already")]
    BarTaken {
        /// The BAR asked for.
        index: usize,
    },
    /// No room for a capability.
    #[error("no room in configuration space for capability {id:#x} of {len} bytes")]
    CapabilitySpace {
        /// The capability ID.
        id: u8,
        /// Its body's length (or a writable mask of another length).
        len: usize,
    },
    /// A saved function is not the function this VM has there.
    #[error("the saved PCI function is {:04x}:{:04x} (class {:02x}{:02x}), this VM's {:04x}:{:04x} (class {:02x}{:02x})", saved.vendor, saved.device, saved.class, saved.subclass, ours.vendor, ours.device, ours.class, ours.subclass)]
    RestoreIdentity {
        /// What the saved state holds.
        saved: Identity,
        /// What this VM has.
        ours: Identity,
    },
    /// The saved bus has other functions than this VM's.
    #[error("the saved PCI bus has functions [{saved}], this VM's [{ours}]")]
    RestoreFunctions {
        /// The saved functions' addresses.
        saved: String,
        /// This VM's.
        ours: String,
    },
}
