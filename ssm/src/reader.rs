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

mod records;
mod unit_reader;

pub use unit_reader::UnitReader;

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
        UnitReader::new(self)
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
