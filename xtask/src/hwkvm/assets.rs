//! What the lane downloads (once, into the cache): QEMU, Debian's 6.12
//! cloud kernel for L1 with its KVM, `tun` and `bridge` modules, busybox, gdb, the
//! L2 guest of `cargo xtask guest-linux`, and Debian's generic kernel of
//! the same release as a second L2 kernel.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::qemu::Qemu;
use crate::apt::Apt;
use crate::guest_linux::{self, DebianGuest};
use crate::kmod::{self, Module};

/// The modules L1 loads (with the ones they need): KVM for AMD-V, `tun`
/// for the taps of the network tests, and `bridge` to join the taps of a
/// teleport's source and target into one network.
const L1_MODULES: [&str; 3] = ["kvm_amd", "tun", "bridge"];

/// Everything the lane runs, on the host.
pub struct Assets {
    /// The emulator.
    pub qemu: Qemu,
    /// L1's kernel package.
    pub l1_package: String,
    /// L1's kernel.
    pub l1_kernel: PathBuf,
    /// L1's modules, in load order.
    pub modules: Vec<Module>,
    /// Static busybox.
    pub busybox: Vec<u8>,
    /// Debian's `gdb-minimal`.
    pub gdb: PathBuf,
    /// The L2 guest.
    pub guest: DebianGuest,
    /// Debian's generic kernel of the L2 guest's release: unlike the cloud
    /// kernel it is built with `CONFIG_X86_MPPARSE`, so without ACPI it
    /// reads the MP table.
    pub mp_vmlinuz: PathBuf,
}

impl Assets {
    /// Fetches what is not cached yet. `l1_package` picks L1's kernel
    /// package (default: the newest 6.12 cloud kernel apt knows).
    pub fn fetch(cache: &Path, l1_package: Option<&str>) -> anyhow::Result<Assets> {
        let apt = Apt::system();
        let qemu = Qemu::fetch(cache)?;
        let l1_package = match l1_package {
            Some(p) => p.to_owned(),
            None => apt.resolve("Linux 6.12 cloud kernel", |apt| {
                apt.newest("^linux-image-6\\.12.*-cloud-amd64$", |n| {
                    n.starts_with("linux-image-6.12") && n.ends_with("-cloud-amd64")
                })
            })?,
        };
        let l1 = apt.unpack(&l1_package, cache)?;
        let l1_kernel = file_starting_with(&l1.join("boot"), "vmlinuz-")?;
        let release = l1_kernel
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .context("vmlinuz-<release>")?
            .to_owned();
        let busybox_dir = apt.unpack("busybox-static", cache)?;
        let busybox = busybox_dir.join("bin/busybox");
        let module_tree = l1.join("lib/modules").join(&release).join("kernel");
        let modules = kmod::with_dependencies(&module_tree, &L1_MODULES, &busybox)
            .with_context(|| format!("the modules of {l1_package}"))?;
        let gdb = apt.unpack("gdb-minimal", cache)?.join("usr/bin/gdb");
        let guest = guest_linux::debian_guest(&apt, cache)?;
        let mp_vmlinuz = generic_kernel(&apt, cache, &guest.package)?;
        Ok(Assets {
            qemu,
            l1_package,
            l1_kernel,
            modules,
            busybox: std::fs::read(&busybox)?,
            gdb,
            guest,
            mp_vmlinuz,
        })
    }
}

/// The vmlinuz of the generic kernel package (`linux-image-R-amd64`) of the
/// cloud kernel package `cloud` (`linux-image-R-cloud-amd64`).
fn generic_kernel(apt: &Apt, cache: &Path, cloud: &str) -> anyhow::Result<PathBuf> {
    let release = cloud
        .strip_suffix("-cloud-amd64")
        .with_context(|| format!("{cloud} is not named linux-image-*-cloud-amd64"))?;
    let package = format!("{release}-amd64");
    file_starting_with(&apt.unpack(&package, cache)?.join("boot"), "vmlinuz-")
}

fn file_starting_with(dir: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .with_context(|| format!("no {prefix}* in {}", dir.display()))
}
