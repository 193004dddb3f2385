//! QEMU for the lane: Debian's backported QEMU (10.x; the stable 7.2 does
//! not arm an L2 guest's debug registers and once hung an L2 boot), run in
//! pure software emulation (TCG) with an AMD CPU model that has SVM and
//! nested paging, so that KVM inside it behaves like hardware.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::apt::Apt;
use crate::tool;

/// The CPU L1 sees: AMD-V with nested paging; 1 GiB pages so that the
/// paging tests check them against the CPU too.
const CPU: &str = "qemu64,+svm,+npt,+nrip-save,+pdpe1gb";
/// The distribution QEMU's loadable modules, which the backport must not load.
const SYSTEM_MODULES: &str = "/usr/lib/x86_64-linux-gnu/qemu";
/// Firmware the backport's data package links to (Debian's `seabios`).
const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";
/// Where Debian's QEMU looks for firmware after its `-L` directory.
const FIRMWARE_PATH: [&str; 2] = ["/usr/share/seabios", "/usr/lib/ipxe/qemu"];

/// A QEMU binary with its data directory.
pub struct Qemu {
    binary: PathBuf,
    datadir: PathBuf,
    empty_modules: PathBuf,
}

/// How L1 is run.
pub struct Machine<'a> {
    /// L1's kernel.
    pub kernel: &'a Path,
    /// L1's initramfs.
    pub initrd: &'a Path,
    /// L1's kernel command line.
    pub append: &'a str,
    /// L1's vCPUs.
    pub cpus: u32,
    /// L1's RAM, as QEMU's `-m` takes it.
    pub mem: &'a str,
    /// How long L1 may run before it is killed.
    pub limit: Duration,
}

impl Qemu {
    /// Fetches (once, into `cache`) the backported QEMU with a private apt
    /// configuration, and makes sure the libraries and firmware it needs
    /// are on the machine (installing Debian's `qemu-system-x86`, which
    /// brings them, if not).
    pub fn fetch(cache: &Path) -> anyhow::Result<Qemu> {
        let dir = cache.join("backports");
        let apt = Apt::backports(&dir.join("apt"))?;
        let resolve = |pkg: &str| {
            let unpacked = dir.join("unpacked").join(pkg);
            if unpacked.join(".done").exists() {
                return Ok(unpacked);
            }
            apt.update()?;
            apt.unpack(pkg, &dir)
        };
        let root = resolve("qemu-system-x86")?;
        let data = resolve("qemu-system-data")?;
        let qemu = Qemu {
            binary: root.join("usr/bin/qemu-system-x86_64"),
            datadir: data.join("usr/share/qemu"),
            empty_modules: dir.join("no-modules"),
        };
        std::fs::create_dir_all(&qemu.empty_modules)?;
        if !qemu.missing_libraries()?.is_empty() || !Path::new(SEABIOS).exists() {
            install_system_qemu()?;
        }
        let missing = qemu.missing_libraries()?;
        if !missing.is_empty() {
            bail!(
                "the backported QEMU needs libraries this machine lacks: {}",
                missing.join(", ")
            );
        }
        Ok(qemu)
    }

    fn missing_libraries(&self) -> anyhow::Result<Vec<String>> {
        let text = tool::output(
            Command::new("ldd").arg(&self.binary),
            Duration::from_secs(60),
        )?;
        Ok(text
            .lines()
            .filter(|l| l.contains("not found"))
            .map(|l| l.trim().to_owned())
            .collect())
    }

    /// The emulator's executable.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The firmware file `name` as this QEMU finds it with `-L` at its
    /// data directory: there, else in Debian's firmware path.
    pub fn firmware(&self, name: &str) -> anyhow::Result<PathBuf> {
        std::iter::once(self.datadir.as_path())
            .chain(FIRMWARE_PATH.iter().map(Path::new))
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "QEMU's firmware {name} is in none of {}, {}",
                    self.datadir.display(),
                    FIRMWARE_PATH.join(", ")
                )
            })
    }

    /// The QEMU version line.
    pub fn version(&self) -> anyhow::Result<String> {
        let text = tool::output(self.command().arg("--version"), Duration::from_secs(60))?;
        Ok(text.lines().next().unwrap_or_default().to_owned())
    }

    /// The command, wrapped so that the distribution QEMU's module
    /// directory (built for another version, which the backport would
    /// load and abort on) is hidden behind an empty one in a private mount
    /// namespace.
    fn command(&self) -> Command {
        let mut cmd = if Path::new(SYSTEM_MODULES).is_dir() {
            let mut c = Command::new("unshare");
            c.args(["-m", "--propagation", "private", "sh", "-c"]);
            c.arg(r#"mount --bind "$0" "$1" && shift && exec "$@""#);
            c.arg(&self.empty_modules)
                .arg(SYSTEM_MODULES)
                .arg(&self.binary);
            c
        } else {
            Command::new(&self.binary)
        };
        cmd.env("QEMU_MODULE_DIR", &self.empty_modules);
        cmd
    }

    /// Boots L1 and streams its console to our stdout and to `log`; returns
    /// the console text. L1 is killed at `m.limit`.
    pub fn run(&self, m: &Machine, log: &Path) -> anyhow::Result<String> {
        let mut cmd = self.command();
        cmd.arg("-L").arg(&self.datadir);
        cmd.args(["-accel", "tcg", "-cpu", CPU, "-machine", "pc", "-m", m.mem]);
        cmd.args(["-smp", &m.cpus.to_string()]);
        cmd.args(["-display", "none", "-monitor", "none", "-serial", "stdio"]);
        cmd.args(["-nic", "none", "-no-reboot"]);
        cmd.arg("-kernel")
            .arg(m.kernel)
            .arg("-initrd")
            .arg(m.initrd);
        cmd.args(["-append", m.append]);
        let what = "QEMU (the lane's L1)";
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", tool::describe(&cmd)))?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let stderr = child.stderr.take().context("piped stderr")?;
        let mut file = std::fs::File::create(log)
            .with_context(|| format!("cannot write {}", log.display()))?;
        let console = std::thread::spawn(move || {
            let mut text = String::new();
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                let s = String::from_utf8_lossy(&line).replace('\r', "");
                // Echoing and logging are best effort: the console must be
                // drained whatever happens to our stdout or the disk, or
                // QEMU blocks and the lane hangs until its timeout.
                let _ = std::io::stdout().write_all(s.as_bytes());
                let _ = file.write_all(s.as_bytes());
                text.push_str(&s);
                line.clear();
            }
            text
        });
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(std::io::stderr(), "qemu: {line}");
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let status = tool::wait(&mut child, m.limit, what);
        let text = console.join().unwrap_or_default();
        let errors = errors.join().unwrap_or_default();
        let status = status?;
        if text.is_empty() {
            bail!("{what} printed nothing ({status}): {errors}");
        }
        Ok(text)
    }
}

/// Installs Debian's QEMU for its libraries and firmware.
fn install_system_qemu() -> anyhow::Result<()> {
    eprintln!(
        "xtask: installing qemu-system-x86 (for the libraries and firmware the lane's QEMU uses)"
    );
    let apt = |args: &[&str]| {
        tool::run(
            Command::new("apt-get")
                .args(["-o", "DPkg::Lock::Timeout=600", "-y", "-q"])
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            Duration::from_secs(1200),
        )
    };
    let install = ["install", "--no-install-recommends", "qemu-system-x86"];
    apt(&install)
        .or_else(|_| apt(&["update"]).and_then(|()| apt(&install)))
        .context("could not install qemu-system-x86 from Debian's archive (root is needed)")
}
