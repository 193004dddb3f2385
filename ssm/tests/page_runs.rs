//! Page runs: pages stored at page-aligned stream offsets, read back page
//! by page from any source or handed out as file pages for mapping.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use proptest::prelude::*;
use ssm::{Error, Header, PASS_FINAL, Page, StreamReader, StreamWriter};

/// One piece of a unit's data.
#[derive(Clone, Debug)]
enum Piece {
    Bytes(Vec<u8>),
    Run(Vec<u8>),
    Zero,
}

fn pages(count: usize, seed: u8) -> Vec<u8> {
    (0..count * 4096)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed | 1)
        .collect()
}

fn write(pieces: &[Piece], flags: u32) -> Vec<u8> {
    let mut w = StreamWriter::new(Vec::new(), &Header::for_this_host("test", flags)).unwrap();
    let mut u = w.begin_unit("ram", 0, 1, PASS_FINAL).unwrap();
    for p in pieces {
        match p {
            Piece::Bytes(b) => u.put_bytes(b).unwrap(),
            Piece::Run(r) => u.put_page_run(r).unwrap(),
            Piece::Zero => u.put_page(&[0; 4096]).unwrap(),
        }
    }
    u.end().unwrap();
    w.finish().unwrap()
}

fn temp_file(bytes: &[u8]) -> File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f
}

/// Reads `pieces` back; runs are mapped (checked against the file's bytes
/// at the offset handed out) when the reader offers it, else read page by
/// page.
/// Returns how many run pages were handed out as file pages; data that
/// differs from `pieces` is an error.
fn read_back<R: std::io::BufRead>(mut r: StreamReader<R>, pieces: &[Piece]) -> ssm::Result<u64> {
    let differs = || Error::callback("data differs");
    let mut mapped = 0;
    r.next_unit()?.ok_or_else(differs)?;
    let mut u = r.unit_reader();
    for p in pieces {
        match p {
            Piece::Bytes(b) => {
                let mut got = vec![0; b.len()];
                u.get_bytes(&mut got)?;
                if &got != b {
                    return Err(differs());
                }
            }
            Piece::Zero => {
                if !u.get_page()?.is_zero() {
                    return Err(differs());
                }
            }
            Piece::Run(data) => {
                let want = (data.len() / 4096) as u64;
                if let Some(fp) = u.get_file_pages(want)? {
                    assert_eq!(fp.pages, want);
                    assert_eq!(fp.offset % 4096, 0);
                    let mut got = vec![0; data.len()];
                    fp.file.read_exact_at(&mut got, fp.offset).unwrap();
                    if &got != data {
                        return Err(differs());
                    }
                    mapped += fp.pages;
                } else {
                    for page in data.chunks(4096) {
                        match u.get_page()? {
                            Page::Data(d) if &d[..] == page => {}
                            _ => return Err(differs()),
                        }
                    }
                }
            }
        }
    }
    r.finish_unit()?;
    match r.next_unit()? {
        None => Ok(mapped),
        Some(_) => Err(differs()),
    }
}

fn run_pages(pieces: &[Piece]) -> u64 {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Run(r) => (r.len() / 4096) as u64,
            _ => 0,
        })
        .sum()
}

fn sample() -> Vec<Piece> {
    vec![
        Piece::Bytes(vec![1, 2, 3]),
        Piece::Run(pages(3, 7)),
        Piece::Zero,
        Piece::Run(pages(1, 9)),
        Piece::Run(pages(2, 11)),
        Piece::Bytes(vec![4; 5000]),
    ]
}

#[test]
fn runs_start_on_page_boundaries_and_read_back_from_memory() {
    let pieces = sample();
    let bytes = write(&pieces, 0);
    let report = ssm::inspect_stream(StreamReader::from_slice(&bytes).unwrap()).unwrap();
    assert_eq!(report.units[0].records.run_pages, 6);
    assert!(report.units[0].records.padding_bytes > 0);
    assert_eq!(
        read_back(StreamReader::from_slice(&bytes).unwrap(), &pieces).unwrap(),
        0
    );
}

#[test]
fn a_file_reader_hands_out_runs_unread_and_still_checks_the_unit() {
    let pieces = sample();
    let bytes = write(&pieces, 0);
    let f = temp_file(&bytes);
    let r = StreamReader::from_file(f.try_clone().unwrap()).unwrap();
    assert_eq!(read_back(r, &pieces).unwrap(), 6);
    // The same file through a plain buffered reader is read, not mapped.
    let r = StreamReader::buffered(temp_file(&bytes), true).unwrap();
    assert_eq!(read_back(r, &pieces).unwrap(), 0);
}

#[test]
fn a_run_longer_than_asked_for_is_read_instead() {
    let bytes = write(&[Piece::Run(pages(4, 1))], 0);
    let mut r = StreamReader::from_file(temp_file(&bytes)).unwrap();
    r.next_unit().unwrap();
    let mut u = r.unit_reader();
    assert!(u.get_file_pages(3).unwrap().is_none());
    assert!(matches!(u.get_page().unwrap(), Page::Data(_)));
    // Partly read: the rest is not handed out either.
    assert!(u.get_file_pages(4).unwrap().is_none());
    u.skip(3 * 4096).unwrap();
    r.finish_unit().unwrap();
}

#[test]
fn compressed_streams_store_run_pages_one_by_one() {
    let mut data = vec![0u8; 2 * 4096];
    data[4096..].fill(0x33);
    let pieces = [Piece::Run(data)];
    let bytes = write(&pieces, ssm::FLAG_COMPRESSED);
    let report = ssm::inspect_stream(StreamReader::from_slice(&bytes).unwrap()).unwrap();
    let rec = report.units[0].records;
    assert_eq!(
        (rec.run_pages, rec.zero_pages, rec.compressed_pages),
        (0, 1, 1)
    );
    let mut r = StreamReader::from_file(temp_file(&bytes)).unwrap();
    r.next_unit().unwrap();
    let mut u = r.unit_reader();
    assert!(u.get_file_pages(2).unwrap().is_none());
    assert!(u.get_page().unwrap().is_zero());
    assert!(matches!(u.get_page().unwrap(), Page::Data(d) if d.iter().all(|&b| b == 0x33)));
    r.finish_unit().unwrap();
}

#[test]
fn bad_runs_are_refused() {
    let mut w = StreamWriter::new(Vec::new(), &Header::for_this_host("t", 0)).unwrap();
    let mut u = w.begin_unit("ram", 0, 1, PASS_FINAL).unwrap();
    assert!(matches!(
        u.put_page_run(&[1; 100]),
        Err(Error::InvalidState(_))
    ));
    assert!(matches!(u.put_page_run(&[]), Err(Error::InvalidState(_))));
}

/// Offset of the (first) page-run record in a stream written by `write`.
fn run_record(bytes: &[u8]) -> usize {
    let data = bytes
        .windows(4096)
        .position(|w| w == &pages(3, 7)[..4096])
        .unwrap();
    assert_eq!(data % 4096, 0);
    let pad_start = (data - 1..data)
        .chain((0..data).rev())
        .find(|&i| bytes[i] != 0)
        .unwrap()
        + 1;
    pad_start - 11
}

fn load_error(bytes: &[u8], from_file: bool) -> Option<Error> {
    let pieces = sample();
    let r = if from_file {
        let f = temp_file(bytes);
        StreamReader::from_file(f.try_clone().unwrap()).and_then(|r| read_back(r, &pieces))
    } else {
        StreamReader::from_slice(bytes).and_then(|r| read_back(r, &pieces))
    };
    r.err()
}

#[test]
fn damaged_run_headers_and_padding_are_errors_on_every_path() {
    let bytes = write(&sample(), 0);
    let at = run_record(&bytes);
    assert_eq!(bytes[at], 0x05);
    let pad = u16::from_le_bytes([bytes[at + 9], bytes[at + 10]]) as usize;
    // Every byte of the record header and padding, and the first and last
    // data bytes (those only on the reading path).
    for pos in at..at + 11 + pad + 1 {
        for from_file in [false, true] {
            let mut bad = bytes.clone();
            bad[pos] ^= 0x41;
            let data = pos >= at + 11 + pad;
            if data && from_file {
                continue;
            }
            assert!(
                load_error(&bad, from_file).is_some(),
                "corruption at {pos} accepted (file: {from_file})"
            );
            assert!(ssm::inspect_stream(StreamReader::from_slice(&bad).unwrap()).is_err());
        }
    }
    // A count of zero or beyond the limit, and a wrong padding length, say so.
    let mut bad = bytes.clone();
    bad[at + 1..at + 5].copy_from_slice(&0u32.to_le_bytes());
    let msg = load_error(&bad, false).unwrap().to_string();
    assert!(msg.contains("page run") && msg.contains("0 pages"), "{msg}");
    let mut bad = bytes.clone();
    bad[at + 9..at + 11].copy_from_slice(&((pad as u16) ^ 1).to_le_bytes());
    let msg = load_error(&bad, true).unwrap().to_string();
    assert!(msg.contains("padding of"), "{msg}");
    let mut bad = bytes.clone();
    bad[at + 11] = 1;
    let msg = load_error(&bad, true).unwrap().to_string();
    assert!(msg.contains("padding is not zero"), "{msg}");
}

#[test]
fn mapped_data_is_checked_by_verify_not_by_the_load() {
    let mut bytes = write(&[Piece::Run(pages(3, 7))], 0);
    let at = run_record(&bytes);
    let pad = u16::from_le_bytes([bytes[at + 9], bytes[at + 10]]) as usize;
    bytes[at + 11 + pad + 100] ^= 0xff;
    // The reading paths see the damage ...
    let mut r = StreamReader::from_slice(&bytes).unwrap();
    r.next_unit().unwrap();
    r.unit_reader().skip(3 * 4096).unwrap();
    assert!(matches!(r.finish_unit(), Err(Error::Crc { .. })));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.sav");
    std::fs::write(&path, &bytes).unwrap();
    let msg = ssm::verify(&path).unwrap_err().to_string();
    assert!(msg.contains("CRC mismatch"), "{msg}");
    // ... the mapping path does not read the pages (that is its point),
    // and checks everything else of the unit.
    let mut r = StreamReader::from_file(File::open(&path).unwrap()).unwrap();
    r.next_unit().unwrap();
    assert_eq!(r.unit_reader().get_file_pages(3).unwrap().unwrap().pages, 3);
    r.finish_unit().unwrap();
    assert!(r.next_unit().unwrap().is_none());
}

#[test]
fn a_run_in_a_version_1_stream_is_malformed() {
    let mut bytes = write(&sample(), 0);
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    let crc = crc32c_of(&bytes[..92]);
    bytes[92..96].copy_from_slice(&crc.to_le_bytes());
    let msg = load_error(&bytes, false).unwrap().to_string();
    assert!(msg.contains("version 1 stream"), "{msg}");
}

/// CRC32C (Castagnoli), bitwise: independent of the library's own.
fn crc32c_of(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 1..300).prop_map(Piece::Bytes),
        (1usize..4, any::<u8>()).prop_map(|(n, s)| Piece::Run(pages(n, s))),
        Just(Piece::Zero),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_mix_of_runs_and_data_round_trips_read_or_mapped(
        pieces in prop::collection::vec(piece(), 0..8),
    ) {
        let bytes = write(&pieces, 0);
        prop_assert_eq!(read_back(StreamReader::from_slice(&bytes).unwrap(), &pieces).unwrap(), 0);
        let f = temp_file(&bytes);
        let r = StreamReader::from_file(f.try_clone().unwrap()).unwrap();
        prop_assert_eq!(read_back(r, &pieces).unwrap(), run_pages(&pieces));
    }
}
