//! Fuzz the saved-state reader: any input must give `Ok` or an error,
//! never a panic, a hang or an unbounded allocation.

#![no_main]

#[path = "common/walks.rs"]
mod walks;

use libfuzzer_sys::fuzz_target;
use ssm::{Manager, StreamReader, Unit, UnitReader, UnitWriter};

/// A unit that reads whatever its data asks for: each byte picks the next
/// typed read, so the fuzzer reaches every getter.
struct Greedy(&'static str);

impl Unit for Greedy {
    fn name(&self) -> &str {
        self.0
    }
    fn version(&self) -> u32 {
        3
    }
    fn oldest_loadable_version(&self) -> u32 {
        0
    }
    fn save_exec(&mut self, _w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        Ok(())
    }
    fn load_exec(&mut self, r: &mut UnitReader<'_>, _v: u32, _pass: u32) -> ssm::Result<()> {
        let mut page = [0u8; 4096];
        let mut bytes = [0u8; 100];
        for _ in 0..10_000 {
            match r.get_u8()? % 10 {
                0 => drop(r.get_u64()?),
                1 => drop(r.get_bool()?),
                2 => drop(r.get_buf(1 << 16)?),
                3 => drop(r.get_str(256)?),
                4 => r.get_page()?.copy_to(&mut page),
                5 => r.get_bytes(&mut bytes)?,
                6 => {
                    let n = r.get_u16()?;
                    r.skip(u64::from(n))?
                }
                7 => drop(r.get_guest_addr()?),
                8 => {
                    let max = u64::from(r.get_u8()?);
                    let _ = r.get_file_pages(max)?;
                }
                _ => return r.skip_to_end_of_unit(),
            }
        }
        r.skip_to_end_of_unit()
    }
}

fuzz_target!(|data: &[u8]| {
    // Full verification walk.
    walks::inspect(data);
    // Load through the manager into units that read greedily.
    let mut m = Manager::new();
    for name in ["cpum", "pgm", "serial"] {
        let _ = m.register(Box::new(Greedy(name)));
    }
    if let Ok(r) = StreamReader::from_slice(data) {
        let _ = m.load(r);
    }
    // Random access through the directory.
    walks::random_access(data);
});
