//! [`IrqRouting`]: what PCI functions need from the in-kernel interrupt
//! controllers (MSI routes, irqfds, INTx lines) and from KVM's ioeventfds.
//! `hm_vmx::Vm` implements it; tests use a fake that records.

use vmm_sys_util::eventfd::EventFd;

/// Interrupt and notification plumbing for PCI functions.
pub trait IrqRouting: Send + Sync {
    /// A new MSI GSI and the irqfd that raises it (unrouted until
    /// [`set_msi_route`](IrqRouting::set_msi_route)).
    fn allocate_msi(&self) -> Result<(u32, EventFd), String>;
    /// Routes MSI GSI `gsi` to the message `address`/`data`.
    fn set_msi_route(&self, gsi: u32, address: u64, data: u32) -> Result<(), String>;
    /// Takes MSI GSI `gsi`'s route away.
    fn remove_msi_route(&self, gsi: u32) -> Result<(), String>;
    /// Drives the level-triggered line `gsi`.
    fn set_intx(&self, gsi: u32, level: bool) -> Result<(), String>;
    /// Guest writes to `address` signal `event` without an exit.
    fn register_ioeventfd(&self, address: u64, event: &EventFd) -> Result<(), String>;
    /// Undoes [`register_ioeventfd`](IrqRouting::register_ioeventfd).
    fn unregister_ioeventfd(&self, address: u64, event: &EventFd) -> Result<(), String>;
}

impl IrqRouting for hm_vmx::Vm {
    fn allocate_msi(&self) -> Result<(u32, EventFd), String> {
        let gsi = self.allocate_msi_gsi().map_err(|e| e.to_string())?;
        let fd = self.irqfd(gsi).map_err(|e| e.to_string())?;
        Ok((gsi, fd))
    }

    fn set_msi_route(&self, gsi: u32, address: u64, data: u32) -> Result<(), String> {
        hm_vmx::Vm::set_msi_route(self, gsi, address, data).map_err(|e| e.to_string())
    }

    fn remove_msi_route(&self, gsi: u32) -> Result<(), String> {
        hm_vmx::Vm::remove_msi_route(self, gsi).map_err(|e| e.to_string())
    }

    fn set_intx(&self, gsi: u32, level: bool) -> Result<(), String> {
        self.set_irq_line(gsi, level).map_err(|e| e.to_string())
    }

    fn register_ioeventfd(&self, address: u64, event: &EventFd) -> Result<(), String> {
        hm_vmx::Vm::register_ioeventfd(self, address, event).map_err(|e| e.to_string())
    }

    fn unregister_ioeventfd(&self, address: u64, event: &EventFd) -> Result<(), String> {
        hm_vmx::Vm::unregister_ioeventfd(self, address, event).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A recording [`IrqRouting`] for tests without `/dev/kvm`.

    use std::collections::BTreeMap;

    use parking_lot::Mutex;
    use vmm_sys_util::eventfd::EventFd;

    use super::IrqRouting;

    /// What the fake has been told.
    #[derive(Default)]
    pub(crate) struct FakeRouting {
        /// Each allocated GSI's irqfd (a clone the test reads).
        pub(crate) irqfds: Mutex<BTreeMap<u32, EventFd>>,
        /// Routes in force.
        pub(crate) routes: Mutex<BTreeMap<u32, (u64, u32)>>,
        /// INTx levels.
        pub(crate) intx: Mutex<BTreeMap<u32, bool>>,
        /// Registered ioeventfds by address.
        pub(crate) ioeventfds: Mutex<BTreeMap<u64, EventFd>>,
    }

    impl FakeRouting {
        /// How many times GSI `gsi`'s irqfd was written since last asked.
        pub(crate) fn fired(&self, gsi: u32) -> u64 {
            self.irqfds
                .lock()
                .get(&gsi)
                .and_then(|e| e.read().ok())
                .unwrap_or(0)
        }
    }

    impl IrqRouting for FakeRouting {
        fn allocate_msi(&self) -> Result<(u32, EventFd), String> {
            let mut fds = self.irqfds.lock();
            let gsi = 24 + fds.len() as u32;
            let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| e.to_string())?;
            fds.insert(gsi, fd.try_clone().map_err(|e| e.to_string())?);
            Ok((gsi, fd))
        }
        fn set_msi_route(&self, gsi: u32, address: u64, data: u32) -> Result<(), String> {
            self.routes.lock().insert(gsi, (address, data));
            Ok(())
        }
        fn remove_msi_route(&self, gsi: u32) -> Result<(), String> {
            self.routes.lock().remove(&gsi);
            Ok(())
        }
        fn set_intx(&self, gsi: u32, level: bool) -> Result<(), String> {
            self.intx.lock().insert(gsi, level);
            Ok(())
        }
        fn register_ioeventfd(&self, address: u64, event: &EventFd) -> Result<(), String> {
            let fd = event.try_clone().map_err(|e| e.to_string())?;
            match self.ioeventfds.lock().insert(address, fd) {
                Some(_) => Err(format!("{address:#x} registered twice")),
                None => Ok(()),
            }
        }
        fn unregister_ioeventfd(&self, address: u64, _event: &EventFd) -> Result<(), String> {
            self.ioeventfds
                .lock()
                .remove(&address)
                .map(drop)
                .ok_or_else(|| format!("{address:#x} not registered"))
        }
    }
}
