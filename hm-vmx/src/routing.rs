//! MSI routes and ioeventfds: what a PCI device with MSI-X and virtio
//! queues needs from KVM.
//!
//! An MSI route (`KVM_SET_GSI_ROUTING`) turns a GSI past the IOAPIC's pins
//! into an MSI message (address and data as the guest programmed them in
//! an MSI-X table entry); an irqfd on that GSI ([`Vm::irqfd`]) then raises
//! the message from any thread. KVM replaces its whole routing table on
//! every change, so the VM keeps the table: the default routes of GSIs
//! 0-23 (the PIC pair and the IOAPIC, as KVM sets them up) and one route
//! per MSI GSI the guest has programmed.
//!
//! An ioeventfd (`KVM_IOEVENTFD`) makes a guest write to an MMIO address
//! signal an eventfd inside KVM, without an exit to user space.
//!
//! ```no_run
//! let hv = hm_vmx::Hypervisor::open()?;
//! let mut vm = hv.create_vm()?;
//! vm.create_irqchip()?;
//! let gsi = vm.allocate_msi_gsi()?;
//! let line = vm.irqfd(gsi)?;
//! vm.set_msi_route(gsi, 0xfee0_0000, 0x41)?; // vector 0x41 to APIC 0
//! line.write(1).expect("raise the MSI");
//! let notify = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
//! vm.register_ioeventfd(0xc000_3000, &notify)?;
//! # Ok::<(), hm_vmx::Error>(())
//! ```

use std::collections::BTreeMap;

use kvm_bindings::{
    KVM_IOAPIC_NUM_PINS, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_IRQ_ROUTES, KvmIrqRouting,
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch};
use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result, ioctl};
use crate::vm::Vm;

/// The first GSI handed out for MSI routes (GSIs below are the IOAPIC's
/// pins).
pub const FIRST_MSI_GSI: u32 = KVM_IOAPIC_NUM_PINS;
/// One past the last GSI KVM routes.
const GSI_END: u32 = KVM_MAX_IRQ_ROUTES as u32;
/// The ISA IRQs the PIC pair has (GSIs 0-15 also reach it).
const PIC_IRQS: u32 = 16;

/// An MSI message: what the device writes where to interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    /// The message address (0xFEEx_xxxx on x86).
    pub address: u64,
    /// The message data (vector, delivery mode, trigger).
    pub data: u32,
}

/// The MSI GSIs handed out, with the message each is routed to (`None`:
/// allocated, no route programmed).
pub(crate) type MsiRoutes = BTreeMap<u32, Option<MsiMessage>>;

fn irqchip_entry(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip, pin },
        },
        ..Default::default()
    }
}

fn msi_entry(gsi: u32, msg: MsiMessage) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            msi: kvm_irq_routing_msi {
                address_lo: msg.address as u32,
                address_hi: (msg.address >> 32) as u32,
                data: msg.data,
                ..Default::default()
            },
        },
        ..Default::default()
    }
}

/// The whole routing table: KVM's default routes of GSIs 0-23 (ISA IRQs
/// to both PICs and the IOAPIC, 16-23 to the IOAPIC only) and the MSI
/// routes programmed.
pub(crate) fn routing_table(routes: &MsiRoutes) -> Vec<kvm_irq_routing_entry> {
    let mut table = Vec::new();
    for gsi in 0..KVM_IOAPIC_NUM_PINS {
        if gsi < PIC_IRQS {
            let (chip, pin) = if gsi < 8 {
                (KVM_IRQCHIP_PIC_MASTER, gsi)
            } else {
                (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
            };
            table.push(irqchip_entry(gsi, chip, pin));
        }
        table.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    for (&gsi, msg) in routes {
        if let Some(msg) = msg {
            table.push(msi_entry(gsi, *msg));
        }
    }
    table
}

impl Vm {
    /// Hands out a GSI for MSI routes (the lowest free one from
    /// [`FIRST_MSI_GSI`] on): [`Vm::irqfd`] accepts it, and
    /// [`Vm::set_msi_route`] gives it a message. Until then a write to its
    /// irqfd interrupts nothing.
    pub fn allocate_msi_gsi(&self) -> Result<u32> {
        let mut routes = self.msi_routes();
        let gsi = (FIRST_MSI_GSI..GSI_END)
            .find(|g| !routes.contains_key(g))
            .ok_or(Error::UnroutedGsi(GSI_END))?;
        routes.insert(gsi, None);
        Ok(gsi)
    }

    /// Gives GSI `gsi` back: its route goes (unregister its irqfds
    /// first with [`Vm::remove_irqfd`]).
    pub fn free_msi_gsi(&self, gsi: u32) -> Result<()> {
        let mut routes = self.msi_routes();
        let had_route = routes.remove(&gsi).ok_or(Error::UnroutedGsi(gsi))?;
        if had_route.is_some() {
            self.write_routing(&routes)?;
        }
        Ok(())
    }

    /// Routes MSI GSI `gsi` (from [`Vm::allocate_msi_gsi`]) to the message
    /// `address`/`data`, rewriting KVM's routing table.
    pub fn set_msi_route(&self, gsi: u32, address: u64, data: u32) -> Result<()> {
        let mut routes = self.msi_routes();
        let slot = routes.get_mut(&gsi).ok_or(Error::UnroutedGsi(gsi))?;
        let msg = MsiMessage { address, data };
        if *slot == Some(msg) {
            return Ok(());
        }
        let old = slot.replace(msg);
        self.write_routing(&routes).inspect_err(|_| {
            routes.insert(gsi, old);
        })
    }

    /// Takes MSI GSI `gsi`'s route away (its irqfd then interrupts
    /// nothing); the GSI stays allocated.
    pub fn remove_msi_route(&self, gsi: u32) -> Result<()> {
        let mut routes = self.msi_routes();
        let slot = routes.get_mut(&gsi).ok_or(Error::UnroutedGsi(gsi))?;
        if slot.take().is_some() {
            self.write_routing(&routes)?;
        }
        Ok(())
    }

    /// The message MSI GSI `gsi` is routed to, if any.
    pub fn msi_route(&self, gsi: u32) -> Option<MsiMessage> {
        self.msi_routes().get(&gsi).copied().flatten()
    }

    /// Whether `gsi` is an IOAPIC pin or an allocated MSI GSI.
    pub(crate) fn gsi_routable(&self, gsi: u32) -> bool {
        gsi < KVM_IOAPIC_NUM_PINS || self.msi_routes().contains_key(&gsi)
    }

    fn write_routing(&self, routes: &MsiRoutes) -> Result<()> {
        let table = KvmIrqRouting::from_entries(&routing_table(routes))
            .map_err(|_| Error::UnroutedGsi(GSI_END))?;
        self.fd()
            .set_gsi_routing(&table)
            .map_err(ioctl("KVM_SET_GSI_ROUTING"))
    }

    /// Makes every guest write (of any width) to guest-physical `address`
    /// signal `event` inside KVM instead of exiting to user space
    /// (`KVM_IOEVENTFD`, no data match). Writes of other addresses in the
    /// same page still exit.
    pub fn register_ioeventfd(&self, address: u64, event: &EventFd) -> Result<()> {
        self.fd()
            .register_ioevent(event, &IoEventAddress::Mmio(address), NoDatamatch)
            .map_err(ioctl("KVM_IOEVENTFD"))
    }

    /// Undoes [`Vm::register_ioeventfd`] for `address` and `event`.
    pub fn unregister_ioeventfd(&self, address: u64, event: &EventFd) -> Result<()> {
        self.fd()
            .unregister_ioevent(event, &IoEventAddress::Mmio(address), NoDatamatch)
            .map_err(ioctl("KVM_IOEVENTFD (deassign)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_keeps_the_default_routes_and_adds_programmed_msis() {
        let mut routes = MsiRoutes::new();
        routes.insert(24, None);
        routes.insert(
            25,
            Some(MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x4041,
            }),
        );
        let table = routing_table(&routes);
        // 16 ISA IRQs on a PIC and the IOAPIC, 8 more on the IOAPIC, 1 MSI.
        assert_eq!(table.len(), 16 * 2 + 8 + 1);
        let on = |gsi: u32| table.iter().filter(move |e| e.gsi == gsi);
        let chips = |gsi: u32| -> Vec<(u32, u32)> {
            on(gsi)
                // SAFETY: irqchip entries hold the `irqchip` member.
                .map(|e| unsafe { (e.u.irqchip.irqchip, e.u.irqchip.pin) })
                .collect()
        };
        assert_eq!(
            chips(3),
            [(KVM_IRQCHIP_PIC_MASTER, 3), (KVM_IRQCHIP_IOAPIC, 3)]
        );
        assert_eq!(
            chips(14),
            [(KVM_IRQCHIP_PIC_SLAVE, 6), (KVM_IRQCHIP_IOAPIC, 14)]
        );
        assert_eq!(chips(20), [(KVM_IRQCHIP_IOAPIC, 20)]);
        assert_eq!(on(24).count(), 0, "an allocated GSI without a route");
        let msi: Vec<_> = on(25).collect();
        assert_eq!(msi.len(), 1);
        assert_eq!(msi[0].type_, KVM_IRQ_ROUTING_MSI);
        // SAFETY: MSI entries hold the `msi` member.
        let m = unsafe { msi[0].u.msi };
        assert_eq!(
            (m.address_lo, m.address_hi, m.data),
            (0xfee0_1000, 1, 0x4041)
        );
    }
}
