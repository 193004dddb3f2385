//! Interrupt lines into the in-kernel interrupt controllers: eventfds KVM
//! turns into an edge on a GSI (`KVM_IRQFD`), so that a device thread can
//! raise an interrupt without a system call on the vCPU's path.
//!
//! ```no_run
//! let hv = hm_vmx::Hypervisor::open()?;
//! let mut vm = hv.create_vm()?;
//! vm.create_irqchip()?;
//! let com1 = vm.irqfd(4)?;
//! com1.write(1).expect("raise IRQ 4"); // the PIC and IOAPIC see IRQ 4
//! # Ok::<(), hm_vmx::Error>(())
//! ```

use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result, ioctl};
use crate::vm::Vm;

impl Vm {
    /// A new non-blocking eventfd registered as an irqfd for `gsi`: each
    /// write to it raises that line of the in-kernel PIC and IOAPIC (GSIs
    /// 0–15 are the ISA IRQs, up to 23 the IOAPIC's other pins), or sends
    /// the MSI an MSI GSI ([`Vm::allocate_msi_gsi`]) is routed to. Needs
    /// the in-kernel irqchip ([`Vm::create_irqchip`]); KVM refuses it
    /// without. The line stays registered until [`Vm::remove_irqfd`] or
    /// until the VM is dropped.
    ///
    /// KVM accepts any GSI but routes only the IOAPIC's pins and the
    /// routes it was given, so another GSI is refused here with
    /// [`Error::UnroutedGsi`] rather than becoming a line that never
    /// interrupts.
    pub fn irqfd(&self, gsi: u32) -> Result<EventFd> {
        if !self.gsi_routable(gsi) {
            return Err(Error::UnroutedGsi(gsi));
        }
        let event = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        self.fd()
            .register_irqfd(&event, gsi)
            .map_err(ioctl("KVM_IRQFD"))?;
        Ok(event)
    }

    /// Drives IOAPIC pin (or ISA IRQ) `gsi` to `level` (`KVM_IRQ_LINE`):
    /// what a level-triggered line such as a PCI INTx needs, which stays
    /// asserted until the device lowers it. `true` is the asserted state
    /// whatever polarity the guest programmed.
    pub fn set_irq_line(&self, gsi: u32, level: bool) -> Result<()> {
        if gsi >= kvm_bindings::KVM_IOAPIC_NUM_PINS {
            return Err(Error::UnroutedGsi(gsi));
        }
        self.fd()
            .set_irq_line(gsi, level)
            .map_err(ioctl("KVM_IRQ_LINE"))
    }

    /// Unregisters `event`, an irqfd [`Vm::irqfd`] made for `gsi`.
    pub fn remove_irqfd(&self, gsi: u32, event: &EventFd) -> Result<()> {
        self.fd()
            .unregister_irqfd(event, gsi)
            .map_err(ioctl("KVM_IRQFD (deassign)"))
    }
}
