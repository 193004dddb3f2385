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

use kvm_bindings::KVM_IOAPIC_NUM_PINS;
use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result, ioctl};
use crate::vm::Vm;

impl Vm {
    /// A new non-blocking eventfd registered as an irqfd for `gsi`: each
    /// write to it raises that line of the in-kernel PIC and IOAPIC (GSIs
    /// 0–15 are the ISA IRQs, up to 23 the IOAPIC's other pins). Needs the
    /// in-kernel irqchip ([`Vm::create_irqchip`]); KVM refuses it without.
    /// The line stays registered until the VM is dropped.
    ///
    /// KVM accepts any GSI but routes only the IOAPIC's pins, so a GSI
    /// past them is refused here with [`Error::UnroutedGsi`] rather than
    /// becoming a line that never interrupts.
    pub fn irqfd(&self, gsi: u32) -> Result<EventFd> {
        if gsi >= KVM_IOAPIC_NUM_PINS {
            return Err(Error::UnroutedGsi(gsi));
        }
        let event = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        self.fd()
            .register_irqfd(&event, gsi)
            .map_err(ioctl("KVM_IRQFD"))?;
        Ok(event)
    }
}
