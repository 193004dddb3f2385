//! A VM: memory slots, interrupt controllers and vCPU creation.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;

use crate::entry_check::{EntryChecker, EntryGate};
use crate::error::{Error, Result, ioctl};
use crate::routing::MsiRoutes;
use crate::stats::ExitStats;
use crate::types::Cpuid;
use crate::vcpu::{Vcpu, VcpuState};
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
    cpuid: Cpuid,
    stats: stam::Registry,
    exits: Arc<ExitStats>,
    irqchip: bool,
    checker: Arc<EntryChecker>,
    msi_routes: Mutex<MsiRoutes>,
}

impl Vm {
    pub(crate) fn new(
        fd: VmFd,
        cpuid: Cpuid,
        stats: &stam::Registry,
        caps: VmxCapabilities,
    ) -> Result<Self> {
        fd.set_tss_address(TSS_ADDRESS)
            .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
        let exits = Arc::new(ExitStats::register(stats)?);
        let checker = Arc::new(EntryChecker::for_cpuid(caps, &cpuid)?);
        Ok(Vm {
            fd,
            cpuid,
            stats: stats.clone(),
            exits,
            irqchip: false,
            checker,
            msi_routes: Mutex::default(),
        })
    }

    /// The VMX capability profile, programmed controls and CPU facts the
    /// vCPUs' VM-entry checks use.
    pub fn entry_checker(&self) -> &EntryChecker {
        &self.checker
    }

    /// The exit counters of this VM's vCPUs.
    pub fn exit_stats(&self) -> &Arc<ExitStats> {
        &self.exits
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

    /// Creates the in-kernel interrupt controllers (local APICs, IOAPIC,
    /// PIC) and PIT. Must come before the vCPUs; with it, APs wait for
    /// INIT/SIPI and `hlt` sleeps in the kernel until an interrupt.
    pub fn create_irqchip(&mut self) -> Result<()> {
        self.fd
            .create_irq_chip()
            .map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_bindings::kvm_pit_config {
            flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
        self.irqchip = true;
        Ok(())
    }

    /// Whether [`create_irqchip`](Vm::create_irqchip) was called.
    pub fn has_irqchip(&self) -> bool {
        self.irqchip
    }

    /// Creates vCPUs `0..count`, telling the guest through CPUID leaf 1 how
    /// many logical processors there are.
    pub fn create_vcpus(&self, count: u32) -> Result<Vec<Vcpu>> {
        (0..count)
            .map(|id| self.create_vcpu_of(id, count))
            .collect()
    }

    /// Creates vCPU number `id` of a one-vCPU VM.
    pub fn create_vcpu(&self, id: u32) -> Result<Vcpu> {
        self.create_vcpu_of(id, 1)
    }

    /// Creates vCPU number `id` of `count`, with the guest CPUID set to what
    /// KVM supports (the CPUID leaves tell KVM, for example, that the guest
    /// may enable long mode).
    fn create_vcpu_of(&self, id: u32, count: u32) -> Result<Vcpu> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(ioctl("KVM_CREATE_VCPU"))?;
        let mut cpuid = self.cpuid.clone();
        for entry in cpuid.as_mut_slice() {
            // Leaf 1 EBX[31:24] and leaf 0xB EDX are the initial APIC id.
            match entry.function {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors,
                // EDX[28] HTT (more than one logical processor).
                1 => {
                    let logical = count.min(255) << 16;
                    entry.ebx = (entry.ebx & 0x0000_ffff) | (id << 24) | logical;
                    if count > 1 {
                        entry.edx |= 1 << 28;
                    }
                }
                0xb | 0x1f => entry.edx = id,
                _ => {}
            }
        }
        fd.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
        // A second descriptor for the same vCPU lets other threads reach its
        // registers without owning the run loop.
        // SAFETY: `dup` of a descriptor we own; the result is checked.
        let dup = unsafe { libc::dup(fd.as_raw_fd()) };
        if dup < 0 {
            return Err(ioctl("dup(vCPU fd)")(kvm_ioctls::Error::last()));
        }
        // SAFETY: `dup` is a fresh descriptor of a vCPU of this VM, owned by
        // nobody else; the VcpuFd takes ownership and closes it.
        let state_fd =
            unsafe { self.fd.create_vcpu_from_rawfd(dup) }.map_err(ioctl("mmap(vCPU run page)"))?;
        let in_guest = self.stats.profile(
            format!("/HM/CPU{id}/RunGuest"),
            format!("Time vCPU {id} spends in KVM_RUN (guest execution and in-kernel exits)"),
        )?;
        Ok(Vcpu::new(
            fd,
            VcpuState::new(
                state_fd,
                id,
                Arc::new(EntryGate::new(Arc::clone(&self.checker))),
            )?,
            Arc::clone(&self.exits),
            in_guest,
        ))
    }

    /// The CPUID leaves every vCPU of this VM is given (before per-vCPU APIC ids).
    pub fn cpuid(&self) -> &Cpuid {
        &self.cpuid
    }

    /// The MSI GSIs and their routes (a poisoned lock only means another
    /// thread panicked while holding it; the table is still whole).
    pub(crate) fn msi_routes(&self) -> MutexGuard<'_, MsiRoutes> {
        self.msi_routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The underlying KVM VM file descriptor, for this crate's modules.
    pub(crate) fn fd(&self) -> &VmFd {
        &self.fd
    }
}
