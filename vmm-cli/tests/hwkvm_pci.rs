//! The PCI bus as Linux sees it: Debian's cloud kernel under `vmm` finds
//! configuration mechanism #1 and the host bridge at 00:00.0. Needs a KVM
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

/// Linux scans bus 0 itself only without ACPI's PCI support: with it, root
/// buses come from the host bridge the DSDT describes, and ours does not
/// describe one yet.
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
