//! Where the numbers and CRCs of a valid saved state are (after FORMAT.md),
//! so that the semantic fuzzer can change numbers and make every CRC match
//! again.

/// A number in the stream: its offset and width in bytes (little-endian).
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub at: usize,
    pub width: usize,
}

impl Field {
    fn new(at: usize, width: usize) -> Self {
        Field { at, width }
    }

    pub fn read(&self, bytes: &[u8]) -> u64 {
        let mut v = [0u8; 8];
        v[..self.width].copy_from_slice(&bytes[self.at..self.at + self.width]);
        u64::from_le_bytes(v)
    }

    pub fn write(&self, bytes: &mut [u8], value: u64) {
        bytes[self.at..self.at + self.width].copy_from_slice(&value.to_le_bytes()[..self.width]);
    }
}

/// A CRC32C stored at `at`, covering `covers`.
#[derive(Debug, Clone)]
struct Crc {
    at: usize,
    covers: std::ops::Range<usize>,
}

/// Raw data of a unit: `len` bytes at `stream` hold the unit's data from
/// logical offset `logical`.
#[derive(Debug, Clone, Copy)]
struct RawSpan {
    unit: usize,
    logical: u64,
    stream: usize,
    len: usize,
}

/// The numbers and CRCs of a stream, in the order the CRCs must be
/// recomputed (an inner CRC before the CRC that covers it).
#[derive(Debug, Default)]
pub struct Layout {
    /// Lengths, counts, sizes, offsets, versions, instances, passes, flags.
    pub fields: Vec<Field>,
    crcs: Vec<Crc>,
    /// Directory entries' copies of their unit's running CRC, by unit.
    unit_crc_copies: Vec<(usize, usize)>,
    raw: Vec<RawSpan>,
}

fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap()) as usize
}

impl Layout {
    /// Walks a valid stream (as `ssm` just wrote it). `None` if it is not
    /// one (the walker panics on nothing).
    pub fn of(b: &[u8]) -> Option<Layout> {
        let mut l = Layout::default();
        let get = |at: usize, n: usize| b.get(at..at + n);
        get(0, 96)?;
        // File header: version, flags, page size; CRC over 0..92.
        l.fields
            .extend([Field::new(8, 4), Field::new(12, 4), Field::new(24, 4)]);
        l.crcs.push(Crc {
            at: 92,
            covers: 0..92,
        });
        let mut pos = 96;
        let mut unit_crcs = Vec::new();
        while get(pos, 4)? == b"UNIT" {
            let start = pos;
            let n = *b.get(pos + 24)? as usize;
            get(pos, 29 + n)?;
            // Stored offset, instance, version, pass, name length.
            l.fields.extend([
                Field::new(pos + 4, 8),
                Field::new(pos + 12, 4),
                Field::new(pos + 16, 4),
                Field::new(pos + 20, 4),
                Field::new(pos + 24, 1),
            ]);
            l.crcs.push(Crc {
                at: pos + 25 + n,
                covers: pos..pos + 25 + n,
            });
            pos += 29 + n;
            let unit = unit_crcs.len();
            let mut logical = 0u64;
            loop {
                match *b.get(pos)? {
                    0x01 => {
                        let len = u32_at(b, pos + 1);
                        get(pos, 5 + len)?;
                        l.fields.push(Field::new(pos + 1, 4));
                        l.raw.push(RawSpan {
                            unit,
                            logical,
                            stream: pos + 5,
                            len,
                        });
                        logical += len as u64;
                        pos += 5 + len;
                    }
                    0x02 => {
                        get(pos, 5)?;
                        l.fields.push(Field::new(pos + 1, 4));
                        logical += 4096 * u32_at(b, pos + 1) as u64;
                        pos += 5;
                    }
                    0x03 => {
                        let len = u16_at(b, pos + 1);
                        get(pos, 3 + len)?;
                        l.fields.push(Field::new(pos + 1, 2));
                        logical += 4096;
                        pos += 3 + len;
                    }
                    0x04 => {
                        logical += 4096;
                        pos += 1;
                    }
                    0x05 => {
                        get(pos, 11)?;
                        let count = u32_at(b, pos + 1);
                        let pad = u16_at(b, pos + 9);
                        let pages = pos + 11 + pad;
                        get(pages, 4096 * count)?;
                        l.fields
                            .extend([Field::new(pos + 1, 4), Field::new(pos + 9, 2)]);
                        l.crcs.push(Crc {
                            at: pos + 5,
                            covers: pages..pages + 4096 * count,
                        });
                        logical += 4096 * count as u64;
                        pos = pages + 4096 * count;
                    }
                    0xff => {
                        get(pos, 13)?;
                        l.fields.push(Field::new(pos + 1, 8));
                        l.crcs.push(Crc {
                            at: pos + 9,
                            covers: start..pos + 9,
                        });
                        unit_crcs.push(pos + 9);
                        pos += 13;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        // End marker: stored offset, unit count; CRC over its first 16 bytes.
        (get(pos, 4)? == b"SEND").then_some(())?;
        get(pos, 20)?;
        l.fields
            .extend([Field::new(pos + 4, 8), Field::new(pos + 12, 4)]);
        l.crcs.push(Crc {
            at: pos + 16,
            covers: pos..pos + 16,
        });
        pos += 20;
        // Directory: stored offset, entry count, entries; CRC at its end.
        (get(pos, 4)? == b"SDIR").then_some(())?;
        let dir = pos;
        let entries = u32_at(b, pos + 12);
        l.fields
            .extend([Field::new(pos + 4, 8), Field::new(pos + 12, 4)]);
        pos += 16;
        for unit in 0..entries {
            let n = *b.get(pos + 32)? as usize;
            get(pos, 33 + n)?;
            // Unit offset, stored length, instance, version, pass, name length.
            l.fields.extend([
                Field::new(pos, 8),
                Field::new(pos + 8, 8),
                Field::new(pos + 16, 4),
                Field::new(pos + 20, 4),
                Field::new(pos + 24, 4),
                Field::new(pos + 32, 1),
            ]);
            l.unit_crc_copies.push((pos + 28, *unit_crcs.get(unit)?));
            pos += 33 + n;
        }
        get(pos, 4)?;
        l.crcs.push(Crc {
            at: pos,
            covers: dir..pos,
        });
        pos += 4;
        // Footer: directory offset, end marker offset, stream length.
        (get(pos, 4)? == b"SFTR").then_some(())?;
        get(pos, 32)?;
        l.fields.extend([
            Field::new(pos + 4, 8),
            Field::new(pos + 12, 8),
            Field::new(pos + 20, 8),
        ]);
        l.crcs.push(Crc {
            at: pos + 28,
            covers: pos..pos + 28,
        });
        (pos + 32 == b.len()).then_some(l)
    }

    /// The stream offset of logical data offset `logical` of unit `unit`,
    /// when `width` bytes from there sit in one raw record.
    pub fn data_field(&self, unit: usize, logical: u64, width: usize) -> Option<Field> {
        self.raw
            .iter()
            .find(|s| {
                s.unit == unit
                    && s.logical <= logical
                    && logical + width as u64 <= s.logical + s.len as u64
            })
            .map(|s| Field::new(s.stream + (logical - s.logical) as usize, width))
    }

    /// Recomputes every CRC (and the directory's copies of the units'
    /// running CRCs), inner ones first, so that only the changed numbers
    /// are wrong.
    pub fn fix_crcs(&self, b: &mut [u8]) {
        let crc = |b: &mut [u8], c: &Crc| {
            let v = crc32c::crc32c(&b[c.covers.clone()]);
            b[c.at..c.at + 4].copy_from_slice(&v.to_le_bytes());
        };
        // Header, unit headers, page runs and running CRCs are in stream
        // order, each covering only what comes before it; the directory's
        // copies of the running CRCs come before the directory's own CRC.
        let dir_crc = self.crcs.len() - 2;
        for c in &self.crcs[..dir_crc] {
            crc(b, c);
        }
        for &(copy, unit_crc) in &self.unit_crc_copies {
            let v: [u8; 4] = b[unit_crc..unit_crc + 4].try_into().unwrap();
            b[copy..copy + 4].copy_from_slice(&v);
        }
        for c in &self.crcs[dir_crc..] {
            crc(b, c);
        }
    }
}
