//! On-disk structures of the saved-state stream (see `FORMAT.md`).
//!
//! All integers are little-endian. Each structure is followed by a CRC32C of
//! its own bytes; unit data is covered by the running CRC in the unit's
//! terminator.

use std::io::{BufRead, Write};

use crate::error::{Error, Result};
use crate::stream_io::{Input, Output};

/// Magic at offset 0 of every saved state.
pub const FILE_MAGIC: [u8; 8] = *b"RSSM\r\n\x1a\n";
/// The format version this library writes. It reads this one and every
/// older one (version 1 lacks [page-run records](crate::UnitWriter::put_page_run)).
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version this library reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// Size of the file header in bytes.
pub const HEADER_SIZE: usize = 96;
/// Size of the footer in bytes.
pub const FOOTER_SIZE: u64 = 32;
/// Longest unit name in bytes.
pub const MAX_NAME_LEN: usize = 48;
/// Size of a page-sized block (the unit of zero and compressed records).
pub const PAGE_SIZE: usize = 4096;
/// Largest payload of a single raw record.
pub const MAX_RAW_RECORD: u32 = 1 << 20;
/// Most pages in one page-run record (256 MiB); longer runs take several.
pub const MAX_RUN_PAGES: u32 = 1 << 16;
/// Bytes of a page-run record before its padding: tag, u32 page count,
/// u32 CRC32C of the pages, u16 padding length.
pub(crate) const RUN_HEADER: usize = 11;
/// Pass number of the final (non-live) pass.
pub const PASS_FINAL: u32 = u32::MAX;

pub(crate) const UNIT_MAGIC: [u8; 4] = *b"UNIT";
pub(crate) const END_MAGIC: [u8; 4] = *b"SEND";
pub(crate) const DIR_MAGIC: [u8; 4] = *b"SDIR";
pub(crate) const FOOTER_MAGIC: [u8; 4] = *b"SFTR";

pub(crate) const REC_RAW: u8 = 0x01;
pub(crate) const REC_ZERO: u8 = 0x02;
pub(crate) const REC_LZ4: u8 = 0x03;
pub(crate) const REC_ZERO_PAGE: u8 = 0x04;
pub(crate) const REC_PAGE_RUN: u8 = 0x05;
pub(crate) const REC_TERM: u8 = 0xFF;

const HOST_ARCH_LEN: usize = 16;
const CREATOR_LEN: usize = 44;

/// Header flag: the stream holds live passes before the final pass.
pub const FLAG_LIVE: u32 = 1 << 0;
/// Header flag: the stream may hold LZ4-compressed records.
pub const FLAG_COMPRESSED: u32 = 1 << 1;
const KNOWN_FLAGS: u32 = FLAG_LIVE | FLAG_COMPRESSED;

/// The file header: what wrote the stream, on which host, and how.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Header {
    /// Format version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// [`FLAG_LIVE`], [`FLAG_COMPRESSED`].
    pub flags: u32,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix_secs: u64,
    /// Page size of the saving host.
    pub host_page_size: u32,
    /// Pointer width of the saving host in bits.
    pub host_pointer_bits: u8,
    /// Whether the saving host is big-endian (the stream itself is always little-endian).
    pub host_big_endian: bool,
    /// Architecture of the saving host (`std::env::consts::ARCH`, at most 16 bytes).
    pub host_arch: String,
    /// Free-form creator string (program and version, at most 44 bytes).
    pub creator: String,
}

impl Header {
    /// A header describing this host, with `creator` cut to 44 bytes.
    pub fn for_this_host(creator: &str, flags: u32) -> Self {
        let created_unix_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            format_version: FORMAT_VERSION,
            flags,
            created_unix_secs,
            host_page_size: PAGE_SIZE as u32,
            host_pointer_bits: (usize::BITS) as u8,
            host_big_endian: cfg!(target_endian = "big"),
            host_arch: truncate_utf8(std::env::consts::ARCH, HOST_ARCH_LEN).to_string(),
            creator: truncate_utf8(creator, CREATOR_LEN).to_string(),
        }
    }

    pub(crate) fn write<W: Write + ?Sized>(&self, out: &mut Output<W>) -> Result<()> {
        let mut b = [0u8; HEADER_SIZE - 4];
        b[0..8].copy_from_slice(&FILE_MAGIC);
        b[8..12].copy_from_slice(&self.format_version.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.created_unix_secs.to_le_bytes());
        b[24..28].copy_from_slice(&self.host_page_size.to_le_bytes());
        b[28] = self.host_pointer_bits;
        b[29] = u8::from(self.host_big_endian);
        let arch = truncate_utf8(&self.host_arch, HOST_ARCH_LEN).as_bytes();
        b[32..32 + arch.len()].copy_from_slice(arch);
        let creator = truncate_utf8(&self.creator, CREATOR_LEN).as_bytes();
        b[48..48 + creator.len()].copy_from_slice(creator);
        out.reset_crc();
        out.emit(&b)?;
        out.emit_crc()
    }

    pub(crate) fn read<R: BufRead + ?Sized>(inp: &mut Input<R>) -> Result<Self> {
        const WHAT: &str = "file header";
        inp.reset_crc();
        let b: [u8; HEADER_SIZE - 4] = inp.read_array(WHAT)?;
        if b[0..8] != FILE_MAGIC {
            return Err(Error::BadMagic {
                offset: 0,
                what: "saved-state file magic".into(),
            });
        }
        inp.check_crc(0, WHAT)?;
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let format_version = u32_at(8);
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&format_version) {
            return Err(Error::UnsupportedFormat(format_version));
        }
        let flags = u32_at(12);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(Error::malformed(
                0,
                WHAT,
                format!("unknown flags {flags:#x}"),
            ));
        }
        let mut secs = [0u8; 8];
        secs.copy_from_slice(&b[16..24]);
        if b[29] > 1 || b[30] != 0 || b[31] != 0 {
            return Err(Error::malformed(0, WHAT, "reserved bytes are not zero"));
        }
        Ok(Self {
            format_version,
            flags,
            created_unix_secs: u64::from_le_bytes(secs),
            host_page_size: u32_at(24),
            host_pointer_bits: b[28],
            host_big_endian: b[29] == 1,
            host_arch: padded_str(&b[32..48], 32, "host architecture")?,
            creator: padded_str(&b[48..92], 48, "creator")?,
        })
    }
}

/// Longest prefix of `s` that fits `max` bytes and ends on a char boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Padding that makes a page run's data start at a multiple of
/// [`PAGE_SIZE`] when its record header ends at stream offset `after_header`.
pub(crate) fn run_padding(after_header: u64) -> u16 {
    ((PAGE_SIZE as u64 - after_header % PAGE_SIZE as u64) % PAGE_SIZE as u64) as u16
}

/// Decodes a NUL-padded UTF-8 field; padding must be all NUL.
fn padded_str(field: &[u8], offset: u64, what: &str) -> Result<String> {
    let len = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    if field[len..].iter().any(|&c| c != 0) {
        return Err(Error::malformed(offset, what, "padding is not zero"));
    }
    String::from_utf8(field[..len].to_vec())
        .map_err(|_| Error::malformed(offset, what, "not UTF-8"))
}

/// Checks a unit name: 1..=48 printable ASCII bytes.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len()) && name.bytes().all(|c| (0x20..0x7f).contains(&c))
}

/// Reads the `len` bytes of a stored unit name (of the structure `what` at
/// `start`), refusing a length no name can have.
fn read_name_bytes<R: BufRead + ?Sized>(
    inp: &mut Input<R>,
    start: u64,
    what: &str,
    len: u8,
) -> Result<Vec<u8>> {
    let len = usize::from(len);
    if len == 0 || len > MAX_NAME_LEN {
        return Err(Error::malformed(start, what, format!("name length {len}")));
    }
    let mut name = vec![0u8; len];
    inp.read_exact(&mut name, what)?;
    Ok(name)
}

/// A stored unit name as a string, if it is a valid name.
fn name_from(bytes: &[u8], start: u64, what: &str) -> Result<String> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|n| valid_name(n))
        .map(str::to_string)
        .ok_or_else(|| Error::malformed(start, what, "name is not printable ASCII"))
}

/// The header opening a unit: which unit, which version of its data, which pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnitHeader {
    pub name: String,
    pub instance: u32,
    pub version: u32,
    pub pass: u32,
}

impl UnitHeader {
    /// Writes the header. The caller resets the running CRC before, so that
    /// it also covers the unit header; the header's own CRC is emitted here
    /// (and is part of the running CRC).
    pub(crate) fn write<W: Write + ?Sized>(&self, out: &mut Output<W>) -> Result<()> {
        let mut b = Vec::with_capacity(29 + self.name.len());
        b.extend_from_slice(&UNIT_MAGIC);
        b.extend_from_slice(&out.pos().to_le_bytes());
        b.extend_from_slice(&self.instance.to_le_bytes());
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.pass.to_le_bytes());
        b.push(self.name.len() as u8);
        b.extend_from_slice(self.name.as_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        out.emit(&b)
    }

    /// Reads the rest of a unit header whose magic (at `start`) was already
    /// read. The running CRC keeps going; the header's own CRC is checked here.
    pub(crate) fn read_after_magic<R: BufRead + ?Sized>(
        inp: &mut Input<R>,
        start: u64,
    ) -> Result<Self> {
        const WHAT: &str = "unit header";
        let mut b = Vec::with_capacity(29 + MAX_NAME_LEN);
        b.extend_from_slice(&UNIT_MAGIC);
        let fixed: [u8; 21] = inp.read_array(WHAT)?;
        b.extend_from_slice(&fixed);
        let name = read_name_bytes(inp, start, WHAT, fixed[20])?;
        b.extend_from_slice(&name);
        let computed = crc32c::crc32c(&b);
        let stored = inp.read_u32(WHAT)?;
        if stored != computed {
            return Err(Error::Crc {
                offset: start,
                what: WHAT.into(),
                stored,
                computed,
            });
        }
        let u32_at =
            |o: usize| u32::from_le_bytes([fixed[o], fixed[o + 1], fixed[o + 2], fixed[o + 3]]);
        let mut off = [0u8; 8];
        off.copy_from_slice(&fixed[0..8]);
        if u64::from_le_bytes(off) != start {
            return Err(Error::malformed(
                start,
                WHAT,
                format!(
                    "records offset {} (misplaced data)",
                    u64::from_le_bytes(off)
                ),
            ));
        }
        Ok(Self {
            name: name_from(&name, start, WHAT)?,
            instance: u32_at(8),
            version: u32_at(12),
            pass: u32_at(16),
        })
    }
}

/// End marker: closes the sequence of units.
pub(crate) struct EndMarker {
    pub unit_count: u32,
}

impl EndMarker {
    pub(crate) fn write<W: Write + ?Sized>(&self, out: &mut Output<W>) -> Result<()> {
        out.reset_crc();
        let pos = out.pos();
        out.emit(&END_MAGIC)?;
        out.emit(&pos.to_le_bytes())?;
        out.emit(&self.unit_count.to_le_bytes())?;
        out.emit_crc()
    }

    pub(crate) fn read_after_magic<R: BufRead + ?Sized>(
        inp: &mut Input<R>,
        start: u64,
    ) -> Result<Self> {
        const WHAT: &str = "end marker";
        let offset = inp.read_u64(WHAT)?;
        let unit_count = inp.read_u32(WHAT)?;
        inp.check_crc(start, WHAT)?;
        if offset != start {
            return Err(Error::malformed(
                start,
                WHAT,
                format!("records offset {offset}"),
            ));
        }
        Ok(Self { unit_count })
    }
}

/// One directory entry: where a unit (one pass of it) sits in the stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DirEntry {
    /// Unit name.
    pub name: String,
    /// Unit instance.
    pub instance: u32,
    /// Version of the unit's data.
    pub version: u32,
    /// Pass number ([`PASS_FINAL`] for the final pass).
    pub pass: u32,
    /// Offset of the unit header.
    pub offset: u64,
    /// Stored bytes from the unit header up to and including the terminator.
    pub stored_len: u64,
    /// Running CRC recorded in the unit's terminator.
    pub crc: u32,
}

/// The directory of units, for random access.
pub(crate) fn write_directory<W: Write + ?Sized>(
    out: &mut Output<W>,
    entries: &[DirEntry],
) -> Result<()> {
    out.reset_crc();
    let pos = out.pos();
    out.emit(&DIR_MAGIC)?;
    out.emit(&pos.to_le_bytes())?;
    out.emit(&(entries.len() as u32).to_le_bytes())?;
    for e in entries {
        out.emit(&e.offset.to_le_bytes())?;
        out.emit(&e.stored_len.to_le_bytes())?;
        out.emit(&e.instance.to_le_bytes())?;
        out.emit(&e.version.to_le_bytes())?;
        out.emit(&e.pass.to_le_bytes())?;
        out.emit(&e.crc.to_le_bytes())?;
        out.emit(&[e.name.len() as u8])?;
        out.emit(e.name.as_bytes())?;
    }
    out.emit_crc()
}

/// Reads a directory at `start` (magic included).
pub(crate) fn read_directory<R: BufRead + ?Sized>(
    inp: &mut Input<R>,
    start: u64,
) -> Result<Vec<DirEntry>> {
    const WHAT: &str = "directory";
    inp.reset_crc();
    if inp.read_array::<4>(WHAT)? != DIR_MAGIC {
        return Err(Error::BadMagic {
            offset: start,
            what: WHAT.into(),
        });
    }
    let offset = inp.read_u64(WHAT)?;
    let count = inp.read_u32(WHAT)?;
    let mut entries = Vec::with_capacity((count as usize).min(1024));
    for _ in 0..count {
        let offset = inp.read_u64(WHAT)?;
        let stored_len = inp.read_u64(WHAT)?;
        let instance = inp.read_u32(WHAT)?;
        let version = inp.read_u32(WHAT)?;
        let pass = inp.read_u32(WHAT)?;
        let crc = inp.read_u32(WHAT)?;
        let len = inp.read_u8(WHAT)?;
        let name = name_from(&read_name_bytes(inp, start, WHAT, len)?, start, WHAT)?;
        entries.push(DirEntry {
            name,
            instance,
            version,
            pass,
            offset,
            stored_len,
            crc,
        });
    }
    inp.check_crc(start, WHAT)?;
    if offset != start {
        return Err(Error::malformed(
            start,
            WHAT,
            format!("records offset {offset}"),
        ));
    }
    Ok(entries)
}

/// The footer: fixed size at the very end, locating the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Footer {
    pub dir_offset: u64,
    pub end_offset: u64,
    pub stream_len: u64,
}

impl Footer {
    pub(crate) fn write<W: Write + ?Sized>(&self, out: &mut Output<W>) -> Result<()> {
        out.reset_crc();
        out.emit(&FOOTER_MAGIC)?;
        out.emit(&self.dir_offset.to_le_bytes())?;
        out.emit(&self.end_offset.to_le_bytes())?;
        out.emit(&self.stream_len.to_le_bytes())?;
        out.emit_crc()
    }

    pub(crate) fn read<R: BufRead + ?Sized>(inp: &mut Input<R>) -> Result<Self> {
        const WHAT: &str = "footer";
        let start = inp.pos();
        inp.reset_crc();
        if inp.read_array::<4>(WHAT)? != FOOTER_MAGIC {
            return Err(Error::BadMagic {
                offset: start,
                what: WHAT.into(),
            });
        }
        let dir_offset = inp.read_u64(WHAT)?;
        let end_offset = inp.read_u64(WHAT)?;
        let stream_len = inp.read_u64(WHAT)?;
        inp.check_crc(start, WHAT)?;
        if stream_len != start + FOOTER_SIZE || dir_offset >= start || end_offset >= dir_offset {
            return Err(Error::malformed(
                start,
                WHAT,
                "offsets do not match the stream",
            ));
        }
        Ok(Self {
            dir_offset,
            end_offset,
            stream_len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(h: &Header) -> Vec<u8> {
        let mut out = Output::new(Vec::new());
        h.write(&mut out).unwrap();
        out.into_inner()
    }

    #[test]
    fn header_round_trips_and_cuts_long_strings_on_char_boundaries() {
        let mut h = Header::for_this_host(&"é".repeat(40), FLAG_LIVE);
        assert_eq!(h.creator.len(), 44);
        h.host_arch = "x".repeat(16);
        let bytes = encode(&h);
        assert_eq!(bytes.len(), HEADER_SIZE);
        assert_eq!(Header::read(&mut Input::new(&bytes[..])).unwrap(), h);
    }

    #[test]
    fn header_rejects_unknown_flags_and_versions_even_with_a_valid_crc() {
        let mut h = Header::for_this_host("t", 0);
        h.flags = 1 << 7;
        assert!(matches!(
            Header::read(&mut Input::new(&encode(&h)[..])),
            Err(Error::Malformed { .. })
        ));
        h.flags = 0;
        h.format_version = 3;
        assert!(matches!(
            Header::read(&mut Input::new(&encode(&h)[..])),
            Err(Error::UnsupportedFormat(3))
        ));
        h.format_version = 0;
        assert!(matches!(
            Header::read(&mut Input::new(&encode(&h)[..])),
            Err(Error::UnsupportedFormat(0))
        ));
        h.format_version = 1;
        assert_eq!(Header::read(&mut Input::new(&encode(&h)[..])).unwrap(), h);
    }

    #[test]
    fn unit_header_records_its_own_offset() {
        let mut out = Output::new(Vec::new());
        out.emit(&[0; 10]).unwrap();
        let h = UnitHeader {
            name: "pgm".into(),
            instance: 2,
            version: 7,
            pass: PASS_FINAL,
        };
        h.write(&mut out).unwrap();
        let bytes = out.into_inner();
        let mut inp = Input::new(&bytes[10..]);
        inp.read_array::<4>("magic").unwrap();
        // Read as if it sat at offset 0: the stored offset (10) disagrees.
        assert!(matches!(
            UnitHeader::read_after_magic(&mut inp, 0),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn names_must_be_short_printable_ascii() {
        assert!(valid_name("pgm"));
        assert!(valid_name(&"a".repeat(48)));
        assert!(!valid_name(""));
        assert!(!valid_name(&"a".repeat(49)));
        assert!(!valid_name("tab\there"));
        assert!(!valid_name("é"));
    }
}
