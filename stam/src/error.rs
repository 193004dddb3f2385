//! Errors returned by the registry.

use thiserror::Error;

/// Why a sample name was rejected (see [`validate_name`](crate::validate_name)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name does not start with `/`.
    #[error("must start with '/'")]
    NoLeadingSlash,
    /// The name contains an empty component (`//`).
    #[error("must not contain '//'")]
    EmptyComponent,
    /// The name ends with `/`.
    #[error("must not end with '/'")]
    TrailingSlash,
    /// The name contains a backslash.
    #[error("must not contain '\\'")]
    Backslash,
    /// The name contains a control character (newline, tab, ...).
    #[error("must not contain control characters")]
    ControlCharacter,
    /// The name is longer than [`MAX_NAME_LEN`](crate::MAX_NAME_LEN) characters.
    #[error("longer than {max} characters", max = crate::MAX_NAME_LEN)]
    TooLong,
}

/// Errors from registering samples.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// The sample name breaks a naming rule.
    #[error("invalid statistics name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// The rule it breaks.
        reason: NameError,
    },
    /// The description is empty (every sample says what it measures).
    #[error("statistics sample {0:?} has no description")]
    NoDescription(String),
    /// A sample with this name is already registered.
    #[error("statistics name {0:?} is already registered")]
    Duplicate(String),
    /// Hexadecimal display was requested for a sample type that has no such form.
    #[error("statistics sample {name:?}: hexadecimal display applies to gauges and callbacks only")]
    HexNotSupported {
        /// The sample name.
        name: String,
    },
}
