//! The in-kernel local APIC of a vCPU: reading and writing its register
//! page, and 32-bit register access within it.
//!
//! ```no_run
//! use hm_vmx::LapicRegisters;
//!
//! const LVT_LINT1: usize = 0x360;
//! const DELIVERY_NMI: u32 = 0b100 << 8;
//! let hv = hm_vmx::Hypervisor::open()?;
//! let mut vm = hv.create_vm()?;
//! vm.create_irqchip()?;
//! let vcpu = vm.create_vcpu(0)?;
//! let mut lapic = vcpu.state().lapic()?;
//! let lint1 = lapic.register(LVT_LINT1);
//! lapic.set_register(LVT_LINT1, (lint1 & !0x700) | DELIVERY_NMI);
//! vcpu.state().set_lapic(&lapic)?;
//! # Ok::<(), hm_vmx::Error>(())
//! ```

use crate::error::{Result, ioctl};
use crate::vcpu::{LapicState, VcpuState};

impl VcpuState {
    /// The local APIC's register page (`KVM_GET_LAPIC`). Needs the VM's
    /// in-kernel irqchip ([`Vm::create_irqchip`](crate::Vm::create_irqchip)).
    pub fn lapic(&self) -> Result<LapicState> {
        self.kvm_fd().get_lapic().map_err(ioctl("KVM_GET_LAPIC"))
    }

    /// Loads the local APIC's register page (`KVM_SET_LAPIC`), as read by
    /// [`lapic`](VcpuState::lapic) and edited.
    pub fn set_lapic(&self, lapic: &LapicState) -> Result<()> {
        self.kvm_fd()
            .set_lapic(lapic)
            .map_err(ioctl("KVM_SET_LAPIC"))
    }
}

/// 32-bit access to the registers of a [`LapicState`], by their offset in
/// the APIC page (`0x350` is LVT LINT0, as in the SDM's local APIC
/// register table).
pub trait LapicRegisters {
    /// The register at `offset`.
    ///
    /// # Panics
    ///
    /// If the register does not lie within the 1 KiB KVM keeps (`offset`
    /// above `0x3fc`).
    fn register(&self, offset: usize) -> u32;

    /// Sets the register at `offset` to `value`.
    ///
    /// # Panics
    ///
    /// As [`register`](LapicRegisters::register).
    fn set_register(&mut self, offset: usize, value: u32);
}

impl LapicRegisters for LapicState {
    fn register(&self, offset: usize) -> u32 {
        let mut bytes = [0u8; 4];
        for (dst, src) in bytes.iter_mut().zip(&self.regs[offset..offset + 4]) {
            *dst = *src as u8;
        }
        u32::from_le_bytes(bytes)
    }

    fn set_register(&mut self, offset: usize, value: u32) {
        for (dst, src) in self.regs[offset..offset + 4]
            .iter_mut()
            .zip(value.to_le_bytes())
        {
            *dst = src as _;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_are_little_endian_words_of_the_page() {
        let mut lapic = LapicState::default();
        lapic.set_register(0x350, 0x8000_0700);
        assert_eq!(lapic.register(0x350), 0x8000_0700);
        assert_eq!(lapic.regs[0x350] as u8, 0x00);
        assert_eq!(lapic.regs[0x351] as u8, 0x07);
        assert_eq!(lapic.regs[0x353] as u8, 0x80);
        assert_eq!(lapic.register(0x360), 0);
        lapic.set_register(0x3fc, u32::MAX);
        assert_eq!(lapic.register(0x3fc), u32::MAX);
    }
}
