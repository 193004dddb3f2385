//! [`VsockSpec`]: the `--vsock cid=N,socket=PATH` text.

use std::path::PathBuf;
use std::str::FromStr;

/// The longest Unix socket path (`sun_path` less its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// A vsock device's configuration: the guest's CID and the Unix socket
/// host programs connect to (and whose `PATH_<port>` siblings the guest's
/// connections reach).
///
/// ```
/// use vmm_core::devices::virtio::vsock::VsockSpec;
/// let spec: VsockSpec = "cid=3,socket=/run/vm.sock".parse()?;
/// assert_eq!(spec.cid, 3);
/// assert_eq!(spec.socket.to_str(), Some("/run/vm.sock"));
/// assert!("cid=2,socket=/run/vm.sock".parse::<VsockSpec>().is_err());
/// # Ok::<(), vmm_core::devices::virtio::vsock::VsockSpecError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockSpec {
    /// The guest's context ID (3 or more: 0 to 2 are reserved).
    pub cid: u64,
    /// The host-side Unix socket.
    pub socket: PathBuf,
}

/// What is wrong with a `--vsock` text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VsockSpecError {
    /// No `cid=`.
    #[error("--vsock needs cid=N (3 or more), e.g. --vsock cid=3,socket=/tmp/vm.vsock")]
    NoCid,
    /// No `socket=`.
    #[error("--vsock needs socket=PATH, e.g. --vsock cid=3,socket=/tmp/vm.vsock")]
    NoSocket,
    /// A CID that is not a number of at least 3 (or is the wildcard).
    #[error("--vsock: cid {0:?} must be a number from 3 to 4294967294 (0-2 are reserved)")]
    BadCid(String),
    /// An empty or too long socket path.
    #[error(
        "--vsock: socket path {0:?} must be 1 to {max} bytes (it gets a _PORT suffix for guest connections)",
        max = MAX_SOCKET_PATH - 11
    )]
    BadSocket(String),
    /// An item that is not `key=value` or has an unknown key.
    #[error("--vsock: unknown item {0:?} (expected cid=N or socket=PATH)")]
    UnknownItem(String),
    /// A key given twice.
    #[error("--vsock: {0} given twice")]
    Duplicate(&'static str),
}

impl FromStr for VsockSpec {
    type Err = VsockSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut cid = None;
        let mut socket = None;
        for item in s.split(',') {
            match item.split_once('=') {
                Some(("cid", text)) => {
                    let value = text
                        .parse::<u64>()
                        .ok()
                        .filter(|c| (3..u64::from(u32::MAX)).contains(c))
                        .ok_or_else(|| VsockSpecError::BadCid(text.to_owned()))?;
                    if cid.replace(value).is_some() {
                        return Err(VsockSpecError::Duplicate("cid"));
                    }
                }
                Some(("socket", path)) => {
                    // Room for "_4294967295" after it.
                    if path.is_empty() || path.len() > MAX_SOCKET_PATH - 11 || path.contains('\0') {
                        return Err(VsockSpecError::BadSocket(path.to_owned()));
                    }
                    if socket.replace(PathBuf::from(path)).is_some() {
                        return Err(VsockSpecError::Duplicate("socket"));
                    }
                }
                _ => return Err(VsockSpecError::UnknownItem(item.to_owned())),
            }
        }
        Ok(VsockSpec {
            cid: cid.ok_or(VsockSpecError::NoCid)?,
            socket: socket.ok_or(VsockSpecError::NoSocket)?,
        })
    }
}

impl std::fmt::Display for VsockSpec {
    /// The `--vsock` text that parses back to this spec.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cid={},socket={}", self.cid, self.socket.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_reads_back_as_it_prints() {
        let spec: VsockSpec = "socket=/run/v.sock,cid=7".parse().unwrap();
        assert_eq!(spec.to_string(), "cid=7,socket=/run/v.sock");
        assert_eq!(spec.to_string().parse::<VsockSpec>().unwrap(), spec);
    }

    #[test]
    fn bad_texts_say_what_is_wrong() {
        let long = "x".repeat(MAX_SOCKET_PATH);
        let cases = [
            ("socket=/s", VsockSpecError::NoCid),
            ("cid=3", VsockSpecError::NoSocket),
            ("cid=2,socket=/s", VsockSpecError::BadCid("2".into())),
            ("cid=-1,socket=/s", VsockSpecError::BadCid("-1".into())),
            (
                "cid=4294967295,socket=/s",
                VsockSpecError::BadCid("4294967295".into()),
            ),
            ("cid=3,socket=", VsockSpecError::BadSocket(String::new())),
            (
                &format!("cid=3,socket={long}"),
                VsockSpecError::BadSocket(long.clone()),
            ),
            ("cid=3,cid=4,socket=/s", VsockSpecError::Duplicate("cid")),
            (
                "cid=3,socket=/s,port=1",
                VsockSpecError::UnknownItem("port=1".into()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<VsockSpec>(), Err(want), "{text:?}");
        }
        let spec: VsockSpec = "socket=/tmp/v,cid=4294967294".parse().unwrap();
        assert_eq!(spec.cid, 4_294_967_294);
    }
}
