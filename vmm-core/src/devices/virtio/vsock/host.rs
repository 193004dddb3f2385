//! The host's Unix sockets: the listening socket at `PATH` and
//! connections to `PATH_<port>`.
//!
//! An existing `PATH` is a live socket if a connection to it succeeds (or
//! finds its backlog full): that is an error, another VM (or program)
//! serves it. A socket file nobody listens on (a VM that ended without
//! removing it) is stale and is replaced. Anything else at `PATH` (a file,
//! a directory) is left alone and is an error. The device removes its
//! socket file when it is dropped, if the file is still the one it made.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The listening socket and the identity of its file.
#[derive(Debug)]
pub struct Listener {
    pub(super) socket: UnixListener,
    path: PathBuf,
    inode: (u64, u64),
}

impl Listener {
    /// Binds a non-blocking listening socket at `path`, replacing a stale
    /// socket file.
    pub fn bind(path: &Path) -> io::Result<Listener> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a socket",
                ));
            }
            match connect_nonblocking(path) {
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    std::fs::remove_file(path)?;
                }
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "a live socket is there (is another VM using it?)",
                    ));
                }
            }
        }
        let socket = UnixListener::bind(path)?;
        socket.set_nonblocking(true)?;
        let meta = std::fs::symlink_metadata(path)?;
        Ok(Listener {
            socket,
            path: path.to_owned(),
            inode: (meta.dev(), meta.ino()),
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.inode
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Connects a non-blocking stream to the Unix socket at `path` without
/// waiting: a listener whose backlog is full is `WouldBlock`, none at all
/// `ECONNREFUSED` or `ENOENT`.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_encoded_bytes();
    let mut addr = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes that
    // lives across the call; `fd` is an open socket.
    let ret = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&raw const addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}
