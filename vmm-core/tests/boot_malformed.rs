//! Malformed kernels and impossible boots are refused with a clear message
//! before the VM starts: bad images and command lines by the configuration
//! check (no KVM needed), boots that do not fit in memory by `Vm::new`
//! once the memory layout exists, before any vCPU runs.

use vmm_core::boot::KernelBoot;
use vmm_core::guests::test_kernel;
use vmm_core::{Error, Vm, VmConfig};

/// Builds a VM for the boot; returns the error it is refused with.
fn build_vm(kernel: Vec<u8>, initrd: Option<Vec<u8>>, ram: u64) -> String {
    let config = VmConfig::with_kernel(
        ram,
        KernelBoot {
            kernel,
            initrd,
            cmdline: "console=ttyS0".into(),
        },
    );
    match Vm::new(config) {
        Ok(_) => panic!("the VM was built"),
        Err(e) => {
            assert!(matches!(e, Error::Boot(_)), "not a boot error: {e}");
            e.to_string()
        }
    }
}

fn check(kernel: Vec<u8>, initrd: Option<Vec<u8>>, ram: u64) -> Result<(), String> {
    let config = VmConfig::with_kernel(
        ram,
        KernelBoot {
            kernel,
            initrd,
            cmdline: "console=ttyS0".into(),
        },
    );
    config.validate().map_err(|e| {
        assert!(matches!(e, Error::Boot(_)), "not a boot error: {e}");
        e.to_string()
    })
}

fn good() -> Vec<u8> {
    test_kernel::build().unwrap()
}

#[test]
fn the_test_kernel_is_accepted() {
    check(good(), Some(vec![0; 4096]), 64 << 20).unwrap();
}

#[test]
fn truncated_kernels_are_refused() {
    let image = good();
    for len in [0, 100, 0x300, 1024, 1024 + 0x100, image.len() - 17] {
        let err = check(image[..len].to_vec(), None, 64 << 20).unwrap_err();
        assert!(err.contains("truncated"), "{len} bytes: {err}");
    }
}

#[test]
fn wrong_magic_is_refused() {
    let mut image = good();
    image[0x202..0x206].copy_from_slice(b"HdrZ");
    let err = check(image, None, 64 << 20).unwrap_err();
    assert!(err.contains("not a bzImage"), "{err}");
    let err = check(vec![0x4d; 64 << 10], None, 64 << 20).unwrap_err();
    assert!(err.contains("not a bzImage"), "{err}");
}

#[test]
fn old_protocols_are_refused() {
    let mut image = good();
    image[0x206..0x208].copy_from_slice(&0x0204u16.to_le_bytes());
    let err = check(image, None, 64 << 20).unwrap_err();
    assert!(err.contains("protocol 2.04"), "{err}");
}

#[test]
fn an_initrd_too_large_for_memory_is_refused() {
    if hm_vmx::testing::kvm_available(module_path!()) {
        let err = build_vm(good(), Some(vec![0; 40 << 20]), 32 << 20);
        assert!(
            err.contains("initrd of 41943040 bytes does not fit"),
            "{err}"
        );
    }
}

#[test]
fn a_kernel_too_large_for_memory_is_refused() {
    if hm_vmx::testing::kvm_available(module_path!()) {
        let mut image = good();
        // init_size: 64 MiB of decompression space in a 16 MiB VM.
        image[0x260..0x264].copy_from_slice(&(64u32 << 20).to_le_bytes());
        let err = build_vm(image, None, 16 << 20);
        assert!(err.contains("the kernel needs"), "{err}");
    }
}

#[test]
fn an_overlong_command_line_is_refused() {
    let config = VmConfig::with_kernel(
        64 << 20,
        KernelBoot {
            kernel: good(),
            initrd: None,
            cmdline: "x".repeat(test_kernel::CMDLINE_SIZE as usize + 1),
        },
    );
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("at most 4095"), "{err}");
}

#[test]
fn more_vcpus_than_the_boot_tables_describe_are_refused() {
    let mut config = VmConfig::with_kernel(
        64 << 20,
        KernelBoot {
            kernel: good(),
            initrd: None,
            cmdline: String::new(),
        },
    );
    config.cpus = vmm_core::boot::mptable::MAX_CPUS + 1;
    let err = config.validate().unwrap_err().to_string();
    // The MP table and the MADT describe as many vCPUs as a VM may have.
    assert_eq!(
        vmm_core::boot::mptable::MAX_CPUS,
        vmm_core::config::MAX_CPUS
    );
    assert!(err.contains("a VM has 1 to 254 vCPUs"), "{err}");
}
