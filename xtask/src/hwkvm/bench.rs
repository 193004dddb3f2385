//! `cargo xtask hwkvm --bench [--runs N]`: boot time to userspace, `vmm`
//! against QEMU, side by side inside the same L1.
//!
//! L1's image then also holds QEMU (the lane's own build, with its shared
//! libraries and the firmware its `microvm` and `pc` machines load) and
//! this xtask binary, which L1's init runs as `xtask hwkvm --measure N`
//! (see [`measure`]): after one unmeasured boot each, N rounds, each
//! booting the L2 guest (Debian's kernel and the busybox initramfs, the
//! same command line, RAM and vCPU count) with `vmm`, `qemu -M microvm`
//! and `qemu -M pc`, in reverse order on odd rounds. The host reads the record lines from L1's console
//! and prints the median of each phase (see [`phases`]) per VMM, the
//! median of the per-round ratios of the totals, and whether `vmm` met
//! the goal of at most 1.0x QEMU's time.

pub mod measure;
mod paired;
mod phases;
pub mod virtio;

use std::path::Path;

use anyhow::{Context, bail};

use super::image::Image;
use super::qemu::Qemu;

/// A boot's record on L1's console:
/// `HWKVM-BENCH-RUN <vmm> <round> <setup> <kernel> <init> <total>` (seconds).
pub const RECORD: &str = "HWKVM-BENCH-RUN ";
/// One of the longest pauses between kernel messages in a VMM's first
/// boot: `HWKVM-BENCH-SLOW <vmm> <seconds> <message after the pause>`.
pub const GAP: &str = "HWKVM-BENCH-SLOW ";
/// A serial line of a VMM's first boot with the seconds since spawn at
/// which it arrived: `HWKVM-BENCH-LOG <vmm> <seconds> <line>`.
pub const LOG: &str = "HWKVM-BENCH-LOG ";
/// A boot that failed: `HWKVM-BENCH-FAIL <vmm> round <n>: <why>`.
pub const FAIL: &str = "HWKVM-BENCH-FAIL ";

/// The VMM measured against the others.
const OURS: &str = measure::CONTENDERS[0];
/// The goal: `vmm` takes at most this times QEMU's time (either machine).
const GOAL: f64 = 1.0;

/// Which benchmark runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Boot time to userspace (this module).
    Boot,
    /// Virtio disk and network throughput (see [`virtio`]).
    Virtio,
}

/// The L1 script: the measurement of `kind`, with `runs` rounds.
pub fn script(kind: Kind, runs: u32) -> String {
    match kind {
        Kind::Boot => format!("/bin/xtask hwkvm --measure {runs}\n"),
        Kind::Virtio => virtio::script(runs),
    }
}

/// Adds what the measurement needs to L1's image: QEMU with its firmware
/// and this xtask binary.
pub fn add_to_image(image: &mut Image, qemu: &Qemu) -> anyhow::Result<()> {
    image.executable(qemu.binary(), measure::QEMU_BINARY.trim_start_matches('/'))?;
    for (name, source) in measure::QEMU_FIRMWARE {
        let path = qemu.firmware(source)?;
        let data =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let dest = Path::new(measure::QEMU_DATA).join(name);
        image.file(dest.to_string_lossy().trim_start_matches('/'), 0o644, &data);
    }
    let xtask = std::env::current_exe().context("cannot find the running xtask binary")?;
    image.executable(&xtask, "bin/xtask")
}

/// The columns of a boot's [`RECORD`]: setup, kernel, init, total (see
/// [`phases::Phases`]), in seconds.
const COLUMNS: usize = 4;
/// The column of the total boot time.
const TOTAL: usize = 3;

/// The summary of L1's console: the table, the ratios and the verdict.
#[derive(Debug)]
struct Summary {
    text: String,
    failures: Vec<String>,
    /// The VMMs in the order they were first seen, with their boot count.
    counts: Vec<(String, usize)>,
}

/// Reads the records in `console` and writes the summary.
fn summarize(console: &str) -> Summary {
    let records = paired::records(console, RECORD, COLUMNS);
    let counts = paired::counts(&records);
    let mut text = format!(
        "boot to userspace in L1, median of each phase (s){:>8}{:>8}{:>8}{:>8}{:>6}\n",
        "setup", "kernel", "init", "total", "runs"
    );
    for (vmm, n) in &counts {
        let of = |i: usize| paired::median_of(&records, vmm, i);
        text.push_str(&format!(
            "  {vmm:<47}{:>8.3}{:>8.3}{:>8.3}{:>8.3}{n:>6}\n",
            of(0),
            of(1),
            of(2),
            of(3)
        ));
    }
    text.push_str(
        "  setup: spawn to the kernel's clock start (VMM setup, firmware, decompression);\n  \
         kernel: to \"Run /init\" (kernel init, device probing); init: to the userspace marker\n",
    );
    for (other, _) in counts.iter().filter(|(v, _)| v != OURS) {
        let ratio = paired::Ratio::of(&records, OURS, other, TOTAL);
        let verdict = if ratio.median <= GOAL {
            "met"
        } else {
            "NOT met"
        };
        text.push_str(&format!(
            "{OURS}/{other} total: {ratio}; goal <= {GOAL:.1}x: {verdict}\n"
        ));
    }
    let slow: Vec<&str> = console
        .lines()
        .filter_map(|l| l.strip_prefix(GAP))
        .collect();
    if !slow.is_empty() {
        text.push_str(
            "longest pauses between kernel messages, first boot (VMM, s, message after):\n",
        );
        for s in slow {
            text.push_str(&format!("  {s}\n"));
        }
    }
    Summary {
        text,
        failures: failures(console),
        counts,
    }
}

/// The failures L1 reported on `console` ([`FAIL`] lines).
fn failures(console: &str) -> Vec<String> {
    console
        .lines()
        .filter_map(|l| l.strip_prefix(FAIL).map(|f| f.trim_end().to_owned()))
        .collect()
}

/// Prints `text`, then the `failures`; fails if there were any or if one
/// of `names` has fewer than `runs` records in `counts`.
fn conclude(
    text: &str,
    failures: &[String],
    names: &[&str],
    counts: &[(String, usize)],
    runs: u32,
) -> anyhow::Result<()> {
    println!("{}", text.trim_end());
    for f in failures {
        eprintln!("xtask: hwkvm: bench: FAILED {f}");
    }
    let short = paired::short(names, counts, runs);
    if !failures.is_empty() || !short.is_empty() {
        bail!(
            "the benchmark is incomplete: {} failed runs; fewer than {runs} runs of {short:?}",
            failures.len()
        );
    }
    Ok(())
}

/// The first boot's serial log of each VMM, with arrival times, by VMM.
fn first_boot_logs(console: &str) -> Vec<(String, String)> {
    let mut logs: Vec<(String, String)> = Vec::new();
    for line in console.lines().filter_map(|l| l.strip_prefix(LOG)) {
        let (vmm, rest) = line.split_once(' ').unwrap_or((line, ""));
        let at = match logs.iter().position(|(v, _)| v == vmm) {
            Some(i) => i,
            None => {
                logs.push((vmm.to_owned(), String::new()));
                logs.len() - 1
            }
        };
        logs[at].1.push_str(rest.trim_end_matches('\r'));
        logs[at].1.push('\n');
    }
    logs
}

/// Prints the summary of the `kind` benchmark from L1's console (the boot
/// benchmark also writes each VMM's first boot log into `dir`); fails if
/// a run failed or a VMM was measured fewer than `runs` times. The goal's
/// verdict is reported, not enforced.
pub fn report(kind: Kind, console: &str, runs: u32, dir: &Path) -> anyhow::Result<()> {
    match kind {
        Kind::Boot => report_boot(console, runs, dir),
        Kind::Virtio => virtio::report(console, runs),
    }
}

/// [`report`] of the boot benchmark.
fn report_boot(console: &str, runs: u32, dir: &Path) -> anyhow::Result<()> {
    for (vmm, text) in first_boot_logs(console) {
        let path = dir.join(format!("bench-{vmm}.log"));
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "xtask: hwkvm: bench: {vmm}'s first boot (s since spawn, serial line): {}",
            path.display()
        );
    }
    let summary = summarize(console);
    conclude(
        &summary.text,
        &summary.failures,
        &measure::CONTENDERS,
        &summary.counts,
        runs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
HWKVM: L1 up after 9.1 s\r
HWKVM-BENCH-RUN vmm 0 1.000 2.000 0.500 3.500\r
HWKVM-BENCH-SLOW vmm 0.700 serio: i8042 KBD port\r
HWKVM-BENCH-RUN qemu-microvm 0 1.500 2.000 0.500 4.000\r
HWKVM-BENCH-RUN qemu-microvm 1 1.400 2.100 0.500 4.000\r
HWKVM-BENCH-RUN vmm 1 1.100 3.000 0.400 4.500\r
HWKVM-BENCH-RUN vmm 2 1.000 2.500 0.500 4.000\r
HWKVM-BENCH-RUN qemu-microvm 2 1.600 1.900 0.500 4.000\r
HWKVM-BENCH-RUN bogus 2 x\r
HWKVM-RC=0\r
";

    #[test]
    fn medians_ratios_and_the_verdict_are_reported() {
        let s = summarize(CONSOLE);
        // vmm: setup 1.0 1.1 1.0 -> 1.0; kernel 2, 3, 2.5 -> 2.5; total 3.5 4.5 4.0 -> 4.0.
        assert!(
            s.text.contains("1.000   2.500   0.500   4.000     3"),
            "{}",
            s.text
        );
        // Ratios 3.5/4, 4.5/4, 4/4 -> median 1.0: the goal is met.
        assert!(
            s.text.contains(
                "vmm/qemu-microvm total: 1.00x (median of 3 per-round ratios, 0.88-1.12)"
            ),
            "{}",
            s.text
        );
        assert!(s.text.contains("goal <= 1.0x: met"), "{}", s.text);
        assert!(
            s.text.contains("vmm 0.700 serio: i8042 KBD port"),
            "{}",
            s.text
        );
        assert_eq!(s.counts, [("vmm".into(), 3), ("qemu-microvm".into(), 3)]);
        let slower = CONSOLE.replace("vmm 2 1.000 2.500 0.500 4.000", "vmm 2 1.0 2.5 1.5 5.0");
        let s = summarize(&slower);
        assert!(
            s.text.contains("1.12x") && s.text.contains("NOT met"),
            "{}",
            s.text
        );
    }

    #[test]
    fn failed_or_missing_boots_fail_the_benchmark() {
        let dir = std::env::temp_dir().join(format!("hwkvm-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = report_boot(CONSOLE, 3, &dir).unwrap_err().to_string();
        assert!(e.contains("qemu-pc"), "{e}");
        let failed = format!("{CONSOLE}HWKVM-BENCH-FAIL vmm round 3: no userspace\n");
        let e = report_boot(&failed, 3, &dir).unwrap_err().to_string();
        assert!(e.contains("1 failed runs"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn first_boot_logs_are_kept_apart_by_vmm() {
        let console = "HWKVM-BENCH-LOG vmm 0.5 [    0.0] Linux\r\n\
                       noise\n\
                       HWKVM-BENCH-LOG qemu-pc 0.7 hello world\n\
                       HWKVM-BENCH-LOG vmm 0.9 \n";
        assert_eq!(
            first_boot_logs(console),
            [
                ("vmm".into(), "0.5 [    0.0] Linux\n0.9 \n".into()),
                ("qemu-pc".into(), "0.7 hello world\n".into())
            ]
        );
    }
}
