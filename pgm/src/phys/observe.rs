//! Statistics under `/PGM/...` in the `stam` registry (feature `stats`) and
//! the `phys` and `handlers` info handlers in the `dbgf` registry (feature
//! `info`).

use std::sync::Arc;

use parking_lot::RwLock;

use super::map::PhysMap;

#[cfg(feature = "info")]
mod info;
#[cfg(feature = "stats")]
mod stats;

#[cfg(feature = "info")]
pub use info::register_info;
#[cfg(feature = "stats")]
pub(crate) use stats::AccessCounters;
#[cfg(feature = "stats")]
pub use stats::register_stats;

/// A map shared between vCPU threads, devices and the VMM.
pub type SharedPhysMap = Arc<RwLock<PhysMap>>;

/// A map with RAM, a write-ignoring ROM and one MMIO range with a handler.
#[cfg(all(test, any(feature = "stats", feature = "info")))]
fn test_map() -> SharedPhysMap {
    use crate::phys::{HandlerAction, HandlerKind, RomProtection};
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
        let t = m.register_handler_type(HandlerKind::Mmio, "dev", |_| Ok(HandlerAction::Handled));
        m.map_mmio(0x1000_0000, 0x1000, t, 0, "dev").unwrap();
    }
    map
}
