//! [`BlockSpec`]: a disk as the command line names it (`--disk FILE[,ro]`).

use std::path::PathBuf;
use std::str::FromStr;

/// A disk image and how to attach it, parsed from `FILE[,ro]`.
///
/// The file name is everything before the first comma (a name containing a
/// comma cannot be given); the options after it are `ro` (the guest may
/// only read) and `rw` (the default).
///
/// ```
/// use vmm_core::devices::virtio::BlockSpec;
///
/// let spec: BlockSpec = "disk.img,ro".parse()?;
/// assert_eq!(spec.path.to_str(), Some("disk.img"));
/// assert!(spec.read_only);
/// assert_eq!(spec.to_string(), "disk.img,ro");
/// assert!("disk.img,fast".parse::<BlockSpec>().is_err());
/// # Ok::<(), vmm_core::devices::virtio::BlockSpecError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSpec {
    /// The raw image file.
    pub path: PathBuf,
    /// The guest may not write (the file is opened read-only and the device
    /// offers `VIRTIO_BLK_F_RO`).
    pub read_only: bool,
}

/// Why a `--disk` argument is not a [`BlockSpec`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockSpecError {
    /// Nothing before the first comma.
    #[error("disk {0:?}: no image file given (expected FILE[,ro])")]
    NoPath(String),
    /// An option other than `ro` / `rw`.
    #[error("disk {spec:?}: unknown option {option:?} (expected FILE[,ro])")]
    UnknownOption {
        /// The whole argument.
        spec: String,
        /// The option not understood.
        option: String,
    },
    /// `ro` and `rw` both given.
    #[error("disk {0:?}: both ro and rw given")]
    Conflict(String),
}

impl FromStr for BlockSpec {
    type Err = BlockSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(BlockSpecError::NoPath(s.to_owned()));
        }
        let mut mode = None;
        for option in parts {
            let read_only = match option {
                "ro" => true,
                "rw" => false,
                _ => {
                    return Err(BlockSpecError::UnknownOption {
                        spec: s.to_owned(),
                        option: option.to_owned(),
                    });
                }
            };
            if mode.is_some_and(|m| m != read_only) {
                return Err(BlockSpecError::Conflict(s.to_owned()));
            }
            mode = Some(read_only);
        }
        Ok(BlockSpec {
            path: PathBuf::from(path),
            read_only: mode.unwrap_or(false),
        })
    }
}

impl std::fmt::Display for BlockSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())?;
        if self.read_only {
            write!(f, ",ro")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_alone_is_read_write() {
        let spec: BlockSpec = "/images/a.img".parse().unwrap();
        assert_eq!(spec.path, PathBuf::from("/images/a.img"));
        assert!(!spec.read_only);
        assert_eq!(spec.to_string(), "/images/a.img");
    }

    #[test]
    fn options_set_the_mode() {
        assert!("a.img,ro".parse::<BlockSpec>().unwrap().read_only);
        assert!(!"a.img,rw".parse::<BlockSpec>().unwrap().read_only);
        assert!("a.img,ro,ro".parse::<BlockSpec>().unwrap().read_only);
    }

    #[test]
    fn bad_arguments_are_refused_with_the_argument_named() {
        assert_eq!(
            "".parse::<BlockSpec>(),
            Err(BlockSpecError::NoPath(String::new()))
        );
        assert_eq!(
            ",ro".parse::<BlockSpec>(),
            Err(BlockSpecError::NoPath(",ro".into()))
        );
        let err = "a.img,readonly".parse::<BlockSpec>().unwrap_err();
        assert_eq!(
            err,
            BlockSpecError::UnknownOption {
                spec: "a.img,readonly".into(),
                option: "readonly".into()
            }
        );
        assert!(err.to_string().contains("\"readonly\""));
        assert!(matches!(
            "a.img,".parse::<BlockSpec>(),
            Err(BlockSpecError::UnknownOption { option, .. }) if option.is_empty()
        ));
        assert_eq!(
            "a.img,ro,rw".parse::<BlockSpec>(),
            Err(BlockSpecError::Conflict("a.img,ro,rw".into()))
        );
    }
}
