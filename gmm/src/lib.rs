//! Global memory manager (VirtualBox GMM) for a KVM-based VMM, in user space.
//!
//! One [`Gmm`] per process hands host memory to any number of VMs:
//!
//! - Host memory comes in 2 MiB chunks of 512 pages from one sparse memfd;
//!   a [`PageId`] is the chunk id shifted left by 9 plus the page index.
//!   Chunk ids come from a bitmap; each VM keeps a small cache of the chunks
//!   it allocates from. Allocation prefers chunks the VM already uses, then
//!   empty chunks, then partly used chunks of other VMs (only when plenty is
//!   free there), then a new chunk. Freed pages are punched out of the memfd,
//!   so their memory goes back to the host; emptied chunks are recycled.
//! - Each VM registers with a [`Reservation`] (base, shadow, fixed pages).
//!   Allocations beyond it, or beyond the global maximum, fail with an error
//!   for which [`Error::is_out_of_memory`] is true.
//! - Guest RAM lives in [`RamRegion`]s: contiguous host memory (one KVM slot)
//!   whose pages GMM backs, frees, balloons and shares.
//! - Ballooning follows VirtualBox's accounting ([`BalloonAction`]). An
//!   inflate is bookkeeping only; a per-GMM worker thread returns the memory
//!   to the host in the background, in bounded batches (a written gigabyte
//!   costs the kernel over 100 ms). A ballooned private page is *parked*:
//!   the region keeps mapping its chunk page, which is punched out of the
//!   memfd and stays reserved for it, so inflating and deflating single
//!   pages never splits a mapping (no `vm.max_map_count` trouble); deflated
//!   pages come back backed and zeroed. Other ballooned pages are remapped
//!   to zero memory, and their host page is never reused before the region
//!   stopped mapping it.
//! - [`Gmm::share_scan`] deduplicates identical pages across all VMs (see
//!   below for why writes stay private).
//! - [`Gmm::stats`], [`Gmm::format_info`] (the `gmm` info handler's text) and
//!   [`Gmm::register_stats`] / [`Vm::register_stats`] (`/GMM/...`) report.
//!
//! # Page sharing
//!
//! A scan hashes every private region page (xxh3), compares candidates with
//! equal hashes byte for byte, and then backs all copies with one host page,
//! the *master*. The master is a chunk page that GMM owns and no VM maps
//! writable: every region page using it, including the one it came from, is
//! remapped as a `MAP_PRIVATE` view of its memfd offset. A write through such
//! a view (by the VMM or by the guest through KVM, which follows the remap
//! with its MMU notifiers) makes the kernel copy the page for that mapping
//! alone, so the writer gets its own copy and nobody else sees the write.
//! Only GMM's own view maps masters `MAP_SHARED`, and GMM only reads them.
//! All-zero pages get no master at all: they become anonymous mappings of the
//! kernel's zero page. Copies made on write are accounted when GMM next
//! reconciles (every scan starts with that, or [`Gmm::reconcile_shared`]).
//! Run scans with the VMs' vCPUs stopped: a guest write racing the window
//! between compare and remap would be lost.
//!
//! # How data flows
//!
//! [`Gmm`] (one per process) → [`Vm`] (one per guest, with its
//! reservation) → [`RamRegion`] (one per block of guest RAM). The VMM
//! registers a region's host memory ([`RamRegion::host_addr`],
//! [`RamRegion::len_bytes`]) as a KVM memory slot, backs pages with
//! [`RamRegion::alloc`] before the guest uses them, and gives pages back with
//! [`RamRegion::free`], [`RamRegion::discard`] or the balloon calls; saved
//! states can be mapped in with [`RamRegion::map_file`]. `gmm` knows nothing
//! about guest-physical addresses: a guest-physical map (the `pgm` crate)
//! decides where each region appears, through its own host-memory trait that
//! the VMM implements over a [`Vm`].
//!
//! # Using it alone
//!
//! Two VMs with identical RAM contents, deduplicated by a scan:
//!
//! ```
//! use gmm::{Gmm, GmmConfig, Reservation};
//!
//! let gmm = Gmm::new(GmmConfig::new(1 << 14))?;
//! let res = Reservation { base: 512, ..Default::default() };
//! let (a, b) = (gmm.register_vm("a", res)?, gmm.register_vm("b", res)?);
//! let (ram_a, ram_b) = (a.create_ram_region(8)?, b.create_ram_region(8)?);
//! ram_a.alloc(0, 8)?;
//! ram_b.alloc(0, 8)?;
//! for i in 0..8u64 {
//!     ram_a.write(i * 4096, &[i as u8 + 1; 4096])?;
//!     ram_b.write(i * 4096, &[i as u8 + 1; 4096])?;
//! }
//! let report = gmm.share_scan()?;
//! assert_eq!(report.pages_deduplicated, 8);
//! assert_eq!(gmm.stats().saved_pages, 8);
//! // A write gives the writer its own copy; the other VM sees nothing.
//! ram_b.write(0, b"mine")?;
//! let mut buf = [0u8; 4];
//! ram_a.read(0, &mut buf)?;
//! assert_eq!(buf, [1; 4]);
//! # Ok::<(), gmm::Error>(())
//! ```
//!
//! # Features
//!
//! None. Statistics always go through `stam` (the only workspace crate `gmm`
//! depends on); the memory comes from a `memfd` and `mmap` through `libc`.

mod chunk;
mod config;
mod error;
mod file_map;
mod gmm;
mod host;
mod ids;
mod info;
mod map_budget;
mod reclaim;
mod register;
mod sharing;
mod state;
mod stats;

pub use config::{GmmConfig, MAX_PAGES};
pub use error::{Error, Result};
pub use gmm::{Gmm, HostPage, PageState, RamRegion, Reservation, Vm};
pub use ids::{Account, CHUNK_PAGES, CHUNK_SHIFT, CHUNK_SIZE, ChunkId, PAGE_SIZE, PageId, VmId};
pub use sharing::ScanReport;
pub use state::BalloonAction;
pub use stats::{AccountPages, GmmStats, VmStats};

#[cfg(test)]
mod tests;

// The README's example runs as a doctest, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
