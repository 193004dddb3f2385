//! The host side of a network device: an existing Linux tap interface.
//!
//! Like Firecracker and Cloud Hypervisor given a tap name, the device
//! attaches to an interface the host administrator created (`ip tuntap add
//! NAME mode tap`) and does not create one: `TUNSETIFF` on a name that does
//! not exist would make a new, unconfigured tap that vanishes with the VM,
//! which is never what `--net tap=NAME` means. So [`Tap::open`] first looks
//! the interface up in the process's network namespace (`if_nametoindex`;
//! not `/sys/class/net`, which shows the namespace sysfs was mounted in)
//! and fails with a message naming the tap.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::rxtx::Backend;
use super::spec::MAX_TAP_NAME;

/// Bytes of the `virtio_net_hdr_v1` in front of every frame.
pub const VNET_HDR_LEN: usize = 12;

/// The offloads the tap may use towards a driver that accepted
/// `features`: partial checksums if it accepted `VIRTIO_NET_F_GUEST_CSUM`,
/// and with those large TCP segments as far as it accepted
/// `GUEST_TSO4`, `GUEST_TSO6` and `GUEST_ECN` (the kernel refuses
/// segmentation without checksum offload, as virtio does).
///
/// ```
/// use vmm_core::devices::virtio::net::offloads_for;
/// use virtio_bindings::virtio_net::*;
/// let f = |bit: u32| 1u64 << bit;
/// assert_eq!(offloads_for(f(VIRTIO_NET_F_GUEST_TSO4)), 0);
/// let csum_tso4 = f(VIRTIO_NET_F_GUEST_CSUM) | f(VIRTIO_NET_F_GUEST_TSO4);
/// assert_eq!(offloads_for(csum_tso4), libc::TUN_F_CSUM | libc::TUN_F_TSO4);
/// ```
pub fn offloads_for(features: u64) -> libc::c_uint {
    use virtio_bindings::virtio_net::{
        VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
    };
    let has = |bit: u32| features & (1 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    if has(VIRTIO_NET_F_GUEST_ECN) && flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
        flags |= libc::TUN_F_TSO_ECN;
    }
    flags
}

/// An open tap: frames with a 12-byte virtio-net header in front.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// An `ifreq` naming `name` with the flags `flags`.
pub(crate) fn ifreq(name: &str, flags: libc::c_int) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() > MAX_TAP_NAME || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an interface name",
        ));
    }
    let mut ifr_name = [0 as libc::c_char; libc::IFNAMSIZ];
    for (dst, &src) in ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(libc::ifreq {
        ifr_name,
        ifr_ifru: libc::__c_anonymous_ifr_ifru {
            // The flags are 16 bits wide in the kernel's structure.
            ifru_flags: flags as libc::c_short,
        },
    })
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Issues `request`, whose argument is a pointer to a `T`, with `arg`.
pub(crate) fn ioctl_with_ref<T>(fd: RawFd, request: libc::Ioctl, arg: &T) -> io::Result<()> {
    // SAFETY: every caller passes a tun/socket request whose argument is a
    // pointer to a `T` (an ifreq or a c_int); `arg` is valid for the whole
    // call and the kernel reads (or, for SIOCGIFFLAGS, writes) at most
    // that structure.
    check(unsafe { libc::ioctl(fd, request, arg as *const T) })
}

/// Issues `request`, whose argument is an integer passed by value.
pub(crate) fn ioctl_with_val(
    fd: RawFd,
    request: libc::Ioctl,
    arg: libc::c_ulong,
) -> io::Result<()> {
    // SAFETY: the request takes its argument by value (TUNSETOFFLOAD,
    // TUNSETPERSIST): the kernel dereferences no pointer.
    check(unsafe { libc::ioctl(fd, request, arg) })
}

/// Opens `/dev/net/tun` (non-blocking) and attaches it to tap `name` with
/// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | extra`.
pub(crate) fn attach(name: &str, extra: libc::c_int) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/net/tun: {e}")))?;
    let req = ifreq(
        name,
        libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | extra,
    )?;
    ioctl_with_ref(file.as_raw_fd(), libc::TUNSETIFF, &req)?;
    Ok(file)
}

/// Whether the network namespace of this thread has an interface `name`.
fn interface_exists(name: &str) -> bool {
    let Ok(c_name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the
    // call; if_nametoindex only reads it.
    unsafe { libc::if_nametoindex(c_name.as_ptr()) != 0 }
}

impl Tap {
    /// Attaches to the existing tap `name`, non-blocking, with a 12-byte
    /// virtio-net header on every frame and no offloads (the kernel
    /// segments and checksums everything the guest receives) until
    /// [`Tap::set_offloads`].
    pub fn open(name: &str) -> io::Result<Tap> {
        if name.contains('/') || !interface_exists(name) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "there is no interface {name} (create it with `ip tuntap add {name} mode tap`)"
                ),
            ));
        }
        let file = attach(name, 0).map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EINVAL) => " (is it a tun rather than a tap, or not tun/tap at all?)",
                Some(libc::EBUSY) => " (something else is attached to it)",
                Some(libc::EPERM) => " (no permission: CAP_NET_ADMIN or the tap's owner needed)",
                _ => "",
            };
            io::Error::new(e.kind(), format!("cannot attach to tap {name}: {e}{hint}"))
        })?;
        let fd = file.as_raw_fd();
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        ioctl_with_ref(fd, libc::TUNSETVNETHDRSZ, &hdr_len)
            .and_then(|()| ioctl_with_val(fd, libc::TUNSETOFFLOAD, 0))
            .map_err(|e| io::Error::new(e.kind(), format!("cannot set up tap {name}: {e}")))?;
        Ok(Tap {
            file,
            name: name.to_owned(),
        })
    }

    /// Lets the tap hand over frames with the offloads in `flags`
    /// (`TUNSETOFFLOAD` with `libc::TUN_F_*`, see [`offloads_for`]):
    /// unfinished checksums, unsegmented TCP.
    pub fn set_offloads(&self, flags: libc::c_uint) -> io::Result<()> {
        ioctl_with_val(
            self.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Backend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.file.write(frame)
    }
}
