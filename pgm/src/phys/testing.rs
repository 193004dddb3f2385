//! A host memory provider for tests that behaves like GMM where the plain
//! provider cannot: it shares the pages a test picks, and takes ballooned
//! pages back later (their old contents stay mapped).

use std::collections::BTreeSet;
use std::sync::Arc;

use parking_lot::Mutex;
use vm_memory::MmapRegion;

use super::host::{HOST_PAGE_SIZE, HostMemory, HostMemoryError, MmapHostMemory};

/// Anonymous memory with scripted sharing and deferred ballooning.
#[derive(Default)]
pub(crate) struct ScriptedHost {
    inner: MmapHostMemory,
    shared: Mutex<BTreeSet<usize>>,
}

impl ScriptedHost {
    /// From now on the provider reports these region pages as shared.
    pub(crate) fn share_pages(&self, pages: &[usize]) {
        *self.shared.lock() = pages.iter().copied().collect();
    }
}

impl HostMemory for ScriptedHost {
    fn allocate(&self, size: u64) -> Result<Arc<MmapRegion>, HostMemoryError> {
        self.inner.allocate(size)
    }

    fn discard(
        &self,
        region: &MmapRegion,
        offset: usize,
        len: usize,
    ) -> Result<(), HostMemoryError> {
        self.inner.discard(region, offset, len)
    }

    fn balloon(
        &self,
        _region: &MmapRegion,
        _offset: usize,
        _len: usize,
        _inflate: bool,
    ) -> Result<(), HostMemoryError> {
        Ok(())
    }

    fn sharing(
        &self,
        _region: &MmapRegion,
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
        region: &MmapRegion,
        offset: usize,
        len: usize,
        out: &mut Vec<bool>,
    ) -> Result<(), HostMemoryError> {
        self.inner.residency(region, offset, len, out)
    }
}
