//! Guests embedded in the VMM, assembled at run time with `iced-x86`.
//!
//! Each guest is a firmware image that starts at the x86 reset vector; no
//! binary blobs are checked in.

pub(crate) mod asm;
pub mod counter;
mod demo;
mod echo;
mod halt;
mod idle;
mod pci_scan;
pub mod rom;
mod rom_gdt;
mod smp;
pub mod test_kernel;
pub mod tsc_gap;

use crate::error::{Error, Result};

/// A guest built into the VMM.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedGuest {
    /// The name `vmm run --guest` takes.
    pub name: &'static str,
    /// What the guest does, for `vmm run --list-guests`.
    pub description: &'static str,
    build: fn() -> Result<Vec<u8>>,
}

impl EmbeddedGuest {
    /// Assembles the guest's firmware image.
    pub fn firmware(&self) -> Result<Vec<u8>> {
        (self.build)()
    }
}

/// Every embedded guest, the default (`demo`) first.
pub const GUESTS: &[EmbeddedGuest] = &[
    EmbeddedGuest {
        name: "demo",
        description: "real mode -> protected mode -> PAE paging -> long mode, checking paged memory at each stage",
        build: demo::firmware,
    },
    EmbeddedGuest {
        name: "idle",
        description: "runs until powered off: halts between 100 Hz timer ticks, prints a heartbeat twice a second, has a balloon driver",
        build: idle::firmware,
    },
    EmbeddedGuest {
        name: "halt",
        description: "starts a 100 Hz timer, then halts with interrupts off (`cli; hlt`): the run ends with status 0, as when Linux halts without ACPI",
        build: halt::firmware,
    },
    EmbeddedGuest {
        name: "counter",
        description: "save/restore workload: ticks at 100 Hz, checks a counter (register and memory) and a 1 MiB buffer, APs count along; exits 0 after 400 ticks",
        build: counter::firmware,
    },
    EmbeddedGuest {
        name: "tsc-gap",
        description: "stores the TSC in a loop and keeps the longest gap between two stores (how long a save stopped it); dirties RAM at a rate the host sets",
        build: tsc_gap::firmware,
    },
    EmbeddedGuest {
        name: "echo",
        description: "reads COM1 by interrupt and echoes each byte, letters uppercased; a `q` ends the run with status 0",
        build: echo::firmware,
    },
    EmbeddedGuest {
        name: "smp",
        description: "the BSP wakes every AP with INIT-SIPI-SIPI; each AP reports its APIC id and checks in",
        build: smp::firmware,
    },
    EmbeddedGuest {
        name: "rom-gdt",
        description: "a GDT in ROM with accessed bits clear: the far jump and `mov ds` make the CPU write ROM; exits 0 if the ROM reads unchanged",
        build: rom_gdt::firmware,
    },
    EmbeddedGuest {
        name: "rom-gdt-data",
        description: "as rom-gdt, but only the data descriptor's accessed bit is clear (`mov ds` writes ROM first)",
        build: rom_gdt::firmware_data_only,
    },
    EmbeddedGuest {
        name: "pci-scan",
        description: "finds the host bridge through PCI configuration mechanism #1 (dword, word and byte reads) and scans bus 0; exits 0 if all is as expected",
        build: pci_scan::firmware,
    },
];

/// Looks up an embedded guest by name.
///
/// ```
/// let demo = vmm_core::guests::find("demo")?;
/// assert!(!demo.firmware()?.is_empty());
/// assert!(vmm_core::guests::find("nope").is_err());
/// # Ok::<(), vmm_core::Error>(())
/// ```
pub fn find(name: &str) -> Result<&'static EmbeddedGuest> {
    GUESTS.iter().find(|g| g.name == name).ok_or_else(|| {
        let names: Vec<_> = GUESTS.iter().map(|g| g.name).collect();
        Error::Config(format!(
            "no embedded guest named {name:?} (available: {})",
            names.join(", ")
        ))
    })
}
