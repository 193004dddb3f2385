//! JSON form of a snapshot (serde).

use crate::snapshot::Snapshot;

impl Snapshot {
    /// The snapshot as pretty-printed JSON: `{"samples": [{"name": ..., "unit": ...,
    /// "description": ..., "visibility": ..., "resettable": ..., "type": ..., <values>}]}`.
    /// [`Snapshot::from_json`] reads it back.
    ///
    /// ```
    /// let reg = stam::Registry::new();
    /// reg.gauge_u64("/PGM/cPages", stam::Unit::Pages, "Pages")?.set(9);
    /// let snap = reg.snapshot("");
    /// let json = snap.to_json().unwrap();
    /// assert!(json.contains("\"type\": \"gauge\""));
    /// assert_eq!(stam::Snapshot::from_json(&json).unwrap(), snap);
    /// # Ok::<(), stam::Error>(())
    /// ```
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// Writes the JSON form to `out`.
    pub fn write_json(&self, out: impl std::io::Write) -> Result<(), serde_json::Error> {
        serde_json::to_writer_pretty(out, self)
    }

    /// Parses the JSON form written by [`to_json`](Snapshot::to_json).
    pub fn from_json(json: &str) -> Result<Snapshot, serde_json::Error> {
        serde_json::from_str(json)
    }
}
