//! The BIOS-style e820 memory map a Linux guest reads from its zero page.
//!
//! The map is computed from the VM's RAM ranges (as the memory manager
//! reports them) and the ranges the platform reserves (boot tables, the
//! legacy VGA/ROM hole, the 32-bit MMIO hole with the firmware ROM and the
//! APICs). Reserved ranges win over RAM: RAM under a reserved range is left
//! out of the map's RAM entries.

use super::error::{Error, Result};

/// The kind of an e820 entry, with the codes the BIOS interface uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum E820Kind {
    /// Usable RAM (type 1).
    Ram,
    /// Reserved: not RAM the OS may use (type 2).
    Reserved,
}

impl E820Kind {
    /// The numeric type the e820 interface uses.
    pub fn code(self) -> u32 {
        match self {
            E820Kind::Ram => 1,
            E820Kind::Reserved => 2,
        }
    }
}

/// One range of the memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First guest-physical address.
    pub addr: u64,
    /// Length in bytes (never 0).
    pub size: u64,
    /// What the range is.
    pub kind: E820Kind,
}

impl E820Entry {
    /// One past the last address of the entry.
    pub fn end(&self) -> u64 {
        self.addr + self.size
    }
}

/// The most entries the zero page holds.
pub const MAX_ENTRIES: usize = 128;

/// Builds the memory map: RAM ranges minus reserved ranges as RAM entries,
/// and the reserved ranges, sorted by address, with touching entries of the
/// same kind merged. Ranges are `(start, length)` pairs.
///
/// RAM ranges must not overlap each other and no range may wrap around the
/// 64-bit address space; the map must fit in the zero page.
///
/// ```
/// use vmm_core::boot::e820::{build, E820Kind};
///
/// let map = build(&[(0, 0xa_0000), (0x10_0000, 0xf0_0000)], &[(0x9_fc00, 0x400), (0xa_0000, 0x6_0000)])?;
/// let ram: u64 = map.iter().filter(|e| e.kind == E820Kind::Ram).map(|e| e.size).sum();
/// assert_eq!(ram, 0x9_fc00 + 0xf0_0000);
/// assert_eq!(map.len(), 3); // RAM, reserved 0x9fc00..1 MiB, RAM
/// # Ok::<(), vmm_core::boot::Error>(())
/// ```
pub fn build(ram: &[(u64, u64)], reserved: &[(u64, u64)]) -> Result<Vec<E820Entry>> {
    let ram = normalize(ram, "RAM")?;
    for pair in ram.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(Error::Machine(format!(
                "RAM ranges {:#x}..{:#x} and {:#x}..{:#x} overlap",
                pair[0].0, pair[0].1, pair[1].0, pair[1].1
            )));
        }
    }
    let reserved = merge(normalize(reserved, "reserved")?);
    let mut map: Vec<E820Entry> = reserved
        .iter()
        .map(|&(start, end)| entry(start, end, E820Kind::Reserved))
        .collect();
    for &(start, end) in &ram {
        let mut cursor = start;
        for &(r_start, r_end) in &reserved {
            if r_end <= cursor || r_start >= end {
                continue;
            }
            if r_start > cursor {
                map.push(entry(cursor, r_start, E820Kind::Ram));
            }
            cursor = cursor.max(r_end);
        }
        if cursor < end {
            map.push(entry(cursor, end, E820Kind::Ram));
        }
    }
    map.sort_by_key(|e| (e.addr, e.kind));
    let mut merged: Vec<E820Entry> = Vec::with_capacity(map.len());
    for e in map {
        match merged.last_mut() {
            Some(last) if last.kind == e.kind && last.end() == e.addr => last.size += e.size,
            _ => merged.push(e),
        }
    }
    if merged.len() > MAX_ENTRIES {
        return Err(Error::Machine(format!(
            "the memory map has {} entries; the zero page holds {MAX_ENTRIES}",
            merged.len()
        )));
    }
    Ok(merged)
}

/// The total of the map's RAM entries in bytes.
pub fn ram_total(map: &[E820Entry]) -> u64 {
    map.iter()
        .filter(|e| e.kind == E820Kind::Ram)
        .map(|e| e.size)
        .sum()
}

/// Whether `[addr, addr + len)` lies inside one RAM entry of `map`.
pub fn is_ram(map: &[E820Entry], addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|end| {
        map.iter()
            .any(|e| e.kind == E820Kind::Ram && e.addr <= addr && end <= e.end())
    })
}

fn entry(start: u64, end: u64, kind: E820Kind) -> E820Entry {
    E820Entry {
        addr: start,
        size: end - start,
        kind,
    }
}

/// `(start, length)` pairs to sorted, non-empty `(start, end)` pairs.
fn normalize(ranges: &[(u64, u64)], what: &str) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::with_capacity(ranges.len());
    for &(start, len) in ranges {
        let end = start.checked_add(len).ok_or_else(|| {
            Error::Machine(format!(
                "{what} range at {start:#x} of {len:#x} bytes wraps around"
            ))
        })?;
        if len > 0 {
            out.push((start, end));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Merges overlapping or touching sorted `(start, end)` pairs.
fn merge(sorted: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(sorted.len());
    for (start, end) in sorted {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PC_RESERVED: &[(u64, u64)] = &[
        (0x9_fc00, 0x400),
        (0xa_0000, 0x6_0000),
        (0xe000_0000, 0x2000_0000),
    ];

    #[test]
    fn small_pc_map() {
        let map = build(&[(0, 0xa_0000), (0x10_0000, 0x3f0_0000)], PC_RESERVED).unwrap();
        assert_eq!(
            map,
            vec![
                entry(0, 0x9_fc00, E820Kind::Ram),
                entry(0x9_fc00, 0x10_0000, E820Kind::Reserved),
                entry(0x10_0000, 0x400_0000, E820Kind::Ram),
                entry(0xe000_0000, 1 << 32, E820Kind::Reserved),
            ]
        );
        assert_eq!(ram_total(&map), 0x9_fc00 + 0x3f0_0000);
    }

    #[test]
    fn ram_above_4g() {
        let ram = [
            (0, 0xa_0000),
            (0x10_0000, 0xe000_0000 - 0x10_0000),
            (1 << 32, 1 << 30),
        ];
        let map = build(&ram, PC_RESERVED).unwrap();
        assert_eq!(map.len(), 5);
        assert_eq!(map[4], entry(1 << 32, (1 << 32) + (1 << 30), E820Kind::Ram));
        assert!(is_ram(&map, (1 << 32) + 4096, 4096));
        assert!(!is_ram(&map, 0xdfff_f000, 0x2000));
        assert!(!is_ram(&map, 0xa_0000, 1));
    }

    #[test]
    fn reserved_inside_ram_splits_it() {
        let map = build(&[(0, 0x10_0000)], &[(0x1000, 0x1000)]).unwrap();
        assert_eq!(
            map,
            vec![
                entry(0, 0x1000, E820Kind::Ram),
                entry(0x1000, 0x2000, E820Kind::Reserved),
                entry(0x2000, 0x10_0000, E820Kind::Ram),
            ]
        );
    }

    #[test]
    fn overlapping_ram_is_refused() {
        let err = build(&[(0, 0x2000), (0x1000, 0x2000)], &[]).unwrap_err();
        assert!(err.to_string().contains("overlap"), "{err}");
    }

    #[test]
    fn wrapping_range_is_refused() {
        assert!(build(&[(u64::MAX - 10, 100)], &[]).is_err());
        assert!(build(&[(0, 10)], &[(u64::MAX, 2)]).is_err());
    }

    #[test]
    fn too_many_entries_are_refused() {
        let ram: Vec<_> = (0..200u64).map(|i| (i * 0x2000, 0x1000)).collect();
        let err = build(&ram, &[]).unwrap_err();
        assert!(err.to_string().contains("zero page"), "{err}");
    }

    #[test]
    fn type_codes() {
        assert_eq!(E820Kind::Ram.code(), 1);
        assert_eq!(E820Kind::Reserved.code(), 2);
    }

    fn ram_layout() -> impl Strategy<Value = Vec<(u64, u64)>> {
        // Disjoint RAM ranges: gaps and lengths in pages.
        proptest::collection::vec((1u64..64, 1u64..64), 1..8).prop_map(|parts| {
            let mut at = 0;
            parts
                .into_iter()
                .map(|(gap, len)| {
                    let start = at + gap * 4096;
                    at = start + len * 4096;
                    (start, len * 4096)
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn map_is_sorted_disjoint_and_accounts_for_all_ram(
            ram in ram_layout(),
            reserved in proptest::collection::vec(
                (0u64..0x1000, 1u64..0x400).prop_map(|(s, l)| (s * 0x400, l * 0x400)),
                0..6,
            ),
        ) {
            let map = build(&ram, &reserved).unwrap();
            for pair in map.windows(2) {
                prop_assert!(pair[0].end() <= pair[1].addr);
                prop_assert!(pair[0].end() < pair[1].addr || pair[0].kind != pair[1].kind);
            }
            prop_assert!(map.iter().all(|e| e.size > 0));
            // Every RAM KiB not covered by a reserved range is counted once
            // (all ranges here are KiB aligned).
            let covered = |a: u64| reserved.iter().any(|&(s, l)| s <= a && a < s + l);
            let expected: u64 = ram
                .iter()
                .flat_map(|&(s, l)| (s..s + l).step_by(0x400))
                .filter(|&a| !covered(a))
                .count() as u64 * 0x400;
            prop_assert_eq!(ram_total(&map), expected);
            for e in map.iter().filter(|e| e.kind == E820Kind::Ram) {
                prop_assert!(!reserved.iter().any(|&(s, l)| s < e.end() && e.addr < s + l));
                prop_assert!(ram.iter().any(|&(s, l)| s <= e.addr && e.end() <= s + l));
            }
        }
    }
}
