//! Host memory primitives: the memfd that backs every chunk, GMM's own view of
//! it, and the fixed-address remapping of guest RAM regions.
//!
//! Page `p` of the memfd (file offset `p * 4096`) is the host page with page id
//! `p`, so chunk `c` occupies offsets `c * 2 MiB ..`. The file is sparse: a
//! page costs host memory only once written, and punching a hole returns it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use crate::error::{Error, Result};
use crate::ids::PAGE_SIZE;

/// The memfd holding all chunks plus a read-write `MAP_SHARED` view of it.
pub(crate) struct Backing {
    fd: OwnedFd,
    view: NonNull<u8>,
    pages: u64,
}

// SAFETY: the view is a process-wide mapping owned by this struct; it holds no
// thread-affine state, and all accesses go through raw pointers whose
// synchronisation is the caller's business (the GMM lock or the guest).
unsafe impl Send for Backing {}
// SAFETY: see `Send`; `&Backing` only hands out addresses and issues syscalls.
unsafe impl Sync for Backing {}

impl Backing {
    /// A sparse memfd of `pages` pages, mapped once in full.
    pub(crate) fn new(pages: u64) -> Result<Self> {
        let len = usize::try_from(pages)
            .ok()
            .and_then(|p| p.checked_mul(PAGE_SIZE))
            .ok_or(Error::InvalidConfig(
                "backing size overflows the address space",
            ))?;
        // SAFETY: plain FFI call with a valid NUL-terminated name.
        let raw = unsafe { libc::memfd_create(c"gmm-chunks".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(Error::host("memfd_create"));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let size = libc::off_t::try_from(len)
            .map_err(|_| Error::InvalidConfig("backing size exceeds off_t"))?;
        // SAFETY: FFI on a descriptor we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
            return Err(Error::host("ftruncate"));
        }
        // SAFETY: a new mapping chosen by the kernel (no MAP_FIXED), so no
        // existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::host("mmap of chunk backing"));
        }
        let view =
            NonNull::new(ptr.cast::<u8>()).ok_or(Error::InvalidConfig("mmap returned null"))?;
        Ok(Backing { fd, view, pages })
    }

    /// GMM's read-write view of page `page` (a page id's raw value).
    pub(crate) fn page_ptr(&self, page: u32) -> *mut u8 {
        debug_assert!(u64::from(page) < self.pages);
        self.view.as_ptr().wrapping_add(page as usize * PAGE_SIZE)
    }

    /// The contents of page `page` through GMM's view.
    ///
    /// # Safety
    /// Nobody may write the page while the returned slice lives (GMM only
    /// reads shared master pages, which no one maps writable, and private pages
    /// of VMs whose vCPUs are stopped).
    pub(crate) unsafe fn page_bytes(&self, page: u32) -> &[u8] {
        // SAFETY: the page is inside our mapping; no concurrent writers per the
        // function contract.
        unsafe { std::slice::from_raw_parts(self.page_ptr(page), PAGE_SIZE) }
    }

    /// Returns pages `first..first+count` to the host (their contents become zero).
    pub(crate) fn punch(&self, first: u32, count: u32) -> Result<()> {
        let off = libc::off_t::from(first) * PAGE_SIZE as libc::off_t;
        let len = libc::off_t::from(count) * PAGE_SIZE as libc::off_t;
        // SAFETY: FFI on our descriptor; the range lies inside the file.
        let rc = unsafe {
            libc::fallocate(
                self.fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        if rc != 0 {
            return Err(Error::host("fallocate(PUNCH_HOLE)"));
        }
        Ok(())
    }

    /// Host bytes the memfd holds right now.
    pub(crate) fn resident_bytes(&self) -> Result<u64> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: FFI writing into a properly sized `stat`.
        if unsafe { libc::fstat(self.fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
            return Err(Error::host("fstat"));
        }
        // SAFETY: fstat succeeded, so it initialised the struct.
        let st = unsafe { st.assume_init() };
        Ok(u64::try_from(st.st_blocks).unwrap_or(0) * 512)
    }

    /// Byte ranges (page granular) of the file that hold data, in order.
    pub(crate) fn data_extents(&self) -> Result<Vec<(u64, u64)>> {
        let end = self.pages * PAGE_SIZE as u64;
        let mut out = Vec::new();
        let mut pos: u64 = 0;
        while pos < end {
            let data = self.seek(pos, libc::SEEK_DATA)?;
            let Some(data) = data else { break };
            let hole = self.seek(data, libc::SEEK_HOLE)?.unwrap_or(end);
            out.push((data / PAGE_SIZE as u64, hole.div_ceil(PAGE_SIZE as u64)));
            pos = hole;
        }
        Ok(out)
    }

    fn seek(&self, pos: u64, whence: libc::c_int) -> Result<Option<u64>> {
        let off =
            libc::off_t::try_from(pos).map_err(|_| Error::InvalidConfig("offset overflow"))?;
        // SAFETY: FFI on our descriptor; lseek does not touch memory.
        let r = unsafe { libc::lseek(self.fd.as_raw_fd(), off, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            return Err(Error::Host {
                op: "lseek",
                source: e,
            });
        }
        Ok(Some(r as u64))
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        // SAFETY: unmapping the view we created; nothing uses it after drop.
        unsafe {
            libc::munmap(self.view.as_ptr().cast(), self.pages as usize * PAGE_SIZE);
        }
    }
}

/// A reserved, contiguous range of host virtual addresses for one guest RAM
/// region. Every page of it is always mapped to something: an anonymous zero
/// page, a chunk page (`MAP_SHARED`) or a read-only-by-copy-on-write view of a
/// shared page (`MAP_PRIVATE`). So KVM never finds a hole in a memory slot.
pub(crate) struct RegionMap {
    base: NonNull<u8>,
    pages: u64,
}

// SAFETY: the reservation is plain process memory owned by this struct.
unsafe impl Send for RegionMap {}
// SAFETY: methods take `&self` only for syscalls that replace mappings in the
// owned range; callers serialise them under the GMM lock.
unsafe impl Sync for RegionMap {}

/// What a region page should be mapped to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// Anonymous private memory: reads zero, costs nothing until written.
    Zero,
    /// The chunk page itself, writable and shared with GMM's view.
    Own(u32),
    /// A private (copy-on-write) view of a shared page.
    Cow(u32),
}

impl RegionMap {
    /// Reserves `pages` pages, all reading zero.
    pub(crate) fn new(pages: u64) -> Result<Self> {
        let len = usize::try_from(pages)
            .ok()
            .and_then(|p| p.checked_mul(PAGE_SIZE))
            .filter(|&l| l > 0)
            .ok_or(Error::InvalidConfig(
                "region size must be non-zero and fit the address space",
            ))?;
        // SAFETY: a new anonymous mapping at a kernel-chosen address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::host("mmap of region reservation"));
        }
        // SAFETY: advice on the mapping just created (see `map`).
        if unsafe { libc::madvise(ptr, len, libc::MADV_NOHUGEPAGE) } != 0 {
            let err = Error::host("madvise(MADV_NOHUGEPAGE)");
            // SAFETY: unmapping the mapping we just created and still own.
            unsafe { libc::munmap(ptr, len) };
            return Err(err);
        }
        let base =
            NonNull::new(ptr.cast::<u8>()).ok_or(Error::InvalidConfig("mmap returned null"))?;
        Ok(RegionMap { base, pages })
    }

    pub(crate) fn base(&self) -> NonNull<u8> {
        self.base
    }

    pub(crate) fn page_ptr(&self, index: u64) -> *mut u8 {
        self.base.as_ptr().wrapping_add(index as usize * PAGE_SIZE)
    }

    /// Maps `count` region pages from `first` to `target` (for `Own`/`Cow`,
    /// consecutive backing pages starting at the given page).
    pub(crate) fn map(
        &self,
        backing: &Backing,
        first: u64,
        count: u64,
        target: Target,
    ) -> Result<()> {
        if first.checked_add(count).is_none_or(|e| e > self.pages) {
            return Err(Error::RangeOutOfBounds {
                first,
                count,
                pages: self.pages,
            });
        }
        if count == 0 {
            return Ok(());
        }
        crate::map_budget::check()?;
        let (prot, flags, fd, off) = match target {
            Target::Zero => (
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            ),
            Target::Own(p) => (
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                backing.fd.as_raw_fd(),
                libc::off_t::from(p) * PAGE_SIZE as libc::off_t,
            ),
            Target::Cow(p) => (
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE,
                backing.fd.as_raw_fd(),
                libc::off_t::from(p) * PAGE_SIZE as libc::off_t,
            ),
        };
        let addr = self.page_ptr(first);
        // SAFETY: MAP_FIXED only replaces pages inside this reservation (bounds
        // checked above), which belongs to this struct; Rust code holds no
        // references into it, only raw pointers, so swapping the backing is
        // sound.
        let ptr = unsafe {
            libc::mmap(
                addr.cast(),
                count as usize * PAGE_SIZE,
                prot,
                flags | libc::MAP_FIXED,
                fd,
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::host("mmap(MAP_FIXED) in region"));
        }
        if target == Target::Zero {
            // One written page must cost one page, not a transparent huge
            // page that would turn 511 neighbours private too.
            // SAFETY: advice on the mapping just created inside our range.
            let rc =
                unsafe { libc::madvise(ptr, count as usize * PAGE_SIZE, libc::MADV_NOHUGEPAGE) };
            if rc != 0 {
                return Err(Error::host("madvise(MADV_NOHUGEPAGE)"));
            }
        }
        Ok(())
    }
}

impl RegionMap {
    /// Maps `count` region pages from `first` to a private (copy-on-write)
    /// view of `fd` at byte offset `offset` (page aligned): they read the
    /// file's pages, and a write gives the writer an anonymous copy without
    /// touching the file. The mapping holds its own reference to the file,
    /// so the descriptor may be closed afterwards.
    pub(crate) fn map_file(&self, first: u64, count: u64, fd: RawFd, offset: u64) -> Result<()> {
        if first.checked_add(count).is_none_or(|e| e > self.pages) {
            return Err(Error::RangeOutOfBounds {
                first,
                count,
                pages: self.pages,
            });
        }
        let off = libc::off_t::try_from(offset)
            .ok()
            .filter(|o| o % PAGE_SIZE as libc::off_t == 0)
            .ok_or(Error::InvalidConfig(
                "file offset must be page aligned and fit off_t",
            ))?;
        if count == 0 {
            return Ok(());
        }
        crate::map_budget::check()?;
        // SAFETY: MAP_FIXED only replaces pages inside this reservation
        // (bounds checked above), as in `map`.
        let ptr = unsafe {
            libc::mmap(
                self.page_ptr(first).cast(),
                count as usize * PAGE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE | libc::MAP_FIXED,
                fd,
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::host("mmap(MAP_FIXED) of a file in region"));
        }
        Ok(())
    }

    /// Whether each of `count` pages from `first` is in host memory (for
    /// file mappings: whether the memfd page exists), per `mincore`.
    pub(crate) fn mincore(&self, first: u64, count: u64) -> Result<Vec<bool>> {
        if first.checked_add(count).is_none_or(|e| e > self.pages) {
            return Err(Error::RangeOutOfBounds {
                first,
                count,
                pages: self.pages,
            });
        }
        let mut vec = vec![0u8; count as usize];
        if count > 0 {
            // SAFETY: the range lies inside our reservation, which is mapped;
            // `vec` has one byte per page as mincore requires.
            let rc = unsafe {
                libc::mincore(
                    self.page_ptr(first).cast(),
                    count as usize * PAGE_SIZE,
                    vec.as_mut_ptr(),
                )
            };
            if rc != 0 {
                return Err(Error::host("mincore"));
            }
        }
        Ok(vec.into_iter().map(|b| b & 1 != 0).collect())
    }
}

impl Drop for RegionMap {
    fn drop(&mut self) {
        // SAFETY: unmapping the reservation we own; its owner is being dropped.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.pages as usize * PAGE_SIZE);
        }
    }
}

/// What `/proc/self/pagemap` says about one page of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PageFlags(u64);

impl PageFlags {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    const FILE: u64 = 1 << 61;
    const EXCLUSIVE: u64 = 1 << 56;

    /// The page is now a private anonymous copy (written after copy-on-write)
    /// where the mapping was a private view of a memfd page.
    pub(crate) fn is_cow_copy_of_file(self) -> bool {
        (self.0 & Self::PRESENT != 0 && self.0 & Self::FILE == 0) || self.0 & Self::SWAPPED != 0
    }

    /// The page holds written anonymous data where the mapping was an
    /// anonymous zero mapping (the shared kernel zero page is not exclusive).
    pub(crate) fn is_written_anon(self) -> bool {
        (self.0 & Self::PRESENT != 0 && self.0 & Self::EXCLUSIVE != 0)
            || self.0 & Self::SWAPPED != 0
    }
}

/// Reads pagemap entries for `count` pages starting at `addr`.
pub(crate) fn page_flags(addr: *const u8, count: usize) -> Result<Vec<PageFlags>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open("/proc/self/pagemap").map_err(|source| Error::Host {
        op: "open /proc/self/pagemap",
        source,
    })?;
    let mut buf = vec![0u8; count * 8];
    let off = (addr as u64 / PAGE_SIZE as u64) * 8;
    f.read_exact_at(&mut buf, off)
        .map_err(|source| Error::Host {
            op: "read /proc/self/pagemap",
            source,
        })?;
    Ok(buf
        .chunks_exact(8)
        .map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            PageFlags(u64::from_le_bytes(a))
        })
        .collect())
}
