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
mod phases;

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

/// The L1 script: the measurement, with `runs` rounds.
pub fn script(runs: u32) -> String {
    format!("/bin/xtask hwkvm --measure {runs}\n")
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

/// One boot as L1 reported it.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    vmm: String,
    round: u32,
    /// Setup, kernel, init, total (see [`phases::Phases`]), in seconds.
    seconds: [f64; 4],
}

impl Record {
    fn parse(line: &str) -> Option<Record> {
        let mut words = line.strip_prefix(RECORD)?.split_whitespace();
        let vmm = words.next()?.to_owned();
        let round = words.next()?.parse().ok()?;
        let mut seconds = [0.0; 4];
        for s in &mut seconds {
            *s = words.next()?.parse().ok()?;
        }
        Some(Record {
            vmm,
            round,
            seconds,
        })
    }
}

/// The median of `values` (NaN if there are none).
fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

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
    let records: Vec<Record> = console.lines().filter_map(Record::parse).collect();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for r in &records {
        match counts.iter_mut().find(|(v, _)| *v == r.vmm) {
            Some((_, n)) => *n += 1,
            None => counts.push((r.vmm.clone(), 1)),
        }
    }
    let mut text = format!(
        "boot to userspace in L1, median of each phase (s){:>8}{:>8}{:>8}{:>8}{:>6}\n",
        "setup", "kernel", "init", "total", "runs"
    );
    for (vmm, n) in &counts {
        let of = |i: usize| {
            median(
                records
                    .iter()
                    .filter(|r| r.vmm == *vmm)
                    .map(|r| r.seconds[i])
                    .collect(),
            )
        };
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
        let ratios: Vec<f64> = records
            .iter()
            .filter(|r| r.vmm == OURS)
            .filter_map(|ours| {
                let theirs = records
                    .iter()
                    .find(|r| r.vmm == *other && r.round == ours.round)?;
                Some(ours.seconds[3] / theirs.seconds[3])
            })
            .collect();
        let rounds = ratios.len();
        let ratio = median(ratios);
        let verdict = if ratio <= GOAL { "met" } else { "NOT met" };
        text.push_str(&format!(
            "{OURS}/{other}: {ratio:.2}x (median of {rounds} per-round ratios of the totals); \
             goal <= {GOAL:.1}x: {verdict}\n"
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
        failures: console
            .lines()
            .filter_map(|l| l.strip_prefix(FAIL).map(str::to_owned))
            .collect(),
        counts,
    }
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

/// Prints the summary of L1's console and writes each VMM's first boot
/// log into `dir`; fails if a boot failed or a VMM was never measured.
/// The goal's verdict is reported, not enforced.
pub fn report(console: &str, runs: u32, dir: &Path) -> anyhow::Result<()> {
    for (vmm, text) in first_boot_logs(console) {
        let path = dir.join(format!("bench-{vmm}.log"));
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!(
            "xtask: hwkvm: bench: {vmm}'s first boot (s since spawn, serial line): {}",
            path.display()
        );
    }
    let summary = summarize(console);
    println!("{}", summary.text.trim_end());
    for f in &summary.failures {
        eprintln!("xtask: hwkvm: bench: FAILED {f}");
    }
    let short: Vec<&str> = measure::CONTENDERS
        .iter()
        .copied()
        .filter(|name| {
            summary
                .counts
                .iter()
                .find(|(v, _)| v == name)
                .is_none_or(|(_, n)| *n < runs as usize)
        })
        .collect();
    if !summary.failures.is_empty() || !short.is_empty() {
        bail!(
            "the benchmark is incomplete: {} failed boots; fewer than {runs} runs of {short:?}",
            summary.failures.len()
        );
    }
    Ok(())
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
    fn records_are_read_and_garbage_is_not() {
        assert_eq!(
            Record::parse("HWKVM-BENCH-RUN vmm 3 1 2 3.5 6.5"),
            Some(Record {
                vmm: "vmm".into(),
                round: 3,
                seconds: [1.0, 2.0, 3.5, 6.5]
            })
        );
        for bad in [
            "HWKVM-BENCH-RUN vmm 3 1 2 3.5",
            "HWKVM-BENCH-RUN vmm x 1 2 3 4",
            "vmm 3 1 2 3 4",
        ] {
            assert_eq!(Record::parse(bad), None, "{bad}");
        }
    }

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
            s.text.contains("vmm/qemu-microvm: 1.00x (median of 3"),
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
        let e = report(CONSOLE, 3, &dir).unwrap_err().to_string();
        assert!(e.contains("qemu-pc"), "{e}");
        let failed = format!("{CONSOLE}HWKVM-BENCH-FAIL vmm round 3: no userspace\n");
        let e = report(&failed, 3, &dir).unwrap_err().to_string();
        assert!(e.contains("1 failed boots"), "{e}");
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

    #[test]
    fn the_median_of_an_even_count_is_the_middle_mean() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![2.0]), 2.0);
        assert!(median(Vec::new()).is_nan());
    }
}
