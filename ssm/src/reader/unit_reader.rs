//! [`UnitReader`]: typed reads of one unit's data.

use std::io::BufRead;

use super::*;

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
