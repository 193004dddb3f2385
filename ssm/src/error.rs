//! The error type of every fallible `ssm` operation.

use std::fmt;

/// Identifies a unit in error messages: its name and instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitId {
    /// Unit name (1 to 48 printable ASCII bytes).
    pub name: String,
    /// Instance number (several devices of one kind each save their own instance).
    pub instance: u32,
}

impl UnitId {
    /// Builds an id from a name and an instance.
    pub fn new(name: impl Into<String>, instance: u32) -> Self {
        Self {
            name: name.into(),
            instance,
        }
    }
}

impl fmt::Display for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}'#{}", self.name, self.instance)
    }
}

/// Errors from writing, reading, verifying or driving a saved state.
///
/// Damage to a stream is reported with the byte offset of the structure where
/// it was found and a short description of that structure, so that a
/// `verify` run names the place of the damage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The underlying file, socket or buffer failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended inside a structure.
    #[error("stream truncated at offset {offset} while reading {what}")]
    Truncated {
        /// Offset where more bytes were expected.
        offset: u64,
        /// The structure being read.
        what: String,
    },
    /// A structure's magic bytes are wrong (not a saved state, or misplaced data).
    #[error("bad magic at offset {offset}: expected {what}")]
    BadMagic {
        /// Offset of the structure.
        offset: u64,
        /// The structure that was expected there.
        what: String,
    },
    /// A structure's CRC32C does not match its contents.
    #[error(
        "CRC mismatch in {what} at offset {offset}: stored {stored:#010x}, computed {computed:#010x}"
    )]
    Crc {
        /// Offset of the structure.
        offset: u64,
        /// The structure whose CRC failed.
        what: String,
        /// CRC recorded in the stream.
        stored: u32,
        /// CRC computed over the bytes read.
        computed: u32,
    },
    /// A structure carries a value that cannot be valid.
    #[error("malformed {what} at offset {offset}: {reason}")]
    Malformed {
        /// Offset of the structure.
        offset: u64,
        /// The structure.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Damage found while reading a unit's records: names the unit and where
    /// it starts, since the damage may only show further on (a corrupted
    /// length makes the reader run into the next structure or the end).
    #[error("in unit {unit} pass {} (unit header at offset {offset}): {source}", crate::reader::pass_name(*pass))]
    InUnit {
        /// The unit being read.
        unit: UnitId,
        /// Its pass.
        pass: u32,
        /// Offset of its unit header.
        offset: u64,
        /// The damage.
        source: Box<Error>,
    },
    /// The stream's format version is not one this library reads.
    #[error("unsupported saved-state format version {0}")]
    UnsupportedFormat(u32),
    /// The stream holds a unit no registered unit claims.
    #[error("unknown unit {0} in saved state")]
    UnknownUnit(UnitId),
    /// A registered unit has no final-pass data in the stream.
    #[error("unit {0} is missing from the saved state")]
    MissingUnit(UnitId),
    /// The stream holds a unit version the registered unit cannot load.
    #[error(
        "unit {unit}: saved version {version} is not supported (loadable: {oldest}..={newest})"
    )]
    UnsupportedVersion {
        /// The unit.
        unit: UnitId,
        /// Version found in the stream.
        version: u32,
        /// Oldest version the unit loads.
        oldest: u32,
        /// Newest version the unit loads (its current version).
        newest: u32,
    },
    /// A load callback asked for more data than its unit holds.
    #[error("unit {unit}: read past the end of the unit's data (pass {})", crate::reader::pass_name(*pass))]
    ReadPastEndOfUnit {
        /// The unit.
        unit: UnitId,
        /// The pass being loaded.
        pass: u32,
    },
    /// A load callback returned before reading all data its unit holds.
    #[error("unit {unit}: load callback left data unread (pass {})", crate::reader::pass_name(*pass))]
    UnitNotFullyRead {
        /// The unit.
        unit: UnitId,
        /// The pass being loaded.
        pass: u32,
    },
    /// A value read by a load callback is out of range (a bool that is not 0
    /// or 1, a string that is not UTF-8, a buffer longer than allowed).
    #[error("unit {unit}: invalid value: {reason}")]
    InvalidValue {
        /// The unit.
        unit: UnitId,
        /// What is wrong.
        reason: String,
    },
    /// A unit name is empty, longer than 48 bytes or not printable ASCII.
    #[error("invalid unit name {0:?}: must be 1..=48 printable ASCII bytes")]
    InvalidUnitName(String),
    /// Two units with the same name and instance were registered.
    #[error("unit {0} is registered twice")]
    DuplicateUnit(UnitId),
    /// A live save did not converge within the configured number of passes.
    #[error("live save did not converge after {passes} passes")]
    TooManyPasses {
        /// Passes run.
        passes: u32,
    },
    /// A live save wrote more than the configured limit before the final pass.
    #[error("live save wrote {written} bytes, over the limit of {limit}")]
    LiveSaveTooLarge {
        /// Bytes written by the live passes so far.
        written: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A unit voted to give up the live save.
    #[error("unit {unit} gave up the live save in pass {pass}")]
    UnitGaveUp {
        /// The unit.
        unit: UnitId,
        /// The pass after which it voted.
        pass: u32,
    },
    /// A save cannot write to its target path: it is not a regular file (a
    /// directory, device node, FIFO or socket), a symbolic link to nothing,
    /// or its temporary file cannot be created beside it.
    #[error("cannot save to {}: {reason}", path.display())]
    Target {
        /// The path the save was asked to write.
        path: std::path::PathBuf,
        /// Why it cannot be written.
        reason: String,
    },
    /// The API was used out of order (a unit left open, a second unit opened
    /// inside one, a read before a unit was opened).
    #[error("invalid use: {0}")]
    InvalidState(String),
    /// A callback supplied by the caller (a unit, or the stop-the-VM hook) failed.
    #[error("{0}")]
    Callback(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// Wraps an error from a unit callback or the caller's hook.
    pub fn callback(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Callback(e.into())
    }

    /// Adds the unit to stream-damage errors (truncation, bad magic, CRC,
    /// malformed structure); errors that already name the unit pass through.
    pub(crate) fn in_unit(self, info: &crate::reader::UnitInfo) -> Self {
        match self {
            Error::Truncated { .. }
            | Error::BadMagic { .. }
            | Error::Crc { .. }
            | Error::Malformed { .. } => Error::InUnit {
                unit: info.id.clone(),
                pass: info.pass,
                offset: info.offset,
                source: Box::new(self),
            },
            e => e,
        }
    }

    pub(crate) fn truncated(offset: u64, what: impl Into<String>) -> Self {
        Error::Truncated {
            offset,
            what: what.into(),
        }
    }

    pub(crate) fn malformed(
        offset: u64,
        what: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Malformed {
            offset,
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// Result alias for `ssm` operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
