//! Records inside a unit: reading record headers, raw / zero / LZ4 / page-run
//! data, skipping, and lending pages.

use std::io::BufRead;

use super::*;

impl<R: BufRead + ?Sized> StreamReader<R> {
    pub(super) fn open(&mut self) -> Result<&mut OpenUnit> {
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

    pub(super) fn read_record_header(&mut self) -> Result<Rec> {
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
    pub(super) fn file_pages(&mut self, max_pages: u64) -> Result<Option<FilePages<'_>>> {
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

    pub(super) fn read_into(&mut self, dst: &mut [u8]) -> Result<()> {
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

    pub(super) fn skip(&mut self, mut n: u64) -> Result<()> {
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

    pub(super) fn skip_rest(&mut self) -> Result<()> {
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

    pub(super) fn get_page(&mut self) -> Result<Page<'_>> {
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
}

fn as_page(s: &[u8]) -> Result<Page<'_>> {
    s.try_into()
        .map(Page::Data)
        .map_err(|_| Error::InvalidState("source lent a short page".into()))
}
