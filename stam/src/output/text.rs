//! Text table in the style of `VBoxManage debugvm statistics` / `info stats`.

use std::fmt::{self, Write};

use crate::snapshot::{SampleSnapshot, Snapshot, Value};

/// Names are padded to at least this many columns.
const MIN_NAME_WIDTH: usize = 32;
const VALUE_WIDTH: usize = 12;

impl Snapshot {
    /// Writes one line per sample: name, value, unit, and for profiles the
    /// total, period count, maximum and minimum; with `descriptions`, each
    /// line ends with ` - description`.
    ///
    /// ```
    /// let reg = stam::Registry::new();
    /// reg.counter("/GMM/cChunks", stam::Unit::Count, "Chunks")?.add(5);
    /// let text = reg.snapshot("").to_text(false);
    /// assert_eq!(text.split_whitespace().collect::<Vec<_>>(), ["/GMM/cChunks", "5", "count"]);
    /// # Ok::<(), stam::Error>(())
    /// ```
    pub fn write_text(&self, out: &mut dyn Write, descriptions: bool) -> fmt::Result {
        let width = self
            .samples
            .iter()
            .map(|s| s.name.chars().count())
            .max()
            .unwrap_or(0)
            .max(MIN_NAME_WIDTH);
        let mut line = String::new();
        for s in &self.samples {
            line.clear();
            write_line(&mut line, s, width)?;
            if descriptions && !s.description.is_empty() {
                write!(out, "{} - {}", line.trim_end(), s.description)?;
            } else {
                write!(out, "{}", line.trim_end())?;
            }
            writeln!(out)?;
        }
        Ok(())
    }

    /// [`write_text`](Snapshot::write_text) into a new `String`.
    pub fn to_text(&self, descriptions: bool) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = self.write_text(&mut s, descriptions);
        s
    }
}

fn write_line(out: &mut String, s: &SampleSnapshot, width: usize) -> fmt::Result {
    let value = match s.value {
        Value::Counter { value }
        | Value::Gauge {
            value, hex: false, ..
        }
        | Value::Callback { value, hex: false } => value.to_string(),
        Value::Gauge {
            value,
            bits,
            hex: true,
        } => format!("{value:#0w$x}", w = usize::from(bits / 4) + 2),
        Value::Callback { value, hex: true } => format!("{value:#x}"),
        Value::Bool { value } => value.to_string(),
        Value::Ratio { a, b } => format!("{a}:{b}"),
        Value::Profile {
            periods, total_ns, ..
        } => total_ns.checked_div(periods).unwrap_or(0).to_string(),
    };
    write!(out, "{:<width$} {value:>VALUE_WIDTH$} {}", s.name, s.unit)?;
    if let Value::Profile {
        periods,
        total_ns,
        min_ns,
        max_ns,
    } = s.value
    {
        let min = if periods == 0 { 0 } else { min_ns };
        write!(
            out,
            " ({total_ns:>14} ns, {periods:>10} times, max {max_ns:>10}, min {min:>10})"
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{Registry, Unit};

    #[test]
    fn formats_each_type() {
        let reg = Registry::new();
        reg.counter("/c", Unit::Count, "a counter").unwrap().add(5);
        reg.sample("/g", Unit::None, "hex gauge")
            .hex()
            .gauge::<u16>()
            .unwrap()
            .set(0xab);
        reg.flag("/f", "flag").unwrap().set(true);
        reg.ratio("/r", Unit::GoodBad, "ratio").unwrap().set(3, 1);
        let p = reg.profile("/p", "profile").unwrap();
        p.add_ns(100);
        p.add_ns(300);
        reg.profile("/q", "idle").unwrap();
        let text = reg.snapshot("").to_text(true);
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[0], ["/c", "5", "count", "-", "a", "counter"]);
        assert_eq!(lines[1], ["/f", "true", "-", "flag"]);
        assert_eq!(lines[2], ["/g", "0x00ab", "-", "hex", "gauge"]);
        assert_eq!(
            lines[3],
            [
                "/p", "200", "ns/call", "(", "400", "ns,", "2", "times,", "max", "300,", "min",
                "100)", "-", "profile"
            ]
        );
        assert_eq!(
            lines[4],
            [
                "/q", "0", "ns/call", "(", "0", "ns,", "0", "times,", "max", "0,", "min", "0)",
                "-", "idle"
            ]
        );
        assert_eq!(lines[5], ["/r", "3:1", "good:bad", "-", "ratio"]);
        // Values are right-aligned in one column after the padded names.
        for line in text.lines() {
            let b = line.as_bytes();
            assert_ne!(b[32 + 12], b' ', "{line}");
            assert_eq!(b[32 + 13], b' ', "{line}");
        }
    }
}
