//! What the hardware-KVM lane's tests share (`cargo xtask hwkvm` runs them
//! in L1): the L2 guest the lane provides, named by environment variables
//! (a missing one is a failure, never a skip), `vmm run` with a deadline,
//! ext4 disk images ([`Image`]) and a network namespace of the test's own
//! ([`enter_new_netns`]). A test binary includes it next to
//! [`crate::support`]: `#[path = "support/lane.rs"] mod lane;`.
//!
//! The guest's init loads the virtio modules (PCI transport, blk, net,
//! rng, vsock) before it runs the command. With its root on a disk:
//!
//! ```text
//! let disk = Image::rootfs();
//! let guest = Guest::from_lane("L2_KERNEL").with_disk_root();
//! let extra = ["--disk".to_owned(), disk.path().display().to_string()];
//! let out = vmm_run(guest.run_args_with("512M", 1, "echo hi > /hi", &extra));
//! assert_eq!(disk.read_file("/hi").unwrap(), b"hi\n");
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::support::{Vmm, client_ok, read};

/// A Linux boot under nested KVM in QEMU's emulation takes tens of seconds.
pub const DEADLINE: Duration = Duration::from_secs(180);

/// The lane's L2 guest: a Debian kernel, the busybox initramfs and the
/// kernel command line its init expects.
pub struct Guest {
    kernel: String,
    initrd: String,
    cmdline: String,
}

fn lane_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run these tests in the hardware-KVM lane (cargo xtask hwkvm)")
    })
}

impl Guest {
    /// The guest with the kernel the environment variable `kernel_var`
    /// names: `L2_KERNEL` (Debian's cloud kernel) or `L2_KERNEL_MP`
    /// (Debian's generic kernel, which reads the MP table).
    pub fn from_lane(kernel_var: &str) -> Guest {
        Guest {
            kernel: lane_var(kernel_var),
            initrd: lane_var("L2_INITRD"),
            cmdline: lane_var("L2_CMDLINE"),
        }
    }

    /// The guest with `extra` added to its kernel command line.
    pub fn with_cmdline(mut self, extra: &str) -> Guest {
        self.cmdline = format!("{} {extra}", self.cmdline);
        self
    }

    /// The guest with its root file system on the first virtio disk: the
    /// initramfs's init mounts [`ROOT_DEVICE`] (ext4, e.g. an
    /// [`Image::rootfs`]) and the disk's own init runs the command. If the
    /// disk cannot be mounted, `vmm` exits with status [`ROOT_FAILED`].
    pub fn with_disk_root(self) -> Guest {
        self.with_cmdline(&format!("vmm_root={ROOT_DEVICE}"))
    }

    /// `vmm run` arguments that boot the guest (quietly) with `mem` and
    /// `cpus` and have its init run `command` (which must not contain a
    /// double quote: the kernel command line quotes it with those); the
    /// command's exit status becomes vmm's (`--exit-code guest`).
    pub fn run_args(&self, mem: &str, cpus: u32, command: &str) -> Vec<String> {
        self.run_args_with(mem, cpus, command, &[])
    }

    /// [`Guest::run_args`] followed by `extra_vmm_args` (devices:
    /// `--disk ...`, `--net ...`).
    pub fn run_args_with(
        &self,
        mem: &str,
        cpus: u32,
        command: &str,
        extra_vmm_args: &[String],
    ) -> Vec<String> {
        let mut args: Vec<String> = [
            "run",
            "--mem",
            mem,
            "--cpus",
            &cpus.to_string(),
            "--exit-code",
            "guest",
            "--kernel",
            &self.kernel,
            "--initrd",
            &self.initrd,
            "--cmdline",
            // Last: tests append kernel parameters to it.
            &format!("{} quiet vmm_run=\"{command}\"", self.cmdline),
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend_from_slice(extra_vmm_args);
        args
    }
}

/// The disk [`Guest::with_disk_root`] mounts as `/`: the first virtio disk.
pub const ROOT_DEVICE: &str = "/dev/vda";

/// `vmm`'s exit status when the guest cannot mount [`ROOT_DEVICE`].
pub const ROOT_FAILED: i32 = 125;

/// What the guest prints (before the name and insmod's complaint) when one
/// of its modules does not load.
pub const INSMOD_FAILED: &str = "VMM-GUEST-LINUX: insmod failed: ";

/// An ext4 disk image in a temporary directory that goes with it. L1 has
/// e2fsprogs (`mke2fs`, `e2fsck`, `debugfs`) in /sbin.
pub struct Image {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Image {
    /// A copy of the lane's root file system (`$L2_ROOTFS`: busybox,
    /// `vmm-exit` and an init that runs `vmm_run`), for
    /// [`Guest::with_disk_root`].
    pub fn rootfs() -> Image {
        let image = Image::empty();
        std::fs::copy(lane_var("L2_ROOTFS"), &image.path).unwrap();
        image
    }

    /// A fresh, empty ext4 file system of `size` (as `mke2fs` takes it:
    /// `64M`).
    pub fn blank(size: &str) -> Image {
        let image = Image::empty();
        let out = Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4"])
            .arg(&image.path)
            .arg(size)
            .output()
            .unwrap();
        assert!(out.status.success(), "mke2fs: {out:?}");
        image
    }

    fn empty() -> Image {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.ext4");
        Image { _dir: dir, path }
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the file system without changing it (`e2fsck -fn`); the
    /// error is e2fsck's report.
    pub fn fsck(&self) -> Result<(), String> {
        let out = Command::new("e2fsck")
            .arg("-fn")
            .arg(&self.path)
            .output()
            .unwrap();
        match out.status.success() {
            true => Ok(()),
            false => Err(format!(
                "e2fsck -fn: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }

    /// The contents of the file at `path` inside the image (read with
    /// `debugfs`, no mount); the error is what `debugfs` said.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, String> {
        let out = Command::new("debugfs")
            .args(["-R", &format!("cat {path}")])
            .arg(&self.path)
            .output()
            .unwrap();
        // debugfs reports errors on stderr after its version banner, and
        // exits with 0 either way.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let complaints: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
            .collect();
        match out.status.success() && complaints.is_empty() {
            true => Ok(out.stdout),
            false => Err(format!("debugfs cat {path}: {}", complaints.join("; "))),
        }
    }
}

/// Moves the calling thread (one test: the harness runs each in its own
/// thread) into a new network namespace with only a loopback device (down),
/// where it can make taps (`/sbin/ip tuntap add dev tap0 mode tap`) that
/// nothing else sees. The processes it starts from now on are in it too;
/// the namespace goes when they and the thread have ended.
pub fn enter_new_netns() {
    // SAFETY: unshare takes no pointers; CLONE_NEWNET only changes the
    // network namespace of the calling thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
}

/// How `vmm run` ended and what the guest wrote on its serial port.
pub struct Booted {
    /// `vmm`'s exit status.
    pub status: ExitStatus,
    /// The serial output followed by `vmm`'s own output.
    pub serial: String,
}

/// Runs `vmm ARGS --serial FILE` and waits (with [`DEADLINE`]) until it
/// ends.
pub fn vmm_run(mut args: Vec<String>) -> Booted {
    let dir = tempfile::tempdir().unwrap();
    let (serial, stderr) = (dir.path().join("serial"), dir.path().join("stderr"));
    args.extend(["--serial".to_owned(), serial.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut vm = Vmm::spawn(&args.join(" "), &args, &stderr, DEADLINE);
    let status = vm.wait(|| read(&serial) + &read(&stderr));
    Booted {
        status,
        serial: read(&serial) + &read(&stderr),
    }
}

/// One `vmm run` process of a VM's journey through saves, restores and
/// teleports: its serial log, stderr and control socket in a directory.
pub struct Stage {
    /// The stage's name (its files are `NAME.serial`, `NAME.sock`,
    /// `NAME.stderr`).
    pub name: &'static str,
    /// The process.
    pub vm: Vmm,
    /// Its serial log.
    pub serial: PathBuf,
    /// Its control socket.
    pub socket: PathBuf,
}

impl Stage {
    /// Starts `vmm ARGS` as stage `name`, with a control socket and a
    /// serial log of its own in `dir`.
    pub fn start(dir: &Path, name: &'static str, mut args: Vec<String>) -> Stage {
        let (serial, socket) = (
            dir.join(format!("{name}.serial")),
            dir.join(format!("{name}.sock")),
        );
        args.extend(
            [
                "--api-socket",
                socket.to_str().unwrap(),
                "--serial",
                serial.to_str().unwrap(),
            ]
            .map(str::to_owned),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let stderr = dir.join(format!("{name}.stderr"));
        let vm = Vmm::spawn(name, &args, &stderr, DEADLINE);
        Stage {
            name,
            vm,
            serial,
            socket,
        }
    }

    /// Runs a control command (`save`, `teleport`, `poweroff`) against
    /// this stage, which must say `says` and then end with success;
    /// returns the stage's serial log.
    pub fn leave(&mut self, command: &[&str], says: &str) -> String {
        let mut args = command.to_vec();
        args.extend(["--api-socket", self.socket.to_str().unwrap()]);
        let said = client_ok(&args);
        assert!(said.contains(says), "{}: {said}", self.name);
        let status = self.vm.wait(|| read(&self.serial));
        assert!(status.success(), "{}: {status}", self.name);
        read(&self.serial)
    }

    /// Waits until the guest printed the line `line` (the serial console
    /// ends lines with CR LF).
    pub fn wait_for_line(&mut self, line: &str) {
        self.vm.wait_until(&self.serial, line, |text| {
            text.lines().any(|l| l.trim_end() == line)
        });
    }
}
