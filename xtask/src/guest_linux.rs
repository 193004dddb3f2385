//! `cargo xtask guest-linux`: guest images for a direct Linux boot.
//!
//! By default it builds a Debian image: the cloud kernel and
//! `busybox-static` fetched with `apt-get download`, and an initramfs
//! (written here as a cpio "newc" archive) whose init prints a marker and
//! reboots. With `--test-kernel` it writes the project's test kernel, an
//! initrd for it, and the matching `vmm run` command line instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

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
    use vmm_core::boot::layout::{LEGACY_HOLE, MPTABLE_SIZE};
    use vmm_core::boot::test_kernel;

    let ram = vmm_core::config::parse_size(mem)?;
    let e820_ram = ram
        .checked_sub(LEGACY_HOLE.1 + MPTABLE_SIZE)
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

/// Downloads and unpacks the Debian packages, then writes `vmlinuz`,
/// `initramfs.cpio` and `cmdline` into `out`.
fn debian_image(out: &Path) -> anyhow::Result<()> {
    let debs = out.join("debs");
    std::fs::create_dir_all(&debs)?;
    let kernel_pkg = cloud_kernel_package()?;
    for pkg in [kernel_pkg.as_str(), "busybox-static"] {
        run_tool(
            Command::new("apt-get")
                .arg("download")
                .arg(pkg)
                .current_dir(&debs),
        )
        .with_context(|| format!("cannot download {pkg} (is apt-get update done?)"))?;
    }
    let root = out.join("unpacked");
    for entry in std::fs::read_dir(&debs)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            run_tool(Command::new("dpkg-deb").arg("-x").arg(&path).arg(&root))?;
        }
    }
    let vmlinuz = std::fs::read_dir(root.join("boot"))
        .context("the kernel package has no /boot")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("no vmlinuz-* in the kernel package")?;
    std::fs::copy(&vmlinuz, out.join("vmlinuz"))
        .with_context(|| format!("cannot copy {}", vmlinuz.display()))?;
    let busybox =
        std::fs::read(root.join("bin/busybox")).context("busybox-static has no /bin/busybox")?;
    let cpio = initramfs(&busybox);
    write(&out.join("initramfs.cpio"), &cpio)?;
    let cmdline = "console=ttyS0 reboot=k panic=1 rdinit=/init";
    write(&out.join("cmdline"), cmdline.as_bytes())?;
    println!("kernel:    {}", out.join("vmlinuz").display());
    println!("initramfs: {}", out.join("initramfs.cpio").display());
    println!(
        "boot it (needs hardware virtualization): vmm run --mem 512M --kernel {} --initrd {} --cmdline \"{cmdline}\"",
        out.join("vmlinuz").display(),
        out.join("initramfs.cpio").display()
    );
    Ok(())
}

/// The versioned package `linux-image-cloud-amd64` depends on.
fn cloud_kernel_package() -> anyhow::Result<String> {
    let output = Command::new("apt-cache")
        .args(["depends", "linux-image-cloud-amd64"])
        .output()
        .context("cannot run apt-cache")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .map(str::to_string)
        .context("apt-cache knows no linux-image-cloud-amd64 (run apt-get update)")
}

fn run_tool(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn write(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))
}

/// The init script: mount /proc, print the marker, reboot (with
/// `reboot=k` the kernel resets through the keyboard controller).
fn init_script() -> String {
    format!(
        "#!/bin/sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         echo\n\
         echo \"{MARKER}\"\n\
         echo \"kernel: $(/bin/busybox uname -r)\"\n\
         /bin/busybox reboot -f\n"
    )
}

/// The initramfs: /bin/busybox with a `sh` link, /init, and the directories
/// and console device a kernel expects.
fn initramfs(busybox: &[u8]) -> Vec<u8> {
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys"] {
        cpio.add(dir, 0o040_755, &[], (0, 0));
    }
    cpio.add("dev/console", 0o020_600, &[], (5, 1));
    cpio.add("bin/busybox", 0o100_755, busybox, (0, 0));
    cpio.add("bin/sh", 0o120_777, b"busybox", (0, 0));
    cpio.add("init", 0o100_755, init_script().as_bytes(), (0, 0));
    cpio.finish()
}

/// A cpio archive in the "newc" format the kernel's initramfs unpacker reads.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    next_ino: u32,
}

impl Cpio {
    /// Adds an entry; `rdev` is the (major, minor) of a device node.
    fn add(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.next_ino += 1;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for f in fields {
            self.bytes.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.bytes.len() % 4 != 0 {
            self.bytes.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.next_ino = 0;
        self.add("TRAILER!!!", 0, &[], (0, 0));
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One archive entry read back: name, mode, data, rdev.
    type Entry = (String, u32, Vec<u8>, (u32, u32));

    /// Reads a newc archive back.
    fn parse(mut bytes: &[u8]) -> Vec<Entry> {
        let field = |h: &[u8], i: usize| {
            u32::from_str_radix(std::str::from_utf8(&h[6 + i * 8..14 + i * 8]).unwrap(), 16)
                .unwrap()
        };
        let align = |n: usize| n.div_ceil(4) * 4;
        let mut out = Vec::new();
        loop {
            assert_eq!(&bytes[..6], b"070701");
            let (mode, size, namesize) = (
                field(bytes, 1),
                field(bytes, 6) as usize,
                field(bytes, 11) as usize,
            );
            let rdev = (field(bytes, 9), field(bytes, 10));
            let name = String::from_utf8(bytes[110..110 + namesize - 1].to_vec()).unwrap();
            let data_at = align(110 + namesize);
            let data = bytes[data_at..data_at + size].to_vec();
            bytes = &bytes[align(data_at + size)..];
            if name == "TRAILER!!!" {
                assert!(bytes.is_empty());
                return out;
            }
            out.push((name, mode, data, rdev));
        }
    }

    #[test]
    fn initramfs_round_trips() {
        let entries = parse(&initramfs(b"\x7fELF-busybox"));
        let find = |n: &str| entries.iter().find(|e| e.0 == n).unwrap().clone();
        assert_eq!(find("bin/busybox").2, b"\x7fELF-busybox");
        assert_eq!(
            find("bin/sh"),
            ("bin/sh".into(), 0o120_777, b"busybox".to_vec(), (0, 0))
        );
        assert_eq!(find("dev/console").3, (5, 1));
        let init = String::from_utf8(find("init").2).unwrap();
        assert!(init.starts_with("#!/bin/sh\n") && init.contains(MARKER));
        assert_eq!(find("init").1 & 0o777, 0o755);
    }

    #[test]
    fn entries_are_aligned() {
        let mut cpio = Cpio::default();
        cpio.add("a", 0o100_644, b"12345", (0, 0));
        cpio.add("bcd", 0o100_644, b"", (0, 0));
        let bytes = cpio.finish();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(parse(&bytes).len(), 2);
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
