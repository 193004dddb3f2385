//! File and socket streams: atomic replacement, interrupted saves, inspect
//! and verify on files, teleporting over TCP.

mod common;

use std::io::Write;
use std::path::PathBuf;

use common::{Op, ScriptUnit, fresh, manager, page, sample_units};
use ssm::{AtomicFile, Error, SaveOptions, StreamReader};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ssm-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A sink that accepts `left` bytes, then fails like a full disk or a
/// killed writer.
struct FailAfter<W> {
    inner: W,
    left: usize,
}

impl<W: Write> Write for FailAfter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("device gone"));
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        self.inner.write(&buf[..n])
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn big_units() -> Vec<ScriptUnit> {
    let ops = (0..64).map(|i| Op::Page(page((i % 3) as u8, i))).collect();
    vec![
        ScriptUnit::new("ram", 0, ops),
        ScriptUnit::new("cpu", 0, vec![Op::U64(7)]),
    ]
}

#[test]
fn file_round_trip_inspect_and_verify() {
    let dir = TempDir::new("file");
    let path = dir.0.join("vm.sav");
    let units = sample_units();
    let mut opts = SaveOptions::default();
    opts.compress = true;
    manager(&units)
        .save_live(
            AtomicFile::create(&path).map(Box::new).unwrap(),
            &opts,
            || Ok(()),
        )
        .unwrap();
    // An uncommitted AtomicFile never shows up under the final name.
    assert!(!path.exists());

    manager(&units).save_to_file(&path, &opts).unwrap();
    let loaded = fresh(&units);
    manager(&loaded).load_from_file(&path).unwrap();
    for (u, l) in units.iter().zip(&loaded) {
        assert_eq!(l.loaded(), u.expected(0));
    }

    let report = ssm::inspect(&path).unwrap();
    let text = report.to_string();
    for name in ["cpum", "pgm", "serial", "final", "ratio"] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["units"].as_array().unwrap().len(), 3);
    assert_eq!(json["units"][1]["records"]["zero_pages"], 2);
    assert_eq!(json["header"]["format_version"], ssm::FORMAT_VERSION);

    let summary = ssm::verify(&path).unwrap();
    assert_eq!(summary.units, 3);

    // Damage one byte of the second unit: verify names the unit and offset.
    let mut bytes = std::fs::read(&path).unwrap();
    let pgm = &report.units[1];
    let at = (pgm.offset + pgm.stored_bytes / 2) as usize;
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let err = ssm::verify(&path).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("'pgm'#0"), "{msg}");
    assert!(msg.contains(&format!("offset {}", pgm.offset)), "{msg}");
    assert!(manager(&fresh(&units)).load_from_file(&path).is_err());
}

#[test]
fn a_save_killed_half_way_leaves_the_previous_file_intact() {
    let dir = TempDir::new("kill");
    let path = dir.0.join("vm.sav");
    let units = big_units();
    manager(&units)
        .save_to_file(&path, &SaveOptions::default())
        .unwrap();
    let before = std::fs::read(&path).unwrap();

    // The writer fails half way: the save errors, the temporary is removed.
    let mut changed = big_units();
    changed[1].ops = vec![Op::U64(8)];
    let mut f = AtomicFile::create(&path).unwrap();
    let temp = f.temp_path().to_path_buf();
    let sink = FailAfter {
        inner: &mut f,
        left: before.len() / 2,
    };
    let e = manager(&changed).save(sink, &SaveOptions::default());
    assert!(matches!(e, Err(Error::Io(_))), "{e:?}");
    drop(f);
    assert!(!temp.exists());
    assert_eq!(std::fs::read(&path).unwrap(), before);

    // A process killed mid-save never runs Drop: the previous file is still
    // whole and loads; the partial temporary is not a valid state.
    let mut f = AtomicFile::create(&path).unwrap();
    let temp = f.temp_path().to_path_buf();
    let sink = FailAfter {
        inner: &mut f,
        left: before.len() / 2,
    };
    assert!(
        manager(&changed)
            .save(sink, &SaveOptions::default())
            .is_err()
    );
    f.flush().unwrap();
    std::mem::forget(f);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let loaded = fresh(&units);
    manager(&loaded).load_from_file(&path).unwrap();
    assert_eq!(loaded[1].loaded(), units[1].expected(0));
    assert!(ssm::verify(&temp).is_err());
}

#[test]
fn teleport_over_tcp() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let units = big_units();
    let sender_units = units.clone();
    let sender = std::thread::spawn(move || {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        let mut opts = SaveOptions::default();
        opts.compress = true;
        manager(&sender_units)
            .save_live(std::io::BufWriter::new(stream), &opts, || Ok(()))
            .unwrap()
    });
    let (stream, _) = listener.accept().unwrap();
    let loaded = fresh(&units);
    let stats = manager(&loaded)
        .load(StreamReader::buffered(stream, false).unwrap())
        .unwrap();
    let sent = sender.join().unwrap();
    assert_eq!(stats.bytes, sent.bytes);
    for (u, l) in units.iter().zip(&loaded) {
        assert_eq!(l.loaded(), u.expected(0));
    }
}
