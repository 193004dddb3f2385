//! Units and visibility of samples.

use serde::{Deserialize, Serialize};

/// The unit a sample's value is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Unit {
    /// No unit.
    #[serde(rename = "none")]
    None,
    /// Number of calls.
    #[serde(rename = "calls")]
    Calls,
    /// A plain count.
    #[serde(rename = "count")]
    Count,
    /// Bytes.
    #[serde(rename = "bytes")]
    Bytes,
    /// Bytes per call.
    #[serde(rename = "bytes/call")]
    BytesPerCall,
    /// Kilobytes.
    #[serde(rename = "kilobytes")]
    Kilobytes,
    /// Megabytes.
    #[serde(rename = "megabytes")]
    Megabytes,
    /// Pages.
    #[serde(rename = "pages")]
    Pages,
    /// Errors.
    #[serde(rename = "errors")]
    Errors,
    /// Occurrences: how many times something happened (VirtualBox prints
    /// its `STAMUNIT_OCCURENCES` as `times`).
    // `occures`: the name snapshots written before 0.1.0 used.
    #[serde(rename = "times", alias = "occures")]
    Occurrences,
    /// Clock ticks.
    #[serde(rename = "ticks")]
    Ticks,
    /// Clock ticks per call.
    #[serde(rename = "ticks/call")]
    TicksPerCall,
    /// Clock ticks per occurrence.
    #[serde(rename = "ticks/occ")]
    TicksPerOccurrence,
    /// Good versus bad (ratios).
    #[serde(rename = "good:bad")]
    GoodBad,
    /// Nanoseconds.
    #[serde(rename = "ns")]
    Ns,
    /// Nanoseconds per call.
    #[serde(rename = "ns/call")]
    NsPerCall,
    /// Nanoseconds per occurrence.
    #[serde(rename = "ns/occ")]
    NsPerOccurrence,
    /// Percent.
    #[serde(rename = "%")]
    Percent,
    /// Parts per thousand.
    #[serde(rename = "pp1k")]
    PartsPerThousand,
    /// Parts per ten thousand.
    #[serde(rename = "pp10k")]
    PartsPerTenThousand,
    /// Parts per million.
    #[serde(rename = "ppm")]
    PartsPerMillion,
    /// Parts per billion.
    #[serde(rename = "ppb")]
    PartsPerBillion,
}

impl Unit {
    /// Every unit, in declaration order.
    pub const ALL: [Unit; 22] = [
        Unit::None,
        Unit::Calls,
        Unit::Count,
        Unit::Bytes,
        Unit::BytesPerCall,
        Unit::Kilobytes,
        Unit::Megabytes,
        Unit::Pages,
        Unit::Errors,
        Unit::Occurrences,
        Unit::Ticks,
        Unit::TicksPerCall,
        Unit::TicksPerOccurrence,
        Unit::GoodBad,
        Unit::Ns,
        Unit::NsPerCall,
        Unit::NsPerOccurrence,
        Unit::Percent,
        Unit::PartsPerThousand,
        Unit::PartsPerTenThousand,
        Unit::PartsPerMillion,
        Unit::PartsPerBillion,
    ];

    /// The unit's short name as VirtualBox prints it (`"count"`, `"ns/call"`, ...).
    ///
    /// ```
    /// assert_eq!(stam::Unit::NsPerCall.as_str(), "ns/call");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Unit::None => "",
            Unit::Calls => "calls",
            Unit::Count => "count",
            Unit::Bytes => "bytes",
            Unit::BytesPerCall => "bytes/call",
            Unit::Kilobytes => "kilobytes",
            Unit::Megabytes => "megabytes",
            Unit::Pages => "pages",
            Unit::Errors => "errors",
            Unit::Occurrences => "times",
            Unit::Ticks => "ticks",
            Unit::TicksPerCall => "ticks/call",
            Unit::TicksPerOccurrence => "ticks/occ",
            Unit::GoodBad => "good:bad",
            Unit::Ns => "ns",
            Unit::NsPerCall => "ns/call",
            Unit::NsPerOccurrence => "ns/occ",
            Unit::Percent => "%",
            Unit::PartsPerThousand => "pp1k",
            Unit::PartsPerTenThousand => "pp10k",
            Unit::PartsPerMillion => "ppm",
            Unit::PartsPerBillion => "ppb",
        }
    }
}

impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a sample is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Always shown.
    #[default]
    Always,
    /// Shown only once its value is non-zero (a never-used sample is left out).
    Used,
    /// Shown in text and machine output but not in GUIs.
    NotGui,
}

impl Visibility {
    /// The short name used in the XML and text forms.
    pub const fn as_str(self) -> &'static str {
        match self {
            Visibility::Always => "always",
            Visibility::Used => "used",
            Visibility::NotGui => "not-gui",
        }
    }
}

#[cfg(all(test, feature = "json"))]
mod tests {
    use super::*;

    #[test]
    fn serialized_names_are_the_printed_names() {
        for unit in Unit::ALL {
            let json = serde_json::to_string(&unit).unwrap();
            // `None` prints as nothing but needs a name in JSON.
            let printed = if unit == Unit::None {
                "none"
            } else {
                unit.as_str()
            };
            assert_eq!(json, format!("\"{printed}\""), "{unit:?}");
            assert_eq!(serde_json::from_str::<Unit>(&json).unwrap(), unit);
        }
    }

    #[test]
    fn occurrences_print_as_times_and_old_snapshots_still_read() {
        assert_eq!(Unit::Occurrences.to_string(), "times");
        let old: Unit = serde_json::from_str("\"occures\"").unwrap();
        assert_eq!(old, Unit::Occurrences);
    }
}
