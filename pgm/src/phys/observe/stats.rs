//! `/PGM/...` statistics in a `stam` registry.

use std::sync::Arc;

use super::SharedPhysMap;
use crate::phys::report::PageStats;

/// Counters bumped on the access paths.
#[derive(Debug, Clone)]
pub(crate) struct AccessCounters {
    pub(crate) mmio_exits: stam::Counter,
    pub(crate) handler_calls: stam::Counter,
    pub(crate) unassigned: stam::Counter,
    pub(crate) rom_writes_ignored: stam::Counter,
}

type PageStat = (&'static str, &'static str, fn(&PageStats) -> u64);

const PAGE_STATS: [PageStat; 10] = [
    ("cAllPages", "All tracked guest pages", |s| s.all),
    (
        "cPrivatePages",
        "Pages backed by private host memory",
        |s| s.private,
    ),
    (
        "cZeroPages",
        "Pages in the zero state (no host memory)",
        |s| s.zero,
    ),
    ("cPureMmioPages", "Pages of MMIO ranges", |s| s.mmio),
    ("cMmio2Pages", "Pages of mapped MMIO2 ranges", |s| s.mmio2),
    ("cRomPages", "ROM pages (image and shadow)", |s| s.rom),
    ("cMonitoredPages", "Write-monitored pages", |s| s.monitored),
    (
        "cWrittenToPages",
        "Pages written since monitoring was armed",
        |s| s.written,
    ),
    ("cSharedPages", "Shared pages", |s| s.shared),
    ("cBalloonedPages", "Pages given back by the balloon", |s| {
        s.ballooned
    }),
];

/// Registers the `/PGM/Page/...` page counts (computed on read), the
/// handler count and slot generation, each vCPU's A20 gate changes
/// (`/PGM/CPU<n>/cA20Changes`), and counters for MMIO exits, handler
/// calls, unassigned accesses and ignored ROM writes.
///
/// ```
/// let map = std::sync::Arc::new(parking_lot::RwLock::new(pgm::phys::PhysMap::with_defaults()));
/// map.write().add_ram(0, 0x10000, "ram").unwrap();
/// let reg = stam::Registry::new();
/// pgm::phys::register_stats(&map, &reg).unwrap();
/// assert!(reg.contains("/PGM/Page/cZeroPages"));
/// ```
pub fn register_stats(map: &SharedPhysMap, reg: &stam::Registry) -> Result<(), stam::Error> {
    for (name, desc, get) in PAGE_STATS {
        let m = Arc::downgrade(map);
        reg.callback(
            format!("/PGM/Page/{name}"),
            stam::Unit::Pages,
            desc,
            move || {
                m.upgrade()
                    .map_or(0, |m| get(&m.read_recursive().page_stats()))
            },
        )?;
    }
    let m = Arc::downgrade(map);
    reg.callback(
        "/PGM/Handlers/cRanges",
        stam::Unit::Count,
        "Registered physical access handler ranges",
        move || {
            m.upgrade()
                .map_or(0, |m| m.read_recursive().handlers.len() as u64)
        },
    )?;
    let m = Arc::downgrade(map);
    reg.callback(
        "/PGM/KvmSlots/Generation",
        stam::Unit::Count,
        "Generation of the KVM slot set",
        move || {
            m.upgrade()
                .map_or(0, |m| m.read_recursive().kvm_slots().generation)
        },
    )?;
    let cpus = map.read_recursive().a20_states().len() as u32;
    for cpu in 0..cpus {
        let m = Arc::downgrade(map);
        reg.callback(
            format!("/PGM/CPU{cpu}/cA20Changes"),
            stam::Unit::Occurrences,
            format!("Times the A20 gate of vCPU {cpu} opened or closed"),
            move || {
                m.upgrade().map_or(0, |m| {
                    m.read_recursive().a20_state(cpu).map_or(0, |s| s.changes)
                })
            },
        )?;
    }
    let m = Arc::downgrade(map);
    reg.callback(
        "/PGM/SavedState/cMappedPages",
        stam::Unit::Pages,
        "RAM pages loads mapped from saved-state files instead of copying",
        move || {
            m.upgrade()
                .map_or(0, |m| m.read_recursive().pages_mapped_from_file())
        },
    )?;
    let counters = AccessCounters {
        mmio_exits: reg.counter(
            "/PGM/MmioExits",
            stam::Unit::Occurrences,
            "MMIO exits handed to pgm",
        )?,
        handler_calls: reg.counter(
            "/PGM/Handlers/Calls",
            stam::Unit::Calls,
            "Physical access handler invocations",
        )?,
        unassigned: reg.counter(
            "/PGM/UnassignedAccesses",
            stam::Unit::Occurrences,
            "Accesses to unassigned guest-physical space",
        )?,
        rom_writes_ignored: reg.counter(
            "/PGM/Rom/WritesIgnored",
            stam::Unit::Occurrences,
            "Writes to ROM dropped by the protection mode",
        )?,
    };
    map.write().counters = Some(counters);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_count_accesses() {
        let map = super::super::test_map();
        let reg = stam::Registry::new();
        register_stats(&map, &reg).unwrap();
        assert!(register_stats(&map, &reg).is_err(), "duplicate names");
        {
            let m = map.read();
            let mut b = [0u8; 4];
            m.mmio_exit(0x1000_0000, iom::Data::Read(&mut b)).unwrap();
            m.read(0x2000_0000, &mut b).unwrap();
            m.write(0xf0000, &[5]).unwrap();
        }
        let c = map.read().counters.clone().unwrap();
        assert_eq!(c.mmio_exits.get(), 1);
        assert_eq!(c.handler_calls.get(), 1);
        assert_eq!(c.unassigned.get(), 1);
        assert_eq!(c.rom_writes_ignored.get(), 1);
        assert!(reg.contains("/PGM/Page/cZeroPages"));
    }

    #[test]
    fn a20_changes_are_counted_per_vcpu() {
        let map = super::super::test_map();
        let reg = stam::Registry::new();
        register_stats(&map, &reg).unwrap();
        map.write().set_a20(false);
        map.write().set_a20(true);
        let name = "/PGM/CPU0/cA20Changes";
        match reg.snapshot(name).get(name).map(|s| s.value.clone()) {
            Some(stam::Value::Callback { value, .. }) => assert_eq!(value, 2),
            other => panic!("{name}: {other:?}"),
        }
        assert!(!reg.contains("/PGM/CPU1/cA20Changes"));
    }
}
