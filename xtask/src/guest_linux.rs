//! `cargo xtask guest-linux`: guest images for a direct Linux boot.
//!
//! By default it builds a Debian image: the cloud kernel and
//! `busybox-static` fetched with `apt-get download` (cached, see
//! [`cache_dir`]), and an initramfs whose init prints a marker, runs the
//! command given as `vmm_run="..."` on the kernel command line and hands
//! its status to `vmm` (see `guest_exit`), or reboots. With `--test-kernel` it writes the project's test kernel, an
//! initrd for it, and the matching `vmm run` command line instead.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::apt::Apt;
use crate::cpio::Cpio;

const USAGE: &str = "usage: cargo xtask guest-linux [--out DIR] [--test-kernel [--mem SIZE]]

  (default)      build a Debian cloud kernel and a busybox initramfs in DIR
  --test-kernel  write the project's test kernel and an initrd for it in DIR
  --mem SIZE     guest RAM the test kernel's expectations are made for (64M)
  --out DIR      output directory (target/guest-linux)";

/// The line the Debian image's init prints once it reached userspace.
pub const MARKER: &str = "VMM-GUEST-LINUX: reached userspace";

/// Runs the task with its arguments (those after `guest-linux`).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut out = crate::workspace_root().join("target/guest-linux");
    let mut test_kernel = false;
    let mut mem = "64M".to_string();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--out" => out = PathBuf::from(it.next().context("--out needs a directory")?),
            "--mem" => mem = it.next().context("--mem needs a size")?.clone(),
            "--test-kernel" => test_kernel = true,
            _ => bail!("unknown argument {arg:?}\n{USAGE}"),
        }
    }
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    if test_kernel {
        write_test_kernel(&out, &mem)
    } else {
        debian_image(&out)
    }
}

/// Writes the test kernel, a small initrd and the command that boots them.
fn write_test_kernel(out: &Path, mem: &str) -> anyhow::Result<()> {
    use vmm_core::boot::layout::{ACPI_SIZE, LEGACY_HOLE, MPTABLE_SIZE};
    use vmm_core::guests::test_kernel;

    let ram = vmm_core::config::parse_size(mem)?;
    let e820_ram = ram
        .checked_sub(LEGACY_HOLE.1 + MPTABLE_SIZE + ACPI_SIZE)
        .context("--mem is too small")?;
    let kernel = test_kernel::build()?;
    let initrd: Vec<u8> = (0..4096u32).map(|i| (i * 7 + i / 255) as u8).collect();
    let cmdline = format!(
        "console=ttyS0 {}",
        test_kernel::expectations(e820_ram, &initrd, 1)
    );
    let kernel_path = out.join("testkernel.bzImage");
    let initrd_path = out.join("testkernel.initrd");
    write(&kernel_path, &kernel)?;
    write(&initrd_path, &initrd)?;
    println!(
        "vmm run --mem {mem} --kernel {} --initrd {} --cmdline \"{cmdline}\"",
        kernel_path.display(),
        initrd_path.display()
    );
    Ok(())
}

/// Where the Debian packages are cached (they outlive the checkout, so
/// that fresh clones reuse them): `$VMM_CACHE`, else `$XDG_CACHE_HOME/vmm`,
/// else `~/.cache/vmm`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VMM_CACHE") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    base.join("vmm")
}

/// The Debian guest: kernel, initramfs and command line.
pub struct DebianGuest {
    /// The kernel package it came from.
    pub package: String,
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// The busybox initramfs (see [`initramfs`]).
    pub initramfs: Vec<u8>,
}

/// The kernel command line the guest is booted with.
pub const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 rdinit=/init";

/// Fetches (or finds in the cache) Debian's cloud kernel and
/// `busybox-static`, and builds the initramfs.
pub fn debian_guest(apt: &Apt, cache: &Path) -> anyhow::Result<DebianGuest> {
    let package = apt.resolve("linux-image-cloud-amd64", |apt| {
        apt.dependency("linux-image-cloud-amd64", |p| {
            p.starts_with("linux-image-") && p.ends_with("-cloud-amd64")
        })
    })?;
    let kernel = apt.unpack(&package, cache)?;
    let vmlinuz = std::fs::read_dir(kernel.join("boot"))
        .with_context(|| format!("{package} has no /boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz-* in {package}"))?;
    let busybox = busybox(apt, cache)?;
    Ok(DebianGuest {
        package,
        vmlinuz,
        initramfs: initramfs(&busybox, &crate::guest_exit::program()?),
    })
}

/// The static busybox binary of Debian's `busybox-static`.
pub fn busybox(apt: &Apt, cache: &Path) -> anyhow::Result<Vec<u8>> {
    let path = apt.unpack("busybox-static", cache)?.join("bin/busybox");
    std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes `vmlinuz`, `initramfs.cpio` and `cmdline` into `out`.
fn debian_image(out: &Path) -> anyhow::Result<()> {
    let guest = debian_guest(&Apt::system(), &cache_dir())?;
    std::fs::copy(&guest.vmlinuz, out.join("vmlinuz"))
        .with_context(|| format!("cannot copy {}", guest.vmlinuz.display()))?;
    write(&out.join("initramfs.cpio"), &guest.initramfs)?;
    write(&out.join("cmdline"), CMDLINE.as_bytes())?;
    println!("kernel:    {}", out.join("vmlinuz").display());
    println!("initramfs: {}", out.join("initramfs.cpio").display());
    println!(
        "boot it (needs hardware virtualization): vmm run --mem 512M --kernel {} --initrd {} --cmdline \"{CMDLINE}\"",
        out.join("vmlinuz").display(),
        out.join("initramfs.cpio").display()
    );
    println!(
        "run a command in it, its status becomes vmm's: --cmdline '{CMDLINE} vmm_run=\"uname -a; exit 3\"'"
    );
    println!("or a shell on the console (stdin): --cmdline '{CMDLINE} vmm_run=sh'");
    Ok(())
}

fn write(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))
}

/// The init script: mount /proc, /sys and /dev, print the marker; then run
/// the command given on the kernel command line as `vmm_run="..."` (the
/// kernel hands unknown `name=value` parameters to init as environment
/// variables) and end the VM with its status through `vmm-exit`, or
/// without a command reboot (with `reboot=k` through the keyboard
/// controller).
fn init_script() -> String {
    format!(
        "#!/bin/sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sys /sys\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         export PATH=/bin\n\
         /bin/busybox --install -s /bin\n\
         echo\n\
         echo \"{MARKER}\"\n\
         echo \"kernel: $(uname -r)\"\n\
         if [ -n \"$vmm_run\" ]; then\n\
         \x20 sh -c \"$vmm_run\"\n\
         \x20 rc=$?\n\
         \x20 echo \"{STATUS_PREFIX}$rc\"\n\
         \x20 /bin/vmm-exit $rc\n\
         fi\n\
         reboot -f\n"
    )
}

/// The line the init prints before it hands a command's status to the VMM.
pub const STATUS_PREFIX: &str = "VMM-GUEST-LINUX: command exited with ";

/// The initramfs: /bin/busybox with a `sh` link, `/bin/vmm-exit`, /init,
/// and the directories and console device a kernel expects.
pub fn initramfs(busybox: &[u8], vmm_exit: &[u8]) -> Vec<u8> {
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "tmp"] {
        cpio.dir(dir);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, busybox);
    cpio.symlink("bin/sh", "busybox");
    cpio.file("bin/vmm-exit", 0o755, vmm_exit);
    cpio.file("init", 0o755, init_script().as_bytes());
    cpio.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::parse;

    #[test]
    fn initramfs_holds_busybox_init_and_vmm_exit() {
        let entries = parse(&initramfs(b"\x7fELF-busybox", b"\x7fELF-exit"));
        let find = |n: &str| entries.iter().find(|e| e.0 == n).unwrap().clone();
        assert_eq!(find("bin/busybox").2, b"\x7fELF-busybox");
        assert_eq!(find("bin/vmm-exit").2, b"\x7fELF-exit");
        assert_eq!(
            find("bin/sh"),
            ("bin/sh".into(), 0o120_777, b"busybox".to_vec(), (0, 0))
        );
        assert_eq!(find("dev/console").3, (5, 1));
        let init = String::from_utf8(find("init").2).unwrap();
        assert!(init.starts_with("#!/bin/sh\n") && init.contains(MARKER));
        assert!(init.contains("/bin/vmm-exit $rc") && init.contains(STATUS_PREFIX));
        assert_eq!(find("init").1 & 0o777, 0o755);
    }

    #[test]
    fn the_init_script_runs_a_command_and_reports_its_status() {
        // The script as busybox would run it, with `vmm-exit` and the
        // busybox-only lines replaced by what a host shell has.
        let script = init_script()
            .replace("/bin/busybox mount", "true")
            .replace("/bin/busybox --install -s /bin", "true")
            .replace("/bin/vmm-exit $rc", "exit $rc")
            .replace("reboot -f", "exit 99");
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .env("vmm_run", "echo inside; exit 7")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(7), "{text}");
        assert!(text.contains(MARKER) && text.contains("inside\n"));
        assert!(text.contains(&format!("{STATUS_PREFIX}7")));
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .env_remove("vmm_run")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(99));
    }

    #[test]
    fn test_kernel_files_are_written() {
        let dir = std::env::temp_dir().join(format!("guest-linux-test-{}", std::process::id()));
        run(&[
            "--out".into(),
            dir.display().to_string(),
            "--test-kernel".into(),
        ])
        .unwrap();
        let kernel = std::fs::read(dir.join("testkernel.bzImage")).unwrap();
        assert_eq!(&kernel[0x202..0x206], b"HdrS");
        assert_eq!(
            std::fs::read(dir.join("testkernel.initrd")).unwrap().len(),
            4096
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(run(&["--bogus".into()]).is_err());
        assert!(run(&["--out".into()]).is_err());
    }
}
