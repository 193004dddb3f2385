//! The statistics output formats, shared by `vmm run --stats`, the API and
//! `vmm stats`.

use clap::ValueEnum;
use stam::Snapshot;

/// How statistics are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatsFormat {
    /// A table like `VBoxManage debugvm statistics`.
    Text,
    /// JSON (one line).
    Json,
    /// The Prometheus text exposition format.
    Prometheus,
    /// VirtualBox's XML statistics snapshot.
    Xml,
}

impl StatsFormat {
    /// The name used on the command line and in the API's `format` parameter.
    pub fn name(self) -> &'static str {
        match self {
            StatsFormat::Text => "text",
            StatsFormat::Json => "json",
            StatsFormat::Prometheus => "prometheus",
            StatsFormat::Xml => "xml",
        }
    }

    /// Parses a format name (`text`, `json`, `prometheus`, `xml`).
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Text, Self::Json, Self::Prometheus, Self::Xml]
            .into_iter()
            .find(|f| f.name() == name)
    }

    /// The HTTP content type of statistics in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            StatsFormat::Text => "text/plain; charset=utf-8",
            StatsFormat::Json => "application/json",
            StatsFormat::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            StatsFormat::Xml => "application/xml",
        }
    }

    /// Renders `snapshot` in this format.
    pub fn render(self, snapshot: &Snapshot) -> anyhow::Result<String> {
        let mut out = String::new();
        match self {
            StatsFormat::Text => snapshot.write_text(&mut out, true)?,
            // One line, as every `--json` of the CLI prints.
            StatsFormat::Json => out = serde_json::to_string(snapshot)?,
            StatsFormat::Prometheus => snapshot.write_prometheus(&mut out)?,
            StatsFormat::Xml => snapshot.write_xml(&mut out, true)?,
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_rejected() {
        for f in [
            StatsFormat::Text,
            StatsFormat::Json,
            StatsFormat::Prometheus,
            StatsFormat::Xml,
        ] {
            assert_eq!(StatsFormat::parse(f.name()), Some(f));
        }
        assert_eq!(StatsFormat::parse("yaml"), None);
    }

    #[test]
    fn every_format_renders_a_counter() {
        let reg = stam::Registry::new();
        let c = reg
            .counter("/Test/Ticks", stam::Unit::Count, "ticks")
            .unwrap();
        c.add(42);
        let snapshot = reg.snapshot("/Test/*");
        for f in [
            StatsFormat::Text,
            StatsFormat::Json,
            StatsFormat::Prometheus,
            StatsFormat::Xml,
        ] {
            let out = f.render(&snapshot).unwrap();
            assert!(out.contains("42"), "{f:?}: {out}");
        }
    }
}
