//! Direct kernel boot of the project's test kernel, end to end on KVM.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_core::boot::KernelBoot;
use vmm_core::boot::layout::{ACPI_SIZE, LEGACY_HOLE, MPTABLE_SIZE};
use vmm_core::guests::test_kernel;
use vmm_core::memory::pc_layout;
use vmm_core::{OnReboot, RunOutcome, Vm, VmConfig};

/// A serial sink the test can read afterwards.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The e820 RAM a VM with `ram` bytes shows: the PC layout's RAM less the
/// ranges the ACPI and MP tables reserve (the legacy hole is not RAM in the
/// layout).
fn e820_ram(ram: u64) -> u64 {
    ram - LEGACY_HOLE.1 - MPTABLE_SIZE - ACPI_SIZE
}

/// An initrd with varied bytes, small enough to checksum quickly at CPL0.
fn initrd(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 + i / 7) as u8).collect()
}

fn boot(ram: u64, cpus: u32, initrd: Vec<u8>, cmdline: String) -> (RunOutcome, String) {
    let kernel = KernelBoot {
        kernel: test_kernel::build().unwrap(),
        initrd: Some(initrd),
        cmdline,
    };
    let capture = Capture::default();
    let mut config = VmConfig::with_kernel(ram, kernel);
    config.cpus = cpus;
    config.serial = Box::new(capture.clone());
    let outcome = Vm::new(config).and_then(|mut vm| vm.run());
    let text = capture.text();
    match outcome {
        Ok(outcome) => (outcome, text),
        Err(e) => panic!("run failed: {e}\nserial output:\n{text}"),
    }
}

fn passes_all_checks(ram: u64, cpus: u32) {
    let rd = initrd(6000);
    let cmdline = format!(
        "console=ttyS0 {} reboot=k panic=1",
        test_kernel::expectations(e820_ram(ram), &rd, cpus)
    );
    let (outcome, serial) = boot(ram, cpus, rd, cmdline);
    assert_eq!(
        outcome,
        RunOutcome::GuestExit(0),
        "serial output:\n{serial}"
    );
    for check in test_kernel::CHECKS {
        assert!(
            serial.contains(&format!("testkernel: {check} ok")),
            "{check} missing:\n{serial}"
        );
    }
    assert!(serial.contains("all checks passed"), "{serial}");
}

#[test]
fn test_kernel_boots_with_64_mib() {
    if hm_vmx::testing::kvm_available(module_path!()) {
        passes_all_checks(64 << 20, 1);
    }
}

#[test]
fn test_kernel_boots_with_memory_sizes_around_the_hole() {
    if hm_vmx::testing::kvm_available(module_path!()) {
        // Small, exactly filling the space below the 32-bit MMIO hole, and
        // just spilling above 4 GiB.
        let hole = pc_layout(1 << 30).mmio_hole_start();
        for ram in [16 << 20, hole, hole + (2 << 20)] {
            passes_all_checks(ram, 1);
        }
    }
}

#[test]
fn test_kernel_boots_with_several_vcpus() {
    if hm_vmx::testing::kvm_available(module_path!()) {
        // The application processors wait for INIT/SIPI, which the test
        // kernel never sends; the MP table must list them all.
        passes_all_checks(64 << 20, 2);
        passes_all_checks(6 << 30, 4);
    }
}

#[test]
fn test_kernel_boots_with_ram_above_4_gib() {
    if hm_vmx::testing::kvm_available(module_path!()) {
        passes_all_checks(5 << 30, 1);
    }
}

#[test]
fn test_kernel_reports_a_wrong_expectation() {
    if !hm_vmx::testing::kvm_available(module_path!()) {
        return;
    }
    let ram = 32 << 20;
    let rd = initrd(100);
    // The initrd sum is off by one: everything before the initrd check
    // passes and the initrd check (status 7) fails.
    let mut cmdline = test_kernel::expectations(e820_ram(ram), &rd, 1);
    let good = format!("testkernel.sum={:#x}", test_kernel::initrd_sum(&rd));
    let bad = format!("testkernel.sum={:#x}", test_kernel::initrd_sum(&rd) + 1);
    cmdline = cmdline.replace(&good, &bad);
    let (outcome, serial) = boot(ram, 1, rd, cmdline);
    assert_eq!(outcome, RunOutcome::GuestExit(7), "{serial}");
    assert!(serial.contains("testkernel: initrd FAILED"), "{serial}");
}

#[test]
fn test_kernel_reports_a_wrong_ram_size() {
    if !hm_vmx::testing::kvm_available(module_path!()) {
        return;
    }
    let ram = 32 << 20;
    let rd = initrd(100);
    let cmdline = test_kernel::expectations(e820_ram(ram) + 4096, &rd, 1);
    let (outcome, serial) = boot(ram, 1, rd, cmdline);
    assert_eq!(outcome, RunOutcome::GuestExit(5), "{serial}");
    assert!(serial.contains("testkernel: e820 FAILED"), "{serial}");
}

/// Two vCPUs in 32 MiB, an initrd and the command line of a test kernel
/// that resets the machine once its checks passed.
fn rebooting_kernel() -> (u64, u32, Vec<u8>, String) {
    let (ram, cpus) = (32 << 20, 2);
    let rd = initrd(64);
    let cmdline = format!(
        "{} testkernel.reboot=1",
        test_kernel::expectations(e820_ram(ram), &rd, cpus)
    );
    (ram, cpus, rd, cmdline)
}

#[test]
fn test_kernel_reboots_through_the_keyboard_controller() {
    if !hm_vmx::testing::kvm_available(module_path!()) {
        return;
    }
    // Two vCPUs: the reset ends the run with the AP still waiting for SIPI.
    let (ram, cpus, rd, cmdline) = rebooting_kernel();
    let (outcome, serial) = boot(ram, cpus, rd, cmdline);
    assert_eq!(outcome, RunOutcome::Reboot, "{serial}");
    assert!(serial.contains("all checks passed"), "{serial}");
}

#[test]
fn test_kernel_boots_again_after_a_reboot_when_the_vm_restarts() {
    if !hm_vmx::testing::kvm_available(module_path!()) {
        return;
    }
    // Two vCPUs: after each reset the AP must be back waiting for SIPI and
    // the BSP at the kernel's entry with the kernel, initrd, command line
    // and tables loaded again (the checks would fail otherwise).
    let (ram, cpus, rd, cmdline) = rebooting_kernel();
    let capture = Capture::default();
    let mut config = VmConfig::with_kernel(
        ram,
        KernelBoot {
            kernel: test_kernel::build().unwrap(),
            initrd: Some(rd),
            cmdline,
        },
    );
    config.cpus = cpus;
    config.serial = Box::new(capture.clone());
    config.on_reboot = OnReboot::Restart;
    let mut vm = Vm::new(config).unwrap();
    let handle = vm.handle();
    let watched = capture.clone();
    let boots = |text: &str| text.matches("all checks passed").count();
    let stopper = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while boots(&watched.text()) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // A power-off racing with a reset is refused: try again.
        while handle.power_off().is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let outcome = vm.run();
    stopper.join().unwrap();
    let text = capture.text();
    assert_eq!(outcome.unwrap(), RunOutcome::PoweredOff, "{text}");
    assert!(boots(&text) >= 3, "three boots expected:\n{text}");
    assert!(!text.contains("FAILED"), "{text}");
}
