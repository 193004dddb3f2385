//! Shared test helpers: a unit that saves a script of typed values and
//! checks, on load, that it reads the very same values back.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use ssm::{Manager, PASS_FINAL, Unit, UnitReader, UnitWriter};

/// One typed value in a unit's data.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    I8(i8),
    I16(i16),
    I32(i32),
    I64(i64),
    Bool(bool),
    Addr(u64),
    Bytes(Vec<u8>),
    Buf(Vec<u8>),
    Str(String),
    Page(Box<[u8; 4096]>),
}

/// A page filled from `seed`: kind 0 zero, 1 random, 2 compressible.
pub fn page(kind: u8, seed: u64) -> Box<[u8; 4096]> {
    let mut p = Box::new([0u8; 4096]);
    let mut x = seed | 1;
    match kind % 3 {
        0 => {}
        1 => {
            for b in p.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        }
        _ => {
            for (i, b) in p.iter_mut().enumerate() {
                *b = ((i / 64) as u64 ^ seed) as u8;
            }
            p[0] |= 1;
        }
    }
    p
}

pub fn put(w: &mut UnitWriter<'_>, op: &Op) -> ssm::Result<()> {
    match op {
        Op::U8(v) => w.put_u8(*v),
        Op::U16(v) => w.put_u16(*v),
        Op::U32(v) => w.put_u32(*v),
        Op::U64(v) => w.put_u64(*v),
        Op::I8(v) => w.put_i8(*v),
        Op::I16(v) => w.put_i16(*v),
        Op::I32(v) => w.put_i32(*v),
        Op::I64(v) => w.put_i64(*v),
        Op::Bool(v) => w.put_bool(*v),
        Op::Addr(v) => w.put_guest_addr(*v),
        Op::Bytes(v) => w.put_bytes(v),
        Op::Buf(v) => w.put_buf(v),
        Op::Str(v) => w.put_str(v),
        Op::Page(p) => w.put_page(p),
    }
}

/// Reads a value shaped like `like` (same type, same length).
pub fn get(r: &mut UnitReader<'_>, like: &Op) -> ssm::Result<Op> {
    Ok(match like {
        Op::U8(_) => Op::U8(r.get_u8()?),
        Op::U16(_) => Op::U16(r.get_u16()?),
        Op::U32(_) => Op::U32(r.get_u32()?),
        Op::U64(_) => Op::U64(r.get_u64()?),
        Op::I8(_) => Op::I8(r.get_i8()?),
        Op::I16(_) => Op::I16(r.get_i16()?),
        Op::I32(_) => Op::I32(r.get_i32()?),
        Op::I64(_) => Op::I64(r.get_i64()?),
        Op::Bool(_) => Op::Bool(r.get_bool()?),
        Op::Addr(_) => Op::Addr(r.get_guest_addr()?),
        Op::Bytes(v) => {
            let mut b = vec![0; v.len()];
            r.get_bytes(&mut b)?;
            Op::Bytes(b)
        }
        Op::Buf(_) => Op::Buf(r.get_buf(1 << 20)?),
        Op::Str(_) => Op::Str(r.get_str(1 << 20)?),
        Op::Page(_) => {
            let mut p = Box::new([0u8; 4096]);
            r.get_page()?.copy_to(&mut p);
            Op::Page(p)
        }
    })
}

/// What a [`ScriptUnit`] read back: (pass, values) per load_exec call.
pub type Loaded = Arc<Mutex<Vec<(u32, Vec<Op>)>>>;

/// Saves `live[pass]` in live pass `pass` and `ops` in the final pass; on
/// load, reads values shaped like the same script and records them.
#[derive(Clone, Debug)]
pub struct ScriptUnit {
    pub name: String,
    pub instance: u32,
    pub version: u32,
    pub ops: Vec<Op>,
    pub live: Vec<Vec<Op>>,
    pub loaded: Loaded,
}

impl ScriptUnit {
    pub fn new(name: &str, instance: u32, ops: Vec<Op>) -> Self {
        Self {
            name: name.into(),
            instance,
            version: 1,
            ops,
            live: Vec::new(),
            loaded: Arc::default(),
        }
    }

    fn script(&self, pass: u32) -> &[Op] {
        if pass == PASS_FINAL {
            &self.ops
        } else {
            self.live.get(pass as usize).map_or(&[], |v| v)
        }
    }

    /// The values this unit read, per pass, in load order.
    pub fn loaded(&self) -> Vec<(u32, Vec<Op>)> {
        self.loaded.lock().unwrap().clone()
    }

    /// What a correct load must have produced when the save ran `passes`
    /// live passes (a live unit that is ready keeps getting passes, with no
    /// data, until all live units are ready).
    pub fn expected(&self, passes: usize) -> Vec<(u32, Vec<Op>)> {
        let live_passes = if self.live.is_empty() { 0 } else { passes };
        let mut v: Vec<_> = (0..live_passes)
            .map(|i| (i as u32, self.live.get(i).cloned().unwrap_or_default()))
            .collect();
        v.push((PASS_FINAL, self.ops.clone()));
        v
    }
}

/// Live passes a live save of `units` runs.
pub fn live_passes(units: &[ScriptUnit]) -> usize {
    units.iter().map(|u| u.live.len()).max().unwrap_or(0)
}

impl Unit for ScriptUnit {
    fn name(&self) -> &str {
        &self.name
    }
    fn instance(&self) -> u32 {
        self.instance
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn is_live(&self) -> bool {
        !self.live.is_empty()
    }
    fn live_exec(&mut self, w: &mut UnitWriter<'_>, pass: u32) -> ssm::Result<()> {
        self.script(pass).iter().try_for_each(|op| put(w, op))
    }
    fn live_vote(&mut self, pass: u32) -> ssm::Result<ssm::Vote> {
        Ok(if pass as usize + 1 >= self.live.len() {
            ssm::Vote::Ready
        } else {
            ssm::Vote::AnotherPass
        })
    }
    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        self.ops.iter().try_for_each(|op| put(w, op))
    }
    fn load_exec(&mut self, r: &mut UnitReader<'_>, _version: u32, pass: u32) -> ssm::Result<()> {
        let script = self.script(pass).to_vec();
        let mut got = Vec::with_capacity(script.len());
        for op in &script {
            got.push(get(r, op)?);
        }
        self.loaded.lock().unwrap().push((pass, got));
        Ok(())
    }
}

/// A manager holding clones of `units` (sharing their `loaded` records).
pub fn manager(units: &[ScriptUnit]) -> Manager {
    let mut m = Manager::new();
    for u in units {
        m.register(Box::new(u.clone())).unwrap();
    }
    m
}

/// Fresh copies of `units` with empty load records.
pub fn fresh(units: &[ScriptUnit]) -> Vec<ScriptUnit> {
    units
        .iter()
        .map(|u| ScriptUnit {
            loaded: Arc::default(),
            ..u.clone()
        })
        .collect()
}

/// A small but varied saved state: live passes, all record kinds, compression.
pub fn sample_units() -> Vec<ScriptUnit> {
    let mut cpu = ScriptUnit::new(
        "cpum",
        0,
        vec![
            Op::U64(0xfff0),
            Op::Bool(true),
            Op::Str("GenuineIntel".into()),
            Op::I32(-5),
        ],
    );
    cpu.version = 3;
    let mut ram = ScriptUnit::new(
        "pgm",
        0,
        vec![
            Op::Addr(0x1000),
            Op::Page(page(0, 0)),
            Op::Page(page(0, 0)),
            Op::Page(page(2, 7)),
            Op::Page(page(1, 9)),
            Op::Buf(vec![1, 2, 3]),
        ],
    );
    ram.live = vec![
        vec![Op::U32(2), Op::Page(page(2, 1)), Op::Page(page(0, 0))],
        vec![Op::U32(1), Op::Page(page(2, 3))],
    ];
    let dev = ScriptUnit::new("serial", 1, vec![Op::U8(0x60), Op::Bytes(vec![9; 40])]);
    vec![cpu, ram, dev]
}

/// Saves the sample units live, compressed, into memory.
pub fn sample_stream() -> Vec<u8> {
    let units = sample_units();
    let mut m = manager(&units);
    let mut out = Vec::new();
    let mut opts = ssm::SaveOptions::default();
    opts.compress = true;
    m.save_live(&mut out, &opts, || Ok(())).unwrap();
    out
}
