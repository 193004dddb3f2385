//! VirtualBox's XML statistics snapshot form:
//! `<Statistics>` holding `<Counter c=...>`, `<Profile cPeriods=...>`, `<U32 val=...>`, ...

use std::fmt::{self, Write};

use crate::snapshot::{SampleSnapshot, Snapshot, Value};

impl Snapshot {
    /// Writes the snapshot as VirtualBox's XML statistics form. Each sample is
    /// one element named for its type (`Counter`, `Profile`, `U8`..`U64`,
    /// `X8`..`X64` for hex gauges, `BOOL`, `Ratio32`, `Callback`; resettable
    /// gauges, booleans and ratios add `_Reset`), with its value attributes,
    /// then `unit`, `name` and, with `descriptions`, `desc`. Profile ticks are
    /// nanoseconds.
    ///
    /// ```
    /// let reg = stam::Registry::new();
    /// reg.counter("/GMM/cChunks", stam::Unit::Count, "Chunks")?.add(5);
    /// let xml = reg.snapshot("").to_xml(false);
    /// assert!(xml.contains(r#"<Counter c="5" unit="count" name="/GMM/cChunks"/>"#));
    /// # Ok::<(), stam::Error>(())
    /// ```
    pub fn write_xml(&self, out: &mut dyn Write, descriptions: bool) -> fmt::Result {
        writeln!(
            out,
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>"#
        )?;
        writeln!(out, "<Statistics>")?;
        for s in &self.samples {
            write_element(out, s, descriptions)?;
        }
        writeln!(out, "</Statistics>")
    }

    /// [`write_xml`](Snapshot::write_xml) into a new `String`.
    pub fn to_xml(&self, descriptions: bool) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = self.write_xml(&mut s, descriptions);
        s
    }
}

/// Escapes text for a double-quoted attribute. Characters XML 1.0 cannot
/// carry at all become U+FFFD.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => {
                // Escaped so that attribute-value normalisation keeps them.
                let _ = write!(out, "&#x{:X};", u32::from(c));
            }
            c if c.is_control() && c < ' ' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn write_element(out: &mut dyn Write, s: &SampleSnapshot, descriptions: bool) -> fmt::Result {
    let reset = if s.resettable { "_Reset" } else { "" };
    match s.value {
        Value::Counter { value } => write!(out, r#"<Counter c="{value}""#)?,
        Value::Profile {
            periods,
            total_ns,
            min_ns,
            max_ns,
        } => write!(
            out,
            r#"<Profile cPeriods="{periods}" cTicks="{total_ns}" cTicksMin="{min_ns}" cTicksMax="{max_ns}""#
        )?,
        Value::Gauge {
            value,
            bits,
            hex: false,
        } => write!(out, r#"<U{bits}{reset} val="{value}""#)?,
        Value::Gauge {
            value,
            bits,
            hex: true,
        } => {
            let digits = usize::from(bits / 4);
            write!(
                out,
                r#"<X{bits}{reset} val="{value:#0w$x}""#,
                w = digits + 2
            )?
        }
        Value::Bool { value } => write!(out, r#"<BOOL{reset} val="{value}""#)?,
        Value::Ratio { a, b } => write!(out, r#"<Ratio32{reset} u32A="{a}" u32B="{b}""#)?,
        Value::Callback { value, hex } => {
            if hex {
                write!(out, r#"<Callback val="{value:#x}""#)?
            } else {
                write!(out, r#"<Callback val="{value}""#)?
            }
        }
    }
    write!(
        out,
        r#" unit="{}" name="{}""#,
        escape(s.unit.as_str()),
        escape(&s.name)
    )?;
    if descriptions {
        write!(out, r#" desc="{}""#, escape(&s.description))?;
    }
    writeln!(out, "/>")
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_markup_and_controls() {
        assert_eq!(escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(escape("x\ny\u{1}"), "x&#xA;y\u{FFFD}");
    }
}
