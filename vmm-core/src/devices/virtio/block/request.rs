//! One block request: its descriptor chain checked, executed against the
//! image, and its status byte written.
//!
//! The chain is read through `virtio-queue` ([`DescriptorChain`],
//! [`Reader`], [`Writer`]), framing-agnostic as virtio 1.x asks: the
//! device-readable bytes are the 16-byte header followed by any data to
//! write, the device-writable bytes are any data to read followed by the
//! status byte, which is the last byte of the last descriptor.

use std::borrow::Cow;
use std::io::{Read, Write};

use pgm::phys::WriteBitmap;
use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::bitmap::RefSlice;
use vm_memory::{Bytes, GuestAddress};

use super::super::GuestRam;
use super::config::{MAX_RANGE_SECTORS, MAX_RANGE_SEGMENTS};
use super::disk::{DiskImage, SECTOR_SIZE};
use super::dma::GuestBuffers;
use super::stats::BlockStats;

/// The bytes of `struct virtio_blk_outhdr`.
const HEADER_LEN: usize = 16;
/// The bytes of one `struct virtio_blk_discard_write_zeroes`.
const SEGMENT_LEN: usize = 16;
/// The bytes of a `VIRTIO_BLK_T_GET_ID` answer.
pub const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;

/// What a request works on: the image, the counters and the serial.
#[derive(Debug)]
pub struct BlockBackend {
    /// The device's name, for the log.
    pub name: String,
    /// The image file.
    pub disk: DiskImage,
    /// The device's counters.
    pub stats: BlockStats,
    /// The `GET_ID` answer, zero padded.
    pub serial: [u8; ID_LEN],
}

/// A descriptor chain `virtio-queue` cannot follow to its end (a loop, a
/// `next` index outside the table, a descriptor outside guest memory, a
/// bad indirect table): the queue cannot be served any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the descriptor chain at head {head} cannot be followed to its end")]
pub struct Unfollowable {
    /// The chain's head index.
    pub head: u16,
}

/// Why a request failed.
#[derive(Debug)]
enum Failure {
    /// `VIRTIO_BLK_S_IOERR`, with the reason for the log.
    Io(Cow<'static, str>),
    /// `VIRTIO_BLK_S_UNSUPP`, with what is not supported.
    Unsupported(String),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(Cow::Owned(e.to_string()))
    }
}

fn io(reason: &'static str) -> Failure {
    Failure::Io(Cow::Borrowed(reason))
}

/// A request's two byte streams: what the device reads after the header,
/// and where it writes before the status byte.
struct Buffers<'m> {
    reader: Reader<'m, RefSlice<'m, WriteBitmap>>,
    writer: Writer<'m, RefSlice<'m, WriteBitmap>>,
    /// Guest memory and the chain's descriptors, for the data's buffers.
    mem: &'m GuestRam,
    descriptors: &'m [Descriptor],
}

/// Serves the request in `chain` and returns the length for its used
/// entry: the bytes written into the chain, status included, or 0 when
/// the status byte cannot be written.
pub fn serve(
    backend: &BlockBackend,
    mem: &GuestRam,
    chain: DescriptorChain<&GuestRam>,
) -> Result<u32, Unfollowable> {
    let head = chain.head_index();
    let descriptors: Vec<Descriptor> = chain.clone().collect();
    match descriptors.last() {
        Some(last) if !last.has_next() => {}
        _ => return Err(Unfollowable { head }),
    }
    let stats = &backend.stats;
    let Some(status_at) = status_address(&descriptors) else {
        tracing::debug!("{}: request {head} has no status byte", backend.name);
        stats.errors.inc();
        return Ok(0);
    };
    let (status, written) = match execute(backend, mem, &descriptors, chain) {
        Ok(written) => (VIRTIO_BLK_S_OK, written),
        Err(Failure::Io(reason)) => {
            tracing::debug!("{}: request {head} failed: {reason}", backend.name);
            (VIRTIO_BLK_S_IOERR, 0)
        }
        Err(Failure::Unsupported(what)) => {
            tracing::debug!("{}: request {head}: {what} unsupported", backend.name);
            stats.unsupported.inc();
            (VIRTIO_BLK_S_UNSUPP, 0)
        }
    };
    let delivered = mem.write_obj(status as u8, status_at).is_ok();
    if status == VIRTIO_BLK_S_IOERR || !delivered {
        stats.errors.inc();
    }
    if !delivered {
        return Ok(0);
    }
    Ok(written.saturating_add(1))
}

/// The address of the status byte: the last byte of the last descriptor,
/// when that one is device-writable.
fn status_address(descriptors: &[Descriptor]) -> Option<GuestAddress> {
    let last = descriptors.last()?;
    if !last.is_write_only() || last.len() == 0 {
        return None;
    }
    last.addr()
        .0
        .checked_add(u64::from(last.len()) - 1)
        .map(GuestAddress)
}

/// Runs the request; `Ok` carries the data bytes written into the chain.
fn execute(
    backend: &BlockBackend,
    mem: &GuestRam,
    descriptors: &[Descriptor],
    chain: DescriptorChain<&GuestRam>,
) -> Result<u32, Failure> {
    let first_writable = descriptors
        .iter()
        .position(Descriptor::is_write_only)
        .unwrap_or(descriptors.len());
    if descriptors[first_writable..]
        .iter()
        .any(|d| !d.is_write_only())
    {
        return Err(io("a device-readable descriptor follows a writable one"));
    }
    let mut reader =
        Reader::new(mem, chain.clone()).map_err(|_| io("a readable buffer is not in guest RAM"))?;
    let mut writer =
        Writer::new(mem, chain).map_err(|_| io("a writable buffer is not in guest RAM"))?;
    // The status descriptor is writable and not empty, so this is >= 1;
    // what `writer` keeps is the data part before the status byte.
    let data_len = writer.available_bytes().saturating_sub(1);
    writer
        .split_at(data_len)
        .map_err(|_| io("the status byte cannot be split off"))?;
    if reader.available_bytes() < HEADER_LEN {
        return Err(io("the request header is shorter than 16 bytes"));
    }
    let mut header = [0u8; HEADER_LEN];
    reader.read_exact(&mut header)?;
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    let mut buffers = Buffers {
        reader,
        writer,
        mem,
        descriptors,
    };
    let stats = &backend.stats;
    match kind {
        VIRTIO_BLK_T_IN => {
            stats.reads.inc();
            read(backend, &buffers, sector)
        }
        VIRTIO_BLK_T_OUT => {
            stats.writes.inc();
            write(backend, &buffers, sector).map(|()| 0)
        }
        VIRTIO_BLK_T_FLUSH => {
            stats.flushes.inc();
            buffers.no_data()?;
            backend.disk.flush()?;
            Ok(0)
        }
        VIRTIO_BLK_T_GET_ID => {
            buffers.nothing_to_read()?;
            let n = buffers.writer.available_bytes().min(ID_LEN);
            if n == 0 {
                return Err(io("no room for the device id"));
            }
            buffers.writer.write_all(&backend.serial[..n])?;
            Ok(n as u32)
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = kind == VIRTIO_BLK_T_DISCARD;
            if discard {
                stats.discards.inc();
            } else {
                stats.write_zeroes.inc();
            }
            ranges(backend, &mut buffers, discard).map(|()| 0)
        }
        other => Err(Failure::Unsupported(format!("request type {other}"))),
    }
}

impl Buffers<'_> {
    fn nothing_to_read(&self) -> Result<(), Failure> {
        match self.reader.available_bytes() {
            0 => Ok(()),
            _ => Err(io("device-readable data where the request has none")),
        }
    }

    fn nothing_to_write(&self) -> Result<(), Failure> {
        match self.writer.available_bytes() {
            0 => Ok(()),
            _ => Err(io("device-writable data where the request has none")),
        }
    }

    fn no_data(&self) -> Result<(), Failure> {
        self.nothing_to_read()?;
        self.nothing_to_write()
    }
}

/// The image offset for `len` data bytes at `sector`, checked.
fn data_offset(disk: &DiskImage, sector: u64, len: usize) -> Result<u64, Failure> {
    let len = len as u64;
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(io("the data length is not a multiple of 512"));
    }
    disk.offset_of(sector, len)
        .ok_or(io("the sector range lies beyond the end of the disk"))
}

fn read(backend: &BlockBackend, buffers: &Buffers<'_>, sector: u64) -> Result<u32, Failure> {
    buffers.nothing_to_read()?;
    let len = buffers.writer.available_bytes();
    let offset = data_offset(&backend.disk, sector, len)?;
    // The data: the writable bytes before the status byte.
    let guest = GuestBuffers::new(buffers.mem, buffers.descriptors, true, 0, len)
        .ok_or(io("a writable buffer is not in guest RAM"))?;
    backend.disk.read_into(&guest, offset)?;
    backend.stats.bytes_read.add(len as u64);
    // A chain holds less than 4 GiB (virtio-queue stops at that).
    Ok(u32::try_from(len).unwrap_or(u32::MAX))
}

fn write(backend: &BlockBackend, buffers: &Buffers<'_>, sector: u64) -> Result<(), Failure> {
    buffers.nothing_to_write()?;
    if backend.disk.read_only() {
        return Err(io("write to a read-only disk"));
    }
    let len = buffers.reader.available_bytes();
    let offset = data_offset(&backend.disk, sector, len)?;
    // The data: the readable bytes after the header.
    let guest = GuestBuffers::new(buffers.mem, buffers.descriptors, false, HEADER_LEN, len)
        .ok_or(io("a readable buffer is not in guest RAM"))?;
    backend.disk.write_from(&guest, offset)?;
    backend.stats.bytes_written.add(len as u64);
    Ok(())
}

/// One `struct virtio_blk_discard_write_zeroes`, checked.
struct Range {
    offset: u64,
    len: u64,
    unmap: bool,
}

/// Discard or write-zeroes: every range is checked before any is done.
fn ranges(backend: &BlockBackend, buffers: &mut Buffers<'_>, discard: bool) -> Result<(), Failure> {
    buffers.nothing_to_write()?;
    if backend.disk.read_only() {
        return Err(io("discard or write-zeroes on a read-only disk"));
    }
    let bytes = buffers.reader.available_bytes();
    if bytes == 0 || !bytes.is_multiple_of(SEGMENT_LEN) {
        return Err(io("the range list is not a whole number of 16-byte ranges"));
    }
    if bytes / SEGMENT_LEN > MAX_RANGE_SEGMENTS as usize {
        return Err(io(
            "more ranges than max_discard_seg / max_write_zeroes_seg",
        ));
    }
    let mut ranges = Vec::with_capacity(bytes / SEGMENT_LEN);
    for _ in 0..bytes / SEGMENT_LEN {
        let mut raw = [0u8; SEGMENT_LEN];
        buffers.reader.read_exact(&mut raw)?;
        let sector = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
        let sectors = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(raw[12..16].try_into().unwrap_or_default());
        let allowed = if discard {
            0
        } else {
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        };
        if flags & !allowed != 0 {
            return Err(Failure::Unsupported(format!("range flags {flags:#x}")));
        }
        if sectors > MAX_RANGE_SECTORS {
            return Err(io("a range is longer than the device's limit"));
        }
        let len = u64::from(sectors) * SECTOR_SIZE;
        let offset = backend
            .disk
            .offset_of(sector, len)
            .ok_or(io("a range lies beyond the end of the disk"))?;
        ranges.push(Range {
            offset,
            len,
            unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
        });
    }
    for r in ranges.iter().filter(|r| r.len > 0) {
        if discard {
            // A discard is a hint: a file system without holes keeps the data.
            backend.disk.punch_hole(r.offset, r.len)?;
        } else {
            backend.disk.write_zeroes(r.offset, r.len, r.unmap)?;
        }
    }
    Ok(())
}
