//! Page manager (VirtualBox PGM): the guest-physical map, physical access
//! handlers and guest paging.
//!
//! `pgm` owns what a guest sees as physical memory and how the guest's own
//! page tables turn virtual addresses into it. It does not talk to KVM and
//! does not own a VM: the VMM asks it which memory slots to register, hands
//! it the exits KVM could not satisfy, and reads or writes guest memory
//! through it.
//!
//! # Main types
//!
//! - [`phys::PhysMap`]: the guest-physical address space. Ranges of RAM,
//!   ROM (with shadow RAM and four protection modes), MMIO (served by
//!   handlers), MMIO2 (device-owned RAM a device can map and unmap) and
//!   unassigned space; a packed descriptor per 4 KiB page (type, state,
//!   handler state); the A20 gate; a table of physical access handlers
//!   ([`phys::HandlerType`] + [`phys::HandlerRange`]).
//! - [`phys::HostMemory`]: where RAM comes from. [`phys::MmapHostMemory`]
//!   (anonymous `mmap`) is built in, so `pgm` alone is a complete
//!   guest-memory manager; a VMM with a global memory manager (such as the
//!   `gmm` crate) implements the trait over it. `pgm` and `gmm` do not
//!   depend on each other.
//! - [`phys::SlotSet`] / [`phys::KvmSlot`]: the KVM memory slots the map
//!   implies (ROM and pages under write handlers read-only, MMIO and pages
//!   under all-access handlers unmapped), with a generation and a diff.
//! - [`paging`]: guest paging modes and page-table walks (32-bit, PAE,
//!   4- and 5-level) with exact page-fault error codes; [`paging::GuestPaging`]
//!   is one vCPU's view with a small TLB. Walks read guest memory through
//!   [`paging::PhysAccess`], which [`phys::PhysMap`] implements.
//!
//! # How data flows
//!
//! 1. Build the map ([`phys::PcLayout::apply`], [`phys::PhysMap::add_ram`],
//!    [`phys::PhysMap::add_rom`], [`phys::PhysMap::map_mmio`], ...).
//! 2. Register the slots of [`phys::PhysMap::kvm_slots`] with KVM; whenever
//!    [`phys::SlotSet::generation`] moves, apply
//!    [`phys::SlotSet::changes_from`]. Guest accesses to slot-backed memory
//!    never reach `pgm`.
//! 3. Give every MMIO exit (no slot, or a read-only slot written) to
//!    [`phys::PhysMap::mmio_exit`]: it finds the range and the handler
//!    covering the address, calls it, and applies ROM protection, the A20
//!    mask and 0xFF reads from unassigned space.
//! 4. Devices and the VMM use [`phys::PhysMap::read`] /
//!    [`phys::PhysMap::write`] (the same path the guest's exits take) or the
//!    `vm-memory` view of [`phys::PhysMap::guest_memory`] for plain RAM
//!    (its writes are tracked in a [`phys::WriteBitmap`] per region and
//!    reach live saves with KVM's dirty log).
//! 5. Share the map between threads as a [`phys::SharedPhysMap`].
//!
//! # Using it alone
//!
//! ```
//! use pgm::phys::{HandlerAction, HandlerKind, PhysMap};
//!
//! let mut map = PhysMap::with_defaults();
//! map.add_ram(0, 0x10_0000, "RAM")?;
//! // A device register block: reads return 0x42, writes are dropped.
//! let dev = map.register_handler_type(HandlerKind::Mmio, "my device", |acc| {
//!     acc.data.fill_read(0x42);
//!     Ok(HandlerAction::Handled)
//! });
//! map.map_mmio(0xfee0_0000, 0x1000, dev, 0, "my device")?;
//!
//! // RAM is a KVM slot; the MMIO page is not.
//! let slots = map.kvm_slots();
//! assert!(slots.slots.iter().any(|s| s.guest_addr == 0 && !s.read_only));
//! assert!(!slots.slots.iter().any(|s| s.guest_addr == 0xfee0_0000));
//!
//! // An MMIO exit at the device, and a write to RAM through the map.
//! let mut val = [0u8; 4];
//! map.mmio_exit(0xfee0_0010, iom::Data::Read(&mut val))?;
//! assert_eq!(val, [0x42; 4]);
//! map.write(0x1000, b"boot")?;
//! let mut back = [0u8; 4];
//! map.read(0x1000, &mut back)?;
//! assert_eq!(&back, b"boot");
//! # Ok::<(), pgm::PhysError>(())
//! ```
//!
//! # Features
//!
//! All on by default; with `default-features = false` `pgm` depends on no
//! other workspace crate.
//!
//! - `stats`: `/PGM/...` statistics (page counts, MMIO exits, handler
//!   calls, unassigned accesses, ignored ROM writes) in a `stam` registry,
//!   through `phys::register_stats`.
//! - `info`: the `phys` and `handlers` info handlers in a `dbgf` registry,
//!   through `phys::register_info` (without `dbgf`'s debugger).
//! - `saved-state`: the `pgm` unit for an `ssm` manager (`phys::PgmUnit`),
//!   saved in one go or in live passes driven by a [`phys::DirtyLog`].

pub mod paging;
pub mod phys;
mod walker_memory;

pub use phys::{PhysConfig, PhysError, PhysMap, SharedPhysMap};

// The README's example runs as a doctest, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
