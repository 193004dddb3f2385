//! A VM: memory slots, interrupt controllers and vCPU creation.

use kvm_bindings::{CpuId, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, kvm_userspace_memory_region};
use std::sync::Arc;

use kvm_ioctls::VmFd;

use crate::entry_check::{EntryChecker, EntryGate};
use crate::error::{Error, Result, ioctl};
use crate::vcpu::Vcpu;
use crate::vmx::VmxCapabilities;

/// Where KVM puts the three pages of the real-mode TSS on Intel hosts: just
/// below the 4 GiB firmware area, as other VMMs do.
const TSS_ADDRESS: usize = 0xfffb_d000;

/// One KVM memory slot: a guest-physical range backed by host memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySlot {
    /// Slot number (unique within the VM).
    pub slot: u32,
    /// First guest-physical address.
    pub guest_addr: u64,
    /// Size in bytes, a multiple of 4 KiB.
    pub size: u64,
    /// Host virtual address of the backing memory.
    pub host_addr: u64,
    /// Guest writes exit to user space as MMIO instead of landing (ROM).
    pub read_only: bool,
    /// KVM records written pages in the slot's dirty log.
    pub log_dirty: bool,
}

/// A VM created by [`Hypervisor::create_vm`](crate::Hypervisor::create_vm).
pub struct Vm {
    fd: VmFd,
    cpuid: CpuId,
    checker: Arc<EntryChecker>,
}

impl Vm {
    pub(crate) fn new(fd: VmFd, cpuid: CpuId, caps: VmxCapabilities) -> Result<Self> {
        fd.set_tss_address(TSS_ADDRESS)
            .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
        let checker = Arc::new(EntryChecker::for_cpuid(caps, &cpuid)?);
        Ok(Vm { fd, cpuid, checker })
    }

    /// The VMX capability profile, programmed controls and CPU facts the
    /// vCPUs' VM-entry checks use.
    pub fn entry_checker(&self) -> &EntryChecker {
        &self.checker
    }

    /// Maps (or, with `size == 0`, unmaps) a memory slot.
    ///
    /// # Safety
    ///
    /// `host_addr .. host_addr + size` must be a mapping owned by the caller
    /// that stays valid until the slot is unmapped or the VM is dropped; the
    /// guest reads and writes it behind Rust's back.
    pub unsafe fn set_memory_slot(&self, slot: &MemorySlot) -> Result<()> {
        if slot.size % 4096 != 0 || slot.guest_addr % 4096 != 0 || slot.host_addr % 4096 != 0 {
            return Err(Error::InvalidSlot(format!("{slot:?} is not 4 KiB aligned")));
        }
        let mut flags = 0;
        if slot.read_only {
            flags |= KVM_MEM_READONLY;
        }
        if slot.log_dirty {
            flags |= KVM_MEM_LOG_DIRTY_PAGES;
        }
        let region = kvm_userspace_memory_region {
            slot: slot.slot,
            flags,
            guest_phys_addr: slot.guest_addr,
            memory_size: slot.size,
            userspace_addr: slot.host_addr,
        };
        // SAFETY: the caller guarantees the host range stays mapped while the
        // slot exists (this function's contract).
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))
    }

    /// Returns and clears the dirty-page bitmap of a slot created with
    /// `log_dirty` (one bit per 4 KiB page, in 64-bit words).
    pub fn dirty_log(&self, slot: u32, size: u64) -> Result<Vec<u64>> {
        let size = usize::try_from(size)
            .map_err(|_| Error::InvalidSlot(format!("slot {slot} size {size:#x} too large")))?;
        self.fd
            .get_dirty_log(slot, size)
            .map_err(ioctl("KVM_GET_DIRTY_LOG"))
    }

    /// Creates vCPU number `id`, with the guest CPUID set to what KVM supports
    /// (the CPUID leaves tell KVM, for example, that the guest may enable long mode).
    pub fn create_vcpu(&self, id: u32) -> Result<Vcpu> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(ioctl("KVM_CREATE_VCPU"))?;
        let mut cpuid = self.cpuid.clone();
        for entry in cpuid.as_mut_slice() {
            // Leaf 1 EBX[31:24] and leaf 0xB EDX are the initial APIC id.
            match entry.function {
                1 => entry.ebx = (entry.ebx & 0x00ff_ffff) | (id << 24),
                0xb | 0x1f => entry.edx = id,
                _ => {}
            }
        }
        fd.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
        Vcpu::new(fd, id, EntryGate::new(Arc::clone(&self.checker)))
    }

    /// The CPUID leaves every vCPU of this VM is given (before per-vCPU APIC ids).
    pub fn cpuid(&self) -> &CpuId {
        &self.cpuid
    }

    /// The underlying KVM VM file descriptor, for crates that drive KVM
    /// devices this backend does not wrap yet.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}
