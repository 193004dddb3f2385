//! A KVM VM with one vCPU and flat guest RAM, shared by the KVM tests.

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use pgm::paging::{CpuFeatures, PhysAccess, PhysAccessError};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// KVM guest memory as the walker sees it.
pub struct GuestMem(pub GuestMemoryMmap<()>);

impl PhysAccess for GuestMem {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), PhysAccessError> {
        self.0
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| PhysAccessError::Unmapped {
                gpa,
                len: buf.len(),
            })
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), PhysAccessError> {
        self.0
            .write_slice(data, GuestAddress(gpa))
            .map_err(|_| PhysAccessError::Unmapped {
                gpa,
                len: data.len(),
            })
    }
}

/// A VM with `size` bytes of RAM at 0, one vCPU with KVM's supported
/// CPUID, and the paging features that CPUID describes.
pub struct Guest {
    pub vcpu: VcpuFd,
    pub mem: GuestMem,
    pub features: CpuFeatures,
    /// Whether KVM offers 5-level paging (CPUID 7 ECX[16]).
    pub la57: bool,
    pub size: u64,
    _vm: VmFd,
    _kvm: Kvm,
}

impl Guest {
    /// Opens KVM, or says loudly why not (a failure under `CI=true`).
    pub fn open(size: u64) -> Option<Self> {
        let kvm = match Kvm::new() {
            Ok(k) => k,
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "/dev/kvm is required under CI=true: {e}"
                );
                eprintln!("!!! SKIPPING KVM paging test: cannot open /dev/kvm ({e}) !!!");
                return None;
            }
        };
        let vm = kvm.create_vm().expect("create VM");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)])
            .expect("guest memory");
        let host = mem.get_host_address(GuestAddress(0)).expect("host address");
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: size,
            userspace_addr: host as u64,
        };
        // SAFETY: `mem` backs the slot and lives in the `Guest`, next to the
        // VM, for as long as the VM does.
        unsafe { vm.set_user_memory_region(region) }.expect("memory slot");
        let vcpu = vm.create_vcpu(0).expect("vCPU");
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .expect("CPUID");
        vcpu.set_cpuid2(&cpuid).expect("set CPUID");
        let leaf = |f: u32| {
            cpuid
                .as_slice()
                .iter()
                .find(|e| e.function == f && e.index == 0)
        };
        let la57 = leaf(7).is_some_and(|e| e.ecx & (1 << 16) != 0);
        let features = CpuFeatures::from_cpuid(
            leaf(1).map_or(0, |e| e.edx),
            leaf(0x8000_0001).map_or(0, |e| e.edx),
            leaf(0x8000_0008).map(|e| e.eax),
        )
        .expect("features");
        Some(Self {
            vcpu,
            mem: GuestMem(mem),
            features,
            la57,
            size,
            _vm: vm,
            _kvm: kvm,
        })
    }

    /// Zeroes `[from, to)`.
    pub fn zero(&self, from: u64, to: u64) {
        let zeros = vec![0u8; (to - from) as usize];
        self.mem.write(from, &zeros).unwrap();
    }
}

/// A flat 4 GiB segment: `type_` 0xb is code, 3 is data.
pub fn flat_segment(selector: u16, type_: u8, dpl: u8, code64: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl,
        db: u8::from(!code64),
        s: 1,
        l: u8::from(code64),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}
