//! `vmm state inspect` / `vmm state verify`: walk a saved state, check every
//! CRC, and describe what it holds.

use std::fmt;
use std::io::BufRead;
use std::path::Path;

use crate::error::Result;
use crate::format::{FLAG_COMPRESSED, FLAG_LIVE, Header, PASS_FINAL};
use crate::reader::{RecordStats, StreamReader, pass_name};

/// One unit record (one pass of a unit) in a saved state.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UnitReport {
    /// Unit name.
    pub name: String,
    /// Unit instance.
    pub instance: u32,
    /// Version of the stored data.
    pub version: u32,
    /// Pass number (`u32::MAX` for the final pass).
    pub pass: u32,
    /// Whether this is the final pass.
    pub is_final: bool,
    /// Offset of the unit header.
    pub offset: u64,
    /// Bytes the unit takes in the stream, header and terminator included.
    pub stored_bytes: u64,
    /// Bytes the unit's data expands to.
    pub logical_bytes: u64,
    /// Record counters.
    pub records: RecordStats,
}

impl UnitReport {
    /// Logical bytes per stored byte (1.0 for an empty unit).
    pub fn compression_ratio(&self) -> f64 {
        ratio(self.logical_bytes, self.stored_bytes)
    }
}

fn ratio(logical: u64, stored: u64) -> f64 {
    if stored == 0 || logical == 0 {
        1.0
    } else {
        logical as f64 / stored as f64
    }
}

/// What a saved state holds; every CRC in it has been checked.
///
/// `Display` prints a table; `serde::Serialize` gives JSON.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// The file header.
    pub header: Header,
    /// Total stream length in bytes.
    pub stream_bytes: u64,
    /// Unit records in stream order.
    pub units: Vec<UnitReport>,
    /// Logical bytes of all units' data.
    pub logical_bytes: u64,
    /// Overall logical bytes per stream byte.
    pub compression_ratio: f64,
}

/// Walks a whole stream, verifying every structure, and describes it.
pub fn inspect_stream<R: BufRead>(mut reader: StreamReader<R>) -> Result<Report> {
    let mut units = Vec::new();
    while let Some(info) = reader.next_unit()? {
        reader
            .unit_reader()
            .skip_to_end_of_unit()
            .and_then(|()| reader.finish_unit())
            .map_err(|e| e.in_unit(&info))?;
        let records = reader.record_stats();
        let stored_bytes = reader.units_seen().last().map_or(0, |e| e.stored_len);
        units.push(UnitReport {
            name: info.id.name,
            instance: info.id.instance,
            version: info.version,
            pass: info.pass,
            is_final: info.pass == PASS_FINAL,
            offset: info.offset,
            stored_bytes,
            logical_bytes: records.logical_bytes(),
            records,
        });
    }
    let logical_bytes = units.iter().map(|u| u.logical_bytes).sum();
    let stream_bytes = reader.position();
    Ok(Report {
        header: reader.header().clone(),
        stream_bytes,
        units,
        logical_bytes,
        compression_ratio: ratio(logical_bytes, stream_bytes),
    })
}

/// Reads the saved state at `path`, checking every CRC, and describes it
/// (the library side of `vmm state inspect`).
///
/// ```
/// # fn main() -> ssm::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("ssm-inspect-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// let path = dir.join("vm.sav");
/// let mut m = ssm::Manager::new();
/// m.save_to_file(&path, &ssm::SaveOptions::default())?;
/// let report = ssm::inspect(&path)?;
/// assert!(report.units.is_empty());
/// println!("{report}");
/// ssm::verify(&path)?;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
pub fn inspect(path: &Path) -> Result<Report> {
    let f = std::fs::File::open(path)?;
    inspect_stream(StreamReader::buffered(f, true)?)
}

/// Outcome of a successful [`verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct VerifySummary {
    /// Unit records checked.
    pub units: usize,
    /// Stream bytes checked.
    pub bytes: u64,
}

impl fmt::Display for VerifySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OK: {} unit records, {} bytes, all CRCs valid",
            self.units, self.bytes
        )
    }
}

/// Checks every CRC and structure of the saved state at `path` (the library
/// side of `vmm state verify`). The error names the damaged structure and
/// its offset.
pub fn verify(path: &Path) -> Result<VerifySummary> {
    let r = inspect(path)?;
    Ok(VerifySummary {
        units: r.units.len(),
        bytes: r.stream_bytes,
    })
}

fn flag_names(flags: u32) -> String {
    let mut v = Vec::new();
    if flags & FLAG_LIVE != 0 {
        v.push("live");
    }
    if flags & FLAG_COMPRESSED != 0 {
        v.push("compressed");
    }
    if v.is_empty() {
        "none".into()
    } else {
        v.join(",")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.header;
        writeln!(
            f,
            "saved state: format v{}, {} bytes, created {} (unix), creator {:?}",
            h.format_version, self.stream_bytes, h.created_unix_secs, h.creator
        )?;
        writeln!(
            f,
            "host: {}, {}-bit, {}-endian, page {} bytes; flags: {}",
            h.host_arch,
            h.host_pointer_bits,
            if h.host_big_endian { "big" } else { "little" },
            h.host_page_size,
            flag_names(h.flags)
        )?;
        writeln!(
            f,
            "{:<24} {:>5} {:>7} {:>5} {:>12} {:>12} {:>12} {:>9} {:>9} {:>9} {:>6}",
            "unit",
            "inst",
            "version",
            "pass",
            "offset",
            "stored",
            "logical",
            "zero-pg",
            "lz4-pg",
            "run-pg",
            "ratio"
        )?;
        for u in &self.units {
            let pass = pass_name(u.pass);
            writeln!(
                f,
                "{:<24} {:>5} {:>7} {:>5} {:>12} {:>12} {:>12} {:>9} {:>9} {:>9} {:>6.2}",
                u.name,
                u.instance,
                u.version,
                pass,
                u.offset,
                u.stored_bytes,
                u.logical_bytes,
                u.records.zero_pages,
                u.records.compressed_pages,
                u.records.run_pages,
                u.compression_ratio()
            )?;
        }
        write!(
            f,
            "{} unit records, {} logical bytes in {} stream bytes (ratio {:.2})",
            self.units.len(),
            self.logical_bytes,
            self.stream_bytes,
            self.compression_ratio
        )
    }
}
