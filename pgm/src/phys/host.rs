//! Host memory backing for guest RAM.
//!
//! `pgm` asks a [`HostMemory`] provider for backing of each memory-backed
//! range. The provider hands out [`TrackedRegion`]s (`vm-memory` regions
//! carrying a [`WriteBitmap`](super::WriteBitmap), so that writes through
//! the `vm-memory` view are tracked; `MmapRegion::new` and
//! `MmapRegion::build_raw` create the bitmap), which keep their mapping
//! alive for as long as anyone holds a reference, so the guest memory view
//! and the KVM slots can share them safely. [`MmapHostMemory`] is the
//! plain provider: anonymous private mappings from the kernel.
//!
//! A load from a saved-state file can ask the provider to map pages of the
//! file into a region ([`HostMemory::map_file`]) instead of copying them:
//! the pages then cost nothing until the guest touches them, and a write
//! gives the guest a private copy (copy-on-write), never changing the file.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::write_bitmap::TrackedRegion;

/// Host page size assumed by `pgm` (and by KVM on x86).
pub const HOST_PAGE_SIZE: usize = 4096;

/// Errors of a host memory provider.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostMemoryError {
    /// The provider could not allocate backing.
    #[error("allocating {size} bytes: {message}")]
    Allocate {
        /// Requested size.
        size: u64,
        /// What went wrong.
        message: String,
    },
    /// An offset/length pair outside the region or not page aligned.
    #[error("bad span {offset:#x}+{len:#x} in a region of {size:#x} bytes")]
    BadSpan {
        /// Offset in the region.
        offset: usize,
        /// Length.
        len: usize,
        /// Region size.
        size: usize,
    },
    /// A file offset to map from that is not page aligned.
    #[error("file offset {0:#x} is not page aligned")]
    FileOffset(u64),
    /// A system call failed.
    #[error("{call}: {source}")]
    Os {
        /// The call.
        call: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Provider of host memory for guest-physical ranges.
///
/// The trait is deliberately narrow: allocate backing, give pages back to the
/// host, report which pages are resident. `vmm-core` can implement it over
/// `gmm`; [`MmapHostMemory`] implements it over plain anonymous mappings.
pub trait HostMemory: Send + Sync {
    /// Allocates `size` bytes (a multiple of [`HOST_PAGE_SIZE`]) of zeroed
    /// backing that costs no host memory until written.
    fn allocate(&self, size: u64) -> Result<Arc<TrackedRegion>, HostMemoryError>;

    /// Gives `len` bytes at `offset` back to the host; they read as zero
    /// afterwards.
    fn discard(
        &self,
        region: &TrackedRegion,
        offset: usize,
        len: usize,
    ) -> Result<(), HostMemoryError>;

    /// The guest's balloon took (`inflate`) or gave back the pages at
    /// `offset..offset + len`. Inflated pages return to the host and read as
    /// zero; a provider that accounts for ballooning (GMM) counts them. The
    /// default gives inflated pages back with [`discard`](Self::discard).
    fn balloon(
        &self,
        region: &TrackedRegion,
        offset: usize,
        len: usize,
        inflate: bool,
    ) -> Result<(), HostMemoryError> {
        if inflate {
            self.discard(region, offset, len)
        } else {
            Ok(())
        }
    }

    /// Makes `len` bytes at `offset` of `region` (page aligned) show the
    /// bytes of `file` at `file_offset` (page aligned). A provider that can
    /// maps them privately (copy-on-write: guest writes never reach the
    /// file), so they cost nothing until touched; the pages then count as
    /// allocated, and [`discard`](Self::discard) and ballooning make them
    /// read zero as for any page. The file must not be truncated or written
    /// in place while the region maps it (a mapping outlives the
    /// descriptor, so the caller may close `file`).
    ///
    /// The default reads the bytes into the region (a copy), so every
    /// provider works.
    fn map_file(
        &self,
        region: &TrackedRegion,
        offset: usize,
        len: usize,
        file: &File,
        file_offset: u64,
    ) -> Result<(), HostMemoryError> {
        check_span(region, offset, len)?;
        if !file_offset.is_multiple_of(HOST_PAGE_SIZE as u64) {
            return Err(HostMemoryError::FileOffset(file_offset));
        }
        let mut buf = vec![0u8; len.min(1 << 20)];
        let mut done = 0;
        while done < len {
            let n = buf.len().min(len - done);
            file.read_exact_at(&mut buf[..n], file_offset + done as u64)
                .map_err(|source| HostMemoryError::Os {
                    call: "pread",
                    source,
                })?;
            // SAFETY: `offset + done .. + n` lies inside the region's live
            // mapping (span checked above) and does not overlap `buf`; guest
            // memory is only ever accessed through raw pointers.
            unsafe {
                std::ptr::copy_nonoverlapping(buf.as_ptr(), region.as_ptr().add(offset + done), n);
            }
            done += n;
        }
        Ok(())
    }

    /// Fills `out` with one entry per page of `offset..offset + len`:
    /// whether the provider backs the page with a host page it shares with
    /// other guest pages (copy on write), as GMM's page sharing does. The
    /// default provider shares nothing.
    fn sharing(
        &self,
        region: &TrackedRegion,
        offset: usize,
        len: usize,
        out: &mut Vec<bool>,
    ) -> Result<(), HostMemoryError> {
        check_span(region, offset, len)?;
        out.clear();
        out.resize(len / HOST_PAGE_SIZE, false);
        Ok(())
    }

    /// Fills `out` with one entry per page of `offset..offset + len`: whether
    /// the page currently occupies host memory.
    fn residency(
        &self,
        region: &TrackedRegion,
        offset: usize,
        len: usize,
        out: &mut Vec<bool>,
    ) -> Result<(), HostMemoryError>;
}

/// [`HostMemory`] over anonymous private mappings (`mmap`, `mincore`);
/// [`HostMemory::map_file`] maps file pages `MAP_PRIVATE` into the region,
/// and [`HostMemory::discard`] maps fresh anonymous memory over a span
/// (dropping pages with `madvise` would bring a file page back instead of
/// zeros).
///
/// ```
/// use pgm::phys::{HostMemory, MmapHostMemory};
/// let host = MmapHostMemory::new();
/// let region = host.allocate(2 * 4096).unwrap();
/// let mut resident = Vec::new();
/// host.residency(&region, 0, 2 * 4096, &mut resident).unwrap();
/// assert_eq!(resident, vec![false, false]);
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct MmapHostMemory;

impl MmapHostMemory {
    /// Creates the provider.
    pub fn new() -> Self {
        Self
    }
}

fn check_span(region: &TrackedRegion, offset: usize, len: usize) -> Result<(), HostMemoryError> {
    let ok = offset.is_multiple_of(HOST_PAGE_SIZE)
        && len.is_multiple_of(HOST_PAGE_SIZE)
        && offset
            .checked_add(len)
            .is_some_and(|end| end <= region.size());
    if ok {
        Ok(())
    } else {
        Err(HostMemoryError::BadSpan {
            offset,
            len,
            size: region.size(),
        })
    }
}

/// Replaces the pages of a checked span of `region` (one of
/// [`MmapHostMemory`]'s anonymous regions) with a new read-write mapping.
fn map_fixed(
    region: &TrackedRegion,
    offset: usize,
    len: usize,
    flags: libc::c_int,
    fd: libc::c_int,
    file_offset: libc::off_t,
) -> Result<(), HostMemoryError> {
    // SAFETY: the caller checked that the span lies inside the region's
    // live mapping, which this provider created and which stays mapped for
    // the region's lifetime; MAP_FIXED only replaces those pages (the
    // region keeps its address and size), and guest memory is only
    // accessed through raw pointers, so no Rust reference sees the swap.
    let p = unsafe {
        libc::mmap(
            region.as_ptr().add(offset).cast(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags | libc::MAP_FIXED,
            fd,
            file_offset,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(HostMemoryError::Os {
            call: "mmap",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl HostMemory for MmapHostMemory {
    fn allocate(&self, size: u64) -> Result<Arc<TrackedRegion>, HostMemoryError> {
        let bad = |message: String| HostMemoryError::Allocate { size, message };
        let len = usize::try_from(size).map_err(|_| bad("size too large".into()))?;
        if len == 0 || len % HOST_PAGE_SIZE != 0 {
            return Err(bad("size must be a non-zero multiple of 4 KiB".into()));
        }
        TrackedRegion::new(len)
            .map(Arc::new)
            .map_err(|e| bad(e.to_string()))
    }

    fn discard(
        &self,
        region: &TrackedRegion,
        offset: usize,
        len: usize,
    ) -> Result<(), HostMemoryError> {
        check_span(region, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        map_fixed(
            region,
            offset,
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    }

    fn map_file(
        &self,
        region: &TrackedRegion,
        offset: usize,
        len: usize,
        file: &File,
        file_offset: u64,
    ) -> Result<(), HostMemoryError> {
        check_span(region, offset, len)?;
        let off = libc::off_t::try_from(file_offset)
            .ok()
            .filter(|o| o % HOST_PAGE_SIZE as libc::off_t == 0)
            .ok_or(HostMemoryError::FileOffset(file_offset))?;
        if len == 0 {
            return Ok(());
        }
        map_fixed(
            region,
            offset,
            len,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            off,
        )
    }

    fn residency(
        &self,
        region: &TrackedRegion,
        offset: usize,
        len: usize,
        out: &mut Vec<bool>,
    ) -> Result<(), HostMemoryError> {
        check_span(region, offset, len)?;
        let pages = len / HOST_PAGE_SIZE;
        let mut vec = vec![0u8; pages];
        if pages > 0 {
            // SAFETY: the span lies inside the region's live, page-aligned
            // mapping and `vec` has one byte per page of it.
            let rc =
                unsafe { libc::mincore(region.as_ptr().add(offset).cast(), len, vec.as_mut_ptr()) };
            if rc != 0 {
                return Err(HostMemoryError::Os {
                    call: "mincore",
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        out.clear();
        out.extend(vec.iter().map(|b| b & 1 != 0));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discard_returns_pages_and_zeroes() {
        let host = MmapHostMemory::new();
        let region = host.allocate(4 * 4096).unwrap();
        // SAFETY: offset 4096 is inside the 16 KiB mapping.
        unsafe { region.as_ptr().add(4096).write(7) };
        let mut r = Vec::new();
        host.residency(&region, 0, 4 * 4096, &mut r).unwrap();
        assert_eq!(r, vec![false, true, false, false]);
        host.discard(&region, 4096, 4096).unwrap();
        host.residency(&region, 0, 4 * 4096, &mut r).unwrap();
        assert_eq!(r, vec![false; 4]);
        // SAFETY: as above.
        assert_eq!(unsafe { region.as_ptr().add(4096).read() }, 0);
    }

    /// A file of `pages` pages, page `i` filled with `i + 1`.
    fn page_file(pages: usize) -> File {
        let f = tempfile::tempfile().unwrap();
        for i in 0..pages {
            f.write_all_at(&[i as u8 + 1; 4096], i as u64 * 4096)
                .unwrap();
        }
        f
    }

    fn byte(region: &TrackedRegion, at: usize) -> u8 {
        assert!(at < region.size());
        // SAFETY: `at` is inside the live mapping.
        unsafe { region.as_ptr().add(at).read() }
    }

    #[test]
    fn mapped_file_pages_are_private_and_discard_makes_them_zero() {
        let host = MmapHostMemory::new();
        let region = host.allocate(4 * 4096).unwrap();
        let f = page_file(3);
        host.map_file(&region, 4096, 2 * 4096, &f, 4096).unwrap();
        assert_eq!(
            [0, 4096, 8192, 12288].map(|a| byte(&region, a)),
            [0, 2, 3, 0]
        );
        // A write copies the page; the file keeps its bytes.
        // SAFETY: inside the mapping.
        unsafe { region.as_ptr().add(4096).write(0x77) };
        assert_eq!(byte(&region, 4096), 0x77);
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 4096).unwrap();
        assert_eq!(b, [2]);
        // Discarded pages read zero, written or not (not the file's bytes).
        host.discard(&region, 4096, 2 * 4096).unwrap();
        assert_eq!(byte(&region, 4096), 0);
        assert_eq!(byte(&region, 8192), 0);
        assert!(matches!(
            host.map_file(&region, 0, 4096, &f, 100),
            Err(HostMemoryError::FileOffset(100))
        ));
        assert!(host.map_file(&region, 0, 5 * 4096, &f, 0).is_err());
    }

    /// A provider with only the required methods: `map_file` copies.
    struct Copying(MmapHostMemory);

    impl HostMemory for Copying {
        fn allocate(&self, size: u64) -> Result<Arc<TrackedRegion>, HostMemoryError> {
            self.0.allocate(size)
        }
        fn discard(&self, r: &TrackedRegion, o: usize, l: usize) -> Result<(), HostMemoryError> {
            self.0.discard(r, o, l)
        }
        fn residency(
            &self,
            r: &TrackedRegion,
            o: usize,
            l: usize,
            out: &mut Vec<bool>,
        ) -> Result<(), HostMemoryError> {
            self.0.residency(r, o, l, out)
        }
    }

    #[test]
    fn the_default_map_file_copies() {
        let host = Copying(MmapHostMemory::new());
        let region = host.allocate(2 * 4096).unwrap();
        let f = page_file(2);
        host.map_file(&region, 0, 2 * 4096, &f, 0).unwrap();
        assert_eq!([0, 4095, 4096].map(|a| byte(&region, a)), [1, 1, 2]);
        f.write_all_at(&[9; 4096], 0).unwrap();
        assert_eq!(byte(&region, 0), 1, "a copy, not a view of the file");
        assert!(
            host.map_file(&region, 0, 4096, &f, 8192).is_err(),
            "past EOF"
        );
    }

    #[test]
    fn bad_spans_and_sizes_are_errors() {
        let host = MmapHostMemory::new();
        assert!(host.allocate(0).is_err());
        assert!(host.allocate(100).is_err());
        let region = host.allocate(4096).unwrap();
        assert!(host.discard(&region, 4096, 4096).is_err());
        assert!(host.discard(&region, 1, 4096).is_err());
        let mut r = Vec::new();
        assert!(host.residency(&region, 0, 8192, &mut r).is_err());
    }
}
