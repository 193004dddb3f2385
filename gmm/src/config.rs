//! GMM configuration.

use crate::error::{Error, Result};
use crate::ids::{CHUNK_PAGES, PAGE_SIZE};

/// The largest [`GmmConfig::max_pages`]: 4 TiB of host pages (page ids are
/// 32 bits and the id space holds the maximum three times over).
pub const MAX_PAGES: u64 = 1 << 30;

/// How a [`Gmm`](crate::Gmm) is set up.
///
/// ```
/// let cfg = gmm::GmmConfig::new(1 << 18); // at most 1 GiB of host pages
/// assert!(!cfg.overcommit);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GmmConfig {
    /// Global maximum of host pages in use by all VMs together.
    pub max_pages: u64,
    /// Whether VM reservations may add up to more than `max_pages`.
    pub overcommit: bool,
    /// Allocate from partly used chunks of other VMs only when at least this
    /// many pages are free in partly used chunks.
    pub plenty_free_pages: u64,
    /// Empty chunks kept for reuse (their memory is returned either way);
    /// empty chunks beyond this are freed and their ids recycled.
    pub empty_chunk_cache: u32,
}

impl GmmConfig {
    /// Defaults with the given global maximum (in 4 KiB pages).
    pub fn new(max_pages: u64) -> Self {
        GmmConfig {
            max_pages,
            overcommit: false,
            plenty_free_pages: 4 * CHUNK_PAGES as u64,
            empty_chunk_cache: 4,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_pages == 0 {
            return Err(Error::InvalidConfig("max_pages must be non-zero"));
        }
        // Page ids are 32 bits: chunk ids must stay below 2^23.
        if self.max_pages > MAX_PAGES {
            return Err(Error::InvalidConfig("max_pages above 4 TiB"));
        }
        Ok(())
    }

    /// Chunk ids available: room for the maximum twice over (fragmentation),
    /// once more for pages parked by the balloon (they keep their ids but
    /// cost no host memory; at most `max_pages` of them, beyond that
    /// ballooning gives ids back), plus the empty-chunk cache and the
    /// reserved id 0. The id space is address space of the sparse memfd,
    /// not memory.
    pub(crate) fn chunk_limit(&self) -> u32 {
        let chunks = self.max_pages.div_ceil(CHUNK_PAGES as u64);
        let limit = chunks * 3 + u64::from(self.empty_chunk_cache) + 2;
        limit.min(1 << 23) as u32
    }

    /// Host address space (not memory) the GMM maps for its chunks: about
    /// three times `max_pages` (see the chunk limit above). A VMM checks
    /// that it fits an address-space limit before creating the GMM.
    ///
    /// ```
    /// let cfg = gmm::GmmConfig::new(1 << 18); // 1 GiB
    /// assert!(cfg.backing_bytes() >= 3 << 30);
    /// ```
    pub fn backing_bytes(&self) -> u64 {
        u64::from(self.chunk_limit()) * (CHUNK_PAGES * PAGE_SIZE) as u64
    }
}
