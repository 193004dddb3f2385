//! GMM as `pgm`'s host memory: guest RAM comes from GMM chunks, counted
//! against the VM's reservation.

use std::sync::Arc;

use gmm::RamRegion;
use parking_lot::Mutex;
use pgm::phys::TrackedRegion;
use pgm::phys::{HOST_PAGE_SIZE, HostMemory, HostMemoryError};

/// [`HostMemory`] handing out GMM RAM regions of one VM.
pub(crate) struct GmmHostMemory {
    vm: gmm::Vm,
    /// The regions handed out, kept alive as long as the provider (the
    /// `TrackedRegion`s given to `pgm` only borrow their mappings).
    regions: Mutex<Vec<RamRegion>>,
}

impl GmmHostMemory {
    pub(crate) fn new(vm: gmm::Vm) -> Self {
        GmmHostMemory {
            vm,
            regions: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on the GMM region behind `region`.
    fn with_region<T>(
        &self,
        region: &TrackedRegion,
        f: impl FnOnce(&RamRegion) -> gmm::Result<T>,
    ) -> Result<T, HostMemoryError> {
        let addr = region.as_ptr() as u64;
        let regions = self.regions.lock();
        let ram = regions
            .iter()
            .find(|r| r.host_addr() == addr)
            .ok_or_else(|| HostMemoryError::Allocate {
                size: region.size() as u64,
                message: format!("region at {addr:#x} was not handed out by GMM"),
            })?;
        f(ram).map_err(|e| gmm_error(region.size() as u64, e))
    }
}

fn gmm_error(size: u64, e: gmm::Error) -> HostMemoryError {
    HostMemoryError::Allocate {
        size,
        message: e.to_string(),
    }
}

/// First page and page count of a page-aligned span.
fn pages(region: &TrackedRegion, offset: usize, len: usize) -> Result<(u64, u64), HostMemoryError> {
    let aligned = offset.is_multiple_of(HOST_PAGE_SIZE) && len.is_multiple_of(HOST_PAGE_SIZE);
    if !aligned
        || offset
            .checked_add(len)
            .is_none_or(|end| end > region.size())
    {
        return Err(HostMemoryError::BadSpan {
            offset,
            len,
            size: region.size(),
        });
    }
    Ok((
        (offset / HOST_PAGE_SIZE) as u64,
        (len / HOST_PAGE_SIZE) as u64,
    ))
}

impl HostMemory for GmmHostMemory {
    fn allocate(&self, size: u64) -> Result<Arc<TrackedRegion>, HostMemoryError> {
        let count = size / HOST_PAGE_SIZE as u64;
        let ram = self
            .vm
            .create_ram_region(count)
            .map_err(|e| gmm_error(size, e))?;
        ram.alloc(0, count).map_err(|e| gmm_error(size, e))?;
        let len = usize::try_from(ram.len_bytes()).map_err(|_| HostMemoryError::Allocate {
            size,
            message: "region larger than the address space".into(),
        })?;
        // SAFETY: the mapping belongs to `ram`, which this provider keeps
        // alive (in `regions`) for as long as the provider, and `pgm` keeps
        // the provider alive while it uses the region; the region does not
        // unmap on drop (raw pointer).
        let region = unsafe {
            TrackedRegion::build_raw(
                ram.host_addr() as *mut u8,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
            )
        }
        .map_err(|e| HostMemoryError::Allocate {
            size,
            message: e.to_string(),
        })?;
        self.regions.lock().push(ram);
        Ok(Arc::new(region))
    }

    fn discard(
        &self,
        region: &TrackedRegion,
        offset: usize,
        len: usize,
    ) -> Result<(), HostMemoryError> {
        let (first, count) = pages(region, offset, len)?;
        self.with_region(region, |ram| ram.discard(first, count))
    }

    fn balloon(
        &self,
        region: &TrackedRegion,
        offset: usize,
        len: usize,
        inflate: bool,
    ) -> Result<(), HostMemoryError> {
        let (first, count) = pages(region, offset, len)?;
        self.with_region(region, |ram| {
            if inflate {
                ram.balloon_inflate(first, count)
            } else {
                // The guest uses the pages from now on: parked pages come
                // back backed; back the others (ballooned after sharing or
                // a restore, they come back empty) again.
                ram.balloon_deflate(first, count)?;
                let states = ram.page_states(first, count)?;
                let mut i = 0;
                while i < states.len() {
                    let empty = states[i] == gmm::PageState::Empty;
                    let n = states[i..]
                        .iter()
                        .take_while(|s| (**s == gmm::PageState::Empty) == empty)
                        .count();
                    if empty {
                        ram.alloc(first + i as u64, n as u64)?;
                    }
                    i += n;
                }
                Ok(())
            }
        })
    }

    fn map_file(
        &self,
        region: &TrackedRegion,
        offset: usize,
        len: usize,
        file: &std::fs::File,
        file_offset: u64,
    ) -> Result<(), HostMemoryError> {
        let (first, count) = pages(region, offset, len)?;
        self.with_region(region, |ram| ram.map_file(first, count, file, file_offset))
    }

    fn sharing(
        &self,
        region: &TrackedRegion,
        offset: usize,
        len: usize,
        out: &mut Vec<bool>,
    ) -> Result<(), HostMemoryError> {
        let (first, count) = pages(region, offset, len)?;
        let states = self.with_region(region, |ram| ram.page_states(first, count))?;
        out.clear();
        out.extend(states.iter().map(|s| *s == gmm::PageState::Shared));
        Ok(())
    }

    fn residency(
        &self,
        region: &TrackedRegion,
        offset: usize,
        len: usize,
        out: &mut Vec<bool>,
    ) -> Result<(), HostMemoryError> {
        let (first, count) = pages(region, offset, len)?;
        *out = self.with_region(region, |ram| ram.resident_pages(first, count))?;
        Ok(())
    }
}
