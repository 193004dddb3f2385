//! A host memory provider for tests that behaves like GMM where the plain
//! provider cannot: it shares the pages a test picks, keeps balloon accounts
//! and takes ballooned pages back later (their old contents stay mapped),
//! and records the file mappings it makes.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::write_bitmap::TrackedRegion;
use parking_lot::Mutex;

use super::host::{HOST_PAGE_SIZE, HostMemory, HostMemoryError, MmapHostMemory};

/// Anonymous memory with scripted sharing, balloon accounts and a record of
/// file mappings.
#[derive(Default)]
pub(crate) struct ScriptedHost {
    inner: MmapHostMemory,
    shared: Mutex<BTreeSet<usize>>,
    ballooned: Mutex<BTreeSet<usize>>,
    mapped: Mutex<Vec<(usize, usize, u64)>>,
}

impl ScriptedHost {
    /// From now on the provider reports these region pages as shared.
    pub(crate) fn share_pages(&self, pages: &[usize]) {
        *self.shared.lock() = pages.iter().copied().collect();
    }

    /// The region pages in the balloon, in order.
    #[cfg(feature = "saved-state")]
    pub(crate) fn ballooned(&self) -> Vec<usize> {
        self.ballooned.lock().iter().copied().collect()
    }

    /// The `map_file` calls so far: region offset, length, file offset.
    #[cfg(feature = "saved-state")]
    pub(crate) fn mapped(&self) -> Vec<(usize, usize, u64)> {
        self.mapped.lock().clone()
    }
}

impl HostMemory for ScriptedHost {
    fn allocate(&self, size: u64) -> Result<Arc<TrackedRegion>, HostMemoryError> {
        self.inner.allocate(size)
    }

    fn discard(
        &self,
        region: &TrackedRegion,
        offset: usize,
        len: usize,
    ) -> Result<(), HostMemoryError> {
        self.inner.discard(region, offset, len)
    }

    fn balloon(
        &self,
        _region: &TrackedRegion,
        offset: usize,
        len: usize,
        inflate: bool,
    ) -> Result<(), HostMemoryError> {
        let mut ballooned = self.ballooned.lock();
        for page in offset / HOST_PAGE_SIZE..(offset + len) / HOST_PAGE_SIZE {
            let changed = if inflate {
                ballooned.insert(page)
            } else {
                ballooned.remove(&page)
            };
            if !changed {
                return Err(HostMemoryError::BadSpan {
                    offset,
                    len,
                    size: 0,
                });
            }
        }
        Ok(())
    }

    fn map_file(
        &self,
        region: &TrackedRegion,
        offset: usize,
        len: usize,
        file: &std::fs::File,
        file_offset: u64,
    ) -> Result<(), HostMemoryError> {
        self.mapped.lock().push((offset, len, file_offset));
        self.inner.map_file(region, offset, len, file, file_offset)
    }

    fn sharing(
        &self,
        _region: &TrackedRegion,
        offset: usize,
        len: usize,
        out: &mut Vec<bool>,
    ) -> Result<(), HostMemoryError> {
        let shared = self.shared.lock();
        let first = offset / HOST_PAGE_SIZE;
        out.clear();
        out.extend((first..first + len / HOST_PAGE_SIZE).map(|p| shared.contains(&p)));
        Ok(())
    }

    fn residency(
        &self,
        region: &TrackedRegion,
        offset: usize,
        len: usize,
        out: &mut Vec<bool>,
    ) -> Result<(), HostMemoryError> {
        self.inner.residency(region, offset, len, out)
    }
}
