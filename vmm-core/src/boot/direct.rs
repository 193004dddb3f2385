//! The steps `Vm::new` takes for a direct kernel boot, once the VM has its
//! memory, its in-kernel irqchip and PIT, and its vCPUs.

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::cpu::set_entry_state;
use super::error::Result;
use super::layout::pc_reserved;
use super::loader::{BootPlan, KernelBoot, Loaded};
use super::{acpi, machine, mptable};

/// What can be checked before the VM exists: the image, the command line
/// and whether the boot tables can describe `cpus` processors.
pub fn check(boot: &KernelBoot, cpus: u32) -> Result<()> {
    boot.check()?;
    acpi::build(cpus)?;
    mptable::build(cpus).map(drop)
}

/// The RAM ranges of `mem` as `(start, length)` pairs.
pub fn ram_ranges(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    mem.iter().map(|r| (r.start_addr().0, r.len())).collect()
}

/// Plans the boot for a PC with `ram` ranges and its 32-bit MMIO hole
/// from `mmio_hole_start`, with ACPI tables or (`acpi` false) without.
pub fn plan(
    boot: &KernelBoot,
    ram: &[(u64, u64)],
    mmio_hole_start: u64,
    acpi: bool,
) -> Result<BootPlan> {
    let mut plan = boot.plan(ram, &pc_reserved(mmio_hole_start))?;
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
    mem: &GuestMemoryMmap,
    vcpus: &[hm_vmx::Vcpu],
) -> Result<Loaded> {
    let loaded = boot.load(plan, mem, vcpus.len() as u32)?;
    for vcpu in vcpus {
        machine::configure_vcpu(vcpu.fd())?;
        machine::setup_lint(vcpu.fd())?;
    }
    if let Some(bsp) = vcpus.first() {
        set_entry_state(bsp, &loaded.entry)?;
    }
    Ok(loaded)
}
