//! The steps `Vm::new` takes for a direct kernel boot, once the VM has its
//! memory, its in-kernel irqchip and PIT, and its vCPUs.

use pgm::phys::TrackedMemory;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::cpu::set_entry_state;
use super::error::Result;
use super::layout::pc_reserved;
use super::loader::{BootPlan, KernelBoot, Loaded};
use super::{acpi, machine, mptable};
use crate::devices::pci::layout::mmio64_window;

/// What can be checked before the VM exists: the image, the command line
/// and whether the boot tables can describe `cpus` processors.
pub fn check(boot: &KernelBoot, cpus: u32) -> Result<()> {
    boot.check()?;
    acpi::build(cpus, mmio64_window(0))?;
    mptable::build(cpus).map(drop)
}

/// The RAM ranges of `mem` as `(start, length)` pairs.
pub fn ram_ranges(mem: &TrackedMemory) -> Vec<(u64, u64)> {
    mem.iter().map(|r| (r.start_addr().0, r.len())).collect()
}

/// Plans the boot for a PC with `ram` ranges, with ACPI tables or
/// (`acpi` false) without.
pub fn plan(boot: &KernelBoot, ram: &[(u64, u64)], acpi: bool) -> Result<BootPlan> {
    let mut plan = boot.plan(ram, &pc_reserved())?;
    if !acpi {
        plan.rsdp = None;
    }
    Ok(plan)
}

/// After the vCPUs exist: loads the kernel and its tables into `mem`, gives
/// every vCPU the boot CPUID, MSRs and LINT wiring, and puts the first vCPU
/// at the kernel's entry point (the others wait for INIT/SIPI).
pub fn after_vcpus(
    boot: &KernelBoot,
    plan: &BootPlan,
    mem: &TrackedMemory,
    vcpus: &[hm_vmx::Vcpu],
) -> Result<Loaded> {
    let loaded = boot.load(plan, mem, vcpus.len() as u32)?;
    for vcpu in vcpus {
        machine::configure_vcpu(vcpu.state())?;
        machine::setup_lint(vcpu.state())?;
    }
    if let Some(bsp) = vcpus.first() {
        set_entry_state(bsp, &loaded.entry)?;
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use linux_loader::loader::bootparam::boot_params;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::boot::layout::{ACPI_ADDR, MPTABLE_ADDR, ZERO_PAGE_ADDR};
    use crate::guests::test_kernel;

    /// Loads the test kernel into 64 MiB with or without ACPI; returns the
    /// zero page's RSDP address and the first bytes at the ACPI and MP
    /// table addresses.
    fn load(acpi: bool) -> (u64, [u8; 8], [u8; 4]) {
        let ram = [(0, 0xa_0000), (0x10_0000, 63 << 20)];
        let mem = TrackedMemory::from_ranges(
            &ram.map(|(start, len)| (GuestAddress(start), len as usize)),
        )
        .unwrap();
        let boot = KernelBoot {
            kernel: test_kernel::build().unwrap(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
        };
        let plan = plan(&boot, &ram, acpi).unwrap();
        boot.load(&plan, &mem, 2).unwrap();
        let zp: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        let (mut rsdp, mut mp) = ([0u8; 8], [0u8; 4]);
        mem.read_slice(&mut rsdp, GuestAddress(ACPI_ADDR)).unwrap();
        mem.read_slice(&mut mp, GuestAddress(MPTABLE_ADDR)).unwrap();
        (zp.acpi_rsdp_addr, rsdp, mp)
    }

    #[test]
    fn without_acpi_only_the_mp_table_is_there() {
        assert_eq!(load(true), (ACPI_ADDR, *b"RSD PTR ", *b"_MP_"));
        assert_eq!(load(false), (0, [0; 8], *b"_MP_"));
    }
}
