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

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::fd::AsRawFd;

    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use vm_memory::{Bytes, GuestMemoryBackend};

    use super::*;
    use crate::devices::virtio::testing::guest_ram;

    /// `n` buffers of `len` bytes, every other 4 KiB page from 1 MiB.
    fn scattered(n: u64, len: u32, writable: bool) -> Vec<Descriptor> {
        let flags = if writable {
            VRING_DESC_F_WRITE as u16
        } else {
            0
        };
        (0..n)
            .map(|i| Descriptor::new(0x10_0000 + i * 0x2000, len, flags, 0))
            .collect()
    }

    #[test]
    fn more_buffers_than_one_call_takes_fill_in_order_and_are_marked_written() {
        let mem = guest_ram(32 << 20);
        let region = mem.iter().next().unwrap();
        region.bitmap().take(|_| {});
        let mut file = tempfile::tempfile().unwrap();
        let image: Vec<u8> = (0..2 << 20).map(|i: u32| (i % 251) as u8).collect();
        file.write_all(&image).unwrap();
        // 1500 buffers of 512 bytes (more than UIO_MAXIOV), the first 100
        // bytes skipped, read from byte 4096 of the file.
        let descs = scattered(1500, 512, true);
        let len = 1500 * 512 - 100 - 12;
        let bufs = GuestBuffers::new(&mem, &descs, true, 100, len).unwrap();
        bufs.read_from(file.as_raw_fd(), 4096).unwrap();
        let mut got = Vec::new();
        for (i, d) in descs.iter().enumerate() {
            let mut b = vec![0; 512];
            mem.read_slice(&mut b, d.addr()).unwrap();
            got.extend_from_slice(if i == 0 { &b[100..] } else { &b });
        }
        assert_eq!(&got[..len], &image[4096..4096 + len]);
        assert!(got[len..].iter().all(|&b| b == 0), "nothing past the data");
        let mut pages = Vec::new();
        region.bitmap().take(|p| pages.push(p as u64));
        let want: Vec<u64> = descs.iter().map(|d| d.addr().0 / 4096).collect();
        assert_eq!(pages, want);
    }

    #[test]
    fn buffers_are_written_out_in_order_and_reads_past_the_end_fail() {
        let mem = guest_ram(32 << 20);
        let descs = scattered(3, 1000, false);
        for (i, d) in descs.iter().enumerate() {
            mem.write_slice(&[i as u8 + 1; 1000], d.addr()).unwrap();
        }
        let file = tempfile::tempfile().unwrap();
        let bufs = GuestBuffers::new(&mem, &descs, false, 16, 2984).unwrap();
        bufs.write_to(file.as_raw_fd(), 512).unwrap();
        let mut back = vec![0u8; 512 + 2984];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut back, 0).unwrap();
        assert_eq!(back[512..512 + 984], [1; 984]);
        assert_eq!(back[512 + 984..512 + 1984], [2; 1000]);
        assert_eq!(back[512 + 1984..], [3; 1000]);
        // The file ends at 3496 bytes: a read from 3000 comes up short.
        let descs = scattered(2, 1000, true);
        let bufs = GuestBuffers::new(&mem, &descs, true, 0, 2000).unwrap();
        let err = bufs.read_from(file.as_raw_fd(), 3000).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn buffers_outside_ram_or_too_short_are_refused() {
        let mem = guest_ram(4 << 20);
        let outside = [Descriptor::new(1 << 40, 512, 0, 0)];
        assert!(GuestBuffers::new(&mem, &outside, false, 0, 512).is_none());
        let past_end = [Descriptor::new((4 << 20) - 256, 512, 0, 0)];
        assert!(GuestBuffers::new(&mem, &past_end, false, 0, 512).is_none());
        let short = scattered(2, 512, false);
        assert!(GuestBuffers::new(&mem, &short, false, 16, 1024).is_none());
        // Device-writable descriptors do not count as readable ones.
        let writable = scattered(2, 512, true);
        assert!(GuestBuffers::new(&mem, &writable, false, 0, 512).is_none());
    }
}
