//! `cargo xtask hwkvm`: the hardware-KVM lane.
//!
//! The development host's KVM is a software layer that cannot run legacy
//! paging, debug-register watchpoints or unmodified Linux. The lane gets a
//! KVM that behaves like hardware on any x86 Linux machine: QEMU in pure
//! software emulation with an AMD CPU model that has SVM and nested paging
//! boots Debian's cloud kernel (L1), which loads `kvm-amd`; `vmm` and the
//! test binaries that need hardware KVM run inside it, against real
//! software: Debian's kernel as the L2 guest, gdb.
//!
//! * `cargo xtask hwkvm` builds the release `vmm` and the test binaries,
//!   runs them in L1 and prints one `N passed, N failed` line; it fails
//!   unless every test passed. `--only NAME` (repeatable) builds and runs
//!   only the test binary `NAME` of the suite (`hwkvm_virtio_save`,
//!   `paging_kvm`, ...; an unknown name is an error listing them).
//! * `cargo xtask hwkvm -- 'SHELL COMMAND'` runs one command in L1 with
//!   `vmm` and `gdb` on PATH and `$L2_KERNEL`, `$L2_INITRD`, `$L2_CMDLINE`
//!   naming the Debian guest (`$L2_KERNEL_MP`: Debian's generic kernel of
//!   the same release, which reads the MP table; `$L2_ROOTFS`: an ext4
//!   root file system for the guest's `vmm_root=/dev/vda`), and exits with
//!   its status.
//!
//! L1 has `/dev/net/tun` (the `tun` module), iproute2's `ip` in /sbin
//! (`ip tuntap add`), busybox's `unshare -n` for a network namespace, and
//! e2fsprogs' `mke2fs`, `e2fsck` and `debugfs` in /sbin. Busybox's shell
//! runs its own applet of a name before a program on PATH: in a shell
//! command, call these as `/sbin/ip`, `/sbin/mke2fs`.
//! * `cargo xtask hwkvm --bench [--runs N]` measures boot time to
//!   userspace with `vmm` against QEMU in L1 (see [`bench`]);
//!   `--bench-virtio` virtio disk and TCP throughput (see
//!   [`bench::virtio`]).
//!
//! Downloads are cached outside the checkout (see
//! [`crate::guest_linux::cache_dir`]); what cannot be fetched is an error
//! naming it.

mod assets;
mod bench;
mod image;
mod qemu;
mod report;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use assets::Assets;
use image::Image;
use report::Report;

const USAGE: &str =
    "usage: cargo xtask hwkvm [--l1-kernel PKG] [--timeout SECS] [--only NAME ... | --bench | --bench-virtio [--runs N] | -- 'SHELL COMMAND']

  (default)         run the hardware-KVM test binaries in L1; print N passed, N failed
  --only NAME       run only the suite's test binary NAME (repeatable; e.g. hwkvm_virtio_save)
  -- 'COMMAND'      run COMMAND in L1 (vmm, gdb on PATH; $L2_KERNEL $L2_KERNEL_MP $L2_INITRD $L2_CMDLINE $L2_ROOTFS)
  --bench           boot time to userspace in L1: vmm vs qemu -M microvm and -M pc
  --bench-virtio    virtio disk (dd, direct I/O) and TCP throughput in L1: vmm vs qemu -M pc
  --runs N          runs of each VMM for --bench or --bench-virtio (default 5)
  --l1-kernel PKG   Debian kernel package for L1, the KVM host (default: newest 6.12 cloud)
  --timeout SECS    how long L1 may run (default 2400)";

/// A test binary the lane runs in L1.
#[derive(Debug)]
struct TestBinary {
    package: &'static str,
    test: &'static str,
    args: &'static [&'static str],
}

/// The lane's tests: pgm's paging checked against the CPU (legacy, PAE,
/// PSE-36, NX, 1 GiB pages), gdb with debug-register breakpoints and
/// watchpoints, Debian's kernel under `vmm` (SMP, large RAM, a command's
/// status, save/restore, live save, teleport, the PCI host bridge),
/// without ACPI Debian's generic kernel on the MP table, and what the lane
/// gives the virtio tests (the guest's virtio modules, ext4 images, taps)
/// and the virtio devices as Linux drives them (rng, disk root, net), also
/// while the VM is saved (live and plainly) and restored.
const SUITE: [TestBinary; 8] = [
    TestBinary {
        package: "pgm",
        test: "paging_kvm",
        args: &["--test-threads=1"],
    },
    TestBinary {
        package: "vmm-cli",
        test: "gdb_demo",
        args: &["--test-threads=1"],
    },
    TestBinary {
        package: "vmm-cli",
        test: "hwkvm_linux",
        args: &["--include-ignored", "--test-threads=1"],
    },
    TestBinary {
        package: "vmm-cli",
        test: "hwkvm_mptable",
        args: &["--include-ignored", "--test-threads=1"],
    },
    TestBinary {
        package: "vmm-cli",
        test: "hwkvm_pci",
        args: &["--include-ignored", "--test-threads=1"],
    },
    TestBinary {
        package: "vmm-cli",
        test: "hwkvm_guest_assets",
        args: &["--include-ignored", "--test-threads=1"],
    },
    TestBinary {
        package: "vmm-cli",
        test: "hwkvm_virtio",
        args: &["--include-ignored", "--test-threads=1"],
    },
    TestBinary {
        package: "vmm-cli",
        test: "hwkvm_virtio_save",
        args: &["--include-ignored", "--test-threads=1"],
    },
];

/// Host programs L1 gets in /sbin, with the Debian package that has them:
/// iproute2's `ip` (busybox's cannot make taps: `ip tuntap add`), and
/// e2fsprogs to make and check ext4 images.
const HOST_TOOLS: [(&str, &str); 4] = [
    ("ip", "iproute2"),
    ("mke2fs", "e2fsprogs"),
    ("e2fsck", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
];

/// L1's vCPUs. One: with two, QEMU 10.0's multi-threaded TCG let L2 Linux
/// triple-fault at random points during boot (KVM reports SHUTDOWN with the
/// VMCB already reinitialized, hence RIP 0xfff0) in 5 of 8 boots, never
/// with one.
const L1_CPUS: u32 = 1;

/// What the software emulation cannot show, said on every run.
const NOT_CHECKED: &str = "not checked in this lane: software (int3) breakpoints \
    (QEMU's emulation hands an int3 in L2 to L2, not to L1's KVM)";

/// What L1 runs.
enum Task {
    /// These test binaries of [`SUITE`].
    Suite(Vec<&'static TestBinary>),
    /// A shell command.
    Command(String),
    /// A benchmark, with this many rounds.
    Bench(bench::Kind, u32),
}

/// Runs the task with its arguments (those after `hwkvm`).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    // Inside L1: the benchmark's measuring side.
    if let Some(rest) = args.strip_prefix(&["--measure".to_owned()]) {
        return bench::measure::run(rest);
    }
    if let Some(rest) = args.strip_prefix(&["--measure-virtio".to_owned()]) {
        return bench::virtio::measure::run(rest);
    }
    let mut l1_package = None;
    let mut bench = None;
    let mut runs = None;
    let mut limit = Duration::from_secs(2400);
    let mut command = None;
    let mut only = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--l1-kernel" => l1_package = Some(it.next().context("--l1-kernel needs a package")?),
            "--timeout" => {
                let secs = it.next().context("--timeout needs seconds")?;
                limit = Duration::from_secs(secs.parse().context("--timeout takes seconds")?);
            }
            "--only" => only.push(it.next().context("--only needs a test binary's name")?),
            "--bench" => bench = Some(bench::Kind::Boot),
            "--bench-virtio" => bench = Some(bench::Kind::Virtio),
            "--runs" => {
                let n = it.next().context("--runs needs a number")?;
                runs = Some(n.parse::<u32>().ok().filter(|&n| n > 0).with_context(|| {
                    format!("--runs takes a positive number of boots, not {n:?}")
                })?);
            }
            "--" => {
                let rest: Vec<&str> = it.by_ref().map(String::as_str).collect();
                if rest.is_empty() {
                    bail!("-- needs a shell command\n{USAGE}");
                }
                command = Some(rest.join(" "));
            }
            _ => bail!("unknown argument {arg:?}\n{USAGE}"),
        }
    }
    if !only.is_empty() && (command.is_some() || bench.is_some()) {
        bail!("--only selects test binaries of the suite: not with --bench or -- COMMAND\n{USAGE}");
    }
    let task = match (command, bench, runs) {
        (Some(_), Some(_), _) => bail!("--bench and -- COMMAND exclude each other\n{USAGE}"),
        (_, None, Some(_)) => bail!("--runs goes with --bench\n{USAGE}"),
        (Some(c), None, None) => Task::Command(c),
        (None, Some(kind), runs) => Task::Bench(kind, runs.unwrap_or(5)),
        (None, None, None) => Task::Suite(select(&only)?),
    };
    let started = Instant::now();
    let cache = crate::guest_linux::cache_dir();
    let assets = Assets::fetch(&cache, l1_package.map(String::as_str))?;
    let (vmm, tests) = match &task {
        Task::Suite(selected) => build_suite(selected)?,
        // `vmm` as the whole suite's build makes it.
        _ => (
            build_suite(&SUITE.iter().collect::<Vec<_>>())?.0,
            Vec::new(),
        ),
    };
    let run_script = match &task {
        Task::Command(c) => format!("{c}\n"),
        Task::Bench(kind, runs) => bench::script(*kind, *runs),
        Task::Suite(_) => suite_script(&tests),
    };
    let work = crate::workspace_root().join("target/hwkvm");
    std::fs::create_dir_all(&work)?;
    let initrd = work.join("l1-initrd.cpio");
    let mut image = l1_image(&assets, &vmm, &tests, &work)?;
    if matches!(task, Task::Bench(..)) {
        bench::add_to_image(&mut image, &assets.qemu)?;
    }
    image.file("hwkvm/run.sh", 0o755, run_script.as_bytes());
    let image = image.finish();
    std::fs::write(&initrd, image).with_context(|| format!("cannot write {}", initrd.display()))?;
    eprintln!(
        "xtask: hwkvm: {}; L1 kernel {}; L2 kernel {}; prepared in {:.0} s",
        assets.qemu.version()?,
        assets.l1_package,
        assets.guest.package,
        started.elapsed().as_secs_f64()
    );
    let log = work.join("console.log");
    let lane = Instant::now();
    let console = assets.qemu.run(
        &qemu::Machine {
            kernel: &assets.l1_kernel,
            initrd: &initrd,
            append: "console=ttyS0 rdinit=/init panic=-1 loglevel=4",
            cpus: L1_CPUS,
            // The L2 guests' RAM (up to 5 GiB) must fit in L1's RAM:
            // `vmm` refuses more guest RAM than the host could ever give.
            mem: "7G",
            limit,
        },
        &log,
    )?;
    let report = Report::parse(&console);
    eprintln!(
        "xtask: hwkvm: L1 ran {:.0} s (console: {})",
        lane.elapsed().as_secs_f64(),
        log.display()
    );
    match task {
        Task::Command(_) => {
            let status = report
                .status
                .context("L1 never reported the command's status (see the console above)")?;
            std::process::exit(status);
        }
        Task::Bench(kind, runs) => bench::report(kind, &console, runs, &work),
        Task::Suite(selected) => summarize(&report, selected.len()),
    }
}

/// The test binaries of [`SUITE`] named in `only` (all of them when it is
/// empty); an unknown name is an error listing the suite's.
fn select(only: &[&String]) -> anyhow::Result<Vec<&'static TestBinary>> {
    if let Some(unknown) = only
        .iter()
        .find(|n| !SUITE.iter().any(|t| t.test == n.as_str()))
    {
        let names: Vec<&str> = SUITE.iter().map(|t| t.test).collect();
        bail!(
            "--only {unknown}: no such test binary in the lane (it has {})",
            names.join(", ")
        );
    }
    Ok(SUITE
        .iter()
        .filter(|t| only.is_empty() || only.iter().any(|n| n.as_str() == t.test))
        .collect())
}

/// Prints the summary line and fails unless every test of the `binaries`
/// test binaries run passed.
fn summarize(report: &Report, binaries: usize) -> anyhow::Result<()> {
    for step in &report.steps {
        let took = step
            .seconds
            .map(|s| format!(" in {s:.0} s"))
            .unwrap_or_default();
        eprintln!(
            "xtask: hwkvm: {}: {} passed, {} failed{took}",
            step.name,
            step.passed,
            step.failed.len()
        );
    }
    eprintln!("xtask: hwkvm: {NOT_CHECKED}");
    let failed = report.failed();
    for f in &failed {
        eprintln!("xtask: hwkvm: FAILED {f}");
    }
    if report.steps.len() < binaries {
        eprintln!(
            "xtask: hwkvm: only {} of {binaries} test binaries ran",
            report.steps.len(),
        );
    }
    println!("hwkvm: {} passed, {} failed", report.passed(), failed.len());
    if !failed.is_empty() || report.steps.len() < binaries || report.passed() == 0 {
        bail!("the hardware-KVM lane failed");
    }
    Ok(())
}

/// The shell script L1 runs: each test binary between step markers.
fn suite_script(tests: &[(&TestBinary, PathBuf)]) -> String {
    let mut s = String::from("status=0\n");
    for (t, _) in tests {
        let name = format!("{}/{}", t.package, t.test);
        s.push_str(&format!(
            "echo '{}{name}'\n/tests/{} {}\nrc=$?\necho \"{}{name} rc=$rc\"\n[ $rc = 0 ] || status=$rc\n",
            report::BEGIN,
            t.test,
            t.args.join(" "),
            report::END,
        ));
    }
    s.push_str("exit $status\n");
    s
}

/// L1's initramfs, without its `hwkvm/run.sh`.
fn l1_image(
    assets: &Assets,
    vmm: &Path,
    tests: &[(&TestBinary, PathBuf)],
    work: &Path,
) -> anyhow::Result<Image> {
    let mut image = Image::new(
        &assets.busybox,
        include_str!("init.sh"),
        &work.join("strip"),
    )?;
    for m in &assets.modules {
        image.file(&format!("modules/{}.ko", m.name), 0o644, &m.data);
    }
    let order: Vec<&str> = assets.modules.iter().map(|m| m.name.as_str()).collect();
    image.file(
        "modules/order",
        0o644,
        format!("{}\n", order.join(" ")).as_bytes(),
    );
    for (program, package) in HOST_TOOLS {
        // In sbin, ahead of busybox's applets of the same name (its
        // `--install` keeps what is there).
        image.executable(
            &crate::tool::find_program(program, package)?,
            &format!("sbin/{program}"),
        )?;
    }
    if let Ok(conf) = std::fs::read("/etc/mke2fs.conf") {
        image.file("etc/mke2fs.conf", 0o644, &conf);
    }
    let guest = &assets.guest;
    let rootfs = work.join("rootfs.ext4");
    guest.write_rootfs(&rootfs)?;
    image.file("guest/rootfs.ext4", 0o644, &std::fs::read(&rootfs)?);
    image.file("guest/vmlinuz", 0o644, &std::fs::read(&guest.vmlinuz)?);
    image.file(
        "guest/vmlinuz-mp",
        0o644,
        &std::fs::read(&assets.mp_vmlinuz)?,
    );
    image.file("guest/initramfs.cpio", 0o644, &guest.initramfs);
    image.executable(vmm, "bin/vmm")?;
    // Test binaries start `vmm` by the path it was built at.
    image.symlink(&vmm.to_string_lossy(), "/bin/vmm");
    image.executable(&assets.gdb, "bin/gdb")?;
    for (t, path) in tests {
        image.executable(path, &format!("tests/{}", t.test))?;
    }
    image.file(
        "hwkvm/env",
        0o644,
        format!(
            "export CI=true VMM_HWKVM=1 L2_KERNEL=/guest/vmlinuz L2_INITRD=/guest/initramfs.cpio\n\
             export L2_KERNEL_MP=/guest/vmlinuz-mp L2_ROOTFS=/guest/rootfs.ext4\n\
             export L2_CMDLINE='{}'\n",
            crate::guest_linux::CMDLINE
        )
        .as_bytes(),
    );
    Ok(image)
}

/// Builds the release `vmm` and the test binaries `tests` in one cargo
/// run (separate runs would build the crates twice, with the features of
/// a plain build and of a test build) and returns their paths.
fn build_suite<'a>(
    tests: &[&'a TestBinary],
) -> anyhow::Result<(PathBuf, Vec<(&'a TestBinary, PathBuf)>)> {
    let mut args = vec!["test", "--release", "--no-run"];
    for t in tests {
        args.extend(["-p", t.package, "--test", t.test]);
    }
    // `vmm` is built for vmm-cli's integration tests: with none of them
    // selected, one is built (not run) for it.
    if let Some(t) = SUITE
        .iter()
        .find(|t| t.package == "vmm-cli")
        .filter(|_| !tests.iter().any(|t| t.package == "vmm-cli"))
    {
        args.extend(["-p", t.package, "--test", t.test]);
    }
    let mut found = cargo_executables(&args)?;
    let mut take = |name: &str| {
        let at = found.iter().position(|(n, _)| n == name);
        at.map(|i| found.swap_remove(i).1)
            .with_context(|| format!("cargo built no {name} executable"))
    };
    let vmm = take("vmm")?;
    let tests = tests
        .iter()
        .map(|&t| Ok((t, take(t.test)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((vmm, tests))
}

/// Runs cargo with `args` and JSON messages; returns the executables it
/// reported, by target name.
fn cargo_executables(args: &[&str]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let out = Command::new(&cargo)
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(crate::workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !out.status.success() {
        bail!("cargo {} failed ({})", args.join(" "), out.status);
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            found.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suite_script_marks_every_binary() {
        let tests: Vec<_> = SUITE.iter().map(|t| (t, PathBuf::from("/x"))).collect();
        let script = suite_script(&tests);
        for t in &SUITE {
            assert!(script.contains(&format!("{}{}/{}", report::BEGIN, t.package, t.test)));
            assert!(script.contains(&format!("/tests/{} {}", t.test, t.args.join(" "))));
        }
        assert!(script.ends_with("exit $status\n"));
    }

    #[test]
    fn only_selects_test_binaries_by_name() {
        let all = select(&[]).unwrap();
        assert_eq!(all.len(), SUITE.len());
        let name = "hwkvm_virtio_save".to_owned();
        let one = select(&[&name]).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(
            (one[0].package, one[0].test),
            ("vmm-cli", "hwkvm_virtio_save")
        );
        let names = ["paging_kvm".to_owned(), "gdb_demo".to_owned()];
        let two: Vec<_> = select(&[&names[0], &names[1]])
            .unwrap()
            .iter()
            .map(|t| t.test)
            .collect();
        assert_eq!(two, ["paging_kvm", "gdb_demo"]);
        let bogus = "hwkvm_nothing".to_owned();
        let err = select(&[&bogus]).unwrap_err().to_string();
        assert!(
            err.contains("hwkvm_nothing") && err.contains("hwkvm_virtio_save"),
            "{err}"
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        for args in [
            &["--bogus"][..],
            &["--"],
            &["--timeout", "soon"],
            &["--l1-kernel"],
            &["--bench", "--", "true"],
            &["--runs", "3"],
            &["--bench", "--runs", "0"],
            &["--bench", "--runs"],
            &["--bench-virtio", "--", "true"],
            &["--measure-virtio"],
            &["--measure"],
            &["--measure", "many"],
            &["--only"],
            &["--only", "hwkvm_nothing"],
            &["--only", "hwkvm_linux", "--bench"],
            &["--only", "hwkvm_linux", "--", "true"],
        ] {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            assert!(run(&args).is_err(), "{args:?}");
        }
    }
}
