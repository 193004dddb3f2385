//! Host memory backing for guest RAM.
//!
//! `pgm` asks a [`HostMemory`] provider for backing of each memory-backed
//! range. The provider hands out [`vm_memory::MmapRegion`]s, which keep their
//! mapping alive for as long as anyone holds a reference, so the guest memory
//! view and the KVM slots can share them safely. [`MmapHostMemory`] is the
//! plain provider: anonymous private mappings from the kernel.

use std::sync::Arc;

use vm_memory::MmapRegion;

/// Host page size assumed by `pgm` (and by KVM on x86).
pub const HOST_PAGE_SIZE: usize = 4096;

/// Errors of a host memory provider.
#[derive(Debug, thiserror::Error)]
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
    fn allocate(&self, size: u64) -> Result<Arc<MmapRegion>, HostMemoryError>;

    /// Gives `len` bytes at `offset` back to the host; they read as zero
    /// afterwards.
    fn discard(
        &self,
        region: &MmapRegion,
        offset: usize,
        len: usize,
    ) -> Result<(), HostMemoryError>;

    /// The guest's balloon took (`inflate`) or gave back the pages at
    /// `offset..offset + len`. Inflated pages return to the host and read as
    /// zero; a provider that accounts for ballooning (GMM) counts them. The
    /// default gives inflated pages back with [`discard`](Self::discard).
    fn balloon(
        &self,
        region: &MmapRegion,
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

    /// Fills `out` with one entry per page of `offset..offset + len`:
    /// whether the provider backs the page with a host page it shares with
    /// other guest pages (copy on write), as GMM's page sharing does. The
    /// default provider shares nothing.
    fn sharing(
        &self,
        region: &MmapRegion,
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
        region: &MmapRegion,
        offset: usize,
        len: usize,
        out: &mut Vec<bool>,
    ) -> Result<(), HostMemoryError>;
}

/// [`HostMemory`] over anonymous private mappings (`mmap`, `madvise`,
/// `mincore`).
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

fn check_span(region: &MmapRegion, offset: usize, len: usize) -> Result<(), HostMemoryError> {
    let ok = offset % HOST_PAGE_SIZE == 0
        && len % HOST_PAGE_SIZE == 0
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

impl HostMemory for MmapHostMemory {
    fn allocate(&self, size: u64) -> Result<Arc<MmapRegion>, HostMemoryError> {
        let bad = |message: String| HostMemoryError::Allocate { size, message };
        let len = usize::try_from(size).map_err(|_| bad("size too large".into()))?;
        if len == 0 || len % HOST_PAGE_SIZE != 0 {
            return Err(bad("size must be a non-zero multiple of 4 KiB".into()));
        }
        MmapRegion::new(len)
            .map(Arc::new)
            .map_err(|e| bad(e.to_string()))
    }

    fn discard(
        &self,
        region: &MmapRegion,
        offset: usize,
        len: usize,
    ) -> Result<(), HostMemoryError> {
        check_span(region, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the span was checked to lie inside the region's live
        // mapping; MADV_DONTNEED on a private anonymous mapping only drops
        // pages (they read as zero afterwards), it never unmaps.
        let rc =
            unsafe { libc::madvise(region.as_ptr().add(offset).cast(), len, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(HostMemoryError::Os {
                call: "madvise",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn residency(
        &self,
        region: &MmapRegion,
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
