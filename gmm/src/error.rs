//! The GMM error type.

use std::io;

use crate::ids::{Account, PageId, VmId};

/// Everything GMM can refuse or fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The VM would exceed its reservation for an account (VirtualBox `VERR_GMM_HIT_VM_ACCOUNT_LIMIT`).
    #[error(
        "out of memory: VM {vm} would exceed its {account} reservation \
         ({allocated} allocated + {ballooned} ballooned + {requested} requested > {reserved} reserved pages)"
    )]
    VmAccountLimit {
        /// The VM.
        vm: VmId,
        /// The account.
        account: Account,
        /// Pages requested.
        requested: u64,
        /// Pages already allocated on the account.
        allocated: u64,
        /// Ballooned pages (counted against the base account only).
        ballooned: u64,
        /// Pages reserved on the account.
        reserved: u64,
    },
    /// The GMM-wide maximum would be exceeded (VirtualBox `VERR_GMM_HIT_GLOBAL_LIMIT`).
    #[error(
        "out of memory: GMM limit of {max} host pages reached ({in_use} in use, {requested} requested)"
    )]
    GlobalLimit {
        /// Pages requested.
        requested: u64,
        /// Host pages in use.
        in_use: u64,
        /// The global maximum.
        max: u64,
    },
    /// The process is close to the kernel's cap on memory mappings
    /// (`vm.max_map_count`); GMM refuses remaps that could use up the rest.
    #[error(
        "host mappings exhausted: the process has {mappings} of at most {limit} memory mappings \
         (vm.max_map_count); GMM keeps the rest for the VMM"
    )]
    MappingsExhausted {
        /// Mappings the process has.
        mappings: u64,
        /// The kernel's cap.
        limit: u64,
    },
    /// Every chunk id is in use (the host chunk table is fragmented beyond its size).
    #[error("out of memory: all {0} chunk ids are in use")]
    ChunksExhausted(u32),
    /// Registering the VM would reserve more than the global maximum without over-commit.
    #[error("reservation of {requested} pages exceeds the {available} pages still unreserved")]
    ReservationTooLarge {
        /// Pages asked for.
        requested: u64,
        /// Pages still available for reservation.
        available: u64,
    },
    /// Balloon inflation beyond the base reservation (VirtualBox `VERR_GMM_ATTEMPT_TO_FREE_TOO_MUCH`).
    #[error(
        "balloon inflate by {requested} pages: {allocated} allocated + {ballooned} ballooned exceeds {reserved} reserved base pages"
    )]
    BalloonInflateTooMuch {
        /// Pages requested.
        requested: u64,
        /// Allocated base pages.
        allocated: u64,
        /// Pages already ballooned.
        ballooned: u64,
        /// Reserved base pages.
        reserved: u64,
    },
    /// Balloon deflation beyond what is ballooned (VirtualBox `VERR_GMM_ATTEMPT_TO_DEFLATE_TOO_MUCH`).
    #[error("balloon deflate by {requested} pages, but only {ballooned} are ballooned")]
    BalloonDeflateTooMuch {
        /// Pages requested.
        requested: u64,
        /// Pages ballooned.
        ballooned: u64,
    },
    /// The page id does not name an allocated page (VirtualBox `VERR_GMM_PAGE_NOT_FOUND`).
    #[error("page {0} is not allocated")]
    PageNotFound(PageId),
    /// The page belongs to another VM, or is shared.
    #[error("page {page} does not belong to VM {vm}")]
    NotOwner {
        /// The page.
        page: PageId,
        /// The VM that asked.
        vm: VmId,
    },
    /// The page backs a RAM region and must be freed through the region.
    #[error("page {0} backs a RAM region; free it through the region")]
    PageInRegion(PageId),
    /// A page range does not fit the region.
    #[error("pages {first}..{first}+{count} are outside the region of {pages} pages")]
    RangeOutOfBounds {
        /// First page of the range.
        first: u64,
        /// Number of pages.
        count: u64,
        /// Region size in pages.
        pages: u64,
    },
    /// A RAM region larger than the VM's base reservation could never be backed.
    #[error("a RAM region of {pages} pages exceeds the VM's {reserved} reserved base pages")]
    RegionTooLarge {
        /// Pages asked for.
        pages: u64,
        /// The VM's base reservation.
        reserved: u64,
    },
    /// A region page is in the wrong state for the operation.
    #[error("region page {index} is {found}, expected {expected}")]
    PageState {
        /// Page index in the region.
        index: u64,
        /// What the operation needs.
        expected: &'static str,
        /// What the page is.
        found: &'static str,
    },
    /// Invalid configuration.
    #[error("invalid GMM configuration: {0}")]
    InvalidConfig(&'static str),
    /// A host system call failed.
    #[error("host {op} failed: {source}")]
    Host {
        /// What was attempted.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// True for the errors that mean "the VM is out of memory" (stop the VM cleanly).
    ///
    /// ```
    /// let e = gmm::Error::ChunksExhausted(8);
    /// assert!(e.is_out_of_memory());
    /// ```
    pub fn is_out_of_memory(&self) -> bool {
        matches!(
            self,
            Error::VmAccountLimit { .. } | Error::GlobalLimit { .. } | Error::ChunksExhausted(_)
        )
    }

    pub(crate) fn host(op: &'static str) -> Self {
        Error::Host {
            op,
            source: io::Error::last_os_error(),
        }
    }
}

/// Result alias for GMM operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
