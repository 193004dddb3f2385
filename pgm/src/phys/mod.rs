//! The guest-physical map: ranges, pages and physical access handlers.
//!
//! [`PhysMap`] owns the guest-physical address space the way VirtualBox's
//! PGM does: RAM, ROM (with shadow RAM and protection modes), MMIO (backed by
//! handlers), MMIO2 (device-owned RAM) and unassigned space, with a packed
//! descriptor per 4 KiB page and a table of physical access handlers.
//!
//! How a VMM uses it:
//! - build the map: [`PcLayout::apply`] or [`PhysMap::add_ram`],
//!   [`PhysMap::add_rom`], [`PhysMap::map_mmio`] (after
//!   [`PhysMap::register_handler_type`]), [`PhysMap::register_mmio2`] +
//!   [`PhysMap::map_mmio2`];
//! - register the KVM slots of [`PhysMap::kvm_slots`] (ROM and pages under
//!   WRITE handlers read-only, pages under ALL handlers and MMIO unmapped);
//!   when [`SlotSet::generation`] moves, apply [`SlotSet::changes_from`];
//! - hand every MMIO exit to [`PhysMap::mmio_exit`];
//! - devices and the VMM access memory with [`PhysMap::read`] /
//!   [`PhysMap::write`] (handlers, ROM protection, A20, 0xFF for unassigned
//!   space) or through the `vm-memory` view of [`PhysMap::guest_memory`];
//! - share the map as a [`SharedPhysMap`] and register `register_stats`
//!   (feature `stats`), `register_info` (feature `info`) and the saved-state
//!   unit `PgmUnit` (feature `saved-state`).
//!
//! The A20 gate ([`PhysMap::set_a20`]) masks address bit 20 for accesses
//! through `pgm`, and the KVM slots alias the 64 KiB at 1 MiB onto low
//! memory while it is closed (see [`A20_ALIAS_START`]).

mod a20;
mod access;
mod dirty;
mod dump;
mod error;
mod handler;
mod host;
mod layout;
mod live;
mod map;
mod observe;
mod page;
mod range;
mod range_index;
mod report;
mod rom_patch;
mod rom_window;
#[cfg(feature = "saved-state")]
mod saved;
mod sharing;
mod slots;
#[cfg(test)]
mod testing;
mod view;
mod write_bitmap;
mod zero;

pub use a20::{A20_ALIAS_SIZE, A20_ALIAS_START, A20State};
pub use dirty::DirtyLog;
pub use dump::DumpReport;
pub use error::PhysError;
pub use handler::{
    DEFAULT_MAX_HANDLERS, HandlerAccess, HandlerAction, HandlerError, HandlerFn, HandlerKind,
    HandlerRange, HandlerTable, HandlerType, HandlerTypeId, IntegrityError, MAX_MAX_HANDLERS,
    MIN_MAX_HANDLERS,
};
pub use host::{HOST_PAGE_SIZE, HostMemory, HostMemoryError, MmapHostMemory};
pub use layout::{FOUR_GIB, HIGH_RAM_START, LOW_RAM_END, PcLayout};
pub use live::{DIRTY_HISTORY, LiveVote, LiveVoter};
pub use map::{MAX_GUEST_PHYS, PhysConfig, PhysMap};
pub use observe::SharedPhysMap;
#[cfg(feature = "info")]
pub use observe::register_info;
#[cfg(feature = "stats")]
pub use observe::register_stats;
pub use page::{
    PAGE_OFFSET_MASK, PAGE_SHIFT, PAGE_SIZE, PageHandlerState, PageInfo, PageSlot, PageState,
    PageType,
};
pub use range::{Mmio2Id, RangeId, RangeInfo, RangeKind, RomProtection};
pub use report::PageStats;
pub use rom_window::RomWindow;
#[cfg(feature = "saved-state")]
pub use saved::{
    MIN_RUN_PAGES, PgmUnit, REC_BALLOONED, REC_END, REC_NEXT, REC_RAW, REC_ROM_PROT, REC_RUN,
    REC_SHADOW, REC_ZERO, REC_ZERO_RUN,
};
pub use sharing::SharingSync;
pub use slots::{KvmSlot, SlotChanges, SlotSet};
pub use write_bitmap::{TrackedGuestRegion, TrackedMemory, TrackedRegion, WriteBitmap};
pub use zero::ZeroScanReport;
