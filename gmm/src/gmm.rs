//! The public handles: [`Gmm`], [`Vm`] and [`RamRegion`].

use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::GmmConfig;
use crate::error::{Error, Result};
use crate::ids::{Account, PAGE_SIZE, PageId, VmId};
use crate::reclaim::Reclaimer;
use crate::sharing::ScanReport;
use crate::state::{BalloonAction, Slot, State};
use crate::stats::{GmmStats, VmStats};

/// The global memory manager: one per process, serving any number of VMs.
///
/// Cheap to clone (all clones share the same state).
///
/// ```
/// use gmm::{Gmm, GmmConfig, Reservation};
///
/// let gmm = Gmm::new(GmmConfig::new(4096))?;
/// let vm = gmm.register_vm("vm0", Reservation { base: 1024, shadow: 16, fixed: 16 })?;
///
/// // Guest RAM: 1 MiB of contiguous host memory, backed on demand.
/// let ram = vm.create_ram_region(256)?;
/// ram.alloc(0, 256)?;
/// ram.write(0x1000, b"hello")?;
/// let mut buf = [0u8; 5];
/// ram.read(0x1000, &mut buf)?;
/// assert_eq!(&buf, b"hello");
///
/// // The guest's balloon driver gives 16 pages back.
/// ram.balloon_inflate(100, 16)?;
/// assert_eq!(vm.stats().ballooned, 16);
/// assert_eq!(vm.stats().allocated.base, 240);
/// # Ok::<(), gmm::Error>(())
/// ```
#[derive(Clone)]
pub struct Gmm {
    pub(crate) state: Arc<Mutex<State>>,
    reclaim: Arc<Reclaimer>,
}

impl fmt::Debug for Gmm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gmm").field("stats", &self.stats()).finish()
    }
}

/// Pages a VM reserves on each account when it registers (set once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reservation {
    /// Guest RAM pages.
    pub base: u64,
    /// Shadow paging pages.
    pub shadow: u64,
    /// Fixed (hypervisor) pages.
    pub fixed: u64,
}

impl Reservation {
    fn as_array(self) -> [u64; 3] {
        [self.base, self.shadow, self.fixed]
    }
}

/// A host page handed out by page id, with its host virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPage {
    /// The page id (chunk id << 9 | index).
    pub id: PageId,
    /// Host virtual address of the page (GMM's shared view; 4 KiB, zeroed on allocation).
    pub host_addr: u64,
}

impl Gmm {
    /// A GMM with its (empty, sparse) chunk backing.
    pub fn new(cfg: GmmConfig) -> Result<Self> {
        let state = Arc::new(Mutex::new(State::new(cfg)?));
        Ok(Gmm {
            reclaim: Arc::new(Reclaimer::new(&state)),
            state,
        })
    }

    /// Registers a VM with its reservation. Dropping the returned handle (and
    /// all its regions) frees everything the VM holds.
    pub fn register_vm(&self, name: &str, reservation: Reservation) -> Result<Vm> {
        let id = self
            .state
            .lock()
            .register_vm(name, reservation.as_array())?;
        Ok(Vm {
            inner: Arc::new(VmInner {
                gmm: self.clone(),
                id,
            }),
        })
    }

    /// Runs a sharing scan over every RAM region of every VM: identical pages
    /// end up backed by one host page, zero pages by none.
    ///
    /// Nothing may write the VMs' RAM while the scan runs, neither vCPUs nor
    /// devices (a write racing the scan could be lost); writes after the
    /// scan are safe.
    pub fn share_scan(&self) -> Result<ScanReport> {
        self.state.lock().share_scan()
    }

    /// Accounts shared pages that guests have written since (the kernel gave
    /// the writer a private copy). Returns how many were found. Also done at
    /// the start of every scan.
    pub fn reconcile_shared(&self) -> Result<u64> {
        self.state.lock().reconcile()
    }

    /// Returns pages freed through [`Vm::free_page`] and pages ballooned
    /// through [`RamRegion::balloon_inflate`] to the host now instead of at
    /// the next batch or in the background (other region operations return
    /// memory immediately).
    pub fn return_freed_pages(&self) -> Result<()> {
        let mut st = self.state.lock();
        st.settle_deferred(None)?;
        st.flush()
    }

    /// A snapshot of the global numbers.
    pub fn stats(&self) -> GmmStats {
        GmmStats::collect(&self.state.lock())
    }

    /// Snapshots of every registered VM's numbers.
    pub fn vm_stats(&self) -> Vec<VmStats> {
        let st = self.state.lock();
        st.vms().map(|(id, v)| VmStats::collect(id, v)).collect()
    }
}

/// A VM registered with a [`Gmm`]. Dropping it (after all its regions)
/// frees all its pages and its reservation.
pub struct Vm {
    pub(crate) inner: Arc<VmInner>,
}

pub(crate) struct VmInner {
    pub(crate) gmm: Gmm,
    pub(crate) id: VmId,
}

impl Drop for VmInner {
    fn drop(&mut self) {
        // Only fails for an unknown VM, which cannot happen for a live handle.
        let _ = self.gmm.state.lock().deregister_vm(self.id);
    }
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm").field("id", &self.inner.id).finish()
    }
}

impl Vm {
    /// The VM's id.
    pub fn id(&self) -> VmId {
        self.inner.id
    }

    /// The GMM this VM belongs to.
    pub fn gmm(&self) -> &Gmm {
        &self.inner.gmm
    }

    fn state(&self) -> parking_lot::MutexGuard<'_, State> {
        self.inner.gmm.state.lock()
    }

    /// Allocates one page on `account`.
    pub fn alloc_page(&self, account: Account) -> Result<HostPage> {
        let mut st = self.state();
        st.check_alloc(self.inner.id, account, 1)?;
        let id = st.take_page(self.inner.id, account)?;
        Ok(HostPage {
            id,
            host_addr: st.backing.page_ptr(id.0) as u64,
        })
    }

    /// Allocates `count` pages on `account`, all or nothing.
    pub fn alloc_pages(&self, account: Account, count: u64) -> Result<Vec<HostPage>> {
        let mut st = self.state();
        st.check_alloc(self.inner.id, account, count)?;
        let mut out = Vec::with_capacity(count as usize);
        for _ in 0..count {
            match st.take_page(self.inner.id, account) {
                Ok(id) => out.push(HostPage {
                    id,
                    host_addr: st.backing.page_ptr(id.0) as u64,
                }),
                Err(e) => {
                    for p in &out {
                        st.free_raw(self.inner.id, p.id)?;
                    }
                    st.flush()?;
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Frees one page allocated with [`alloc_page`](Self::alloc_page). Its
    /// memory goes back to the host with the next batch (at most 256 pages
    /// later, or on [`Gmm::return_freed_pages`]).
    pub fn free_page(&self, page: PageId) -> Result<()> {
        let mut st = self.state();
        st.free_raw(self.inner.id, page)?;
        st.maybe_flush()
    }

    /// Frees pages, all or nothing, and returns their memory to the host.
    pub fn free_pages(&self, pages: &[PageId]) -> Result<()> {
        let mut st = self.state();
        let mut seen = std::collections::HashSet::with_capacity(pages.len());
        for &p in pages {
            if !seen.insert(p) {
                return Err(Error::PageNotFound(p));
            }
            st.check_raw(self.inner.id, p)?;
        }
        for &p in pages {
            st.free_raw(self.inner.id, p)?;
        }
        st.flush()
    }

    /// Balloon accounting by count (VirtualBox's rules): inflating is refused
    /// beyond the base reservation, deflating beyond what is ballooned. Use
    /// this when the caller frees the ballooned pages itself; RAM regions
    /// offer [`RamRegion::balloon_inflate`] which does both. `Reset` also
    /// takes every ballooned region page out of the balloon: parked pages
    /// become backed (zeroed) pages of the VM again, as after
    /// [`RamRegion::balloon_deflate`] (or empty, remapped, where the global
    /// maximum has no room for them), the others empty.
    pub fn balloon(&self, action: BalloonAction, pages: u64) -> Result<()> {
        self.state().balloon(self.inner.id, action, pages)
    }

    /// Creates a guest RAM region of `pages` pages: contiguous host virtual
    /// memory (for one KVM memory slot) whose pages read zero until backed
    /// with [`RamRegion::alloc`].
    pub fn create_ram_region(&self, pages: u64) -> Result<RamRegion> {
        let mut st = self.state();
        let id = st.add_region(self.inner.id, pages)?;
        let base = st.region(id)?.map.base().as_ptr();
        Ok(RamRegion {
            vm: self.inner.clone(),
            id,
            base: base as u64,
            pages,
        })
    }

    /// A snapshot of this VM's accounts.
    pub fn stats(&self) -> VmStats {
        let st = self.state();
        match st.vm(self.inner.id) {
            Ok(v) => VmStats::collect(self.inner.id, v),
            Err(_) => VmStats::default(),
        }
    }
}

/// How a RAM region page is backed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    /// Not backed; reads zero.
    Empty,
    /// Backed by memory of its own.
    Private,
    /// Backed by a page shared with other pages (copy on write).
    Shared,
    /// Found all-zero by a sharing scan: still the VM's page, backed by
    /// nothing until written.
    Zero,
    /// Given back through the balloon.
    Ballooned,
}

/// Guest RAM: a contiguous range of host virtual memory whose pages GMM backs.
///
/// The whole range is always mapped (unbacked pages read zero), so it can be
/// registered as one KVM memory slot at [`host_addr`](Self::host_addr). Drop
/// it only after removing that slot.
///
/// Back every page the guest may write ([`alloc`](Self::alloc) the whole
/// region right after creating it is the simple choice: backed pages cost no
/// host memory until written). An unbacked page is plain anonymous memory to
/// the guest, so guest writes to it would use memory GMM does not account.
pub struct RamRegion {
    vm: Arc<VmInner>,
    id: u64,
    base: u64,
    pages: u64,
}

impl fmt::Debug for RamRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RamRegion")
            .field("vm", &self.vm.id)
            .field("host_addr", &format_args!("{:#x}", self.base))
            .field("pages", &self.pages)
            .finish()
    }
}

impl Drop for RamRegion {
    fn drop(&mut self) {
        // Fails only if the region is unknown, which cannot happen here.
        let _ = self.vm.gmm.state.lock().remove_region(self.id);
    }
}

impl RamRegion {
    fn state(&self) -> parking_lot::MutexGuard<'_, State> {
        self.vm.gmm.state.lock()
    }

    /// Host virtual address of the first page.
    pub fn host_addr(&self) -> u64 {
        self.base
    }

    /// Size in pages.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Size in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.pages * PAGE_SIZE as u64
    }

    /// Backs empty pages `first..first+count` with host memory (zeroed).
    /// Beyond the VM's reservation or the global maximum this fails with an
    /// out-of-memory error ([`Error::is_out_of_memory`]) and changes nothing.
    pub fn alloc(&self, first: u64, count: u64) -> Result<()> {
        self.state().region_alloc(self.id, first, count)
    }

    /// Frees backed pages; their memory returns to the host and they read zero.
    pub fn free(&self, first: u64, count: u64) -> Result<()> {
        self.state().region_free(self.id, first, count)
    }

    /// Returns the memory of backed pages to the host but keeps them backed
    /// and accounted: they read zero, and the guest may write them again
    /// (for PGM's "page is zero now", e.g. at reset).
    pub fn discard(&self, first: u64, count: u64) -> Result<()> {
        self.state().region_discard(self.id, first, count)
    }

    /// The guest's balloon took these backed pages: they count as ballooned
    /// at once, and their memory returns to the host in the background (a
    /// gigabyte of written memory takes the host kernel over 100 ms to take
    /// back). Until then the guest could still see its old data there, never
    /// anyone else's; [`Gmm::return_freed_pages`] waits for it.
    ///
    /// Private pages are *parked*: the region keeps mapping their chunk
    /// page, whose memory is punched out of the memfd, and the page stays
    /// reserved for its slot (nobody else can get it). So ballooning single
    /// pages never splits the region's mapping. Pages ballooned after
    /// sharing or mapped from a file are remapped to zero memory instead.
    /// Parked pages are limited to `max_pages` in all (beyond that pages
    /// take the remap path), so that their ids cannot starve other VMs.
    /// A guest that touches a parked page anyway (it has no business there)
    /// gives it memory again, unaccounted, until the page is deflated or the
    /// region dropped; only its own VM can ever see that memory.
    ///
    /// ```
    /// # use gmm::{Gmm, GmmConfig, PageState, Reservation};
    /// # let gmm = Gmm::new(GmmConfig::new(1024))?;
    /// # let vm = gmm.register_vm("vm", Reservation { base: 16, ..Default::default() })?;
    /// let ram = vm.create_ram_region(16)?;
    /// ram.alloc(0, 16)?;
    /// ram.write(0, &[1; 4096])?;
    /// ram.balloon_inflate(0, 1)?;
    /// gmm.return_freed_pages()?;
    /// assert_eq!((vm.stats().parked, gmm.stats().backing_bytes), (1, 0));
    /// ram.balloon_deflate(0, 1)?;
    /// assert_eq!(ram.page_state(0)?, PageState::Private);
    /// let mut b = [9u8; 1];
    /// ram.read(0, &mut b)?;
    /// assert_eq!(b, [0]);
    /// # Ok::<(), gmm::Error>(())
    /// ```
    pub fn balloon_inflate(&self, first: u64, count: u64) -> Result<()> {
        self.state().region_inflate(self.id, first, count)?;
        self.vm.gmm.reclaim.kick()
    }

    /// The guest's balloon released these ballooned pages. Parked pages (see
    /// [`balloon_inflate`](Self::balloon_inflate)) become backed private
    /// pages again, reading zero (even if the guest wrote them while
    /// ballooned), without any remap; this needs room under the global
    /// maximum ([`Error::is_out_of_memory`] otherwise, nothing changed). The
    /// other ballooned pages become empty: back them again with
    /// [`alloc`](Self::alloc) when the guest uses them
    /// ([`page_states`](Self::page_states) tells which).
    pub fn balloon_deflate(&self, first: u64, count: u64) -> Result<()> {
        self.state().region_deflate(self.id, first, count)
    }

    /// Maps backed pages `first..first+count` to a private copy-on-write
    /// view of `file` from byte `file_offset` (page aligned), e.g. guest RAM
    /// saved in a saved-state file: they read the file's bytes and cost no
    /// memory until touched; a guest or host write gives the VM a private
    /// copy and never changes the file. They stay the VM's allocated private
    /// pages (the memory they had is returned), so freeing, discarding or
    /// ballooning them works as for any page and makes them read zero.
    ///
    /// The file must not be truncated or written in place while the region
    /// maps it (a truncated page would fault the guest or the VMM with
    /// `SIGBUS`, a written one would change guest memory): write a new file
    /// and rename it over the old one instead. The mapping keeps the file
    /// open by itself; `file` may be closed afterwards.
    ///
    /// ```
    /// # use gmm::{Gmm, GmmConfig, Reservation};
    /// use std::os::unix::fs::FileExt;
    /// # let gmm = Gmm::new(GmmConfig::new(1024))?;
    /// # let vm = gmm.register_vm("vm", Reservation { base: 16, ..Default::default() })?;
    /// let ram = vm.create_ram_region(16)?;
    /// ram.alloc(0, 16)?;
    /// let file = tempfile::tempfile().unwrap();
    /// file.write_all_at(&[7; 8192], 0).unwrap();
    /// ram.map_file(2, 2, &file, 0)?;
    /// let mut b = [0u8; 1];
    /// ram.read(3 * 4096, &mut b)?;
    /// assert_eq!(b, [7]);
    /// assert_eq!(gmm.stats().file_mapped_pages, 2);
    /// # Ok::<(), gmm::Error>(())
    /// ```
    pub fn map_file(&self, first: u64, count: u64, file: &File, file_offset: u64) -> Result<()> {
        self.state()
            .region_map_file(self.id, first, count, file.as_raw_fd(), file_offset)
    }

    /// How page `index` is backed.
    pub fn page_state(&self, index: u64) -> Result<PageState> {
        Ok(self.page_states(index, 1)?[0])
    }

    /// How each page of `first..first+count` is backed. A shared page the
    /// guest wrote since counts as shared until GMM reconciles (every scan
    /// starts with that, or [`Gmm::reconcile_shared`]).
    pub fn page_states(&self, first: u64, count: u64) -> Result<Vec<PageState>> {
        let st = self.state();
        let r = st.region(self.id)?;
        let slots = first
            .checked_add(count)
            .and_then(|end| r.slots.get(first as usize..end as usize))
            .ok_or(Error::RangeOutOfBounds {
                first,
                count,
                pages: self.pages,
            })?;
        Ok(slots
            .iter()
            .map(|slot| match slot {
                Slot::Empty => PageState::Empty,
                Slot::Private(_) | Slot::Anon | Slot::File => PageState::Private,
                Slot::Shared(_) => PageState::Shared,
                Slot::Zero => PageState::Zero,
                Slot::Ballooned | Slot::Parked(_) => PageState::Ballooned,
            })
            .collect())
    }

    /// For each page of `first..first+count`, whether it occupies host
    /// memory: a private page once written, a shared page always (its master
    /// does, once for all users), empty, zero and ballooned pages never.
    pub fn resident_pages(&self, first: u64, count: u64) -> Result<Vec<bool>> {
        let st = self.state();
        let r = st.region(self.id)?;
        let core = r.map.mincore(first, count)?;
        Ok(r.slots[first as usize..(first + count) as usize]
            .iter()
            .zip(core)
            .map(|(s, resident)| match s {
                Slot::Private(_) | Slot::File => resident,
                Slot::Anon | Slot::Shared(_) => true,
                Slot::Empty | Slot::Zero | Slot::Ballooned | Slot::Parked(_) => false,
            })
            .collect())
    }

    fn byte_range(&self, offset: u64, len: usize) -> Result<(u64, u64)> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= self.len_bytes())
            .ok_or(Error::RangeOutOfBounds {
                first: offset / PAGE_SIZE as u64,
                count: (len as u64).div_ceil(PAGE_SIZE as u64),
                pages: self.pages,
            })?;
        let first = offset / PAGE_SIZE as u64;
        Ok((first, end.div_ceil(PAGE_SIZE as u64).max(first + 1) - first))
    }

    /// Copies guest RAM at byte `offset` into `buf` (ballooned pages read
    /// zero). Parked pages are not touched: reading one through the
    /// mapping would give it memory again (a `MAP_SHARED` read fault on a
    /// hole allocates a page), so they are filled with zeroes instead.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let (first, count) = self.byte_range(offset, buf.len())?;
        let mut st = self.state();
        st.settle_deferred(Some(self.id))?;
        let r = st.region(self.id)?;
        let page = PAGE_SIZE as u64;
        let end = offset + buf.len() as u64;
        let mut i = first;
        while i < first + count {
            let parked = |s: &Slot| matches!(s, Slot::Parked(_));
            let kind = parked(&r.slots[i as usize]);
            let n = r.slots[i as usize..(first + count) as usize]
                .iter()
                .take_while(|s| parked(s) == kind)
                .count() as u64;
            let from = (i * page).max(offset);
            let to = ((i + n) * page).min(end);
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            if kind {
                dst.fill(0);
            } else {
                // SAFETY: the range is inside the region (checked above),
                // which stays mapped while `self` lives; the lock keeps GMM
                // from remapping it during the copy.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        (self.base + from) as *const u8,
                        dst.as_mut_ptr(),
                        dst.len(),
                    );
                }
            }
            i += n;
        }
        Ok(())
    }

    /// Copies `data` into guest RAM at byte `offset`; every page touched must
    /// be backed (writing an unbacked page would use unaccounted memory).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let (first, count) = self.byte_range(offset, data.len())?;
        let st = self.state();
        let r = st.region(self.id)?;
        for i in first..first + count {
            let s = r.slots[i as usize];
            if !s.is_allocated() {
                return Err(Error::PageState {
                    index: i,
                    expected: "allocated",
                    found: s.name(),
                });
            }
        }
        // SAFETY: as in `read`; the pages are backed, so the write lands in
        // accounted memory (a shared page is copied on write by the kernel).
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.base + offset) as *mut u8,
                data.len(),
            );
        }
        Ok(())
    }
}
