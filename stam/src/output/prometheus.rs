//! Prometheus text exposition format (version 0.0.4).
//!
//! Mapping: `/GMM/cChunks` becomes `stam_gmm_c_chunks` (components joined
//! with `_`, camelCase split, lower case, anything else replaced by `_`).
//! Byte units become a `_bytes` suffix (kilobytes and megabytes scaled),
//! nanoseconds become `_seconds`; every other unit goes into HELP, which also
//! carries the description and the original name. Counters are `counter`s
//! with a `_total` suffix; gauges, booleans (0/1), callbacks and ratios
//! (label `part="a"|"b"`) are `gauge`s; profiles are `summary`s in seconds
//! with quantile 0 the minimum, quantile 1 the maximum, `_sum` and `_count`.
//! Names that would collide get `_2`, `_3`, ... appended.

use std::collections::HashSet;
use std::fmt::{self, Write};

use crate::snapshot::{SampleSnapshot, Snapshot, Value};
use crate::unit::Unit;

/// Every metric name starts with this.
const PREFIX: &str = "stam";

impl Snapshot {
    /// Writes the snapshot in the Prometheus text exposition format.
    ///
    /// ```
    /// let reg = stam::Registry::new();
    /// reg.counter("/GMM/cChunks", stam::Unit::Count, "Chunks")?.add(5);
    /// let text = reg.snapshot("").to_prometheus();
    /// assert!(text.contains("# TYPE stam_gmm_c_chunks_total counter\n"));
    /// assert!(text.contains("stam_gmm_c_chunks_total 5\n"));
    /// # Ok::<(), stam::Error>(())
    /// ```
    pub fn write_prometheus(&self, out: &mut dyn Write) -> fmt::Result {
        let mut used = HashSet::new();
        for s in &self.samples {
            write_sample(out, s, &mut used)?;
        }
        Ok(())
    }

    /// [`write_prometheus`](Snapshot::write_prometheus) into a new `String`.
    pub fn to_prometheus(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = self.write_prometheus(&mut s);
        s
    }
}

/// Maps a sample name to a metric name stem: `stam_` plus the name's words in
/// snake case. Words that Prometheus' naming lints reject (abbreviated or
/// non-base units such as `ms` or `kilobytes`, type names such as `gauge`,
/// and a trailing `total`/`sum`/`count`/`bucket`) are glued to the word
/// before them, so `/Io/Time/ms` becomes `stam_io_timems`.
pub(crate) fn metric_stem(name: &str) -> String {
    let mut words: Vec<String> = vec![PREFIX.to_owned()];
    let mut prev: Option<char> = None;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            let boundary = c.is_ascii_uppercase()
                && prev.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit());
            if boundary || prev.is_none() {
                words.push(String::new());
            }
            if let Some(word) = words.last_mut() {
                word.push(c.to_ascii_lowercase());
            }
            prev = Some(c);
        } else {
            prev = None;
        }
    }
    while let Some(i) = (1..words.len()).find(|&i| lint_trigger(&words[i], i + 1 == words.len())) {
        let word = words.remove(i);
        words[i - 1].push_str(&word);
    }
    words.join("_")
}

/// Unit abbreviations Prometheus' lint rejects as whole words.
const ABBREVIATIONS: &[&str] = &[
    "s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "tb", "pb", "m", "h", "d",
];
/// Unit words the lint knows (base and non-base).
const UNIT_WORDS: &[&str] = &[
    "amperes",
    "bytes",
    "celsius",
    "grams",
    "joules",
    "kelvin",
    "kelvins",
    "meters",
    "metres",
    "seconds",
    "volts",
    "minutes",
    "hours",
    "days",
    "weeks",
    "fahrenheit",
    "rankine",
    "inches",
    "yards",
    "miles",
    "bits",
    "calories",
    "pounds",
    "ounces",
];
/// Base units, allowed on their own.
const BASE_UNITS: &[&str] = &[
    "amperes", "bytes", "celsius", "grams", "joules", "meters", "metres", "seconds", "volts",
];
/// Unit prefixes the lint knows (`kilobytes` is a non-base unit).
const UNIT_PREFIXES: &[&str] = &[
    "pico", "nano", "micro", "milli", "centi", "deci", "deca", "hecto", "kilo", "kibi", "mega",
    "mibi", "giga", "gibi", "tera", "tebi", "peta", "pebi",
];
/// Metric type names, not allowed as words.
const TYPE_WORDS: &[&str] = &["counter", "gauge", "histogram", "summary", "untyped"];
/// Suffixes reserved for counters, histograms and summaries.
const RESERVED_LAST: &[&str] = &["total", "sum", "count", "bucket"];

fn lint_trigger(word: &str, last: bool) -> bool {
    let prefixed_unit = UNIT_PREFIXES.iter().any(|p| {
        word.strip_prefix(p)
            .is_some_and(|rest| UNIT_WORDS.contains(&rest))
    });
    ABBREVIATIONS.contains(&word)
        || (UNIT_WORDS.contains(&word) && !BASE_UNITS.contains(&word))
        || prefixed_unit
        || TYPE_WORDS.contains(&word)
        || (last && RESERVED_LAST.contains(&word))
}

/// How a value converts to a Prometheus base unit: `value * mul / div`.
#[derive(Clone, Copy)]
struct BaseUnit {
    suffix: &'static str,
    mul: f64,
    div: f64,
}

impl BaseUnit {
    const SECONDS: BaseUnit = BaseUnit {
        suffix: "_seconds",
        mul: 1.0,
        div: 1e9,
    };

    fn of(unit: Unit) -> Option<BaseUnit> {
        let bytes = |mul| BaseUnit {
            suffix: "_bytes",
            mul,
            div: 1.0,
        };
        match unit {
            Unit::Bytes => Some(bytes(1.0)),
            Unit::Kilobytes => Some(bytes(1024.0)),
            Unit::Megabytes => Some(bytes(1024.0 * 1024.0)),
            Unit::Ns => Some(BaseUnit::SECONDS),
            _ => None,
        }
    }

    fn convert(self, value: u64) -> f64 {
        value as f64 * self.mul / self.div
    }
}

/// Picks a metric name not used yet: `stem`, else `stem_2`, `stem_3`, ...
/// Every name a metric family occupies (with its suffixes) is reserved.
fn unique(stem: String, suffixes: &[&str], used: &mut HashSet<String>) -> String {
    let free = |base: &str, used: &HashSet<String>| {
        suffixes
            .iter()
            .all(|suffix| !used.contains(&format!("{base}{suffix}")))
    };
    let mut name = stem.clone();
    let mut n = 2u32;
    while !free(&name, used) {
        name = format!("{stem}_{n}");
        n += 1;
    }
    for suffix in suffixes {
        used.insert(format!("{name}{suffix}"));
    }
    name
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn write_header(
    out: &mut dyn Write,
    metric: &str,
    kind: &str,
    s: &SampleSnapshot,
    unit_in_name: bool,
) -> fmt::Result {
    let mut help = escape_help(&s.description);
    let unit = s.unit.as_str();
    if !unit_in_name && !unit.is_empty() {
        write!(help, " [{unit}]")?;
    }
    write!(help, " ({})", escape_help(&s.name))?;
    writeln!(out, "# HELP {metric} {}", help.trim_start())?;
    writeln!(out, "# TYPE {metric} {kind}")
}

fn write_sample(
    out: &mut dyn Write,
    s: &SampleSnapshot,
    used: &mut HashSet<String>,
) -> fmt::Result {
    let stem = metric_stem(&s.name);
    match s.value {
        Value::Profile {
            periods,
            total_ns,
            min_ns,
            max_ns,
        } => {
            let m = unique(format!("{stem}_seconds"), &["", "_sum", "_count"], used);
            write_header(out, &m, "summary", s, true)?;
            let secs = |ns| BaseUnit::SECONDS.convert(ns);
            if periods == 0 {
                writeln!(out, "{m}{{quantile=\"0\"}} NaN")?;
                writeln!(out, "{m}{{quantile=\"1\"}} NaN")?;
            } else {
                writeln!(out, "{m}{{quantile=\"0\"}} {}", secs(min_ns))?;
                writeln!(out, "{m}{{quantile=\"1\"}} {}", secs(max_ns))?;
            }
            writeln!(out, "{m}_sum {}", secs(total_ns))?;
            writeln!(out, "{m}_count {periods}")
        }
        Value::Counter { value } => {
            let base = BaseUnit::of(s.unit);
            let suffix = base.map_or("", |b| b.suffix);
            let m = unique(format!("{stem}{suffix}"), &["_total"], used) + "_total";
            write_header(out, &m, "counter", s, base.is_some())?;
            write_number(out, &m, value, base)
        }
        Value::Gauge { value, .. } | Value::Callback { value, .. } => {
            let base = BaseUnit::of(s.unit);
            let suffix = base.map_or("", |b| b.suffix);
            let m = unique(format!("{stem}{suffix}"), &[""], used);
            write_header(out, &m, "gauge", s, base.is_some())?;
            write_number(out, &m, value, base)
        }
        Value::Bool { value } => {
            let m = unique(stem, &[""], used);
            write_header(out, &m, "gauge", s, false)?;
            writeln!(out, "{m} {}", u8::from(value))
        }
        Value::Ratio { a, b } => {
            let m = unique(stem, &[""], used);
            write_header(out, &m, "gauge", s, false)?;
            writeln!(out, "{m}{{part=\"a\"}} {a}")?;
            writeln!(out, "{m}{{part=\"b\"}} {b}")
        }
    }
}

fn write_number(
    out: &mut dyn Write,
    metric: &str,
    value: u64,
    base: Option<BaseUnit>,
) -> fmt::Result {
    match base {
        Some(b) if b.mul != 1.0 || b.div != 1.0 => writeln!(out, "{metric} {}", b.convert(value)),
        _ => writeln!(out, "{metric} {value}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;
    use proptest::prelude::*;

    #[test]
    fn stems() {
        assert_eq!(metric_stem("/GMM/cChunks"), "stam_gmm_c_chunks");
        assert_eq!(metric_stem("/HM/RunLoop"), "stam_hm_run_loop");
        assert_eq!(
            metric_stem("/PGM/R3/Page-Hits 2"),
            "stam_pgm_r3_page_hits_2"
        );
        assert_eq!(metric_stem("/ü/x"), "stam_x");
        assert_eq!(metric_stem("/A/b"), "stam_ab");
        assert_eq!(metric_stem("/Io/Time/ms"), "stam_io_timems");
        assert_eq!(metric_stem("/Io/KiloBytes"), "stam_io_kilo_bytes");
        assert_eq!(metric_stem("/Io/kilobytes"), "stam_iokilobytes");
        assert_eq!(metric_stem("/s"), "stams");
        assert_eq!(metric_stem("/X/Count/Y"), "stam_x_count_y");
        assert_eq!(metric_stem("/X/Y/Count"), "stam_x_ycount");
        assert_eq!(metric_stem("/X/mega/bits"), "stam_xmegabits");
    }

    #[test]
    fn colliding_names_get_suffixes() {
        let reg = Registry::new();
        reg.gauge_u64("/ab-cd", Unit::Count, "x").unwrap();
        reg.gauge_u64("/ab_cd", Unit::Count, "y").unwrap();
        reg.gauge_u64("/ab/cd_2", Unit::Count, "z").unwrap();
        let text = reg.snapshot("").to_prometheus();
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert_eq!(
            types,
            [
                "# TYPE stam_ab_cd gauge",
                "# TYPE stam_ab_cd_2 gauge",
                "# TYPE stam_ab_cd_3 gauge"
            ]
        );
    }

    #[test]
    fn units_and_profiles() {
        let reg = Registry::new();
        reg.counter("/Io/Bytes", Unit::Kilobytes, "Data")
            .unwrap()
            .add(2);
        let p = reg.profile("/HM/Run", "Run").unwrap();
        p.add_ns(1_000);
        p.add_ns(3_000);
        reg.ratio("/r", Unit::GoodBad, "Hits\\misses\nratio")
            .unwrap()
            .set(3, 4);
        let text = reg.snapshot("").to_prometheus();
        assert!(text.contains("stam_io_bytes_bytes_total 2048\n"), "{text}");
        assert!(text.contains("# TYPE stam_hm_run_seconds summary\n"));
        assert!(text.contains("stam_hm_run_seconds{quantile=\"0\"} 0.000001\n"));
        assert!(text.contains("stam_hm_run_seconds{quantile=\"1\"} 0.000003\n"));
        assert!(text.contains("stam_hm_run_seconds_sum 0.000004\n"));
        assert!(text.contains("stam_hm_run_seconds_count 2\n"));
        assert!(text.contains("# HELP stam_r Hits\\\\misses\\nratio [good:bad] (/r)\n"));
        assert!(text.contains("stam_r{part=\"b\"} 4\n"));
    }

    proptest! {
        #[test]
        fn stems_are_valid_metric_names(name in "/[A-Za-z0-9 _.-]{1,20}(/[a-zA-Z0-9é]{1,8}){0,3}") {
            let stem = metric_stem(&name);
            prop_assert!(stem.starts_with("stam"));
            prop_assert!(stem.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
            prop_assert!(!stem.contains("__"));
            prop_assert!(!stem.ends_with('_'));
        }
    }
}
