//! Every output form re-parses: JSON through serde, XML through a real XML
//! parser, Prometheus through `promtool check metrics`.

use std::io::Write as _;
use std::process::{Command, Stdio};

mod common;

use common::{build, entries};
use proptest::prelude::*;
use stam::{Registry, Unit, Value, Visibility};

fn parse_num(text: &str) -> u64 {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
        None => text.parse().unwrap(),
    }
}

/// Checks one XML element against the sample it came from.
fn check_xml_element(node: roxmltree::Node<'_, '_>, s: &stam::SampleSnapshot) {
    let attr = |name: &str| {
        node.attribute(name)
            .unwrap_or_else(|| panic!("{name} missing on {node:?}"))
    };
    assert_eq!(attr("name"), &*s.name);
    assert_eq!(attr("unit"), s.unit.as_str());
    assert_eq!(attr("desc"), &*s.description);
    let reset = if s.resettable { "_Reset" } else { "" };
    let tag = node.tag_name().name();
    match s.value {
        Value::Counter { value } => {
            assert_eq!(tag, "Counter");
            assert_eq!(parse_num(attr("c")), value);
        }
        Value::Gauge { value, bits, hex } => {
            let kind = if hex { "X" } else { "U" };
            assert_eq!(tag, format!("{kind}{bits}{reset}"));
            assert_eq!(attr("val").starts_with("0x"), hex);
            assert_eq!(parse_num(attr("val")), value);
        }
        Value::Bool { value } => {
            assert_eq!(tag, format!("BOOL{reset}"));
            assert_eq!(attr("val"), value.to_string());
        }
        Value::Profile {
            periods,
            total_ns,
            min_ns,
            max_ns,
        } => {
            assert_eq!(tag, "Profile");
            assert_eq!(parse_num(attr("cPeriods")), periods);
            assert_eq!(parse_num(attr("cTicks")), total_ns);
            assert_eq!(parse_num(attr("cTicksMin")), min_ns);
            assert_eq!(parse_num(attr("cTicksMax")), max_ns);
        }
        Value::Ratio { a, b } => {
            assert_eq!(tag, format!("Ratio32{reset}"));
            assert_eq!(parse_num(attr("u32A")), u64::from(a));
            assert_eq!(parse_num(attr("u32B")), u64::from(b));
        }
        Value::Callback { value, .. } => {
            assert_eq!(tag, "Callback");
            assert_eq!(parse_num(attr("val")), value);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[cfg(feature = "json")]
    #[test]
    fn json_round_trips(entries in entries()) {
        let snap = build(&entries).snapshot_all("");
        let json = snap.to_json().unwrap();
        prop_assert_eq!(stam::Snapshot::from_json(&json).unwrap(), snap.clone());
        let generic: serde_json::Value = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(generic["samples"].as_array().map(Vec::len), Some(entries.len()));
    }

    #[test]
    fn xml_parses_and_carries_every_value(entries in entries()) {
        let snap = build(&entries).snapshot_all("");
        let xml = snap.to_xml(true);
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let root = doc.root_element();
        prop_assert_eq!(root.tag_name().name(), "Statistics");
        let elements: Vec<_> = root.children().filter(|n| n.is_element()).collect();
        prop_assert_eq!(elements.len(), snap.samples.len());
        for (node, sample) in elements.iter().zip(&snap.samples) {
            check_xml_element(*node, sample);
        }
    }

    #[test]
    fn text_has_one_line_per_sample(entries in entries()) {
        let snap = build(&entries).snapshot_all("");
        let text = snap.to_text(false);
        prop_assert_eq!(text.lines().count(), snap.samples.len());
        for (line, s) in text.lines().zip(&snap.samples) {
            prop_assert!(line.starts_with(&*s.name));
        }
    }
}

#[test]
fn unused_samples_are_left_out_until_used() {
    let reg = Registry::new();
    let c = reg
        .sample("/c", Unit::Count, "d")
        .visibility(Visibility::Used)
        .counter()
        .unwrap();
    assert_eq!(reg.snapshot("").to_text(false), "");
    assert!(!reg.snapshot("").to_xml(false).contains("Counter"));
    c.inc();
    assert!(reg.snapshot("").to_xml(false).contains("<Counter c=\"1\""));
}

fn promtool_available() -> bool {
    match Command::new("promtool").arg("--version").output() {
        Ok(out) => out.status.success(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => panic!("cannot run promtool: {e}"),
    }
}

/// Runs `promtool check metrics` on `text`: whether it passed, and its report.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

fn assert_promtool_accepts(text: &str) {
    let (ok, report) = promtool_check(text);
    assert!(ok, "promtool rejected:\n{report}\n--- input ---\n{text}");
}

#[test]
fn prometheus_output_passes_promtool() {
    if !promtool_available() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("promtool not found but CI=true: install Debian's `prometheus` package");
        }
        eprintln!(
            "\n*** SKIPPED prometheus_output_passes_promtool: promtool not found \
             (apt-get install prometheus) ***\n"
        );
        return;
    }
    // A fixed case with every type and names that map alike in snake case ...
    let fixed = Registry::new();
    fixed
        .counter("/GMM/cChunks", Unit::Count, "Chunks")
        .unwrap()
        .add(3);
    fixed
        .counter("/GMM/c-chunks", Unit::Bytes, "Bytes")
        .unwrap()
        .add(3);
    fixed
        .gauge_u64("/GMM/c_chunks_total", Unit::Ns, "Time")
        .unwrap()
        .set(5);
    fixed
        .gauge_u64("/HM/RunLoop_seconds_sum", Unit::Count, "Clash")
        .unwrap()
        .set(1);
    fixed.profile("/HM/RunLoop", "Run loop").unwrap().add_ns(12);
    fixed.profile("/HM/Idle", "Idle").unwrap();
    fixed
        .ratio("/PGM/Hits", Unit::GoodBad, "Hits:misses")
        .unwrap()
        .set(3, 1);
    fixed.flag("/PGM/A20", "A20").unwrap().set(true);
    fixed.gauge_u64("/Io/Time/ms", Unit::Count, "ms").unwrap();
    fixed
        .gauge_u64("/Io/Gauge/total", Unit::Count, "total")
        .unwrap();
    fixed.counter("/Io/Count", Unit::Count, "count").unwrap();
    fixed
        .callback("/GMM/cAllocated", Unit::Megabytes, "MB", || 3)
        .unwrap();
    assert_promtool_accepts(&fixed.snapshot_all("").to_prometheus());

    // ... then random registries (few cases: each one starts promtool).
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(16));
    runner
        .run(&entries(), |e| {
            let text = build(&e).snapshot_all("").to_prometheus();
            let (ok, report) = promtool_check(&text);
            prop_assert!(
                ok,
                "promtool rejected:\n{}\n--- input ---\n{}",
                report,
                text
            );
            Ok(())
        })
        .unwrap();
}
