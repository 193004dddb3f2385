//! VM configuration.

use std::io::Write;

use crate::error::{Error, Result};
use crate::memory::MIN_RAM;

/// The most vCPUs a VM may have (the local APIC id space of xAPIC mode).
pub const MAX_CPUS: u32 = 254;

/// What the ROM of a direct kernel boot, where no firmware runs, holds:
/// `hlt` instructions.
const HLT: u8 = 0xf4;

/// The ROM of a direct kernel boot: the BIOS area, all `hlt`.
fn direct_boot_rom() -> Vec<u8> {
    vec![HLT; BIOS_AREA_SIZE as usize]
}

/// Whether `firmware` is the ROM of a direct kernel boot (of any size:
/// saved states from before the ROM covered the BIOS area hold 4 KiB).
pub(crate) fn is_direct_boot_rom(firmware: &[u8]) -> bool {
    !firmware.is_empty() && firmware.iter().all(|&b| b == HLT)
}

/// What a reboot from inside the guest (a machine reset, such as Linux's
/// `reboot=k` through the keyboard controller) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnReboot {
    /// End the run with [`RunOutcome::Reboot`](crate::RunOutcome::Reboot)
    /// (as Firecracker does).
    #[default]
    Exit,
    /// Reset the machine and boot again (as QEMU does): a direct kernel
    /// boot loads its kernel, initrd and tables again.
    Restart,
}

/// Where the guest's serial output goes.
pub type SerialSink = Box<dyn Write + Send>;

/// Everything needed to build a VM.
pub struct VmConfig {
    /// Guest RAM in bytes.
    pub ram_bytes: u64,
    /// Number of vCPUs.
    pub cpus: u32,
    /// The firmware image, mapped as ROM ending at 4 GiB.
    pub firmware: Vec<u8>,
    /// The sink for COM1 output.
    pub serial: SerialSink,
    /// Check every vCPU's state against the SDM's VM-entry rules before it
    /// enters the guest (always on in debug builds).
    pub check_entry: bool,
    /// The memory balloon the guest is asked for at power-on, in bytes.
    pub balloon_bytes: u64,
    /// A kernel to boot directly instead of running the firmware.
    pub kernel: Option<crate::boot::KernelBoot>,
    /// With [`kernel`](Self::kernel): give the guest ACPI tables (the MP
    /// table is there either way).
    pub acpi: bool,
    /// What a reboot from inside the guest does.
    pub on_reboot: OnReboot,
    /// Virtio devices, attached over PCI in this order at 00:01.0,
    /// 00:02.0, ... (names unique, at most [`MAX_VIRTIO`]).
    pub virtio: Vec<Box<dyn crate::devices::virtio::VirtioDevice>>,
    /// The registry the VM's statistics go into. Devices opened for
    /// [`virtio`](Self::virtio) register theirs (`/Devices/<name>/...`)
    /// here before the VM exists, so they must be given this one.
    pub stats: stam::Registry,
}

/// The most virtio devices a VM has (one per slot after the host bridge).
pub const MAX_VIRTIO: usize = 31;

/// The PC BIOS area below 1 MiB (0xE0000-0xFFFFF) that firmware mirrors.
pub const BIOS_AREA_SIZE: u64 = 128 * 1024;

impl VmConfig {
    /// A configuration with `ram_bytes` of RAM, one vCPU, `firmware` as ROM
    /// and serial output discarded.
    pub fn new(ram_bytes: u64, firmware: Vec<u8>) -> Self {
        VmConfig {
            ram_bytes,
            cpus: 1,
            firmware,
            serial: Box::new(std::io::sink()),
            kernel: None,
            check_entry: false,
            balloon_bytes: 0,
            acpi: true,
            on_reboot: OnReboot::Exit,
            virtio: Vec::new(),
            stats: stam::Registry::new(),
        }
    }

    /// A configuration that boots `kernel` directly. No firmware runs: the
    /// ROM holds only `hlt`, but it is the size of a PC's BIOS area, so that
    /// the kernel's scans of 0xE0000-0xFFFFF (SMBIOS/DMI, ACPI, MP anchors)
    /// read memory instead of taking an MMIO exit per access: tens of
    /// thousands of exits per boot, seconds under nested virtualization.
    ///
    /// ```
    /// use vmm_core::{VmConfig, boot::KernelBoot};
    /// let boot = KernelBoot { kernel: vec![], initrd: None, cmdline: String::new() };
    /// let config = VmConfig::with_kernel(64 << 20, boot);
    /// assert_eq!(config.firmware.len(), vmm_core::config::BIOS_AREA_SIZE as usize);
    /// ```
    pub fn with_kernel(ram_bytes: u64, kernel: crate::boot::KernelBoot) -> Self {
        VmConfig {
            kernel: Some(kernel),
            ..VmConfig::new(ram_bytes, direct_boot_rom())
        }
    }

    /// Checks the configuration for things no VM can do, or this host
    /// cannot (more RAM than it could ever give the guest).
    pub fn validate(&self) -> Result<()> {
        check_machine(self.ram_bytes, self.cpus, &self.firmware)?;
        crate::memory::check_host_ram(self.ram_bytes)?;
        if let Some(kernel) = &self.kernel {
            crate::boot::direct::check(kernel, self.cpus)?;
        }
        if self.virtio.len() > MAX_VIRTIO {
            return Err(Error::Config(format!(
                "{} virtio devices: a VM has at most {MAX_VIRTIO}",
                self.virtio.len()
            )));
        }
        let mut names: Vec<&str> = self.virtio.iter().map(|d| d.name()).collect();
        names.sort_unstable();
        if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::Config(format!(
                "two virtio devices are called '{}'",
                twice[0]
            )));
        }
        Ok(())
    }
}

/// Checks the machine a VM is built as: its vCPU count, RAM size and
/// firmware image. Building a VM checks it, and so do saving and loading
/// the `vmm` saved-state unit that records the machine: what cannot be
/// built from a saved state is never saved.
pub(crate) fn check_machine(ram_bytes: u64, cpus: u32, firmware: &[u8]) -> Result<()> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(Error::Config(format!(
            "{cpus} vCPUs requested: a VM has 1 to {MAX_CPUS} vCPUs"
        )));
    }
    if ram_bytes < MIN_RAM {
        return Err(Error::Config(format!(
            "{ram_bytes} bytes of RAM requested: at least {} MiB is needed",
            MIN_RAM >> 20
        )));
    }
    crate::firmware::check_size(firmware.len() as u64)?;
    Ok(())
}

/// Parses a memory size: a number of MiB (`64`) or a number with a unit
/// suffix `K`, `M`, `G` or `T` (`512M`, `4G`).
///
/// ```
/// use vmm_core::config::parse_size;
/// assert_eq!(parse_size("64").unwrap(), 64 << 20);
/// assert_eq!(parse_size("2G").unwrap(), 2 << 30);
/// assert!(parse_size("lots").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(not_a_size(text)),
            };
            (&t[..i], shift)
        }
        _ => (t, 20),
    };
    let n: u64 = digits.parse().map_err(|_| not_a_size(text))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| Error::Config(format!("size {text:?} is too large")))
}

fn not_a_size(text: &str) -> Error {
    Error::Config(format!(
        "{text:?} is not a size (examples: 64, 512M, 2G; units K, M, G, T)"
    ))
}
