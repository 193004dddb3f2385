//! ACPI tables for a direct kernel boot: how a Linux built without MP
//! table support (Debian's, for one) learns its processors, interrupt
//! routing and legacy devices.
//!
//! [`build`] lays out, from [`ACPI_ADDR`] on (a range the e820 map reports
//! as reserved): the RSDP, the DSDT (legacy devices and processors), the
//! FACS, the FADT (a PC with legacy devices, not hardware-reduced), the
//! MADT (local APICs, I/O APIC, overrides, NMI), the MCFG (the PCI ECAM)
//! and the XSDT listing the FADT, the MADT and the MCFG. The loader hands the RSDP's address to the kernel in the zero
//! page (`acpi_rsdp_addr`) or the PVH start info (`rsdp_paddr`).

mod dsdt;
mod fadt;
mod madt;
mod pci;

#[cfg(test)]
mod tests;

use acpi_tables::Aml;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;

use super::error::{Error, Result};
use super::layout::{ACPI_ADDR, ACPI_SIZE};

pub use madt::MAX_CPUS;

/// The OEM id every table carries.
const OEM_ID: [u8; 6] = *b"VMMCOR";
/// The OEM table id every table carries.
const OEM_TABLE_ID: [u8; 8] = *b"DIRBOOT ";
const OEM_REVISION: u32 = 1;
/// Bytes of a system description table's header.
const HEADER_LEN: u32 = 36;
/// The ISA IRQ of the System Control Interrupt.
const SCI_IRQ: u8 = 9;
/// Tables start on 8-byte boundaries; the FACS on a 64-byte one.
const TABLE_ALIGN: usize = 8;
const FACS_ALIGN: usize = 64;

/// Where the RSDP is: the first thing at [`ACPI_ADDR`].
pub const RSDP_ADDR: u64 = ACPI_ADDR;

/// Builds the ACPI tables for `cpus` vCPUs and the PCI root bridge with
/// the 64-bit window `mmio64` (`(start, size)`, see
/// [`mmio64_window`](crate::devices::pci::layout::mmio64_window)) as one
/// image to be written at [`ACPI_ADDR`], the RSDP first.
///
/// ```
/// use vmm_core::boot::acpi;
/// use vmm_core::devices::pci::layout::mmio64_window;
///
/// let image = acpi::build(2, mmio64_window(256 << 20))?;
/// assert_eq!(&image[..8], b"RSD PTR ");
/// assert_eq!(image[..20].iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
/// # Ok::<(), vmm_core::boot::Error>(())
/// ```
pub fn build(cpus: u32, mmio64: (u64, u64)) -> Result<Vec<u8>> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(Error::Machine(format!(
            "{cpus} vCPUs: the ACPI tables describe 1 to {MAX_CPUS}"
        )));
    }
    let mut image = Image::default();
    image.place(&vec![0; Rsdp::len()], TABLE_ALIGN);
    let dsdt = image.place(&dsdt::build(cpus, mmio64), TABLE_ALIGN);
    let facs = image.place(&fadt::facs(), FACS_ALIGN);
    let fadt = image.place(&fadt::build(dsdt, facs), TABLE_ALIGN);
    let madt = image.place(&madt::build(cpus), TABLE_ALIGN);
    let mcfg = image.place(&pci::mcfg(), TABLE_ALIGN);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt);
    xsdt.add_entry(madt);
    xsdt.add_entry(mcfg);
    let mut bytes = Vec::new();
    xsdt.to_aml_bytes(&mut bytes);
    let xsdt = image.place(&bytes, TABLE_ALIGN);
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt).to_aml_bytes(&mut rsdp);
    image.bytes[..rsdp.len()].copy_from_slice(&rsdp);
    if image.bytes.len() as u64 > ACPI_SIZE {
        return Err(Error::Machine(format!(
            "the ACPI tables for {cpus} vCPUs take {} bytes, {ACPI_SIZE} are reserved",
            image.bytes.len()
        )));
    }
    Ok(image.bytes)
}

/// The tables laid out one after the other from [`ACPI_ADDR`].
#[derive(Default)]
struct Image {
    bytes: Vec<u8>,
}

impl Image {
    /// Appends `table` at the next multiple of `align` and returns its
    /// guest-physical address.
    fn place(&mut self, table: &[u8], align: usize) -> u64 {
        let at = self.bytes.len().next_multiple_of(align);
        self.bytes.resize(at, 0);
        self.bytes.extend_from_slice(table);
        ACPI_ADDR + at as u64
    }
}
