//! The guest-physical map: ranges, pages and physical access handlers.
//!
//! [`PhysMap`] owns the guest-physical address space the way VirtualBox's
//! PGM does: RAM, ROM (with shadow RAM and protection modes), MMIO (backed by
//! handlers), MMIO2 (device-owned RAM) and unassigned space, with a packed
//! descriptor per 4 KiB page and a table of physical access handlers. It
//! tells the VMM which KVM memory slots to register ([`PhysMap::kvm_slots`])
//! and handles the accesses KVM cannot satisfy ([`PhysMap::mmio_exit`]).

mod access;
mod dirty;
mod dump;
mod error;
mod handler;
mod host;
mod layout;
mod live;
mod map;
mod page;
mod range;
mod report;
mod saved;
mod slots;
mod view;
mod zero;

pub use dirty::DirtyLog;
pub use dump::DumpReport;
pub use error::PhysError;
pub use handler::{
    DEFAULT_MAX_HANDLERS, HandlerAction, HandlerError, HandlerFn, HandlerKind, HandlerRange,
    HandlerTable, HandlerType, HandlerTypeId, IntegrityError, MAX_MAX_HANDLERS, MIN_MAX_HANDLERS,
    PhysAccess,
};
pub use host::{HOST_PAGE_SIZE, HostMemory, HostMemoryError, MmapHostMemory};
pub use layout::{FOUR_GIB, HIGH_RAM_START, LOW_RAM_END, PcLayout};
pub use live::{DIRTY_HISTORY, LiveVote, LiveVoter};
pub use map::{PhysConfig, PhysMap};
pub use page::{
    PAGE_OFFSET_MASK, PAGE_SHIFT, PAGE_SIZE, PageHandlerState, PageInfo, PageSlot, PageState,
    PageType,
};
pub use range::{Mmio2Id, RangeId, RangeInfo, RangeKind, RomProtection};
pub use report::PageStats;
pub use saved::{
    PgmUnit, REC_BALLOONED, REC_END, REC_NEXT, REC_RAW, REC_ROM_PROT, REC_SHADOW, REC_ZERO,
};
pub use slots::{KvmSlot, SlotChanges, SlotSet};
pub use zero::ZeroScanReport;
