//! The reads every fuzz target makes of its stream besides loading it into
//! its own units: the verification walk and random access through the
//! directory. Results are dropped: only a panic, a hang or an unbounded
//! allocation is a finding.

use ssm::StreamReader;

/// The verification walk (`ssm::inspect_stream`) over `data`.
pub fn inspect(data: &[u8]) {
    if let Ok(r) = StreamReader::from_slice(data) {
        let _ = ssm::inspect_stream(r);
    }
}

/// Reads `data`'s directory and every unit it lists (up to 64) by seeking.
pub fn random_access(data: &[u8]) {
    let Ok(mut r) = StreamReader::new(std::io::Cursor::new(data), true) else {
        return;
    };
    let Ok(dir) = r.directory() else {
        return;
    };
    for e in dir.iter().take(64) {
        if r.seek_unit(e).is_ok() {
            let _ = r.unit_reader().skip_to_end_of_unit();
            let _ = r.finish_unit();
        }
    }
}
