//! Writing a saved-state stream: header, units of records, end marker,
//! directory and footer.

use std::io::Write;

use crate::error::{Error, Result, UnitId};
use crate::format::{
    self, DirEntry, EndMarker, FLAG_COMPRESSED, Footer, Header, MAX_RAW_RECORD, MAX_RUN_PAGES,
    PAGE_SIZE, REC_LZ4, REC_PAGE_RUN, REC_RAW, REC_TERM, REC_ZERO, REC_ZERO_PAGE, RUN_HEADER,
    UnitHeader,
};
use crate::stream_io::Output;
use crate::zero::is_zero;

/// Size of the buffer that collects small writes into one raw record.
const SMALL_BUF: usize = 64 * 1024;
/// Writes at least this long bypass the buffer and go out as their own record.
const DIRECT_WRITE: usize = 1024;
/// A compressed page is kept only when it saves at least this many bytes.
const MIN_LZ4_SAVING: usize = 64;
/// Longest run of pages for which compression is skipped after failures.
const MAX_LZ4_BACKOFF: u32 = 64;

/// Counters of what a writer produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriteStats {
    /// Units (passes of units) written.
    pub units: u32,
    /// Total bytes of the stream.
    pub bytes: u64,
    /// Pages stored as zero records.
    pub zero_pages: u64,
    /// Pages stored LZ4-compressed.
    pub compressed_pages: u64,
    /// Pages stored raw.
    pub raw_pages: u64,
    /// Pages stored in page-aligned runs ([`UnitWriter::put_page_run`]).
    pub run_pages: u64,
    /// Padding bytes written to align page runs.
    pub padding_bytes: u64,
}

struct OpenUnit {
    id: UnitId,
    version: u32,
    pass: u32,
    start: u64,
}

/// Writes a saved-state stream to any [`Write`] sink (file, socket, `Vec`).
///
/// Most users go through [`crate::Manager`], which drives units; this is the
/// layer beneath it, usable directly:
///
/// ```
/// use ssm::{Header, StreamWriter, StreamReader, PASS_FINAL};
/// # fn main() -> Result<(), ssm::Error> {
/// let mut w = StreamWriter::new(Vec::new(), &Header::for_this_host("doc", 0))?;
/// let mut u = w.begin_unit("cpu", 0, 1, PASS_FINAL)?;
/// u.put_u64(0xfff0)?;
/// u.put_page(&[0u8; 4096])?;
/// u.end()?;
/// let bytes = w.finish()?;
///
/// let mut r = StreamReader::from_slice(&bytes)?;
/// let info = r.next_unit()?.expect("one unit");
/// assert_eq!(info.id.name, "cpu");
/// let mut u = r.unit_reader();
/// assert_eq!(u.get_u64()?, 0xfff0);
/// assert!(u.get_page()?.is_zero());
/// r.finish_unit()?;
/// assert!(r.next_unit()?.is_none());
/// # Ok(()) }
/// ```
pub struct StreamWriter<W: ?Sized> {
    dir: Vec<DirEntry>,
    compress: bool,
    buf: Vec<u8>,
    pending_zero: u32,
    lz4_out: Vec<u8>,
    lz4_skip: u32,
    lz4_backoff: u32,
    unit: Option<OpenUnit>,
    stats: WriteStats,
    out: Output<W>,
}

impl<W: Write> StreamWriter<W> {
    /// Starts a stream on `sink` and writes the file header. Pages are
    /// compressed when `header.flags` has [`format::FLAG_COMPRESSED`].
    pub fn new(sink: W, header: &Header) -> Result<Self> {
        let mut out = Output::new(sink);
        header.write(&mut out)?;
        let compress = header.flags & FLAG_COMPRESSED != 0;
        Ok(Self {
            dir: Vec::new(),
            compress,
            buf: Vec::with_capacity(SMALL_BUF),
            pending_zero: 0,
            lz4_out: if compress {
                vec![0; lz4_flex::block::get_maximum_output_size(PAGE_SIZE)]
            } else {
                Vec::new()
            },
            lz4_skip: 0,
            lz4_backoff: 0,
            unit: None,
            stats: WriteStats::default(),
            out,
        })
    }

    /// Opens a unit; write its data through the returned handle and close it
    /// with [`UnitWriter::end`].
    pub fn begin_unit(
        &mut self,
        name: &str,
        instance: u32,
        version: u32,
        pass: u32,
    ) -> Result<UnitWriter<'_>> {
        self.open_unit(name, instance, version, pass)?;
        Ok(UnitWriter { w: self })
    }

    /// Writes the end marker, directory and footer, flushes, and returns the sink.
    pub fn finish(mut self) -> Result<W> {
        self.finish_in_place()?;
        Ok(self.out.into_inner())
    }
}

impl<W: Write + ?Sized> StreamWriter<W> {
    pub(crate) fn open_unit(
        &mut self,
        name: &str,
        instance: u32,
        version: u32,
        pass: u32,
    ) -> Result<()> {
        if !format::valid_name(name) {
            return Err(Error::InvalidUnitName(name.to_string()));
        }
        if let Some(u) = &self.unit {
            return Err(Error::InvalidState(format!("unit {} is still open", u.id)));
        }
        self.out.reset_crc();
        let start = self.out.pos();
        UnitHeader {
            name: name.to_string(),
            instance,
            version,
            pass,
        }
        .write(&mut self.out)?;
        self.unit = Some(OpenUnit {
            id: UnitId::new(name, instance),
            version,
            pass,
            start,
        });
        Ok(())
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.out.pos()
    }

    /// What has been written so far.
    pub fn stats(&self) -> WriteStats {
        WriteStats {
            bytes: self.out.pos(),
            ..self.stats
        }
    }

    pub(crate) fn finish_in_place(&mut self) -> Result<()> {
        if let Some(u) = &self.unit {
            return Err(Error::InvalidState(format!("unit {} is still open", u.id)));
        }
        let end_offset = self.out.pos();
        EndMarker {
            unit_count: self.dir.len() as u32,
        }
        .write(&mut self.out)?;
        let dir_offset = self.out.pos();
        format::write_directory(&mut self.out, &self.dir)?;
        let stream_len = self.out.pos() + format::FOOTER_SIZE;
        Footer {
            dir_offset,
            end_offset,
            stream_len,
        }
        .write(&mut self.out)?;
        self.out.flush()
    }

    fn emit_record_header(&mut self, tag: u8, len: u32) -> Result<()> {
        let mut h = [0u8; 5];
        h[0] = tag;
        h[1..].copy_from_slice(&len.to_le_bytes());
        self.out.emit(&h)
    }

    fn flush_zero(&mut self) -> Result<()> {
        match std::mem::take(&mut self.pending_zero) {
            0 => Ok(()),
            1 => self.out.emit(&[REC_ZERO_PAGE]),
            n => self.emit_record_header(REC_ZERO, n),
        }
    }

    fn flush_buf(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            let buf = std::mem::take(&mut self.buf);
            let r = self
                .emit_record_header(REC_RAW, buf.len() as u32)
                .and_then(|()| self.out.emit(&buf));
            self.buf = buf;
            self.buf.clear();
            r?;
        }
        Ok(())
    }

    fn write_direct(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(MAX_RAW_RECORD as usize) {
            self.emit_record_header(REC_RAW, chunk.len() as u32)?;
            self.out.emit(chunk)?;
        }
        Ok(())
    }

    fn put(&mut self, data: &[u8]) -> Result<()> {
        self.flush_zero()?;
        if data.len() >= DIRECT_WRITE {
            self.flush_buf()?;
            return self.write_direct(data);
        }
        if self.buf.len() + data.len() > SMALL_BUF {
            self.flush_buf()?;
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn put_page(&mut self, page: &[u8; PAGE_SIZE]) -> Result<()> {
        if is_zero(page) {
            self.flush_buf()?;
            if self.pending_zero == u32::MAX {
                self.flush_zero()?;
            }
            self.pending_zero += 1;
            self.stats.zero_pages += 1;
            return Ok(());
        }
        self.flush_zero()?;
        self.flush_buf()?;
        if self.compress && self.try_compressed(page)? {
            self.stats.compressed_pages += 1;
            return Ok(());
        }
        self.stats.raw_pages += 1;
        self.write_direct(page)
    }

    /// Stores `page` LZ4-compressed when that saves space. After a page that
    /// does not compress, the next pages skip the attempt for a run that
    /// doubles on each failure (up to [`MAX_LZ4_BACKOFF`]), so incompressible
    /// data costs little compression time.
    fn try_compressed(&mut self, page: &[u8; PAGE_SIZE]) -> Result<bool> {
        if self.lz4_skip > 0 {
            self.lz4_skip -= 1;
            return Ok(false);
        }
        let clen = lz4_flex::block::compress_into(page, &mut self.lz4_out).unwrap_or(usize::MAX);
        if clen > PAGE_SIZE - MIN_LZ4_SAVING {
            self.lz4_backoff = (self.lz4_backoff * 2).clamp(1, MAX_LZ4_BACKOFF);
            self.lz4_skip = self.lz4_backoff;
            return Ok(false);
        }
        self.lz4_backoff = 0;
        let mut h = [0u8; 3];
        h[0] = REC_LZ4;
        h[1..].copy_from_slice(&(clen as u16).to_le_bytes());
        self.out.emit(&h)?;
        let lz4_out = std::mem::take(&mut self.lz4_out);
        let r = self.out.emit(&lz4_out[..clen]);
        self.lz4_out = lz4_out;
        r.map(|()| true)
    }

    /// Writes `pages` (whole pages) as page-run records whose data starts at
    /// a multiple of [`PAGE_SIZE`] in the stream; in a compressed stream,
    /// page by page like [`put_page`](Self::put_page) instead.
    fn put_page_run(&mut self, pages: &[u8]) -> Result<()> {
        if pages.is_empty() || pages.len() % PAGE_SIZE != 0 {
            return Err(Error::InvalidState(format!(
                "a page run of {} bytes is not whole pages",
                pages.len()
            )));
        }
        if self.compress {
            for page in pages.chunks_exact(PAGE_SIZE) {
                let page: &[u8; PAGE_SIZE] = page
                    .try_into()
                    .map_err(|_| Error::InvalidState("short page".into()))?;
                self.put_page(page)?;
            }
            return Ok(());
        }
        self.flush_zero()?;
        self.flush_buf()?;
        static PADDING: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
        for run in pages.chunks(MAX_RUN_PAGES as usize * PAGE_SIZE) {
            let count = (run.len() / PAGE_SIZE) as u32;
            let crc = crc32c::crc32c(run);
            let pad = format::run_padding(self.out.pos() + RUN_HEADER as u64);
            let mut h = [0u8; RUN_HEADER];
            h[0] = REC_PAGE_RUN;
            h[1..5].copy_from_slice(&count.to_le_bytes());
            h[5..9].copy_from_slice(&crc.to_le_bytes());
            h[9..11].copy_from_slice(&pad.to_le_bytes());
            self.out.emit(&h)?;
            self.out.emit(&PADDING[..usize::from(pad)])?;
            self.out.emit_precomputed(run, crc)?;
            self.stats.run_pages += u64::from(count);
            self.stats.padding_bytes += u64::from(pad);
        }
        Ok(())
    }

    pub(crate) fn close_unit(&mut self) -> Result<()> {
        self.flush_zero()?;
        self.flush_buf()?;
        let Some(u) = self.unit.take() else {
            return Err(Error::InvalidState("no unit is open".into()));
        };
        let term_pos = self.out.pos();
        let mut t = [0u8; 9];
        t[0] = REC_TERM;
        t[1..].copy_from_slice(&(term_pos - u.start).to_le_bytes());
        self.out.emit(&t)?;
        let crc = self.out.crc();
        self.out.emit_crc()?;
        self.stats.units += 1;
        self.dir.push(DirEntry {
            name: u.id.name,
            instance: u.id.instance,
            version: u.version,
            pass: u.pass,
            offset: u.start,
            stored_len: self.out.pos() - u.start,
            crc,
        });
        Ok(())
    }
}

/// Writes one unit's data. Small writes are buffered into raw records; page
/// writes become zero, compressed or raw records.
pub struct UnitWriter<'a> {
    w: &'a mut StreamWriter<dyn Write + 'a>,
}

macro_rules! put_int {
    ($($name:ident: $t:ty),* $(,)?) => {$(
        #[doc = concat!("Writes a `", stringify!($t), "` (little-endian).")]
        pub fn $name(&mut self, v: $t) -> Result<()> {
            self.w.put(&v.to_le_bytes())
        }
    )*};
}

impl<'a> UnitWriter<'a> {
    pub(crate) fn new(w: &'a mut StreamWriter<dyn Write + 'a>) -> Self {
        Self { w }
    }

    put_int!(put_u8: u8, put_u16: u16, put_u32: u32, put_u64: u64, put_i8: i8, put_i16: i16, put_i32: i32, put_i64: i64);

    /// Writes a bool as one byte (0 or 1).
    pub fn put_bool(&mut self, v: bool) -> Result<()> {
        self.put_u8(u8::from(v))
    }

    /// Writes a guest address (physical or virtual) as 64 bits.
    pub fn put_guest_addr(&mut self, addr: u64) -> Result<()> {
        self.put_u64(addr)
    }

    /// Writes `data` as is, without a length: the reader must know how much
    /// to read ([`crate::UnitReader::get_bytes`]).
    pub fn put_bytes(&mut self, data: &[u8]) -> Result<()> {
        self.w.put(data)
    }

    /// Writes a length-prefixed byte buffer ([`crate::UnitReader::get_buf`]).
    pub fn put_buf(&mut self, data: &[u8]) -> Result<()> {
        let len =
            u32::try_from(data.len()).map_err(|_| Error::callback("buffer longer than 4 GiB"))?;
        self.put_u32(len)?;
        self.w.put(data)
    }

    /// Writes a length-prefixed UTF-8 string ([`crate::UnitReader::get_str`]).
    pub fn put_str(&mut self, s: &str) -> Result<()> {
        self.put_buf(s.as_bytes())
    }

    /// Writes a 4 KiB page: an all-zero page costs a few bytes (runs of zero
    /// pages share one record), others are compressed when the save asked
    /// for compression and it pays, else stored raw.
    pub fn put_page(&mut self, page: &[u8; PAGE_SIZE]) -> Result<()> {
        self.w.put_page(page)
    }

    /// Writes whole pages (`pages.len()` a non-zero multiple of 4096) so that
    /// their data starts at a multiple of 4096 in the stream, zero bytes of
    /// padding before it. Saved to a file, the pages can then be mapped
    /// from it instead of read ([`crate::UnitReader::get_file_pages`]); they
    /// cost up to 4 KiB of padding per 256 MiB record, so give long runs.
    /// Zero pages are stored as they are (use [`put_page`](Self::put_page)
    /// for those). In a compressed stream the pages go out one by one as
    /// with `put_page`, since compressed pages cannot be mapped. Read them
    /// back with [`crate::UnitReader::get_file_pages`] or page by page.
    ///
    /// ```
    /// use ssm::{Header, StreamReader, StreamWriter, PASS_FINAL};
    /// # fn main() -> Result<(), ssm::Error> {
    /// let mut w = StreamWriter::new(Vec::new(), &Header::for_this_host("doc", 0))?;
    /// let mut u = w.begin_unit("ram", 0, 1, PASS_FINAL)?;
    /// u.put_u8(1)?;
    /// u.put_page_run(&[0x5a; 3 * 4096])?;
    /// u.end()?;
    /// let bytes = w.finish()?;
    ///
    /// let mut r = StreamReader::from_slice(&bytes)?;
    /// r.next_unit()?;
    /// let mut u = r.unit_reader();
    /// assert_eq!(u.get_u8()?, 1);
    /// // Not a file: nothing to map, the pages are read instead.
    /// assert!(u.get_file_pages(3)?.is_none());
    /// for _ in 0..3 {
    ///     assert!(matches!(u.get_page()?, ssm::Page::Data(p) if p[0] == 0x5a));
    /// }
    /// r.finish_unit()?;
    /// # Ok(()) }
    /// ```
    pub fn put_page_run(&mut self, pages: &[u8]) -> Result<()> {
        self.w.put_page_run(pages)
    }

    /// Closes the unit with its terminator. Only for units opened through
    /// [`StreamWriter::begin_unit`]; the [`crate::Manager`] closes the units it opens.
    pub fn end(self) -> Result<()> {
        self.w.close_unit()
    }
}
