//! The PCI bus as Linux sees it: Debian's cloud kernel under `vmm` finds
//! configuration mechanism #1 and the host bridge at 00:00.0. Needs a KVM
//! with hardware semantics and the lane's L2 guest, so it is ignored in a
//! plain `cargo test` and runs inside `cargo xtask hwkvm`, which sets
//! `L2_KERNEL`, `L2_INITRD` and `L2_CMDLINE` (a missing one is a failure,
//! never a skip).

mod support;

use std::time::Duration;

use support::{Vmm, read};

/// A Linux boot under nested KVM in QEMU's emulation takes tens of seconds.
const DEADLINE: Duration = Duration::from_secs(180);
/// The host bridge's sysfs directory.
const BRIDGE: &str = "/sys/bus/pci/devices/0000:00:00.0";

fn lane_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run these tests in the hardware-KVM lane (cargo xtask hwkvm)")
    })
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn linux_finds_the_host_bridge_through_mechanism_1() {
    let command = format!(
        "ls /sys/bus/pci/devices; echo bridge=$(cat {BRIDGE}/vendor):$(cat {BRIDGE}/device):$(cat {BRIDGE}/class); dmesg | grep -i pci"
    );
    let cmdline = format!("{} quiet vmm_run=\"{command}\"", lane_var("L2_CMDLINE"));
    let dir = tempfile::tempdir().unwrap();
    let (serial, stderr) = (dir.path().join("serial"), dir.path().join("stderr"));
    let serial_arg = serial.display().to_string();
    let (kernel, initrd) = (lane_var("L2_KERNEL"), lane_var("L2_INITRD"));
    let args = [
        "run",
        "--mem",
        "512M",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--cmdline",
        &cmdline,
        "--serial",
        &serial_arg,
    ];
    let mut vm = Vmm::spawn("linux (pci)", &args, &stderr, DEADLINE);
    let output = || read(&serial) + &read(&stderr);
    let status = vm.wait(output);
    let text = output();
    assert!(status.success(), "{status}\n{text}");
    assert!(!text.contains("PCI: Fatal"), "{text}");
    assert!(
        text.lines().any(|l| l.trim() == "0000:00:00.0"),
        "no 0000:00:00.0 in /sys/bus/pci/devices:\n{text}"
    );
    assert!(
        text.contains("bridge=0x1b36:0x0008:0x060000"),
        "the host bridge is not Red Hat's 1b36:0008 of class 060000:\n{text}"
    );
}
