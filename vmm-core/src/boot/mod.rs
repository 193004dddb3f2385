//! Direct Linux kernel boot, the way `qemu -kernel` and Firecracker do it.
//!
//! A [`KernelBoot`] (bzImage or ELF `vmlinux`, initrd, command line) is
//! checked and laid out by [`KernelBoot::plan`] before the VM exists, then
//! [`KernelBoot::load`] writes the kernel, the initrd, the command line, the
//! zero page with the e820 map (or the PVH start info), the ACPI tables, the MP table, the
//! boot GDT and identity page tables into guest memory, and
//! [`set_entry_state`] puts the bootstrap processor at the entry point in
//! the mode the boot protocol requires. [`machine`] has the pieces a Linux
//! guest needs from the VM itself besides the in-kernel irqchip and PIT
//! that `hm-vmx` creates (COM1 on IRQ 4, CPUID, MSRs, LINT wiring), and
//! [`direct`] strings it all together for `Vm::new`.
//! [`test_kernel`](crate::guests::test_kernel) is the
//! project-built kernel that checks all of it from inside the guest.
//!
//! ```
//! use vmm_core::boot::{KernelBoot, layout};
//! use vmm_core::guests::test_kernel;
//!
//! let boot = KernelBoot {
//!     kernel: test_kernel::build()?,
//!     initrd: Some(vec![1, 2, 3]),
//!     cmdline: "console=ttyS0".into(),
//! };
//! let ram = [(0, 0xa_0000), (0x10_0000, 63 << 20)];
//! let plan = boot.plan(&ram, &layout::pc_reserved())?;
//! assert!(plan.initrd_addr.is_some());
//! # Ok::<(), vmm_core::Error>(())
//! ```

pub mod acpi;
mod cpu;
pub mod direct;
pub mod e820;
mod error;
pub mod header;
pub mod layout;
pub mod loader;
pub mod machine;
pub mod mptable;
pub mod zero_page;

pub use cpu::{BOOT_CS, BOOT_DS, Entry, set_entry_state};
pub use error::{Error, Result};
pub use loader::{BootPlan, KernelBoot, Loaded};
