//! The host hypervisor: `/dev/kvm` and the capabilities the VMM relies on.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

use crate::error::{Error, Result, ioctl};
use crate::vm::Vm;

/// A KVM capability the backend checks for, with what it is used for.
#[derive(Debug, Clone, Copy)]
pub struct Capability {
    /// The capability's KVM name.
    pub name: &'static str,
    /// What the VMM uses it for.
    pub purpose: &'static str,
    /// Whether the VMM refuses to start without it.
    pub required: bool,
    cap: Cap,
}

/// The capabilities the backend relies on, in the order `vmm doctor` lists them.
pub const CAPABILITIES: &[Capability] = &[
    Capability {
        name: "KVM_CAP_USER_MEMORY",
        purpose: "guest RAM in memory slots",
        required: true,
        cap: Cap::UserMemory,
    },
    Capability {
        name: "KVM_CAP_READONLY_MEM",
        purpose: "ROM as read-only slots (writes exit as MMIO)",
        required: true,
        cap: Cap::ReadonlyMem,
    },
    Capability {
        name: "KVM_CAP_IMMEDIATE_EXIT",
        purpose: "kicking an EMT out of KVM_RUN without races",
        required: true,
        cap: Cap::ImmediateExit,
    },
    Capability {
        name: "KVM_CAP_EXT_CPUID",
        purpose: "guest CPUID from the host's supported set",
        required: true,
        cap: Cap::ExtCpuid,
    },
    Capability {
        name: "KVM_CAP_SET_TSS_ADDR",
        purpose: "real-mode support on VT-x",
        required: true,
        cap: Cap::SetTssAddr,
    },
    Capability {
        name: "KVM_CAP_IRQCHIP",
        purpose: "in-kernel local APIC, IOAPIC and PIC",
        required: false,
        cap: Cap::Irqchip,
    },
    Capability {
        name: "KVM_CAP_PIT2",
        purpose: "in-kernel PIT",
        required: false,
        cap: Cap::Pit2,
    },
    Capability {
        name: "KVM_CAP_SET_GUEST_DEBUG",
        purpose: "single-step and hardware breakpoints",
        required: false,
        cap: Cap::SetGuestDebug,
    },
    Capability {
        name: "KVM_CAP_SYNC_MMU",
        purpose: "host mapping changes under a running guest",
        required: false,
        cap: Cap::SyncMmu,
    },
    Capability {
        name: "KVM_CAP_MP_STATE",
        purpose: "INIT/SIPI and halted vCPU state",
        required: false,
        cap: Cap::MpState,
    },
];

/// The host hypervisor (an open `/dev/kvm`).
///
/// ```no_run
/// let hv = hm_vmx::Hypervisor::open()?;
/// let vm = hv.create_vm()?;
/// # Ok::<(), hm_vmx::Error>(())
/// ```
pub struct Hypervisor {
    kvm: Kvm,
}

impl Hypervisor {
    /// Opens `/dev/kvm` and checks the API version and required capabilities.
    pub fn open() -> Result<Self> {
        let kvm = Kvm::new().map_err(Error::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(Error::ApiVersion(version));
        }
        let hv = Hypervisor { kvm };
        if let Some(missing) = CAPABILITIES.iter().find(|c| c.required && !hv.has(c)) {
            return Err(Error::MissingCapability(missing.name));
        }
        Ok(hv)
    }

    /// The open `/dev/kvm`.
    pub(crate) fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Whether the host's KVM offers `cap`.
    pub fn has(&self, cap: &Capability) -> bool {
        self.kvm.check_extension(cap.cap)
    }

    /// The most vCPUs KVM allows in one VM.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// The number of memory slots KVM allows in one VM.
    pub fn max_memslots(&self) -> usize {
        self.kvm.get_nr_memslots()
    }

    /// The CPUID leaves KVM can present to a guest.
    pub fn supported_cpuid(&self) -> Result<CpuId> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))
    }

    /// Creates a VM with no memory and no vCPUs, counting its exits in a
    /// registry of its own. Its vCPUs check guest states against the
    /// [VMX capability profile](Hypervisor::vmx_capabilities) in force; a
    /// host whose VMX capability MSRs are inconsistent or lack the controls
    /// a KVM-like VMM needs is an error.
    pub fn create_vm(&self) -> Result<Vm> {
        self.create_vm_with_stats(&stam::Registry::new())
    }

    /// Creates a VM whose exit counters (`/HM/Exit/...`) and run-loop
    /// profiles (`/HM/CPUn/RunGuest`) are registered in `stats`.
    pub fn create_vm_with_stats(&self, stats: &stam::Registry) -> Result<Vm> {
        let caps = self.vmx_capabilities()?;
        let fd = self.kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
        Vm::new(fd, self.supported_cpuid()?, stats, caps)
    }
}
