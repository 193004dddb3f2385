//! The PCI bus as Linux sees it: Debian's cloud kernel under `vmm` finds
//! configuration mechanism #1 and the host bridge at 00:00.0, and, with
//! ACPI's PCI support, the root bridge of the DSDT and the ECAM of the
//! MCFG. Needs a KVM
//! with hardware semantics and the lane's L2 guest, so it is ignored in a
//! plain `cargo test` and runs inside `cargo xtask hwkvm`, which sets
//! `L2_KERNEL`, `L2_INITRD` and `L2_CMDLINE` (a missing one is a failure,
//! never a skip).

#[allow(dead_code)] // shared by the lane's test binaries
#[path = "support/lane.rs"]
mod lane;
#[allow(dead_code)] // shared by the end-to-end tests; these use what the lane needs
mod support;

use lane::{Guest, vmm_run};

/// The host bridge's sysfs directory.
const BRIDGE: &str = "/sys/bus/pci/devices/0000:00:00.0";
/// What Linux says when no configuration mechanism works.
const FATAL: &str = "PCI: Fatal";

/// Boots the lane's Linux (quietly, 512 MiB) with `extra` on its command
/// line, has its init run `command`, and returns what the guest and `vmm`
/// wrote once `vmm` exited successfully.
fn boot(extra: &str, command: &str) -> String {
    let guest = Guest::from_lane("L2_KERNEL").with_cmdline(extra);
    let out = vmm_run(guest.run_args("512M", 1, command));
    assert!(out.status.success(), "{}\n{}", out.status, out.serial);
    out.serial
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn linux_takes_configuration_mechanism_1() {
    let text = boot("", "dmesg | grep 'PCI: '");
    assert!(!text.contains(FATAL), "{text}");
    assert!(
        text.contains("PCI: Using configuration type 1 for base access"),
        "{text}"
    );
}

/// Without ACPI's PCI support, Linux scans bus 0 itself (with it, root
/// buses come from the DSDT's root bridge: see the next test).
#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn linux_lists_the_host_bridge_on_bus_0() {
    let command = format!(
        "ls -1 /sys/bus/pci/devices; echo bridge=$(cat {BRIDGE}/vendor):$(cat {BRIDGE}/device):$(cat {BRIDGE}/class)"
    );
    let text = boot("pci=noacpi", &command);
    assert!(!text.contains(FATAL), "{text}");
    assert!(
        text.lines().any(|l| l.trim() == "0000:00:00.0"),
        "no 0000:00:00.0 in /sys/bus/pci/devices:\n{text}"
    );
    assert!(
        text.contains("bridge=0x1b36:0x0008:0x060000"),
        "the host bridge is not Red Hat's 1b36:0008 of class 060000:\n{text}"
    );
}

/// With ACPI's PCI support (no `pci=noacpi`): the MCFG's ECAM is taken
/// (it is reserved in e820), the DSDT's root bridge `PCI0` gives bus 0,
/// and the host bridge is found on it.
#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn linux_takes_the_ecam_and_the_acpi_root_bridge() {
    let command = format!(
        "dmesg | grep -iE 'mmconfig|ecam|PCI Root Bridge'; ls -1 /sys/bus/pci/devices; echo bridge=$(cat {BRIDGE}/vendor):$(cat {BRIDGE}/device)"
    );
    let text = boot("", &command);
    assert!(!text.contains(FATAL), "{text}");
    // Older kernels say "MMCONFIG for domain 0000 [bus 00-00] at [mem
    // 0xe0000000-0xe00fffff]", newer ones "ECAM [mem 0xe0000000-0xe00fffff]
    // ... for domain 0000 [bus 00-00]".
    let ecam = text.lines().find(|l| {
        (l.contains("MMCONFIG") || l.contains("ECAM"))
            && l.contains("0xe0000000-0xe00fffff")
            && l.contains("bus 00-00")
    });
    assert!(ecam.is_some(), "no ECAM for bus 00 at 0xe0000000:\n{text}");
    assert!(
        !text.contains("not reserved"),
        "Linux refused the ECAM as unreserved:\n{text}"
    );
    assert!(
        text.contains("PCI Root Bridge [PCI0] (domain 0000 [bus 00])"),
        "the DSDT's root bridge was not taken:\n{text}"
    );
    assert!(
        text.lines().any(|l| l.trim() == "0000:00:00.0"),
        "no 0000:00:00.0 in /sys/bus/pci/devices:\n{text}"
    );
    assert!(text.contains("bridge=0x1b36:0x0008"), "{text}");
}
