//! Machine reset: the VM's power-on state, kept to go back to it.
//!
//! [`PowerOn`] is captured once the VM is built: every vCPU's complete
//! state (registers, MSRs, local APIC, MP state), the in-kernel PIC pair,
//! IOAPIC and PIT, and for a direct kernel boot the kernel with its plan.
//! [`reset`] puts it all back with every EMT out of the guest: RAM zeroed,
//! ROM restored, devices reset, and a direct-boot kernel loaded again with
//! its initrd, command line, zero page and tables, so the bootstrap
//! processor enters it as at power-on and the others wait for INIT/SIPI.
//!
//! The balloon is emptied: its pages are RAM of the guest again and the
//! guest's driver starts over, inflating to the target, which stays (as
//! VirtualBox's PGM turns ballooned pages into zero pages and resets GMM's
//! balloon on a reset, and QEMU keeps virtio-balloon's requested size).
//! Virtio devices reset with the PCI bus (their transports deactivate).
//! A reset is all or nothing: the step that can be refused (GMM taking
//! the balloon's pages back) comes before anything changes.

use std::sync::Arc;

use hm_vmx::{CpuState, IrqchipState, PitState, VcpuState};

use crate::boot::{BootPlan, KernelBoot};
use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::sync::rendezvous::{RendezvousFlags, RendezvousType};
use crate::sync::vmstate::VmState;

/// A direct kernel boot, kept to be loaded again.
pub(crate) struct KernelReload {
    pub(crate) boot: KernelBoot,
    pub(crate) plan: BootPlan,
}

/// Everything a reset goes back to.
pub(crate) struct PowerOn {
    cpus: Vec<CpuState>,
    irqchip: IrqchipState,
    pit: PitState,
    kernel: Option<KernelReload>,
}

impl PowerOn {
    /// Captures the power-on state of a VM that has not run yet.
    pub(crate) fn capture(
        vcpus: &[VcpuState],
        backend: &hm_vmx::Vm,
        msrs: &[u32],
        kernel: Option<KernelReload>,
    ) -> Result<Self> {
        let xcrs = backend.guest_has_xsave();
        Ok(PowerOn {
            cpus: vcpus
                .iter()
                .map(|v| CpuState::read(v, msrs, xcrs))
                .collect::<hm_vmx::Result<_>>()?,
            irqchip: IrqchipState::read(backend)?,
            pit: PitState::read(backend)?,
            kernel,
        })
    }

    /// Whether a reset starts the guest again: false for a VM restored from
    /// a file that was booted from a kernel directly (the saved state holds
    /// the placeholder ROM, not the kernel), whose reset would only halt.
    pub(crate) fn restarts(&self, firmware: &[u8]) -> bool {
        self.kernel.is_some() || !crate::config::is_direct_boot_rom(firmware)
    }
}

/// Where a PC's BIOS data area keeps the reset flag, and the value that
/// asks for a warm reset (Linux writes it before resetting when its reboot
/// mode is `warm`, as `reboot=panic_warm` makes it on a panic).
const RESET_FLAG_ADDR: u64 = 0x472;
const WARM_RESET: u16 = 0x1234;

/// Whether the guest set the BIOS warm-reset flag before resetting.
pub(crate) fn warm_reset(machine: &Machine) -> bool {
    use vm_memory::{Bytes, GuestAddress};
    let flag: Option<u16> = machine
        .memory
        .ram()
        .read_obj(GuestAddress(RESET_FLAG_ADDR))
        .ok();
    flag == Some(WARM_RESET)
}

/// Resets the VM as the reset line of a PC does (see the module). Callable
/// from any thread, an EMT included. A suspended VM stays suspended. When
/// a step is refused, the VM is as before (see [`reset_machine`]).
pub(crate) fn reset(m: &Arc<Machine>) -> Result<()> {
    let resume_to = m.state.state();
    let from = [
        (VmState::Running, VmState::Resetting),
        (VmState::Suspended, VmState::Resetting),
    ];
    m.state.try_transition(&from)?;
    let machine = Arc::clone(m);
    let result = m.rendezvous.call(
        RendezvousType::Descending,
        RendezvousFlags::default(),
        move |cpu| {
            // Descending: vCPU 0 is the last, when every EMT is out (each
            // completed its last I/O instruction on the way).
            if cpu == 0 {
                reset_machine(&machine)?;
            }
            Ok(None)
        },
    );
    let back = if resume_to == VmState::Suspended {
        VmState::Suspended
    } else {
        VmState::Running
    };
    m.state.set(back)?;
    // EMTs that looked at the state during the reset are waiting for it
    // to change: wake them.
    m.unhalt_all()?;
    result?;
    Ok(())
}

/// The reset itself, with every EMT out of the guest. What may be refused
/// comes first and changes nothing when it is: the balloon's pages go back
/// to the guest (GMM counts them as the VM's again). Everything after it
/// puts back states KVM produced or accepted at power-on, or cannot fail
/// short of a broken host: the vCPUs, the devices (stopped before RAM is
/// zeroed under their workers), RAM and ROM, the in-kernel irqchip and
/// PIT, and a directly booted kernel.
fn reset_machine(machine: &Machine) -> Result<()> {
    let power_on = &machine.power_on;
    machine.memory.deflate_balloon()?;
    for (state, initial) in machine.vcpu_states.iter().zip(&power_on.cpus) {
        initial.write(state)?;
    }
    machine.io.reset();
    machine.memory.reset()?;
    let backend = &machine.saved.backend;
    // ROM protection and the A20 gate are back at power-on: so are the KVM
    // slots.
    machine.memory.sync_slots(backend)?;
    power_on.irqchip.write(backend)?;
    power_on.pit.write(backend)?;
    if let Some(k) = &power_on.kernel {
        k.boot
            .load(&k.plan, machine.memory.ram(), machine.cpus())
            .map_err(Error::Boot)?;
    }
    Ok(())
}
