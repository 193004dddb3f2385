//! Prometheus text exposition format (version 0.0.4).
//!
//! Metric names: see [`Snapshot::write_prometheus`]. Values:
//!
//! Byte units become a `_bytes` suffix (kilobytes and megabytes scaled),
//! nanoseconds become `_seconds`; every other unit goes into HELP, which also
//! carries the description and the original name. Counters are `counter`s
//! with a `_total` suffix; gauges, booleans (0/1), callbacks and ratios
//! (label `part="a"|"b"`) are `gauge`s; profiles are `summary`s in seconds
//! with quantile 0 the minimum, quantile 1 the maximum, `_sum` and `_count`.

use std::fmt::{self, Write};

use crate::snapshot::{SampleSnapshot, Snapshot, Value};
use crate::unit::Unit;

/// Every metric name starts with this (and `_`).
const PREFIX: &str = "stam";

impl Snapshot {
    /// Writes the snapshot in the Prometheus text exposition format.
    ///
    /// # Metric names
    ///
    /// A sample name maps to a metric name by a reversible escaping, so two
    /// samples can never share a metric name and a name never depends on which
    /// other samples exist (adding a statistic renames nothing):
    ///
    /// - the name starts with `stam_`; path components are joined with `__`
    ///   (`/GMM/Chunks` becomes `stam_GMM__Chunks`);
    /// - ASCII letters and digits are kept, case included; where a lower-case
    ///   letter is followed by an upper-case one, `_` goes between them
    ///   (`cChunks` becomes `c_Chunks`, which Prometheus' camel-case lint
    ///   accepts);
    /// - every other character is written as `_`, its Unicode code point in
    ///   lower-case hex, and `_` (`virtio-net` becomes `virtio_2d_net`, `_`
    ///   itself `_5f_`);
    /// - a word that Prometheus' naming lints reject (an abbreviated or
    ///   non-base unit such as `ms` or `kilobytes`, a type name such as
    ///   `gauge`, a reserved suffix such as `total`; compared ignoring case) is
    ///   escaped letter by letter (`/Io/ms` becomes `stam_Io___6d__73_`).
    ///
    /// Decoding is unambiguous: after `stam_`, `__` separates components, `_`
    /// before an upper-case letter is a camel-case break, `_` before a hex digit
    /// opens an escape that the next `_` closes. A name never contains `_`
    /// followed by a lower-case letter outside `a`-`f`, nor `_b`/`_c` followed by
    /// a non-hex letter, so the suffixes added for types and units
    /// (`_total` on counters, `_bytes`, `_seconds`, and `_sum`/`_count` of a
    /// profile's summary) cannot make two names meet either.
    ///
    /// ```
    /// let reg = stam::Registry::new();
    /// reg.counter("/GMM/cChunks", stam::Unit::Count, "Chunks")?.add(5);
    /// let text = reg.snapshot("").to_prometheus();
    /// assert!(text.contains("# TYPE stam_GMM__c_Chunks_total counter\n"));
    /// assert!(text.contains("stam_GMM__c_Chunks_total 5\n"));
    /// # Ok::<(), stam::Error>(())
    /// ```
    pub fn write_prometheus(&self, out: &mut dyn Write) -> fmt::Result {
        for s in &self.samples {
            write_sample(out, s)?;
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

/// Maps a sample name to its metric name stem (see the module docs).
pub(crate) fn metric_stem(name: &str) -> String {
    let mut out = String::from(PREFIX);
    let components = name.strip_prefix('/').unwrap_or(name).split('/');
    for (i, component) in components.enumerate() {
        out.push_str(if i == 0 { "_" } else { "__" });
        encode_component(component, &mut out);
    }
    out
}

/// Appends one path component, escaped.
fn encode_component(component: &str, out: &mut String) {
    let mut rest = component;
    while let Some(c) = rest.chars().next() {
        if !c.is_ascii_alphanumeric() {
            escape(c, out);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let len = word_len(rest);
        let word = &rest[..len];
        if lint_trigger(word) {
            word.chars().for_each(|c| escape(c, out));
        } else {
            let after_lower = out.ends_with(|p: char| p.is_ascii_lowercase());
            if after_lower && word.starts_with(|c: char| c.is_ascii_uppercase()) {
                out.push('_');
            }
            out.push_str(word);
        }
        rest = &rest[len..];
    }
}

/// Length of the word `text` starts with: ASCII letters and digits up to the
/// next other character or camel-case break (lower-case, then upper-case).
fn word_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut len = 0;
    while len < bytes.len() && bytes[len].is_ascii_alphanumeric() {
        if len > 0 && bytes[len - 1].is_ascii_lowercase() && bytes[len].is_ascii_uppercase() {
            break;
        }
        len += 1;
    }
    len
}

/// Writes `c` as `_<hex code point>_`.
fn escape(c: char, out: &mut String) {
    // Writing into a String cannot fail.
    let _ = write!(out, "_{:x}_", u32::from(c));
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
/// Suffixes reserved for counters, histograms and summaries (escaped
/// anywhere, so that a name's encoding does not depend on its type).
const RESERVED_SUFFIXES: &[&str] = &["total", "sum", "count", "bucket"];

/// Whether Prometheus' naming lints reject `word` as a word of a metric name.
fn lint_trigger(word: &str) -> bool {
    let word = word.to_ascii_lowercase();
    let word = word.as_str();
    let prefixed_unit = UNIT_PREFIXES.iter().any(|p| {
        word.strip_prefix(p)
            .is_some_and(|rest| UNIT_WORDS.contains(&rest))
    });
    ABBREVIATIONS.contains(&word)
        || (UNIT_WORDS.contains(&word) && !BASE_UNITS.contains(&word))
        || prefixed_unit
        || TYPE_WORDS.contains(&word)
        || RESERVED_SUFFIXES.contains(&word)
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

fn write_sample(out: &mut dyn Write, s: &SampleSnapshot) -> fmt::Result {
    let stem = metric_stem(&s.name);
    match s.value {
        Value::Profile {
            periods,
            total_ns,
            min_ns,
            max_ns,
        } => {
            let m = format!("{stem}_seconds");
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
            let m = format!("{stem}{suffix}_total");
            write_header(out, &m, "counter", s, base.is_some())?;
            write_number(out, &m, value, base)
        }
        Value::Gauge { value, .. } | Value::Callback { value, .. } => {
            let base = BaseUnit::of(s.unit);
            let suffix = base.map_or("", |b| b.suffix);
            let m = format!("{stem}{suffix}");
            write_header(out, &m, "gauge", s, base.is_some())?;
            write_number(out, &m, value, base)
        }
        Value::Bool { value } => {
            let m = stem;
            write_header(out, &m, "gauge", s, false)?;
            writeln!(out, "{m} {}", u8::from(value))
        }
        Value::Ratio { a, b } => {
            let m = stem;
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

    /// The inverse of [`metric_stem`], following the module docs' decoding
    /// rules: `None` for text no sample name maps to.
    fn decode(stem: &str) -> Option<String> {
        let mut rest = stem.strip_prefix("stam_")?;
        let mut name = String::from("/");
        while let Some(c) = rest.chars().next() {
            if c.is_ascii_alphanumeric() {
                name.push(c);
                rest = &rest[1..];
            } else if let Some(after) = rest.strip_prefix("__") {
                name.push('/');
                rest = after;
            } else if rest[1..].starts_with(|c: char| c.is_ascii_uppercase()) {
                rest = &rest[1..];
            } else {
                let end = rest[1..].find('_')? + 1;
                let code = u32::from_str_radix(&rest[1..end], 16).ok()?;
                name.push(char::from_u32(code)?);
                rest = &rest[end + 1..];
            }
        }
        Some(name)
    }

    #[test]
    fn stems() {
        assert_eq!(metric_stem("/GMM/cChunks"), "stam_GMM__c_Chunks");
        assert_eq!(metric_stem("/HM/RunLoop"), "stam_HM__Run_Loop");
        assert_eq!(
            metric_stem("/PGM/R3/Page-Hits 2"),
            "stam_PGM__R3__Page_2d_Hits_20_2"
        );
        assert_eq!(metric_stem("/ü/x"), "stam__fc___x");
        assert_eq!(
            metric_stem("/A/b"),
            "stam_A___62_",
            "`b` is an abbreviation"
        );
        assert_eq!(metric_stem("/Io/Time/ms"), "stam_Io__Time___6d__73_");
        assert_eq!(metric_stem("/Io/KiloBytes"), "stam_Io__Kilo_Bytes");
        assert_eq!(
            metric_stem("/Io/xMs"),
            "stam_Io__x_4d__73_",
            "no camel-case break before an escaped word"
        );
        assert_eq!(metric_stem("/a_z"), "stam_a_5f_z");
        assert_eq!(metric_stem("/X/Count/Y"), "stam_X___43__6f__75__6e__74___Y");
    }

    #[test]
    fn names_that_used_to_collide_stay_apart_whatever_else_exists() {
        let names = ["/ab-cd", "/ab_cd", "/ab/cd_2", "/ab/cd", "/abCd", "/ab/Cd"];
        let stems: Vec<String> = names.iter().map(|n| metric_stem(n)).collect();
        for (i, a) in stems.iter().enumerate() {
            assert!(!stems[i + 1..].contains(a), "{a} twice in {stems:?}");
        }
        // A name's metric does not change when another sample is added.
        let reg = Registry::new();
        reg.gauge_u64("/ab_cd", Unit::Count, "y").unwrap();
        let before = reg.snapshot("").to_prometheus();
        reg.gauge_u64("/ab-cd", Unit::Count, "x").unwrap();
        let after = reg.snapshot("").to_prometheus();
        assert!(after.contains(&before), "{before}\n---\n{after}");
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
        assert!(text.contains("stam_Io__Bytes_bytes_total 2048\n"), "{text}");
        assert!(text.contains("# TYPE stam_HM__Run_seconds summary\n"));
        assert!(text.contains("stam_HM__Run_seconds{quantile=\"0\"} 0.000001\n"));
        assert!(text.contains("stam_HM__Run_seconds{quantile=\"1\"} 0.000003\n"));
        assert!(text.contains("stam_HM__Run_seconds_sum 0.000004\n"));
        assert!(text.contains("stam_HM__Run_seconds_count 2\n"));
        assert!(text.contains("# HELP stam_r Hits\\\\misses\\nratio [good:bad] (/r)\n"));
        assert!(text.contains("stam_r{part=\"b\"} 4\n"));
    }

    proptest! {
        #[test]
        fn stems_decode_to_their_name(name in "(/([A-Za-z0-9 _.:-]|é|ü|😀){1,8}){1,4}") {
            let stem = metric_stem(&name);
            prop_assert!(stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            prop_assert_eq!(decode(&stem), Some(name));
        }

        #[test]
        fn stems_pass_the_camel_case_lint(name in "(/[A-Za-z0-9 _-]{1,8}){1,4}") {
            let stem = metric_stem(&name);
            let bytes = stem.as_bytes();
            prop_assert!(
                !bytes.windows(2).any(|w| w[0].is_ascii_lowercase() && w[1].is_ascii_uppercase()),
                "{}", stem
            );
        }
    }
}
