//! What the hardware-KVM lane's tests share (`cargo xtask hwkvm` runs them
//! in L1): the L2 guest the lane provides, named by environment variables
//! (a missing one is a failure, never a skip), and `vmm run` with a
//! deadline. A test binary includes it next to [`crate::support`]:
//! `#[path = "support/lane.rs"] mod lane;`.

use std::process::ExitStatus;
use std::time::Duration;

use crate::support::{Vmm, read};

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

    /// `vmm run` arguments that boot the guest (quietly) with `mem` and
    /// `cpus` and have its init run `command` (which must not contain a
    /// double quote: the kernel command line quotes it with those).
    pub fn run_args(&self, mem: &str, cpus: u32, command: &str) -> Vec<String> {
        [
            "run",
            "--mem",
            mem,
            "--cpus",
            &cpus.to_string(),
            "--kernel",
            &self.kernel,
            "--initrd",
            &self.initrd,
            "--cmdline",
            &format!("{} quiet vmm_run=\"{command}\"", self.cmdline),
        ]
        .map(str::to_owned)
        .to_vec()
    }
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
