//! Guest paging: modes, page-table walks and translation.
//!
//! * [`PagingState`] holds the registers that decide translation (CR0, CR3,
//!   CR4, EFER, A20) and the guest's [`CpuFeatures`] (MAXPHYADDR, PSE-36,
//!   1 GiB pages); [`PagingMode`] names the mode the way VirtualBox does.
//! * [`walk`] and [`translate`] do what the CPU's page walker does for
//!   32-bit (with PSE / PSE-36), PAE, 4-level and 5-level paging, including
//!   reserved bits, R/W with CR0.WP, U/S, NX, SMEP and SMAP, and return the
//!   exact page-fault error code on failure.
//! * [`GuestPaging`] is one vCPU's view: mode tracking, a small software
//!   TLB and reads / writes of guest-virtual memory.
//! * Page tables are read through [`PhysAccess`]; [`FlatMemory`] is a plain
//!   in-memory implementation.
//! * [`info_mode`] and [`info_pgmcr3`] produce the text of the `mode` and
//!   `pgmcr3` info handlers.

mod entry;
mod fault;
mod guest;
mod info;
mod mode;
mod phys_access;
mod state;
mod tlb;
mod walk;

pub use entry::{A, D, G, P, PCD, PS, PWT, RW, US, XD};
pub use fault::{Access, AccessKind, PageFault, Privilege, WalkError, pf_err};
pub use guest::GuestPaging;
pub use info::{InfoError, info_mode, info_pgmcr3};
pub use mode::{HostPaging, HostVendor, ModeTracker, PagingMode, ShadowMode};
pub use phys_access::{FlatMemory, PhysAccess, PhysAccessError};
pub use state::{CpuFeatures, FeatureError, PagingState, cr0, cr4, efer};
pub use tlb::TlbStats;
pub use walk::{PageSize, Translation, WalkEntry, WalkOptions, linear_address, translate, walk};
