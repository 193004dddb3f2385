//! Reading a saved-state stream sequentially, checking every CRC on the way.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};

use crate::error::{Error, Result, UnitId};
use crate::format::{
    self, DirEntry, END_MAGIC, EndMarker, FLAG_COMPRESSED, Footer, HEADER_SIZE, Header,
    MAX_RAW_RECORD, MAX_RUN_PAGES, PAGE_SIZE, REC_LZ4, REC_PAGE_RUN, REC_RAW, REC_TERM, REC_ZERO,
    REC_ZERO_PAGE, RUN_HEADER, UNIT_MAGIC, UnitHeader,
};
use crate::stream_io::Input;

/// A unit as announced by its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitInfo {
    /// Name and instance.
    pub id: UnitId,
    /// Version of the stored data.
    pub version: u32,
    /// Pass ([`format::PASS_FINAL`] for the final pass).
    pub pass: u32,
    /// Offset of the unit header in the stream.
    pub offset: u64,
}

/// What the records of one unit held, for inspection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecordStats {
    /// Raw records.
    pub raw_records: u64,
    /// Payload bytes in raw records.
    pub raw_bytes: u64,
    /// Pages stored as zero records.
    pub zero_pages: u64,
    /// Pages stored LZ4-compressed.
    pub compressed_pages: u64,
    /// Stored bytes of the compressed payloads.
    pub compressed_bytes: u64,
    /// Pages stored in page-aligned runs.
    pub run_pages: u64,
    /// Padding bytes before page runs.
    pub padding_bytes: u64,
}

impl RecordStats {
    /// Bytes the unit's data expands to.
    pub fn logical_bytes(&self) -> u64 {
        self.raw_bytes
            + (self.zero_pages + self.compressed_pages + self.run_pages) * PAGE_SIZE as u64
    }
}

/// Where the reader stands within the current unit's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rec {
    /// Between records: the next byte is a record tag.
    Between,
    /// Inside a raw record with this many payload bytes left.
    Raw(u32),
    /// Inside a zero record with this many zero bytes left.
    Zero(u64),
    /// Inside a decompressed page, at this offset of `lz4_page`.
    Lz4(usize),
    /// Inside a page run of `total` bytes with `left` bytes of data left;
    /// the stream records `crc` for the run's data.
    Run { left: u64, total: u64, crc: u32 },
    /// The terminator tag has been read.
    Term,
}

struct OpenUnit {
    info: UnitInfo,
    rec: Rec,
}

/// One 4 KiB page handed out by [`UnitReader::get_page`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page<'a> {
    /// An all-zero page, stored as a zero record: the caller may map its
    /// shared zero page instead of writing 4 KiB of zeros.
    Zero,
    /// The page's bytes.
    Data(&'a [u8; PAGE_SIZE]),
}

impl Page<'_> {
    /// True for [`Page::Zero`].
    pub fn is_zero(&self) -> bool {
        matches!(self, Page::Zero)
    }

    /// Copies the page into `dst` (zero-filling for [`Page::Zero`]).
    pub fn copy_to(&self, dst: &mut [u8; PAGE_SIZE]) {
        match self {
            Page::Zero => dst.fill(0),
            Page::Data(d) => dst.copy_from_slice(&d[..]),
        }
    }
}

/// Pages of a page run that lie in the saved-state file at a page-aligned
/// offset, handed out by [`UnitReader::get_file_pages`] for mapping.
#[derive(Debug, Clone, Copy)]
pub struct FilePages<'a> {
    /// The saved-state file (a duplicate of the reader's descriptor).
    pub file: &'a File,
    /// Offset of the first page in the file (a multiple of 4096).
    pub offset: u64,
    /// Number of pages.
    pub pages: u64,
}

/// The file behind a reader made by [`StreamReader::from_file`].
struct FileSource<R: ?Sized> {
    /// A duplicate of the source's descriptor, lent out for mapping.
    file: File,
    /// File offset of the stream's first byte.
    base: u64,
    /// File length when the reader was made: runs must lie inside it.
    len: u64,
    /// Moves the source on without reading.
    seek: fn(&mut R, i64) -> std::io::Result<()>,
}

/// Reads a saved-state stream from any [`BufRead`] source: a byte slice,
/// a buffered file, a buffered socket.
///
/// Units are read in order with [`StreamReader::next_unit`], their data
/// through [`StreamReader::unit_reader`], and each is closed with
/// [`StreamReader::finish_unit`], which checks that all data was read and
/// verifies the unit's running CRC. After the last unit the end marker,
/// directory and footer are read and checked against the units seen.
/// See [`crate::StreamWriter`] for an example.
pub struct StreamReader<R: ?Sized> {
    header: Header,
    unit: Option<OpenUnit>,
    stats: RecordStats,
    seen: Vec<DirEntry>,
    expect_eof: bool,
    finished: bool,
    random_access: bool,
    lz4_page: Box<[u8; PAGE_SIZE]>,
    gather_page: Vec<u8>,
    lz4_in: Vec<u8>,
    file: Option<FileSource<R>>,
    inp: Input<R>,
}

impl<'s> StreamReader<&'s [u8]> {
    /// Reads a stream held in memory (pages are lent out without copying).
    pub fn from_slice(data: &'s [u8]) -> Result<Self> {
        Self::new(data, true)
    }
}

impl<T: Read> StreamReader<BufReader<T>> {
    /// Reads a stream from an unbuffered reader (file, socket) through a
    /// 1 MiB buffer. With `expect_eof`, data after the footer is an error
    /// (right for files; a socket may carry other traffic afterwards).
    pub fn buffered(inner: T, expect_eof: bool) -> Result<Self> {
        Self::new(BufReader::with_capacity(1 << 20, inner), expect_eof)
    }
}

impl StreamReader<BufReader<File>> {
    /// Reads a saved-state file from its current position (the start, for
    /// a file just opened) through a 1 MiB buffer, like
    /// [`StreamReader::buffered`], and can lend page runs for mapping
    /// instead of reading them ([`UnitReader::get_file_pages`]). Data after
    /// the footer is an error.
    ///
    /// Pages lent out are not read, so no CRC covers them during the load:
    /// the running CRC of their unit takes the run's recorded CRC in their
    /// place (the rest of the unit is still checked). Check the file with
    /// [`crate::verify`] before loading it this way, and do not change the
    /// file while anything maps it.
    pub fn from_file(mut file: File) -> Result<Self> {
        let base = file.stream_position()?;
        let len = file.metadata()?.len();
        let dup = file.try_clone()?;
        let mut r = Self::new(BufReader::with_capacity(1 << 20, file), true)?;
        r.file = Some(FileSource {
            file: dup,
            base,
            len,
            seek: BufReader::seek_relative,
        });
        Ok(r)
    }
}

impl<R: BufRead> StreamReader<R> {
    /// Starts reading `src` and checks the file header. With `expect_eof`,
    /// bytes after the footer are an error.
    pub fn new(src: R, expect_eof: bool) -> Result<Self> {
        let mut inp = Input::new(src);
        let header = Header::read(&mut inp)?;
        Ok(Self {
            header,
            unit: None,
            stats: RecordStats::default(),
            seen: Vec::new(),
            expect_eof,
            finished: false,
            random_access: false,
            lz4_page: Box::new([0; PAGE_SIZE]),
            gather_page: vec![0; PAGE_SIZE],
            lz4_in: Vec::with_capacity(PAGE_SIZE),
            file: None,
            inp,
        })
    }

    /// A handle for reading the current unit's data.
    pub fn unit_reader(&mut self) -> UnitReader<'_> {
        UnitReader { r: self }
    }
}

impl<R: BufRead + Seek> StreamReader<R> {
    /// Reads the directory through the footer at the end of the stream (both
    /// CRC-checked), for random access with [`StreamReader::seek_unit`].
    pub fn directory(&mut self) -> Result<Vec<DirEntry>> {
        const WHAT: &str = "directory";
        self.unit = None;
        self.random_access = true;
        let len = self.inp.len()?;
        if len < HEADER_SIZE as u64 + format::FOOTER_SIZE {
            return Err(Error::truncated(len, "footer"));
        }
        self.inp.seek_to(len - format::FOOTER_SIZE)?;
        let footer = Footer::read(&mut self.inp)?;
        self.inp.seek_to(footer.dir_offset)?;
        let dir = format::read_directory(&mut self.inp, footer.dir_offset)?;
        for e in &dir {
            let end = e.offset.checked_add(e.stored_len);
            if e.offset < HEADER_SIZE as u64 || end.is_none_or(|end| end > footer.end_offset) {
                return Err(Error::malformed(
                    footer.dir_offset,
                    WHAT,
                    format!("entry for '{}' points outside the units", e.name),
                ));
            }
        }
        Ok(dir)
    }

    /// Opens the unit of a directory entry; read it with
    /// [`StreamReader::unit_reader`] and close it with [`StreamReader::finish_unit`].
    pub fn seek_unit(&mut self, entry: &DirEntry) -> Result<UnitInfo> {
        self.unit = None;
        self.finished = false;
        self.random_access = true;
        self.inp.seek_to(entry.offset)?;
        let info = self.next_unit()?;
        match info {
            Some(i)
                if i.id.name == entry.name
                    && i.id.instance == entry.instance
                    && i.version == entry.version
                    && i.pass == entry.pass =>
            {
                Ok(i)
            }
            _ => Err(Error::malformed(
                entry.offset,
                "directory",
                format!(
                    "entry for '{}' does not match the unit header there",
                    entry.name
                ),
            )),
        }
    }
}

impl<R: BufRead + ?Sized> StreamReader<R> {
    /// The file header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Offset of the next byte to be read.
    pub fn position(&self) -> u64 {
        self.inp.pos()
    }

    /// Record counters of the current (or last finished) unit.
    pub fn record_stats(&self) -> RecordStats {
        self.stats
    }

    /// Units read so far, as directory entries.
    pub fn units_seen(&self) -> &[DirEntry] {
        &self.seen
    }

    /// Advances to the next unit and returns its header, or `None` after the
    /// last unit once the end marker, directory and footer checked out. A
    /// unit still open is skipped to its end (and verified) first.
    pub fn next_unit(&mut self) -> Result<Option<UnitInfo>> {
        if self.unit.is_some() {
            self.skip_rest()?;
            self.finish_unit()?;
        }
        if self.finished {
            return Ok(None);
        }
        let start = self.inp.pos();
        self.inp.reset_crc();
        let magic: [u8; 4] = self.inp.read_array("unit header or end marker")?;
        if magic == END_MAGIC {
            self.read_trailer(start)?;
            return Ok(None);
        }
        if magic != UNIT_MAGIC {
            return Err(Error::BadMagic {
                offset: start,
                what: "unit header or end marker".into(),
            });
        }
        let h = UnitHeader::read_after_magic(&mut self.inp, start)?;
        let info = UnitInfo {
            id: UnitId::new(h.name, h.instance),
            version: h.version,
            pass: h.pass,
            offset: start,
        };
        self.stats = RecordStats::default();
        self.unit = Some(OpenUnit {
            info: info.clone(),
            rec: Rec::Between,
        });
        Ok(Some(info))
    }

    fn read_trailer(&mut self, start: u64) -> Result<()> {
        let end = EndMarker::read_after_magic(&mut self.inp, start)?;
        if !self.random_access && end.unit_count as usize != self.seen.len() {
            return Err(Error::malformed(
                start,
                "end marker",
                format!(
                    "counts {} units, stream has {}",
                    end.unit_count,
                    self.seen.len()
                ),
            ));
        }
        let dir_offset = self.inp.pos();
        let dir = format::read_directory(&mut self.inp, dir_offset)?;
        if !self.random_access && dir != self.seen {
            return Err(Error::malformed(
                dir_offset,
                "directory",
                "does not match the units in the stream",
            ));
        }
        let footer = Footer::read(&mut self.inp)?;
        if footer.dir_offset != dir_offset || footer.end_offset != start {
            return Err(Error::malformed(
                footer.stream_len - format::FOOTER_SIZE,
                "footer",
                "offsets do not match the stream",
            ));
        }
        if self.expect_eof && !self.inp.at_eof()? {
            return Err(Error::malformed(
                self.inp.pos(),
                "end of stream",
                "data after the footer",
            ));
        }
        self.finished = true;
        Ok(())
    }

    fn open(&mut self) -> Result<&mut OpenUnit> {
        self.unit
            .as_mut()
            .ok_or_else(|| Error::InvalidState("no unit is open".into()))
    }

    fn past_end(&self) -> Error {
        match &self.unit {
            Some(u) => Error::ReadPastEndOfUnit {
                unit: u.info.id.clone(),
                pass: u.info.pass,
            },
            None => Error::InvalidState("no unit is open".into()),
        }
    }

    /// Makes the current record have data left, reading the next record
    /// header when needed. Returns false at the unit's terminator.
    fn ensure_record(&mut self) -> Result<bool> {
        loop {
            let rec = self.open()?.rec;
            let has_data = match rec {
                Rec::Term => return Ok(false),
                Rec::Raw(n) => n > 0,
                Rec::Zero(n) => n > 0,
                Rec::Lz4(pos) => pos < PAGE_SIZE,
                Rec::Run { left, .. } => left > 0,
                Rec::Between => false,
            };
            if has_data {
                return Ok(true);
            }
            let next = self.read_record_header()?;
            self.open()?.rec = next;
        }
    }

    fn read_record_header(&mut self) -> Result<Rec> {
        const WHAT: &str = "record header";
        let at = self.inp.pos();
        // Read the whole header in one go: one copy, one CRC update.
        let tag = self.inp.peek_u8(WHAT)?;
        let mut h = [0u8; RUN_HEADER];
        let hlen = match tag {
            REC_RAW | REC_ZERO => 5,
            REC_LZ4 => 3,
            REC_PAGE_RUN => RUN_HEADER,
            _ => 1,
        };
        self.inp.read_exact(&mut h[..hlen], WHAT)?;
        let arg32 = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
        match tag {
            REC_RAW => {
                let len = arg32;
                if len == 0 || len > MAX_RAW_RECORD {
                    return Err(Error::malformed(at, WHAT, format!("raw length {len}")));
                }
                self.stats.raw_records += 1;
                self.stats.raw_bytes += u64::from(len);
                Ok(Rec::Raw(len))
            }
            REC_ZERO => {
                let count = arg32;
                if count < 2 {
                    return Err(Error::malformed(
                        at,
                        WHAT,
                        "zero run of fewer than two pages",
                    ));
                }
                self.stats.zero_pages += u64::from(count);
                Ok(Rec::Zero(u64::from(count) * PAGE_SIZE as u64))
            }
            REC_ZERO_PAGE => {
                self.stats.zero_pages += 1;
                Ok(Rec::Zero(PAGE_SIZE as u64))
            }
            REC_LZ4 => {
                if self.header.flags & FLAG_COMPRESSED == 0 {
                    return Err(Error::malformed(
                        at,
                        WHAT,
                        "compressed record in an uncompressed stream",
                    ));
                }
                let clen = usize::from(u16::from_le_bytes([h[1], h[2]]));
                if clen == 0 || clen > PAGE_SIZE {
                    return Err(Error::malformed(
                        at,
                        WHAT,
                        format!("compressed length {clen}"),
                    ));
                }
                self.lz4_in.resize(clen, 0);
                self.inp.read_exact(&mut self.lz4_in, "compressed record")?;
                match lz4_flex::block::decompress_into(&self.lz4_in, &mut self.lz4_page[..]) {
                    Ok(PAGE_SIZE) => {}
                    _ => {
                        return Err(Error::malformed(
                            at,
                            "compressed record",
                            "does not decompress to one page",
                        ));
                    }
                }
                self.stats.compressed_pages += 1;
                self.stats.compressed_bytes += clen as u64;
                Ok(Rec::Lz4(0))
            }
            REC_PAGE_RUN => self.read_run_padding(at, &h),
            REC_TERM => Ok(Rec::Term),
            tag => Err(Error::malformed(
                at,
                WHAT,
                format!("unknown record tag {tag:#04x}"),
            )),
        }
    }

    /// Checks a page-run record header (`h`, read at `at`) and reads the
    /// zero padding after it.
    fn read_run_padding(&mut self, at: u64, h: &[u8; RUN_HEADER]) -> Result<Rec> {
        const WHAT: &str = "page run";
        if self.header.format_version < 2 {
            return Err(Error::malformed(at, WHAT, "page run in a version 1 stream"));
        }
        let count = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
        let crc = u32::from_le_bytes([h[5], h[6], h[7], h[8]]);
        let pad = u16::from_le_bytes([h[9], h[10]]);
        if count == 0 || count > MAX_RUN_PAGES {
            return Err(Error::malformed(at, WHAT, format!("{count} pages")));
        }
        let want = format::run_padding(self.inp.pos());
        if pad != want {
            return Err(Error::malformed(
                at,
                WHAT,
                format!("padding of {pad} bytes, the alignment needs {want}"),
            ));
        }
        let mut padding = std::mem::take(&mut self.gather_page);
        padding.resize(PAGE_SIZE, 0);
        let read = self
            .inp
            .read_exact(&mut padding[..usize::from(pad)], "page run padding");
        let zero = crate::zero::is_zero(&padding[..usize::from(pad)]);
        self.gather_page = padding;
        read?;
        if !zero {
            return Err(Error::malformed(at, WHAT, "padding is not zero"));
        }
        let total = u64::from(count) * PAGE_SIZE as u64;
        self.stats.run_pages += u64::from(count);
        self.stats.padding_bytes += u64::from(pad);
        Ok(Rec::Run {
            left: total,
            total,
            crc,
        })
    }

    /// Hands out the page run that starts here, unread, when the stream is
    /// a file (see [`StreamReader::from_file`]), the run holds at most
    /// `max_pages` pages and lies inside the file.
    fn file_pages(&mut self, max_pages: u64) -> Result<Option<FilePages<'_>>> {
        if self.file.is_none() || !self.ensure_record()? {
            return Ok(None);
        }
        let Rec::Run { left, total, crc } = self.open()?.rec else {
            return Ok(None);
        };
        let Some(src) = &self.file else {
            return Ok(None);
        };
        let offset = src.base + self.inp.pos();
        let fits = offset.checked_add(total).is_some_and(|end| end <= src.len);
        if left != total
            || total / PAGE_SIZE as u64 > max_pages
            || offset % PAGE_SIZE as u64 != 0
            || !fits
        {
            return Ok(None);
        }
        self.inp.skip_unread(total, crc, src.seek)?;
        self.open()?.rec = Rec::Run {
            left: 0,
            total,
            crc,
        };
        let file = self
            .file
            .as_ref()
            .map(|s| &s.file)
            .ok_or_else(|| Error::InvalidState("file source vanished".into()))?;
        Ok(Some(FilePages {
            file,
            offset,
            pages: total / PAGE_SIZE as u64,
        }))
    }

    fn read_into(&mut self, dst: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < dst.len() {
            if !self.ensure_record()? {
                return Err(self.past_end());
            }
            let want = dst.len() - done;
            let out = &mut dst[done..];
            let (next, n) = match self.open()?.rec {
                Rec::Raw(left) => {
                    let n = want.min(left as usize);
                    self.inp.read_exact(&mut out[..n], "raw record")?;
                    (Rec::Raw(left - n as u32), n)
                }
                Rec::Run { left, total, crc } => {
                    let n = (want as u64).min(left) as usize;
                    self.inp.read_exact(&mut out[..n], "page run")?;
                    let left = left - n as u64;
                    (Rec::Run { left, total, crc }, n)
                }
                Rec::Zero(left) => {
                    let n = (want as u64).min(left) as usize;
                    out[..n].fill(0);
                    (Rec::Zero(left - n as u64), n)
                }
                Rec::Lz4(pos) => {
                    let n = want.min(PAGE_SIZE - pos);
                    out[..n].copy_from_slice(&self.lz4_page[pos..pos + n]);
                    (Rec::Lz4(pos + n), n)
                }
                Rec::Between | Rec::Term => return Err(self.past_end()),
            };
            self.open()?.rec = next;
            done += n;
        }
        Ok(())
    }

    fn skip(&mut self, mut n: u64) -> Result<()> {
        while n > 0 {
            if !self.ensure_record()? {
                return Err(self.past_end());
            }
            let (next, k) = match self.open()?.rec {
                Rec::Raw(left) => {
                    let k = n.min(u64::from(left));
                    self.inp.skip(k, "raw record")?;
                    (Rec::Raw(left - k as u32), k)
                }
                Rec::Run { left, total, crc } => {
                    let k = n.min(left);
                    self.inp.skip(k, "page run")?;
                    let left = left - k;
                    (Rec::Run { left, total, crc }, k)
                }
                Rec::Zero(left) => {
                    let k = n.min(left);
                    (Rec::Zero(left - k), k)
                }
                Rec::Lz4(pos) => {
                    let k = n.min((PAGE_SIZE - pos) as u64);
                    (Rec::Lz4(pos + k as usize), k)
                }
                Rec::Between | Rec::Term => return Err(self.past_end()),
            };
            self.open()?.rec = next;
            n -= k;
        }
        Ok(())
    }

    fn skip_rest(&mut self) -> Result<()> {
        while self.ensure_record()? {
            let left = match self.open()?.rec {
                Rec::Raw(n) => u64::from(n),
                Rec::Zero(n) | Rec::Run { left: n, .. } => n,
                Rec::Lz4(pos) => (PAGE_SIZE - pos) as u64,
                Rec::Between | Rec::Term => 0,
            };
            self.skip(left)?;
        }
        Ok(())
    }

    /// Classifies how the next page can be handed out without copying.
    fn page_source(&mut self) -> Result<Rec> {
        if !self.ensure_record()? {
            return Err(self.past_end());
        }
        let rec = self.open()?.rec;
        Ok(match rec {
            Rec::Zero(left) if left >= PAGE_SIZE as u64 => rec,
            Rec::Lz4(0) => rec,
            Rec::Raw(left) if left as usize >= PAGE_SIZE && self.inp.buffered()? >= PAGE_SIZE => {
                rec
            }
            Rec::Run { left, .. }
                if left >= PAGE_SIZE as u64 && self.inp.buffered()? >= PAGE_SIZE =>
            {
                rec
            }
            _ => Rec::Between,
        })
    }

    fn get_page(&mut self) -> Result<Page<'_>> {
        match self.page_source()? {
            Rec::Zero(left) => {
                self.open()?.rec = Rec::Zero(left - PAGE_SIZE as u64);
                Ok(Page::Zero)
            }
            Rec::Lz4(_) => {
                self.open()?.rec = Rec::Lz4(PAGE_SIZE);
                Ok(Page::Data(&self.lz4_page))
            }
            Rec::Raw(left) => {
                self.open()?.rec = Rec::Raw(left - PAGE_SIZE as u32);
                as_page(self.inp.borrow(PAGE_SIZE)?)
            }
            Rec::Run { left, total, crc } => {
                let left = left - PAGE_SIZE as u64;
                self.open()?.rec = Rec::Run { left, total, crc };
                as_page(self.inp.borrow(PAGE_SIZE)?)
            }
            Rec::Between | Rec::Term => {
                let mut page = std::mem::take(&mut self.gather_page);
                page.resize(PAGE_SIZE, 0);
                let r = self.read_into(&mut page);
                self.gather_page = page;
                r?;
                as_page(&self.gather_page)
            }
        }
    }

    /// Closes the current unit: all its data must have been read; checks the
    /// terminator's length and running CRC.
    pub fn finish_unit(&mut self) -> Result<()> {
        const WHAT: &str = "unit terminator";
        let (info, rec) = {
            let u = self.open()?;
            (u.info.clone(), u.rec)
        };
        let at_term = match rec {
            Rec::Term => true,
            Rec::Between
            | Rec::Raw(0)
            | Rec::Zero(0)
            | Rec::Lz4(PAGE_SIZE)
            | Rec::Run { left: 0, .. } => {
                let next = self.read_record_header()?;
                self.open()?.rec = next;
                next == Rec::Term
            }
            _ => false,
        };
        if !at_term {
            return Err(Error::UnitNotFullyRead {
                unit: info.id,
                pass: info.pass,
            });
        }
        let term_at = self.inp.pos() - 1;
        let len = self.inp.read_u64(WHAT)?;
        let crc = self.inp.check_crc(
            info.offset,
            &format!(
                "unit {} pass {} (running CRC)",
                info.id,
                pass_name(info.pass)
            ),
        )?;
        if len != term_at - info.offset {
            return Err(Error::malformed(
                term_at,
                WHAT,
                format!(
                    "records unit length {len}, actual {}",
                    term_at - info.offset
                ),
            ));
        }
        self.unit = None;
        self.seen.push(DirEntry {
            name: info.id.name,
            instance: info.id.instance,
            version: info.version,
            pass: info.pass,
            offset: info.offset,
            stored_len: self.inp.pos() - info.offset,
            crc,
        });
        Ok(())
    }
}

/// A pass number for messages: `final` or the number.
pub(crate) fn pass_name(pass: u32) -> String {
    if pass == format::PASS_FINAL {
        "final".into()
    } else {
        pass.to_string()
    }
}

fn as_page(s: &[u8]) -> Result<Page<'_>> {
    s.try_into()
        .map(Page::Data)
        .map_err(|_| Error::InvalidState("source lent a short page".into()))
}

/// Reads one unit's data: the mirror of [`crate::UnitWriter`].
///
/// Reading past the unit's data gives [`Error::ReadPastEndOfUnit`]; leaving
/// data unread makes the unit's close fail with [`Error::UnitNotFullyRead`]
/// (use [`UnitReader::skip_to_end_of_unit`] to drop the rest on purpose).
pub struct UnitReader<'a> {
    r: &'a mut (dyn UnitSource + 'a),
}

/// The per-unit operations of a [`StreamReader`], object-safe so that
/// [`UnitReader`] needs no type parameter, while each call still runs the
/// reader's code compiled for its concrete source (one dynamic call per
/// page, not one per buffer access).
trait UnitSource {
    fn read_into(&mut self, dst: &mut [u8]) -> Result<()>;
    fn skip(&mut self, n: u64) -> Result<()>;
    fn skip_rest(&mut self) -> Result<()>;
    fn get_page(&mut self) -> Result<Page<'_>>;
    fn file_pages(&mut self, max_pages: u64) -> Result<Option<FilePages<'_>>>;
    fn info(&self) -> Option<&UnitInfo>;
}

impl<R: BufRead + ?Sized> UnitSource for StreamReader<R> {
    fn read_into(&mut self, dst: &mut [u8]) -> Result<()> {
        StreamReader::read_into(self, dst)
    }
    fn skip(&mut self, n: u64) -> Result<()> {
        StreamReader::skip(self, n)
    }
    fn skip_rest(&mut self) -> Result<()> {
        StreamReader::skip_rest(self)
    }
    fn get_page(&mut self) -> Result<Page<'_>> {
        StreamReader::get_page(self)
    }
    fn file_pages(&mut self, max_pages: u64) -> Result<Option<FilePages<'_>>> {
        StreamReader::file_pages(self, max_pages)
    }
    fn info(&self) -> Option<&UnitInfo> {
        self.unit.as_ref().map(|u| &u.info)
    }
}

macro_rules! get_int {
    ($($name:ident: $t:ty),* $(,)?) => {$(
        #[doc = concat!("Reads a `", stringify!($t), "` (little-endian).")]
        pub fn $name(&mut self) -> Result<$t> {
            let mut b = [0u8; std::mem::size_of::<$t>()];
            self.r.read_into(&mut b)?;
            Ok(<$t>::from_le_bytes(b))
        }
    )*};
}

impl<'a> UnitReader<'a> {
    pub(crate) fn new<R: BufRead + 'a>(r: &'a mut StreamReader<R>) -> Self {
        Self { r }
    }

    get_int!(get_u8: u8, get_u16: u16, get_u32: u32, get_u64: u64, get_i8: i8, get_i16: i16, get_i32: i32, get_i64: i64);

    fn invalid(&self, reason: String) -> Error {
        match self.r.info() {
            Some(info) => Error::InvalidValue {
                unit: info.id.clone(),
                reason,
            },
            None => Error::InvalidState("no unit is open".into()),
        }
    }

    /// Reads a bool; a byte other than 0 or 1 is [`Error::InvalidValue`].
    pub fn get_bool(&mut self) -> Result<bool> {
        match self.get_u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.invalid(format!("bool byte {v}"))),
        }
    }

    /// Reads a guest address written by [`crate::UnitWriter::put_guest_addr`].
    pub fn get_guest_addr(&mut self) -> Result<u64> {
        self.get_u64()
    }

    /// Fills `dst` with the next `dst.len()` bytes.
    pub fn get_bytes(&mut self, dst: &mut [u8]) -> Result<()> {
        self.r.read_into(dst)
    }

    /// Reads a length-prefixed buffer of at most `max_len` bytes (a longer
    /// stored length is [`Error::InvalidValue`]; memory grows only with data
    /// actually present).
    pub fn get_buf(&mut self, max_len: usize) -> Result<Vec<u8>> {
        let len = self.get_u32()? as usize;
        if len > max_len {
            return Err(self.invalid(format!("buffer of {len} bytes, at most {max_len} allowed")));
        }
        let mut v = Vec::new();
        let mut left = len;
        while left > 0 {
            let n = left.min(64 * 1024);
            let old = v.len();
            v.resize(old + n, 0);
            self.r.read_into(&mut v[old..])?;
            left -= n;
        }
        Ok(v)
    }

    /// Reads a length-prefixed UTF-8 string of at most `max_len` bytes.
    pub fn get_str(&mut self, max_len: usize) -> Result<String> {
        let v = self.get_buf(max_len)?;
        String::from_utf8(v).map_err(|_| self.invalid("string is not UTF-8".into()))
    }

    /// Reads the next 4 KiB page. Zero pages come back as [`Page::Zero`];
    /// other pages are lent from the reader's buffers (from the source's own
    /// buffer when it holds the page whole), so loading copies each page once.
    pub fn get_page(&mut self) -> Result<Page<'_>> {
        self.r.get_page()
    }

    /// When the next data is a page run (written with
    /// [`crate::UnitWriter::put_page_run`]) of at most `max_pages` pages
    /// and the reader reads a file ([`StreamReader::from_file`]), hands the
    /// run out as pages of that file, to be mapped rather than read, and
    /// moves past it. Otherwise (another source, another record, a longer
    /// run, a run already partly read) returns `None` and reads nothing:
    /// read the pages with [`get_page`](Self::get_page).
    ///
    /// The pages handed out are not read, so only [`crate::verify`] (run
    /// before the load) checks their CRC; see [`StreamReader::from_file`].
    pub fn get_file_pages(&mut self, max_pages: u64) -> Result<Option<FilePages<'_>>> {
        self.r.file_pages(max_pages)
    }

    /// Skips `n` bytes of the unit's data.
    pub fn skip(&mut self, n: u64) -> Result<()> {
        self.r.skip(n)
    }

    /// Skips whatever is left of the unit's data.
    pub fn skip_to_end_of_unit(&mut self) -> Result<()> {
        self.r.skip_rest()
    }

    /// The unit being read.
    pub fn unit(&self) -> Option<&UnitInfo> {
        self.r.info()
    }
}
