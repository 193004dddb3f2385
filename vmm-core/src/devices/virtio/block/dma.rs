//! Data straight between the image and guest memory: a request's data
//! buffers as host `iovec`s for one `preadv` / `pwritev`, no copy
//! through a buffer of the device's own.

use std::io;
use std::os::fd::RawFd;

use pgm::phys::WriteBitmap;
use virtio_queue::desc::split::Descriptor;
use vm_memory::bitmap::{Bitmap, RefSlice};
use vm_memory::volatile_memory::PtrGuardMut;
use vm_memory::{Address, GuestMemory, Permissions, VolatileSlice};

use super::super::GuestRam;

/// At most this many `iovec`s go into one call (Linux's `UIO_MAXIOV`).
const MAX_IOVECS: usize = 1024;

/// The guest memory of a request's data: `len` bytes of the descriptors
/// that are device-`writable` (or readable), after skipping `skip` of
/// their bytes.
pub struct GuestBuffers<'m> {
    slices: Vec<VolatileSlice<'m, RefSlice<'m, WriteBitmap>>>,
}

impl<'m> GuestBuffers<'m> {
    /// The buffers, or `None` when one lies outside guest RAM or the
    /// descriptors hold fewer than `skip + len` bytes.
    pub fn new(
        mem: &'m GuestRam,
        descriptors: &[Descriptor],
        writable: bool,
        mut skip: usize,
        mut len: usize,
    ) -> Option<GuestBuffers<'m>> {
        let access = if writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        let mut slices = Vec::new();
        for d in descriptors.iter().filter(|d| d.is_write_only() == writable) {
            if len == 0 {
                break;
            }
            let dlen = d.len() as usize;
            if skip >= dlen {
                skip -= dlen;
                continue;
            }
            let take = (dlen - skip).min(len);
            let addr = d.addr().checked_add(skip as u64)?;
            for slice in mem.get_slices(addr, take, access).ok()? {
                slices.push(slice.ok()?);
            }
            skip = 0;
            len -= take;
        }
        (len == 0).then_some(GuestBuffers { slices })
    }

    /// Fills the buffers from `fd` at `offset` (`preadv`, resumed after
    /// short reads) and marks them written for a live save.
    pub fn read_from(&self, fd: RawFd, offset: u64) -> io::Result<()> {
        self.transfer(fd, offset, false)?;
        for s in &self.slices {
            s.bitmap().mark_dirty(0, s.len());
        }
        Ok(())
    }

    /// Writes the buffers to `fd` at `offset` (`pwritev`, resumed after
    /// short writes).
    pub fn write_to(&self, fd: RawFd, offset: u64) -> io::Result<()> {
        self.transfer(fd, offset, true)
    }

    fn transfer(&self, fd: RawFd, mut offset: u64, write: bool) -> io::Result<()> {
        // The guards keep the pointers valid while the kernel uses them.
        let guards: Vec<PtrGuardMut> = self.slices.iter().map(|s| s.ptr_guard_mut()).collect();
        let mut iovecs: Vec<libc::iovec> = guards
            .iter()
            .zip(&self.slices)
            .map(|(g, s)| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: s.len(),
            })
            .collect();
        let mut at = 0;
        while at < iovecs.len() {
            let batch = &iovecs[at..iovecs.len().min(at + MAX_IOVECS)];
            let pos = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: every iovec points into guest RAM that `self.slices`
            // borrow (mapped for the VM's life, valid for their length) and
            // `guards` keep reachable; the kernel reads or writes only
            // those bytes, and `batch` outlives the call.
            let done = unsafe {
                if write {
                    libc::pwritev(fd, batch.as_ptr(), batch.len() as libc::c_int, pos)
                } else {
                    libc::preadv(fd, batch.as_ptr(), batch.len() as libc::c_int, pos)
                }
            };
            let mut done = match done {
                n if n > 0 => n as usize,
                0 if write => return Err(io::ErrorKind::WriteZero.into()),
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
            };
            offset += done as u64;
            while done > 0 && at < iovecs.len() {
                let iov = &mut iovecs[at];
                if done >= iov.iov_len {
                    done -= iov.iov_len;
                    at += 1;
                } else {
                    // SAFETY: `done < iov_len`: the new base stays inside
                    // the same slice.
                    iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(done) }.cast();
                    iov.iov_len -= done;
                    done = 0;
                }
            }
        }
        Ok(())
    }
}
