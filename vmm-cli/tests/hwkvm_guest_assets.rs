//! What the lane gives the virtio tests, checked before any virtio device
//! exists: the L2 guest's init loads Debian's virtio modules (PCI
//! transport, blk, net, rng, vsock), the lane's ext4 root file system and
//! fresh ones are clean and readable in L1, and L1 can make taps in a
//! network namespace of a test's own. Needs the lane (`cargo xtask
//! hwkvm`, which sets `L2_KERNEL`, `L2_INITRD`, `L2_CMDLINE`, `L2_ROOTFS`;
//! a missing one is a failure, never a skip), so it is ignored in a plain
//! `cargo test`.

#[allow(dead_code)] // shared by the lane's test binaries
#[path = "support/lane.rs"]
mod lane;
#[allow(dead_code)] // shared by the end-to-end tests; these use what the lane needs
mod support;

use std::process::Command;

use lane::{Guest, INSMOD_FAILED, Image, enter_new_netns, vmm_run};

/// The modules the guest's init must have loaded: the ones asked for and
/// some they depend on.
const MODULES: [&str; 9] = [
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "vmw_vsock_virtio_transport",
    "virtio",
    "virtio_ring",
    "net_failover",
    "vsock",
];

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn the_guest_loads_the_virtio_modules() {
    let guest = Guest::from_lane("L2_KERNEL");
    let out = vmm_run(guest.run_args("512M", 1, "lsmod"));
    assert!(out.status.success(), "{}\n{}", out.status, out.serial);
    assert!(!out.serial.contains(INSMOD_FAILED), "{}", out.serial);
    for m in MODULES {
        assert!(
            out.serial
                .lines()
                .any(|l| l.split_whitespace().next() == Some(m)),
            "lsmod lists no {m}:\n{}",
            out.serial
        );
    }
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn the_root_image_is_clean_and_holds_its_init() {
    let root = Image::rootfs();
    root.fsck().unwrap();
    let init = String::from_utf8(root.read_file("/init").unwrap()).unwrap();
    assert!(
        init.starts_with("#!/bin/sh\n") && init.contains("$vmm_run"),
        "{init}"
    );
    assert!(
        root.read_file("/bin/vmm-exit")
            .unwrap()
            .starts_with(b"\x7fELF")
    );
    assert!(root.read_file("/no/such/file").is_err());
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn l1_makes_clean_ext4_images() {
    let image = Image::blank("32M");
    image.fsck().unwrap();
    assert_eq!(std::fs::metadata(image.path()).unwrap().len(), 32 << 20);
    // A damaged one is caught: zero its superblock.
    let mut bytes = std::fs::read(image.path()).unwrap();
    bytes[1024..2048].fill(0);
    std::fs::write(image.path(), bytes).unwrap();
    assert!(image.fsck().is_err());
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn l1_makes_taps_in_a_namespace_of_its_own() {
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "no /dev/net/tun"
    );
    enter_new_netns();
    let ip = |args: &str| {
        let out = Command::new("ip")
            .args(args.split_whitespace())
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = ip("-o link show");
    assert!(!before.contains("tap0"), "{before}");
    ip("tuntap add dev tap0 mode tap");
    ip("addr add 10.0.2.1/24 dev tap0");
    ip("link set tap0 up");
    let link = ip("-o link show tap0");
    assert!(link.contains("tap0"), "{link}");
    assert!(ip("-o addr show dev tap0").contains("10.0.2.1/24"));
}
