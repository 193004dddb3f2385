//! Semantic fuzzing of saved states: the input describes units (what each
//! saves: integers, buffers, strings, pages, page runs) and a few changes
//! to the numbers of the valid stream they save (lengths, counts, sizes,
//! offsets, versions, in headers, records, the directory, the footer, and
//! the length prefixes of buffers in the units' data). Every CRC is made
//! to match again, so each change reaches the reader's checks of the
//! values themselves instead of failing at a CRC. Loading must then give
//! `Ok` or an error: never a panic, a hang or an allocation the data does
//! not back.

#![no_main]

#[path = "semantic/layout.rs"]
mod layout;
#[path = "common/walks.rs"]
mod walks;

use std::io::{Seek, Write};

use layout::{Field, Layout};
use libfuzzer_sys::fuzz_target;
use ssm::{Manager, SaveOptions, StreamReader, Unit, UnitReader, UnitWriter};

/// One put of a unit's save, read back by the matching get.
#[derive(Debug, Clone, Copy)]
enum Op {
    U64(u64),
    Bool(bool),
    Buf(u16),
    Str(u16),
    Page(u8),
    PageRun(u8),
    Bytes(u8),
}

impl Op {
    /// The bytes this op adds to its unit's data (logical offsets).
    fn logical_len(&self) -> u64 {
        match *self {
            Op::U64(_) => 8,
            Op::Bool(_) => 1,
            Op::Buf(n) | Op::Str(n) => 4 + u64::from(n),
            Op::Page(_) => 4096,
            Op::PageRun(n) => 4096 * u64::from(n),
            Op::Bytes(n) => u64::from(n),
        }
    }
}

/// The most a `get_buf` / `get_str` accepts: more than any op writes.
const MAX_BUF: usize = 1 << 16;

/// Reads bytes off the fuzz input; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(std::array::from_fn(|_| self.u8()))
    }
    fn op(&mut self) -> Op {
        let (kind, p) = (self.u8(), self.u8());
        match kind % 7 {
            0 => Op::U64(u64::from(p) * 0x0101_0101),
            1 => Op::Bool(p & 1 == 1),
            2 => Op::Buf(u16::from(p) * 16),
            3 => Op::Str(u16::from(p)),
            4 => Op::Page(p),
            5 => Op::PageRun(p % 4 + 1),
            _ => Op::Bytes(p),
        }
    }
}

/// A unit that saves its ops and loads them back with the matching gets.
struct Replay {
    name: &'static str,
    ops: Vec<Op>,
}

fn page(fill: u8, i: usize) -> [u8; 4096] {
    std::array::from_fn(|j| if fill == 0 { 0 } else { fill ^ (i + j) as u8 })
}

impl Unit for Replay {
    fn name(&self) -> &str {
        self.name
    }
    fn version(&self) -> u32 {
        2
    }
    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        for op in &self.ops {
            match *op {
                Op::U64(v) => w.put_u64(v)?,
                Op::Bool(v) => w.put_bool(v)?,
                Op::Buf(n) => w.put_buf(&vec![0xa5; n.into()])?,
                Op::Str(n) => w.put_str(&"s".repeat(n.into()))?,
                Op::Page(fill) => w.put_page(&page(fill, 0))?,
                Op::PageRun(n) => {
                    let pages: Vec<u8> = (0..n.into()).flat_map(|i| page(0x3c, i)).collect();
                    w.put_page_run(&pages)?
                }
                Op::Bytes(n) => w.put_bytes(&vec![0x5a; n.into()])?,
            }
        }
        Ok(())
    }
    fn load_exec(&mut self, r: &mut UnitReader<'_>, _v: u32, _pass: u32) -> ssm::Result<()> {
        let mut dst = [0u8; 4096];
        for op in &self.ops {
            match *op {
                Op::U64(_) => drop(r.get_u64()?),
                Op::Bool(_) => drop(r.get_bool()?),
                Op::Buf(_) => drop(r.get_buf(MAX_BUF)?),
                Op::Str(_) => drop(r.get_str(MAX_BUF)?),
                Op::Page(_) => r.get_page()?.copy_to(&mut dst),
                Op::PageRun(n) => {
                    if r.get_file_pages(n.into())?.is_none() {
                        for _ in 0..n {
                            r.get_page()?.copy_to(&mut dst);
                        }
                    }
                }
                Op::Bytes(n) => r.get_bytes(&mut dst[..n.into()])?,
            }
        }
        Ok(())
    }
}

const NAMES: [&str; 3] = ["cpum", "pgm", "serial"];

fn manager(units: &[Vec<Op>]) -> Manager {
    let mut m = Manager::new();
    for (name, ops) in NAMES.iter().zip(units) {
        m.register(Box::new(Replay {
            name,
            ops: ops.clone(),
        }))
        .unwrap();
    }
    m
}

/// A new value for a field: edge values and small steps from the old one.
fn mutate(old: u64, width: usize, how: u8, raw: u64) -> u64 {
    let max = if width == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * width)) - 1
    };
    let v = match how % 10 {
        0 => 0,
        1 => 1,
        2 => max,
        3 => max >> 1,
        4 => old.wrapping_add(1),
        5 => old.wrapping_sub(1),
        6 => old.wrapping_mul(2),
        7 => old.wrapping_add(raw % 8192).wrapping_sub(4096),
        8 => old.wrapping_add(4096),
        _ => raw,
    };
    v & max
}

/// Loads `bytes` every way a reader can: verification walk, sequential
/// load, random access through the directory, and from a file (page runs
/// handed out for mapping).
fn load_every_way(units: &[Vec<Op>], bytes: &[u8]) {
    walks::inspect(bytes);
    if let Ok(r) = StreamReader::from_slice(bytes) {
        let _ = manager(units).load(r);
    }
    walks::random_access(bytes);
    FILE.with(|f| {
        let mut f = f.borrow_mut();
        f.set_len(0).unwrap();
        f.rewind().unwrap();
        f.write_all(bytes).unwrap();
        f.rewind().unwrap();
        if let Ok(r) = StreamReader::from_file(f.try_clone().unwrap()) {
            let _ = manager(units).load(r);
        }
    });
}

thread_local! {
    /// One scratch file per fuzzing process, for loads from a file.
    static FILE: std::cell::RefCell<std::fs::File> =
        std::cell::RefCell::new(tempfile_in_tmp());
}

fn tempfile_in_tmp() -> std::fs::File {
    let path = std::env::temp_dir().join(format!("ssm-fuzz-semantic-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    // Unlinked: nothing is left behind, whatever ends the process.
    std::fs::remove_file(&path).unwrap();
    f
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let head = input.u8();
    let compress = head & 0x80 != 0;
    let units: Vec<Vec<Op>> = (0..usize::from(head % 3 + 1))
        .map(|_| {
            let n = input.u8() % 12;
            (0..n).map(|_| input.op()).collect()
        })
        .collect();
    let mut opts = SaveOptions::default();
    opts.compress = compress;
    let mut bytes = Vec::new();
    manager(&units).save(&mut bytes, &opts).unwrap();
    let layout = Layout::of(&bytes).expect("ssm wrote a stream the layout walker cannot follow");
    // The harness itself: the stream as written loads, and its CRCs are
    // the ones the fixer computes.
    manager(&units)
        .load(StreamReader::from_slice(&bytes).unwrap())
        .expect("the stream as written loads");
    let mut fixed = bytes.clone();
    layout.fix_crcs(&mut fixed);
    assert!(fixed == bytes, "the CRC fixer disagrees with the writer");

    // The length prefixes of buffers and strings in the units' data.
    let mut prefixes: Vec<Field> = Vec::new();
    for (unit, ops) in units.iter().enumerate() {
        let mut logical = 0;
        for op in ops {
            if matches!(op, Op::Buf(_) | Op::Str(_)) {
                prefixes.extend(layout.data_field(unit, logical, 4));
            }
            logical += op.logical_len();
        }
    }
    let fields: Vec<Field> = layout.fields.iter().copied().chain(prefixes).collect();
    for _ in 0..input.u8() % 4 + 1 {
        let pick = usize::from(input.u8()) << 8 | usize::from(input.u8());
        let field = fields[pick % fields.len()];
        let (how, raw) = (input.u8(), input.u64());
        let new = mutate(field.read(&bytes), field.width, how, raw);
        field.write(&mut bytes, new);
    }
    layout.fix_crcs(&mut bytes);
    load_every_way(&units, &bytes);
});
