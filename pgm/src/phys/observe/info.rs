//! The `phys` and `handlers` info handlers in a `dbgf` registry.

use std::sync::Arc;

use parking_lot::RwLock;

use super::SharedPhysMap;
use crate::phys::map::PhysMap;

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

    #[test]
    fn info_handlers_print_ranges_and_handlers() {
        let map = super::super::test_map();
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
