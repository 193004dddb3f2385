//! `cargo xtask hwkvm --bench-virtio [--runs N]`: virtio disk and network
//! throughput, `vmm` against QEMU, side by side inside the same L1.
//!
//! L1 runs `xtask hwkvm --measure-virtio N` (see [`measure`]) in a network
//! namespace of its own: after one unmeasured run each, N rounds, each
//! booting the L2 guest (Debian's kernel and the busybox initramfs, 256
//! MiB, one vCPU) with `vmm` and with `qemu -M pc`, in reverse order on odd
//! rounds, both with a virtio-pci disk on the same 256 MiB raw image and a
//! virtio-pci network card on a fresh tap. In the guest, busybox `dd` with
//! direct I/O writes and reads the disk sequentially in 4 KiB and 1 MiB
//! blocks, timed in the guest by `/proc/uptime` (10 ms steps; the runs take
//! seconds); L1 sends a TCP stream to the guest's `nc`, timed in L1 from
//! the connection to the guest's close. The host reads the record lines
//! from L1's console and prints each VMM's median MB/s (10^6 bytes/s) per
//! metric, the median and range of the per-round ratios `vmm`/QEMU and
//! whether `vmm` met the goal of at least 1.0x QEMU's throughput.

pub mod measure;

use super::paired::{self, Ratio};
use super::{conclude, failures};

/// A run's record on L1's console:
/// `HWKVM-BENCH-IO <vmm> <round> <MB/s of each metric>...`, in the order
/// of [`METRICS`].
pub const RECORD: &str = "HWKVM-BENCH-IO ";

/// The VMM measured against the other.
const OURS: &str = measure::CONTENDERS[0];
/// The goal: `vmm` moves at least this times QEMU's bytes per second.
const GOAL: f64 = 1.0;

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// `dd` with direct I/O: written (from /dev/zero) or read (into
    /// /dev/null), `count` blocks of `block` bytes from the disk's start.
    Disk { write: bool, block: u64, count: u64 },
    /// A TCP stream of this many bytes from L1 to the guest.
    Tcp { bytes: u64 },
}

impl Metric {
    /// The bytes the metric moves.
    pub fn bytes(self) -> u64 {
        match self {
            Metric::Disk { block, count, .. } => block * count,
            Metric::Tcp { bytes } => bytes,
        }
    }

    /// Its name in the guest's output and in the report.
    pub fn key(self) -> String {
        match self {
            Metric::Disk { write, block, .. } => {
                let size = match block {
                    b if b % (1 << 20) == 0 => format!("{}M", b >> 20),
                    b => format!("{}k", b >> 10),
                };
                format!("{}{size}", if write { "write" } else { "read" })
            }
            Metric::Tcp { .. } => "tcp".to_owned(),
        }
    }
}

/// The metrics, in the order the guest runs them (the TCP stream first:
/// L1 starts sending as soon as the guest listens) and of a record's
/// columns. The reads read what the write before them wrote.
pub const METRICS: [Metric; 5] = [
    Metric::Tcp { bytes: 32 << 20 },
    Metric::Disk {
        write: true,
        block: 4 << 10,
        count: 4096,
    },
    Metric::Disk {
        write: false,
        block: 4 << 10,
        count: 4096,
    },
    Metric::Disk {
        write: true,
        block: 1 << 20,
        count: 128,
    },
    Metric::Disk {
        write: false,
        block: 1 << 20,
        count: 128,
    },
];

/// The L1 script: the measurement with `runs` rounds, in a network
/// namespace of its own (busybox's `unshare`).
pub fn script(runs: u32) -> String {
    format!("unshare -n /bin/xtask hwkvm --measure-virtio {runs}\n")
}

/// The table of medians, the ratios and the verdict.
fn summarize(records: &[paired::Record], counts: &[(String, usize)]) -> String {
    let others: Vec<&str> = counts
        .iter()
        .map(|(v, _)| v.as_str())
        .filter(|v| *v != OURS)
        .collect();
    let mut text = format!(
        "virtio throughput in L1, median MB/s (10^6 B/s){:>10}",
        OURS
    );
    for other in &others {
        text.push_str(&format!("{other:>10}  {OURS}/{other}, per-round range"));
    }
    text.push('\n');
    let mut behind = Vec::new();
    for (column, metric) in METRICS.iter().enumerate() {
        let mib = metric.bytes() >> 20;
        let label = format!("{} ({mib} MiB)", metric.key());
        text.push_str(&format!(
            "  {label:<45}{:>10.1}",
            paired::median_of(records, OURS, column)
        ));
        for other in &others {
            let ratio = Ratio::of(records, OURS, other, column);
            text.push_str(&format!(
                "{:>10.1}  {:.2}x, {:.2}-{:.2}",
                paired::median_of(records, other, column),
                ratio.median,
                ratio.low,
                ratio.high
            ));
            // A NaN (never paired) counts as behind.
            if ratio.median.is_nan() || ratio.median < GOAL {
                behind.push(format!("{} vs {other} {:.2}x", metric.key(), ratio.median));
            }
        }
        text.push('\n');
    }
    let rounds = counts.iter().map(|(_, n)| *n).min().unwrap_or(0);
    text.push_str(&format!(
        "  ratios: {OURS}'s MB/s over the other's in the same round ({rounds} rounds)\n"
    ));
    if behind.is_empty() {
        text.push_str(&format!(
            "goal >= {GOAL:.1}x QEMU's throughput: met for every metric\n"
        ));
    } else {
        text.push_str(&format!(
            "goal >= {GOAL:.1}x QEMU's throughput: NOT met; behind on {}\n",
            behind.join(", ")
        ));
    }
    text
}

/// Prints the summary of L1's console; fails if a run failed or a VMM was
/// never measured. The goal's verdict is reported, not enforced.
pub fn report(console: &str, runs: u32) -> anyhow::Result<()> {
    let records = paired::records(console, RECORD, METRICS.len());
    let counts = paired::counts(&records);
    let text = summarize(&records, &counts);
    conclude(
        &text,
        &failures(console),
        &measure::CONTENDERS,
        &counts,
        runs,
    )
}

#[cfg(test)]
mod tests {
    use super::super::FAIL;
    use super::*;

    const CONSOLE: &str = "\
HWKVM: L1 up after 9.1 s\r
HWKVM-BENCH-IO vmm 0 50.000 10.000 20.000 100.000 200.000\r
HWKVM-BENCH-IO qemu-pc 0 40.000 10.000 25.000 100.000 100.000\r
HWKVM-BENCH-IO qemu-pc 1 50.000 10.000 25.000 80.000 100.000\r
HWKVM-BENCH-IO vmm 1 60.000 12.000 20.000 90.000 150.000\r
HWKVM-BENCH-IO vmm 2 70.000 8.000 22.000 100.000 100.000\r
HWKVM-BENCH-IO qemu-pc 2 50.000 10.000 20.000 100.000 100.000\r
HWKVM-BENCH-IO vmm 3 1 2\r
HWKVM-RC=0\r
";

    #[test]
    fn metrics_are_named_by_direction_and_block() {
        let keys: Vec<String> = METRICS.iter().map(|m| m.key()).collect();
        assert_eq!(keys, ["tcp", "write4k", "read4k", "write1M", "read1M"]);
        assert_eq!(METRICS[1].bytes(), 16 << 20);
        assert_eq!(METRICS[4].bytes(), 128 << 20);
    }

    #[test]
    fn medians_ratios_and_where_we_are_behind_are_reported() {
        let records = paired::records(CONSOLE, RECORD, METRICS.len());
        let counts = paired::counts(&records);
        assert_eq!(counts, [("vmm".into(), 3), ("qemu-pc".into(), 3)]);
        let text = summarize(&records, &counts);
        // tcp: vmm 50 60 70 -> 60; qemu 40 50 50 -> 50; ratios 1.25 1.2 1.4.
        assert!(text.contains("60.0      50.0  1.25x, 1.20-1.40"), "{text}");
        // read4k: ratios 0.8 0.8 1.1 -> 0.8 behind; write1M 1.0 1.125 1.0 -> 1.0 met.
        assert!(text.contains("0.80x, 0.80-1.10"), "{text}");
        assert!(
            text.contains("NOT met; behind on read4k vs qemu-pc 0.80x"),
            "{text}"
        );
        assert!(!text.contains("write1M vs"), "{text}");
        // read1M: 2.0 1.5 1.0 -> 1.5.
        assert!(text.contains("1.50x, 1.00-2.00"), "{text}");
        assert!(text.contains("(3 rounds)"), "{text}");
        let even = CONSOLE.replace("vmm 1 60.000 12.000 20.000", "vmm 1 60.000 12.000 30.000");
        let records = paired::records(&even, RECORD, METRICS.len());
        let text = summarize(&records, &paired::counts(&records));
        assert!(text.contains("met for every metric"), "{text}");
    }

    #[test]
    fn failed_or_missing_runs_fail_the_benchmark() {
        report(CONSOLE, 3).unwrap();
        let e = report(CONSOLE, 4).unwrap_err().to_string();
        assert!(e.contains("vmm") && e.contains("qemu-pc"), "{e}");
        let failed = format!("{CONSOLE}{FAIL}qemu-pc round 3: no VBENCH-DONE\n");
        let e = report(&failed, 3).unwrap_err().to_string();
        assert!(e.contains("1 failed runs"), "{e}");
        let nothing = report("HWKVM-RC=1\n", 1).unwrap_err().to_string();
        assert!(nothing.contains("[\"vmm\", \"qemu-pc\"]"), "{nothing}");
    }
}
