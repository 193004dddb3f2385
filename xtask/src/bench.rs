//! `cargo xtask bench`: the criterion benchmarks, and with `--summary` the
//! headline metrics of the benches that produce them, one JSON object a line.
//!
//! A bench reports a metric by printing a line
//! `metric NAME VALUE UNIT BASELINE` (BASELINE `-` when the metric has no
//! paired baseline); the summary collects those lines from every bench run
//! and ends the output with
//! `{"metric": NAME, "value": V, "unit": U, "baseline": B}` per metric.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The benches that report summary metrics: (crate, bench target, metrics).
const SUMMARY_BENCHES: &[(&str, &str, &[&str])] = &[
    ("hm-vmx", "pio_exit", &["pio_exit_ratio"]),
    (
        "pgm",
        "phys",
        &[
            "mmio_exit_ratio",
            "handler_lookup_ns",
            "handler_lookup_vs_btreemap",
        ],
    ),
    ("pgm", "paging", &["pgm_walk_ns", "pgm_tlb_hit_ns"]),
    ("stam", "hot_paths", &["stam_add_ratio"]),
    ("ssm", "save_load", &["ssm_save_speed_ratio"]),
    ("gmm", "gmm", &["gmm_scan_gib_s"]),
    ("vmm-core", "rendezvous", &["rendezvous_ratio"]),
    (
        "vmm-core",
        "live_save_downtime",
        &[
            "live_save_downtime_ms",
            "live_save_vmm_downtime_ms",
            "live_save_downtime_dirty_ms",
            "live_save_vmm_downtime_dirty_ms",
        ],
    ),
];

/// Criterion options for the summary run unless others follow `--`.
const SUMMARY_CRITERION: &[&str] = &["--warm-up-time", "1", "--measurement-time", "2"];

/// One summary metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Name, such as `handler_lookup_ns`.
    pub name: String,
    /// The measured value.
    pub value: f64,
    /// Unit of `value` (`ns`, `ratio`, `GiB/s`).
    pub unit: String,
    /// The paired baseline's figure from the same run, if there is one.
    pub baseline: Option<f64>,
}

impl Metric {
    /// Parses a bench's `metric NAME VALUE UNIT BASELINE` line.
    pub fn parse_bench_line(line: &str) -> Option<Metric> {
        let mut words = line.strip_prefix("metric ")?.split_whitespace();
        let name = words.next()?.to_owned();
        let value = words.next()?.parse().ok()?;
        let unit = words.next()?.to_owned();
        let baseline = match words.next()? {
            "-" => None,
            b => Some(b.parse().ok()?),
        };
        words.next().is_none().then_some(Metric {
            name,
            value,
            unit,
            baseline,
        })
    }

    /// The summary line: one JSON object, its keys in the documented order.
    pub fn to_json_line(&self) -> String {
        use serde_json::Value;
        format!(
            "{{\"metric\": {}, \"value\": {}, \"unit\": {}, \"baseline\": {}}}",
            Value::from(self.name.as_str()),
            Value::from(self.value),
            Value::from(self.unit.as_str()),
            self.baseline.map_or(Value::Null, Value::from),
        )
    }
}

/// `cargo xtask bench [--summary] [CRATE...] [-- CRITERION OPTIONS]`.
pub fn run(args: &[String], cargo: impl Fn(&[&str]) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let (ours, criterion) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], Some(&args[i + 1..])),
        None => (args, None),
    };
    let summary = ours.iter().any(|a| a == "--summary");
    let crates: Vec<&str> = ours
        .iter()
        .filter(|a| *a != "--summary")
        .map(String::as_str)
        .collect();
    if summary {
        let criterion: Vec<&str> = match criterion {
            Some(c) => c.iter().map(String::as_str).collect(),
            None => SUMMARY_CRITERION.to_vec(),
        };
        return run_summary(&crates, &criterion);
    }
    let mut cmd = vec!["bench"];
    if crates.is_empty() {
        cmd.push("--workspace");
    }
    for c in &crates {
        cmd.extend(["-p", c]);
    }
    if let Some(c) = criterion {
        cmd.push("--");
        cmd.extend(c.iter().map(String::as_str));
    }
    cargo(&cmd)
}

/// Runs the summary benches (of `crates`, or all), their output going to
/// stderr, then prints the metrics they reported on stdout.
fn run_summary(crates: &[&str], criterion: &[&str]) -> anyhow::Result<()> {
    let mut metrics = Vec::new();
    let mut missing = Vec::new();
    for &(krate, bench, expected) in SUMMARY_BENCHES {
        if !crates.is_empty() && !crates.contains(&krate) {
            continue;
        }
        let got = bench_metrics(krate, bench, criterion)?;
        for &name in expected {
            if !got.iter().any(|m| m.name == name) {
                missing.push(name);
            }
        }
        metrics.extend(got);
    }
    if !missing.is_empty() {
        eprintln!(
            "xtask: no figure for {} (bench filtered, or /dev/kvm missing?)",
            missing.join(", ")
        );
    }
    let mut out = std::io::stdout().lock();
    for m in &metrics {
        writeln!(out, "{}", m.to_json_line())?;
    }
    Ok(())
}

/// Runs one bench target, echoing its output to stderr, and returns the
/// metrics it printed.
fn bench_metrics(krate: &str, bench: &str, criterion: &[&str]) -> anyhow::Result<Vec<Metric>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec!["bench", "-p", krate, "--bench", bench, "--"];
    args.extend(criterion);
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut child = Command::new(&cargo)
        .args(&args)
        .current_dir(crate::workspace_root())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cargo}"))?;
    let stdout = child.stdout.take().context("bench stdout")?;
    let mut metrics = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading bench output")?;
        eprintln!("{line}");
        metrics.extend(Metric::parse_bench_line(&line));
    }
    let status = child.wait().context("waiting for cargo bench")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_lines_parse() {
        let m = Metric::parse_bench_line("metric handler_lookup_ns 11.37 ns 71.31").unwrap();
        assert_eq!(m.name, "handler_lookup_ns");
        assert_eq!(
            (m.value, m.unit.as_str(), m.baseline),
            (11.37, "ns", Some(71.31))
        );
        let m = Metric::parse_bench_line("metric pgm_walk_ns 40.5 ns -").unwrap();
        assert_eq!(m.baseline, None);
        for bad in [
            "handler lookup: 11.4 ns",
            "metric x 1 ns",
            "metric x one ns 2",
            "metric x 1 ns 2 extra",
        ] {
            assert_eq!(Metric::parse_bench_line(bad), None, "{bad}");
        }
    }

    #[test]
    fn summary_lines_are_one_json_object_each() {
        for (line, baseline) in [
            (
                "metric rendezvous_ratio 2.5 ratio 4100",
                serde_json::json!(4100.0),
            ),
            ("metric pgm_tlb_hit_ns 3.25 ns -", serde_json::Value::Null),
        ] {
            let json = Metric::parse_bench_line(line).unwrap().to_json_line();
            assert!(!json.contains('\n'));
            assert!(json.starts_with("{\"metric\": \""), "{json}");
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            let obj = v.as_object().unwrap();
            let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["baseline", "metric", "unit", "value"]);
            assert!(obj["metric"].is_string() && obj["unit"].is_string());
            assert!(obj["value"].is_number());
            assert_eq!(obj["baseline"], baseline);
        }
    }

    #[test]
    fn every_summary_metric_is_printed_by_its_bench() {
        let root = crate::workspace_root();
        for &(krate, bench, names) in SUMMARY_BENCHES {
            let path = root.join(krate).join("benches").join(format!("{bench}.rs"));
            let src = std::fs::read_to_string(&path).unwrap();
            for name in names {
                assert!(
                    src.contains(&format!("\"metric {name} ")),
                    "{} does not print metric {name}",
                    path.display()
                );
            }
        }
    }
}
