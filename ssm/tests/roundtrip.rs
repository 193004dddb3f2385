//! Round trips through memory, random access, typed errors.

mod common;

use common::{Op, ScriptUnit, fresh, manager, page};
use proptest::prelude::*;
use ssm::{Error, Header, Manager, PASS_FINAL, SaveOptions, StreamReader, StreamWriter};

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<u8>().prop_map(Op::U8),
        any::<u16>().prop_map(Op::U16),
        any::<u32>().prop_map(Op::U32),
        any::<u64>().prop_map(Op::U64),
        any::<i8>().prop_map(Op::I8),
        any::<i16>().prop_map(Op::I16),
        any::<i32>().prop_map(Op::I32),
        any::<i64>().prop_map(Op::I64),
        any::<bool>().prop_map(Op::Bool),
        any::<u64>().prop_map(Op::Addr),
        proptest::collection::vec(any::<u8>(), 0..3000).prop_map(Op::Bytes),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Op::Buf),
        ".{0,40}".prop_map(Op::Str),
        (0u8..3, any::<u64>()).prop_map(|(k, s)| Op::Page(page(k, s))),
    ]
}

fn units_strategy() -> impl Strategy<Value = Vec<ScriptUnit>> {
    proptest::collection::vec(
        (
            "[a-z][a-z0-9/_-]{0,47}",
            0u32..3,
            proptest::collection::vec(op_strategy(), 0..12),
            proptest::collection::vec(proptest::collection::vec(op_strategy(), 0..4), 0..3),
        ),
        0..6,
    )
    .prop_map(|v| {
        let mut seen = std::collections::HashSet::new();
        v.into_iter()
            .filter(|(name, inst, _, _)| seen.insert((name.clone(), *inst)))
            .map(|(name, inst, ops, live)| ScriptUnit {
                live,
                ..ScriptUnit::new(&name, inst, ops)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn save_then_load_gives_back_every_value(units in units_strategy(), compress: bool, live: bool) {
        let mut m = manager(&units);
        let mut opts = SaveOptions::default();
        opts.compress = compress;
        let mut bytes = Vec::new();
        if live {
            m.save_live(&mut bytes, &opts, || Ok(())).unwrap();
        } else {
            m.save(&mut bytes, &opts).unwrap();
        }
        let loaded = fresh(&units);
        let mut m2 = manager(&loaded);
        let stats = m2.load(StreamReader::from_slice(&bytes).unwrap()).unwrap();
        prop_assert_eq!(stats.bytes, bytes.len() as u64);
        for (orig, got) in units.iter().zip(&loaded) {
            let passes = if live { common::live_passes(&units) } else { 0 };
            prop_assert_eq!(got.loaded(), orig.expected(passes));
        }
        // The whole stream verifies and inspection agrees on the unit count.
        let report = ssm::inspect_stream(StreamReader::from_slice(&bytes).unwrap()).unwrap();
        prop_assert_eq!(report.stream_bytes, bytes.len() as u64);
        prop_assert_eq!(report.units.len(), stats.units as usize);
    }

    #[test]
    fn random_access_reads_each_final_unit(units in units_strategy()) {
        let mut bytes = Vec::new();
        manager(&units).save(&mut bytes, &SaveOptions::default()).unwrap();
        let mut r = StreamReader::new(std::io::Cursor::new(&bytes[..]), true).unwrap();
        let dir = r.directory().unwrap();
        prop_assert_eq!(dir.len(), units.len());
        // Read them back to front to exercise seeking.
        for (entry, unit) in dir.iter().zip(&units).rev() {
            prop_assert_eq!(&entry.name, &unit.name);
            r.seek_unit(entry).unwrap();
            let mut u = r.unit_reader();
            for op in &unit.ops {
                prop_assert_eq!(&common::get(&mut u, op).unwrap(), op);
            }
            r.finish_unit().unwrap();
        }
    }
}

fn one_unit_stream(ops: &[Op]) -> Vec<u8> {
    let mut bytes = Vec::new();
    manager(&[ScriptUnit::new("dev", 0, ops.to_vec())])
        .save(&mut bytes, &SaveOptions::default())
        .unwrap();
    bytes
}

#[test]
fn a_zero_page_costs_at_most_eight_bytes() {
    let base = one_unit_stream(&[]).len();
    let one = one_unit_stream(&[Op::Page(page(0, 0))]).len();
    assert!(one - base <= 8, "one zero page took {} bytes", one - base);

    // Isolated zero pages between data pages, and between small writes.
    let data: Vec<Op> = (0..64).map(|i| Op::Page(page(1, i))).collect();
    let mixed: Vec<Op> = (0..64)
        .flat_map(|i| [Op::Page(page(1, i)), Op::Page(page(0, 0))])
        .collect();
    let per_page = (one_unit_stream(&mixed).len() - one_unit_stream(&data).len()) / 64;
    assert!(per_page <= 8, "interleaved zero page took {per_page} bytes");

    let small: Vec<Op> = (0..64).map(Op::U32).collect();
    let small_mixed: Vec<Op> = (0..64)
        .flat_map(|i| [Op::U32(i), Op::Page(page(0, 0))])
        .collect();
    let per_page = (one_unit_stream(&small_mixed).len() - one_unit_stream(&small).len()) / 64;
    assert!(
        per_page <= 8,
        "zero page between small writes took {per_page} bytes"
    );
}

#[test]
fn compressible_pages_shrink_and_random_pages_stay_raw() {
    let units = [ScriptUnit::new(
        "ram",
        0,
        (0..32).map(|i| Op::Page(page(2, i))).collect(),
    )];
    let mut opts = SaveOptions::default();
    opts.compress = true;
    let mut bytes = Vec::new();
    let stats = manager(&units).save(&mut bytes, &opts).unwrap();
    assert_eq!(stats.compressed_pages, 32);
    assert!(bytes.len() < 32 * 4096 / 4);

    let units = [ScriptUnit::new(
        "ram",
        0,
        (0..32).map(|i| Op::Page(page(1, i))).collect(),
    )];
    let stats = manager(&units).save(Vec::new(), &opts).unwrap();
    assert_eq!(stats.raw_pages, 32);
    assert_eq!(stats.compressed_pages, 0);
}

fn load_err(units: &[ScriptUnit], bytes: &[u8]) -> Error {
    manager(units)
        .load(StreamReader::from_slice(bytes).unwrap())
        .unwrap_err()
}

#[test]
fn reading_more_or_less_than_written_are_distinct_errors() {
    let bytes = one_unit_stream(&[Op::U32(1), Op::U16(2)]);
    let more = ScriptUnit::new("dev", 0, vec![Op::U32(1), Op::U16(2), Op::U8(0)]);
    match load_err(&[more], &bytes) {
        Error::ReadPastEndOfUnit { unit, pass } => {
            assert_eq!(unit.name, "dev");
            assert_eq!(pass, PASS_FINAL);
        }
        e => panic!("unexpected {e}"),
    }
    let less = ScriptUnit::new("dev", 0, vec![Op::U32(1)]);
    match load_err(&[less], &bytes) {
        Error::UnitNotFullyRead { unit, .. } => assert_eq!(unit.name, "dev"),
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn unknown_missing_and_unsupported_units_are_named() {
    let bytes = one_unit_stream(&[Op::U8(1)]);
    match load_err(&[ScriptUnit::new("other", 0, vec![])], &bytes) {
        Error::UnknownUnit(id) => assert_eq!(id.name, "dev"),
        e => panic!("unexpected {e}"),
    }
    let both = [
        ScriptUnit::new("dev", 0, vec![Op::U8(1)]),
        ScriptUnit::new("extra", 2, vec![]),
    ];
    match load_err(&both, &bytes) {
        Error::MissingUnit(id) => assert_eq!((id.name.as_str(), id.instance), ("extra", 2)),
        e => panic!("unexpected {e}"),
    }
    let mut old = ScriptUnit::new("dev", 0, vec![Op::U8(1)]);
    old.version = 0;
    match load_err(&[old], &bytes) {
        Error::UnsupportedVersion { unit, version, .. } => {
            assert_eq!(unit.name, "dev");
            assert_eq!(version, 1);
        }
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn skip_and_skip_to_end_of_unit() {
    let mut w = StreamWriter::new(Vec::new(), &Header::for_this_host("t", 0)).unwrap();
    let mut u = w.begin_unit("u", 0, 1, PASS_FINAL).unwrap();
    u.put_u32(7).unwrap();
    u.put_page(&page(0, 0)).unwrap();
    u.put_page(&page(1, 5)).unwrap();
    u.put_u64(0x1122).unwrap();
    u.put_bytes(&[3; 5000]).unwrap();
    u.end().unwrap();
    let bytes = w.finish().unwrap();

    let mut r = StreamReader::from_slice(&bytes).unwrap();
    r.next_unit().unwrap().unwrap();
    let mut u = r.unit_reader();
    u.skip(4 + 4096 + 4096).unwrap();
    assert_eq!(u.get_u64().unwrap(), 0x1122);
    u.skip(10).unwrap();
    u.skip_to_end_of_unit().unwrap();
    assert!(matches!(u.get_u8(), Err(Error::ReadPastEndOfUnit { .. })));
    r.finish_unit().unwrap();
    assert!(r.next_unit().unwrap().is_none());
}

#[test]
fn invalid_values_and_registrations_are_errors() {
    let bytes = one_unit_stream(&[Op::U8(2), Op::Buf(vec![1; 100])]);
    let mut r = StreamReader::from_slice(&bytes).unwrap();
    r.next_unit().unwrap();
    let mut u = r.unit_reader();
    assert!(matches!(u.get_bool(), Err(Error::InvalidValue { .. })));
    assert!(matches!(u.get_buf(99), Err(Error::InvalidValue { .. })));

    let mut m = Manager::new();
    m.register(Box::new(ScriptUnit::new("a", 0, vec![])))
        .unwrap();
    assert!(matches!(
        m.register(Box::new(ScriptUnit::new("a", 0, vec![]))),
        Err(Error::DuplicateUnit(_))
    ));
    m.register(Box::new(ScriptUnit::new("a", 1, vec![])))
        .unwrap();
    for bad in ["", "x\n", &"n".repeat(49)] {
        assert!(matches!(
            m.register(Box::new(ScriptUnit::new(bad, 0, vec![]))),
            Err(Error::InvalidUnitName(_))
        ));
    }
    m.register(Box::new(ScriptUnit::new(&"n".repeat(48), 0, vec![])))
        .unwrap();
}

#[test]
fn stream_writer_rejects_misuse() {
    let mut w = StreamWriter::new(Vec::new(), &Header::for_this_host("t", 0)).unwrap();
    assert!(matches!(
        w.begin_unit("bad name\u{7f}", 0, 1, 0),
        Err(Error::InvalidUnitName(_))
    ));
    let bytes = w.finish().unwrap();
    let mut r = StreamReader::from_slice(&bytes).unwrap();
    assert!(r.next_unit().unwrap().is_none());
    assert!(matches!(r.finish_unit(), Err(Error::InvalidState(_))));
}
