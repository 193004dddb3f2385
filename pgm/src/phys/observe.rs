//! Statistics under `/PGM/...` in the `stam` registry and the `phys` and
//! `handlers` info handlers in the `dbgf` registry.

use std::sync::Arc;

use parking_lot::RwLock;

use super::map::PhysMap;
use super::report::PageStats;

/// A map shared between vCPU threads, devices and the VMM.
pub type SharedPhysMap = Arc<RwLock<PhysMap>>;

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
/// handler count and slot generation, and counters for MMIO exits, handler
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

fn locked(map: &std::sync::Weak<RwLock<PhysMap>>) -> Result<SharedPhysMap, dbgf::InfoError> {
    map.upgrade()
        .ok_or_else(|| dbgf::InfoError::Failed("the guest-physical map is gone".into()))
}

/// Registers the `phys` (ranges; `verbose` adds runs of page types and
/// states) and `handlers` info handlers.
///
/// ```
/// let map = std::sync::Arc::new(parking_lot::RwLock::new(pgm::phys::PhysMap::with_defaults()));
/// map.write().add_ram(0, 0x10000, "Low RAM").unwrap();
/// let info = dbgf::InfoRegistry::new();
/// pgm::phys::register_info(&map, &info).unwrap();
/// let mut out = String::new();
/// let call = dbgf::InfoCall { args: "", cpu: None };
/// info.get("phys").unwrap().call(&call, &mut out).unwrap();
/// assert!(out.contains("Low RAM"));
/// ```
pub fn register_info(
    map: &SharedPhysMap,
    info: &dbgf::InfoRegistry,
) -> Result<(), dbgf::InfoError> {
    let m = Arc::downgrade(map);
    info.register(
        "phys",
        "Guest-physical ranges. Args: verbose (adds runs of page types and states)",
        dbgf::InfoFlags::empty(),
        move |call, out| {
            let verbose = match call.args.trim() {
                "" => false,
                "verbose" | "v" => true,
                other => {
                    return Err(dbgf::InfoError::BadArgs(format!(
                        "unknown argument {other:?} (expected: verbose)"
                    )));
                }
            };
            locked(&m)?.read_recursive().write_phys_info(out, verbose)?;
            Ok(())
        },
    )?;
    let m = Arc::downgrade(map);
    info.register(
        "handlers",
        "Physical access handlers.",
        dbgf::InfoFlags::empty(),
        move |_call, out| {
            locked(&m)?.read_recursive().write_handlers_info(out)?;
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phys::{HandlerAction, HandlerKind, RomProtection};

    #[test]
    fn counters_and_info_handlers_work() {
        let map: SharedPhysMap = Arc::new(RwLock::new(PhysMap::with_defaults()));
        {
            let mut m = map.write();
            m.add_ram(0, 0x10000, "ram").unwrap();
            m.add_rom(
                0xf0000,
                0x1000,
                &[1],
                RomProtection::ReadRomWriteIgnore,
                "rom",
            )
            .unwrap();
            let t =
                m.register_handler_type(HandlerKind::Mmio, "dev", |_| Ok(HandlerAction::Handled));
            m.map_mmio(0x1000_0000, 0x1000, t, 0, "dev").unwrap();
        }
        let reg = stam::Registry::new();
        register_stats(&map, &reg).unwrap();
        assert!(register_stats(&map, &reg).is_err(), "duplicate names");
        {
            let m = map.read();
            let mut b = [0u8; 4];
            m.mmio_exit(0x1000_0000, &mut b, false).unwrap();
            m.read(0x2000_0000, &mut b).unwrap();
            m.write(0xf0000, &[5]).unwrap();
        }
        let c = map.read().counters.clone().unwrap();
        assert_eq!(c.mmio_exits.get(), 1);
        assert_eq!(c.handler_calls.get(), 1);
        assert_eq!(c.unassigned.get(), 1);
        assert_eq!(c.rom_writes_ignored.get(), 1);
        assert!(reg.contains("/PGM/Page/cZeroPages"));

        let info = dbgf::InfoRegistry::new();
        register_info(&map, &info).unwrap();
        let mut out = String::new();
        let run = |name: &str, args: &str, out: &mut String| {
            let call = dbgf::InfoCall { args, cpu: None };
            info.get(name).unwrap().call(&call, out)
        };
        run("phys", "verbose", &mut out).unwrap();
        assert!(out.contains("ROM"), "{out}");
        assert!(run("phys", "bogus", &mut String::new()).is_err());
        let mut out = String::new();
        run("handlers", "", &mut out).unwrap();
        assert!(out.contains("dev"), "{out}");
    }
}
