//! Errors of the guest-physical map.

use super::handler::HandlerError;
use super::host::HostMemoryError;

/// Errors returned by [`PhysMap`](super::PhysMap) operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PhysError {
    /// An address or size is not a multiple of the 4 KiB page size.
    #[error("{what} {value:#x} is not page aligned")]
    Misaligned {
        /// Which argument was misaligned.
        what: &'static str,
        /// The offending value.
        value: u64,
    },
    /// A range of size zero, or one that wraps past the end of the address space.
    #[error("invalid range {start:#x} + {size:#x}")]
    InvalidRange {
        /// Start address.
        start: u64,
        /// Size in bytes.
        size: u64,
    },
    /// A new range overlaps an existing one.
    #[error("range {start:#x}..={last:#x} overlaps existing range '{existing}'")]
    RangeOverlap {
        /// Start of the new range.
        start: u64,
        /// Last byte of the new range.
        last: u64,
        /// Name of the range already there.
        existing: String,
    },
    /// No range with this id, or no range of the expected kind at this address.
    #[error("no such range: {0}")]
    NoSuchRange(String),
    /// A new handler range overlaps an existing handler.
    #[error("handler {first:#x}..={last:#x} overlaps handler '{existing}'")]
    HandlerOverlap {
        /// First byte of the new handler.
        first: u64,
        /// Last byte of the new handler.
        last: u64,
        /// Description of the handler already there.
        existing: String,
    },
    /// The configured maximum number of handler ranges is reached.
    #[error("too many physical access handlers (maximum {max})")]
    TooManyHandlers {
        /// The configured maximum.
        max: usize,
    },
    /// No handler starts at this address.
    #[error("no physical access handler at {0:#x}")]
    NoSuchHandler(u64),
    /// The handler type id was not returned by `register_handler_type`.
    #[error("unknown handler type {0}")]
    UnknownHandlerType(u32),
    /// The handler kind does not fit the memory it would cover.
    #[error("handler kind {kind} cannot cover {what}")]
    HandlerKindMismatch {
        /// The handler kind.
        kind: &'static str,
        /// What it was asked to cover.
        what: String,
    },
    /// An invalid configuration value.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The ROM image is larger than the range.
    #[error("ROM image of {image} bytes does not fit a range of {size} bytes")]
    RomImageTooLarge {
        /// Image size in bytes.
        image: usize,
        /// Range size in bytes.
        size: u64,
    },
    /// A page is not in the state the operation needs.
    #[error("page at {gpa:#x} is {state}")]
    PageState {
        /// Guest-physical address of the page.
        gpa: u64,
        /// Its state.
        state: &'static str,
    },
    /// Host memory backing failed.
    #[error("host memory: {0}")]
    HostMemory(#[from] HostMemoryError),
    /// A physical access handler failed.
    #[error("access handler '{desc}' at {gpa:#x}: {source}")]
    Handler {
        /// Handler description.
        desc: String,
        /// Guest-physical address of the access.
        gpa: u64,
        /// The handler's error.
        source: HandlerError,
    },
    /// Reading a dirty bitmap failed.
    #[error("dirty log of slot {slot}: {message}")]
    DirtyLog {
        /// The KVM slot.
        slot: u32,
        /// What went wrong.
        message: String,
    },
    /// The dirty bitmap handed in is too short for the slot.
    #[error("dirty bitmap for slot {slot} has {got} words, need {need}")]
    DirtyBitmapSize {
        /// The KVM slot.
        slot: u32,
        /// Words received.
        got: usize,
        /// Words needed.
        need: usize,
    },
    /// Writing a dump failed.
    #[error("writing physical memory dump: {0}")]
    Io(#[from] std::io::Error),
    /// Building the `vm-memory` view failed.
    #[error("building the vm-memory view: {0}")]
    GuestMemory(String),
}
