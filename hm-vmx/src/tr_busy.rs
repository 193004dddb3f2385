//! How a KVM reports the busy bit of the task register's type.
//!
//! KVM on AMD-V (`kvm_amd`) sets the busy bit (type bit 1) of TR whenever
//! `KVM_GET_SREGS` reads it, whatever the VMCB holds: after `LTR` an
//! AMD-V guest's VMCB holds an *available* TSS type (9 for a 64-bit TSS),
//! and KVM reports it as busy (11), the type VT-x requires. Written back
//! unchanged, the reported type puts 11 into the VMCB. A CPU that checks
//! the cached type then refuses the guest's I/O-permission bitmap: QEMU's
//! software x86 (the hardware-KVM lane's L0) raises #GP for any `IN`/`OUT`
//! at CPL 3 that `ioperm` allowed, so a Linux guest's `ioperm` user dies
//! of SIGSEGV after a restore or teleport.
//!
//! [`TrReport::probe`] asks the vCPU how its KVM reports the bit (before
//! it ever runs), and [`TrReport::to_kvm`] turns registers as they were
//! read into what must be written for KVM to hold the same state again.

use kvm_ioctls::VcpuFd;

use crate::error::{Result, ioctl};
use crate::vcpu::Sregs;

/// The busy bit of a TSS descriptor's type.
const TSS_BUSY: u8 = 0b10;

/// How a vCPU's KVM reports TR's busy bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TrReport {
    /// The type read is the type held (VT-x, and KVMs without the quirk).
    AsHeld,
    /// Every TSS type read has the busy bit set, whatever is held (AMD-V).
    AlwaysBusy,
}

impl TrReport {
    /// Writes TR as an available TSS into `fd`'s vCPU, reads it back and
    /// puts the registers back as they were. Call it before the vCPU runs.
    pub(crate) fn probe(fd: &VcpuFd) -> Result<TrReport> {
        let before = fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        let mut available = before;
        available.tr.type_ &= !TSS_BUSY;
        fd.set_sregs(&available).map_err(ioctl("KVM_SET_SREGS"))?;
        let read = fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
        fd.set_sregs(&before).map_err(ioctl("KVM_SET_SREGS"))?;
        Ok(Self::from_read_back(read.tr.type_))
    }

    /// What a TR type written as an available TSS reading back as
    /// `type_` says.
    fn from_read_back(type_: u8) -> TrReport {
        if type_ & TSS_BUSY != 0 {
            TrReport::AlwaysBusy
        } else {
            TrReport::AsHeld
        }
    }

    /// The registers to give `KVM_SET_SREGS` for KVM to hold the state that
    /// `KVM_GET_SREGS` read as `sregs`: with [`TrReport::AlwaysBusy`], a
    /// TSS type loses the busy bit the read added (AMD-V does not check
    /// TR's type on VMRUN, and an available type is what `LTR` leaves
    /// there); otherwise `sregs` unchanged.
    pub(crate) fn to_kvm(self, sregs: &Sregs) -> Sregs {
        let mut out = *sregs;
        if self == TrReport::AlwaysBusy && sregs.tr.s == 0 {
            out.tr.type_ &= !TSS_BUSY;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's TR on x86-64 as `KVM_GET_SREGS` reads it.
    fn linux_sregs(type_: u8) -> Sregs {
        let mut s = Sregs::default();
        s.tr.selector = 0x40;
        s.tr.base = 0xffff_fe00_0000_3000;
        s.tr.limit = 0x4087;
        s.tr.type_ = type_;
        s.tr.present = 1;
        s
    }

    #[test]
    fn the_probe_tells_a_kvm_that_reports_busy_from_one_that_does_not() {
        assert_eq!(TrReport::from_read_back(11), TrReport::AlwaysBusy);
        assert_eq!(TrReport::from_read_back(3), TrReport::AlwaysBusy);
        assert_eq!(TrReport::from_read_back(9), TrReport::AsHeld);
        assert_eq!(TrReport::from_read_back(1), TrReport::AsHeld);
    }

    #[test]
    fn amd_v_gets_back_the_available_tss_it_reported_as_busy() {
        let read = linux_sregs(11);
        let written = TrReport::AlwaysBusy.to_kvm(&read);
        assert_eq!(written.tr.type_, 9);
        assert_eq!(TrReport::AlwaysBusy.to_kvm(&linux_sregs(3)).tr.type_, 1);
        // Everything else is as read.
        let mut back = written;
        back.tr.type_ = 11;
        assert_eq!(back, read);
    }

    #[test]
    fn a_faithful_kvm_gets_what_was_read() {
        for type_ in [9, 11, 3] {
            assert_eq!(
                TrReport::AsHeld.to_kvm(&linux_sregs(type_)),
                linux_sregs(type_)
            );
        }
    }

    #[test]
    fn a_code_or_data_tr_is_left_for_kvm_to_refuse() {
        let mut read = linux_sregs(11);
        read.tr.s = 1;
        assert_eq!(TrReport::AlwaysBusy.to_kvm(&read), read);
    }
}
