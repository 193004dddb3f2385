//! `cargo xtask guest-linux`: guest images for a direct Linux boot.
//!
//! By default it builds a Debian image: the cloud kernel and
//! `busybox-static` fetched with `apt-get download` (cached, see
//! [`cache_dir`]), and an initramfs whose init loads the kernel's virtio
//! modules, prints a marker, runs the command given as `vmm_run="..."` on
//! the kernel command line and hands its status to `vmm` (see
//! `guest_exit`), or reboots. With `vmm_root=/dev/vda` it first switches
//! to the ext4 root file system on that disk (`rootfs.ext4`, built without
//! root rights by `mke2fs -d`), whose own init goes on the same way. With
//! `--test-kernel` it writes the project's test kernel, an initrd for it,
//! and the matching `vmm run` command line instead.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::apt::Apt;
use crate::cpio::Cpio;
use crate::ext4;
use crate::kmod::{self, Module};

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
    /// The busybox initramfs with the kernel's virtio modules (see
    /// [`initramfs`]).
    pub initramfs: Vec<u8>,
    busybox: Vec<u8>,
    programs: Programs,
}

/// The project's own programs both images carry in `/bin`: `vmm-exit`
/// (see `guest_exit`) and `vmm-vsock` (see `guest_vsock`).
pub struct Programs {
    vmm_exit: Vec<u8>,
    vmm_vsock: Vec<u8>,
}

impl Programs {
    /// Assembles them.
    pub fn build() -> anyhow::Result<Programs> {
        Ok(Programs {
            vmm_exit: crate::guest_exit::program()?,
            vmm_vsock: crate::guest_vsock::program()?,
        })
    }

    /// Each one's path in the image and contents.
    fn files(&self) -> [(&'static str, &[u8]); 2] {
        [
            ("bin/vmm-exit", &self.vmm_exit),
            ("bin/vmm-vsock", &self.vmm_vsock),
        ]
    }
}

impl DebianGuest {
    /// Writes an ext4 root file system for `vmm_root=/dev/vda` to `image`
    /// (see [`rootfs_image`]).
    pub fn write_rootfs(&self, image: &Path) -> anyhow::Result<()> {
        rootfs_image(&self.busybox, &self.programs, image, ROOTFS_SIZE)
    }
}

/// The size of the root file system image [`DebianGuest::write_rootfs`]
/// writes: room for busybox and a test's files, small enough to ship in an
/// initramfs.
pub const ROOTFS_SIZE: &str = "16M";

/// The kernel command line the guest is booted with.
pub const CMDLINE: &str = "console=ttyS0 reboot=k panic=1 rdinit=/init";

/// The modules the initramfs loads (with the ones they need): the virtio
/// PCI transport and the virtio devices `vmm` offers.
pub const MODULES: [&str; 5] = [
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "vmw_vsock_virtio_transport",
];

/// What ext4 roots need where the kernel has ext4 as a module (Debian's
/// cloud kernels build it in).
const EXT4_MODULES: [&str; 2] = ["crc32c_generic", "ext4"];

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
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("vmlinuz-<release>")?;
    let busybox_path = busybox_path(apt, cache)?;
    let modules = modules(&kernel.join("lib/modules").join(release), &busybox_path)
        .with_context(|| format!("the modules of {package}"))?;
    let busybox = std::fs::read(&busybox_path)
        .with_context(|| format!("cannot read {}", busybox_path.display()))?;
    let programs = Programs::build()?;
    Ok(DebianGuest {
        package,
        vmlinuz,
        initramfs: initramfs(&busybox, &programs, &modules),
        busybox,
        programs,
    })
}

/// [`MODULES`] (and [`EXT4_MODULES`] unless ext4 is built in) with their
/// dependencies, from the module directory `dir` (`lib/modules/RELEASE`).
fn modules(dir: &Path, busybox: &Path) -> anyhow::Result<Vec<Module>> {
    let builtin = std::fs::read_to_string(dir.join("modules.builtin"))
        .with_context(|| format!("cannot read {}/modules.builtin", dir.display()))?;
    let mut wanted = MODULES.to_vec();
    if !builtin.lines().any(|l| l == "kernel/fs/ext4/ext4.ko") {
        wanted.extend(EXT4_MODULES);
    }
    kmod::with_dependencies(&dir.join("kernel"), &wanted, busybox)
}

/// Where the static busybox binary of Debian's `busybox-static` is.
pub fn busybox_path(apt: &Apt, cache: &Path) -> anyhow::Result<PathBuf> {
    Ok(apt.unpack("busybox-static", cache)?.join("bin/busybox"))
}

/// Writes `vmlinuz`, `initramfs.cpio` and `cmdline` into `out`.
fn debian_image(out: &Path) -> anyhow::Result<()> {
    let guest = debian_guest(&Apt::system(), &cache_dir())?;
    std::fs::copy(&guest.vmlinuz, out.join("vmlinuz"))
        .with_context(|| format!("cannot copy {}", guest.vmlinuz.display()))?;
    write(&out.join("initramfs.cpio"), &guest.initramfs)?;
    write(&out.join("cmdline"), CMDLINE.as_bytes())?;
    guest.write_rootfs(&out.join("rootfs.ext4"))?;
    println!("kernel:    {}", out.join("vmlinuz").display());
    println!("initramfs: {}", out.join("initramfs.cpio").display());
    println!(
        "boot it (needs hardware virtualization): vmm run --mem 512M --kernel {} --initrd {} --cmdline \"{CMDLINE}\"",
        out.join("vmlinuz").display(),
        out.join("initramfs.cpio").display()
    );
    println!(
        "run a command in it, its status becomes vmm's: --exit-code guest --cmdline '{CMDLINE} vmm_run=\"uname -a; exit 3\"'"
    );
    println!("or a shell on the console (stdin): --cmdline '{CMDLINE} vmm_run=sh'");
    println!(
        "root file system: {} (with a virtio disk of it: add vmm_root=/dev/vda to the command line)",
        out.join("rootfs.ext4").display()
    );
    Ok(())
}

fn write(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))
}

/// What both inits start with: /proc, /sys and /dev mounted, busybox's
/// applets linked into /bin.
const PRELUDE: &str = "#!/bin/sh\n\
    /bin/busybox mount -t proc proc /proc\n\
    /bin/busybox mount -t sysfs sys /sys\n\
    /bin/busybox mount -t devtmpfs dev /dev\n\
    export PATH=/bin\n\
    /bin/busybox --install -s /bin\n";

/// What both inits end with: print the marker, run the command given on
/// the kernel command line as `vmm_run="..."` (the kernel hands unknown
/// `name=value` parameters to init as environment variables), make the
/// root file system read-only (a disk is left clean) and end the VM with
/// the command's status through `vmm-exit`; without a command, reboot
/// (with `reboot=k` through the keyboard controller).
fn run_part() -> String {
    format!(
        "echo\n\
         echo \"{MARKER}\"\n\
         echo \"kernel: $(uname -r)\"\n\
         if [ -n \"$vmm_run\" ]; then\n\
         \x20 sh -c \"$vmm_run\"\n\
         \x20 rc=$?\n\
         \x20 sync\n\
         \x20 /bin/busybox mount -o remount,ro / 2>/dev/null\n\
         \x20 echo \"{STATUS_PREFIX}$rc\"\n\
         \x20 /bin/vmm-exit $rc\n\
         fi\n\
         reboot -f\n"
    )
}

/// The initramfs's init: loads `modules` in order (quietly; a module that
/// does not load is named with insmod's complaint). With
/// `vmm_root=/dev/DEVICE` on the kernel command line it then mounts that
/// device (ext4) and `switch_root`s into it, whose `/init` (see
/// [`root_init_script`]) goes on; if that fails it ends the VM with status
/// [`ROOT_FAILED`]. Without it, it runs the command itself (see
/// [`run_part`]).
fn init_script(modules: &[&str]) -> String {
    format!(
        "{PRELUDE}\
         for m in {list}; do\n\
         \x20 err=$(insmod /lib/modules/$m.ko 2>&1) || echo \"{INSMOD_FAILED}$m: $err\"\n\
         done\n\
         if [ -n \"$vmm_root\" ]; then\n\
         \x20 n=0\n\
         \x20 while [ ! -b \"$vmm_root\" ] && [ $n -lt 50 ]; do usleep 100000; n=$((n + 1)); done\n\
         \x20 if /bin/busybox mount -t ext4 \"$vmm_root\" /newroot; then\n\
         \x20   /bin/busybox umount /proc /sys /dev\n\
         \x20   exec /bin/busybox switch_root /newroot /init\n\
         \x20 fi\n\
         \x20 echo \"{ROOT_FAILED_TEXT}$vmm_root\"\n\
         \x20 /bin/vmm-exit {ROOT_FAILED}\n\
         fi\n\
         {run}",
        list = modules.join(" "),
        run = run_part(),
    )
}

/// The init of a root file system image (see [`rootfs_image`]): what the
/// initramfs's init does after loading modules, with the image as `/`.
fn root_init_script() -> String {
    format!("{PRELUDE}{}", run_part())
}

/// The line the init prints before it hands a command's status to the VMM.
pub const STATUS_PREFIX: &str = "VMM-GUEST-LINUX: command exited with ";

/// What the init prints for a module that does not load, before its name.
pub const INSMOD_FAILED: &str = "VMM-GUEST-LINUX: insmod failed: ";

/// What the init prints, before the device, when `vmm_root` cannot be
/// mounted or switched to.
const ROOT_FAILED_TEXT: &str = "VMM-GUEST-LINUX: cannot switch to the root file system on ";

/// The VM's exit status when `vmm_root` cannot be mounted or switched to.
pub const ROOT_FAILED: u8 = 125;

/// The initramfs: /bin/busybox with a `sh` link, the [`Programs`], the
/// modules in `/lib/modules/NAME.ko`, /init (see [`init_script`]), and the
/// directories and console device a kernel expects.
pub fn initramfs(busybox: &[u8], programs: &Programs, modules: &[Module]) -> Vec<u8> {
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "tmp", "newroot"] {
        cpio.dir(dir);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, busybox);
    cpio.symlink("bin/sh", "busybox");
    for (path, data) in programs.files() {
        cpio.file(path, 0o755, data);
    }
    for m in modules {
        cpio.file(&format!("lib/modules/{}.ko", m.name), 0o644, &m.data);
    }
    let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    cpio.file("init", 0o755, init_script(&names).as_bytes());
    cpio.finish()
}

/// Writes an ext4 root file system for `vmm_root` to `image` (of `size`,
/// as `mke2fs` takes it): busybox with a `sh` link, the [`Programs`], its
/// /init (see [`root_init_script`]) and the directories it mounts on. The
/// tree it is made from is written next to it (`image` with the extension
/// `tree`) and removed again.
pub fn rootfs_image(
    busybox: &[u8],
    programs: &Programs,
    image: &Path,
    size: &str,
) -> anyhow::Result<()> {
    let tree = ext4::Tree::new(&image.with_extension("tree"))?;
    for dir in ["dev", "proc", "sys", "tmp", "root"] {
        tree.dir(dir)?;
    }
    tree.file("bin/busybox", 0o755, busybox)?;
    tree.symlink("bin/sh", "busybox")?;
    for (path, data) in programs.files() {
        tree.file(path, 0o755, data)?;
    }
    tree.file("init", 0o755, root_init_script().as_bytes())?;
    tree.build(image, size)?;
    tree.remove()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::parse;

    /// Stand-ins for the programs, to find in the images.
    fn programs() -> Programs {
        Programs {
            vmm_exit: b"\x7fELF-exit".to_vec(),
            vmm_vsock: b"\x7fELF-vsock".to_vec(),
        }
    }

    #[test]
    fn the_programs_are_the_assembled_ones() {
        let built = Programs::build().unwrap();
        assert_eq!(built.vmm_exit, crate::guest_exit::program().unwrap());
        assert_eq!(built.vmm_vsock, crate::guest_vsock::program().unwrap());
    }

    #[test]
    fn initramfs_holds_busybox_init_modules_and_programs() {
        let modules =
            [("virtio_ring", b"ko-ring"), ("virtio", b"ko-virt")].map(|(name, data)| Module {
                name: name.into(),
                data: data.to_vec(),
            });
        let entries = parse(&initramfs(b"\x7fELF-busybox", &programs(), &modules));
        let find = |n: &str| entries.iter().find(|e| e.0 == n).unwrap().clone();
        assert_eq!(find("bin/busybox").2, b"\x7fELF-busybox");
        assert_eq!(find("bin/vmm-exit").2, b"\x7fELF-exit");
        assert_eq!(find("bin/vmm-vsock").2, b"\x7fELF-vsock");
        assert_eq!(find("bin/vmm-vsock").1, 0o100_755);
        assert_eq!(find("lib/modules/virtio.ko").2, b"ko-virt");
        assert_eq!(
            find("bin/sh"),
            ("bin/sh".into(), 0o120_777, b"busybox".to_vec(), (0, 0))
        );
        assert_eq!(find("dev/console").3, (5, 1));
        assert_eq!(find("newroot").1, 0o040_755);
        let init = String::from_utf8(find("init").2).unwrap();
        assert!(init.starts_with("#!/bin/sh\n") && init.contains(MARKER));
        assert!(init.contains("/bin/vmm-exit $rc") && init.contains(STATUS_PREFIX));
        assert!(init.contains("for m in virtio_ring virtio; do"), "{init}");
        assert_eq!(find("init").1 & 0o777, 0o755);
    }

    /// Runs an init script with a host shell, the busybox-only commands
    /// replaced by `swaps` and by what a host shell has (`vmm-exit` by
    /// `exit`, a reboot by `exit 99`), with `env` set.
    fn run_init(script: &str, swaps: &[(&str, &str)], env: &[(&str, &str)]) -> (i32, String) {
        let mut script = script.to_owned();
        for (from, to) in swaps.iter().chain(&[
            ("/bin/busybox mount", "true"),
            ("/bin/busybox --install -s /bin", "true"),
            ("/bin/vmm-exit", "exit"),
            ("reboot -f", "exit 99"),
            ("usleep 100000", "true"),
        ]) {
            script = script.replace(from, to);
        }
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", &script])
            .env_remove("vmm_run")
            .env_remove("vmm_root");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code().unwrap_or(-1), text)
    }

    #[test]
    fn the_init_script_runs_a_command_and_reports_its_status() {
        for script in [init_script(&[]), root_init_script()] {
            let (status, text) = run_init(&script, &[], &[("vmm_run", "echo inside; exit 7")]);
            assert_eq!(status, 7, "{text}");
            assert!(text.contains(MARKER) && text.contains("inside\n"));
            assert!(text.contains(&format!("{STATUS_PREFIX}7")));
            assert_eq!(run_init(&script, &[], &[]).0, 99);
        }
    }

    #[test]
    fn the_init_script_names_a_module_that_does_not_load() {
        let script = init_script(&["virtio_ring", "virtio"]);
        let (status, text) = run_init(
            &script,
            &[(
                "insmod /lib/modules/$m.ko",
                "[ $m = virtio_ring ] || { echo no such $m; false; }",
            )],
            &[("vmm_run", "true")],
        );
        assert_eq!(status, 0, "{text}");
        assert!(
            !text.contains(&format!("{INSMOD_FAILED}virtio_ring")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{INSMOD_FAILED}virtio: no such virtio")),
            "{text}"
        );
    }

    #[test]
    fn the_init_script_switches_to_vmm_root_or_fails_loudly() {
        let script = init_script(&[]);
        let switch = ("exec /bin/busybox switch_root /newroot /init", "exit 42");
        let root = [("vmm_root", "/dev/null"), ("vmm_run", "true")];
        let (status, text) = run_init(&script, &[switch, ("/bin/busybox umount", "true")], &root);
        assert_eq!(status, 42, "switch_root runs the disk's init: {text}");
        assert!(!text.contains(MARKER), "{text}");
        let fail = ("/bin/busybox mount -t ext4", "false");
        let (status, text) = run_init(&script, &[fail, switch], &root);
        assert_eq!(status, i32::from(ROOT_FAILED), "{text}");
        assert!(
            text.contains(&format!("{ROOT_FAILED_TEXT}/dev/null")),
            "{text}"
        );
    }

    #[test]
    fn the_root_image_holds_its_init_and_passes_fsck() {
        let dir = std::env::temp_dir().join(format!("guest-linux-rootfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("rootfs.ext4");
        rootfs_image(b"\x7fELF-busybox", &programs(), &image, ROOTFS_SIZE).unwrap();
        let fsck = std::process::Command::new(ext4::e2fsprogs("e2fsck").unwrap())
            .arg("-fn")
            .arg(&image)
            .output()
            .unwrap();
        assert!(fsck.status.success(), "{fsck:?}");
        let cat = |path: &str| {
            let out = std::process::Command::new(ext4::e2fsprogs("debugfs").unwrap())
                .args(["-R", &format!("cat {path}")])
                .arg(&image)
                .output()
                .unwrap();
            out.stdout
        };
        assert_eq!(cat("/init"), root_init_script().as_bytes());
        assert_eq!(cat("/bin/vmm-exit"), b"\x7fELF-exit");
        assert_eq!(cat("/bin/vmm-vsock"), b"\x7fELF-vsock");
        std::fs::remove_dir_all(&dir).unwrap();
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
