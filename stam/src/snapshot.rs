//! Point-in-time copies of sample values.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::unit::{Unit, Visibility};

/// The value of one sample at snapshot time, by sample type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Value {
    /// A counter.
    Counter {
        /// The count.
        value: u64,
    },
    /// A gauge of `bits` width (8, 16, 32 or 64), shown in hex when `hex`.
    Gauge {
        /// The value.
        value: u64,
        /// Width of the gauge in bits.
        bits: u8,
        /// Displayed in hexadecimal.
        hex: bool,
    },
    /// A boolean.
    Bool {
        /// The value.
        value: bool,
    },
    /// A profile.
    Profile {
        /// Number of periods.
        periods: u64,
        /// Sum of the periods in nanoseconds.
        total_ns: u64,
        /// Shortest period in nanoseconds (`u64::MAX` when there is none).
        min_ns: u64,
        /// Longest period in nanoseconds.
        max_ns: u64,
    },
    /// A ratio `a:b`.
    Ratio {
        /// Part A.
        a: u32,
        /// Part B.
        b: u32,
    },
    /// A value computed on read by a callback.
    Callback {
        /// The value the callback returned.
        value: u64,
        /// Displayed in hexadecimal.
        hex: bool,
    },
}

impl Value {
    /// Whether the value is zero / false / empty (used by [`Visibility::Used`]).
    pub fn is_zero(&self) -> bool {
        match *self {
            Value::Counter { value }
            | Value::Gauge { value, .. }
            | Value::Callback { value, .. } => value == 0,
            Value::Bool { value } => !value,
            Value::Profile { periods, .. } => periods == 0,
            Value::Ratio { a, b } => a == 0 && b == 0,
        }
    }
}

/// One sample in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleSnapshot {
    /// The hierarchical name (`/PGM/Page/cZeroPages`).
    pub name: Arc<str>,
    /// The unit.
    pub unit: Unit,
    /// What the sample measures.
    pub description: Arc<str>,
    /// When it is shown.
    pub visibility: Visibility,
    /// Whether a registry reset clears it.
    pub resettable: bool,
    /// The value.
    #[serde(flatten)]
    pub value: Value,
}

/// Sample values copied out of a [`Registry`](crate::Registry), sorted by name.
///
/// ```
/// let reg = stam::Registry::new();
/// reg.counter("/A/c", stam::Unit::Count, "a counter")?.add(2);
/// let snap = reg.snapshot("/A/*");
/// assert_eq!(snap.samples.len(), 1);
/// assert_eq!(snap.samples[0].value, stam::Value::Counter { value: 2 });
/// # Ok::<(), stam::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The samples, sorted by name.
    pub samples: Vec<SampleSnapshot>,
}

impl Snapshot {
    /// Looks up a sample by exact name.
    pub fn get(&self, name: &str) -> Option<&SampleSnapshot> {
        self.samples
            .binary_search_by(|s| (*s.name).cmp(name))
            .ok()
            .map(|i| &self.samples[i])
    }
}
