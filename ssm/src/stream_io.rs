//! Byte-level input and output with position tracking and a running CRC32C.
//!
//! Every structure of the format is read and written through these two
//! types, so the offset in error messages and the CRC of each structure are
//! computed in one place.

use std::io::{BufRead, Seek, SeekFrom, Write};

use crate::error::{Error, Result};

/// Writes bytes to a sink, counting them and folding them into a CRC32C.
pub(crate) struct Output<W: ?Sized> {
    pos: u64,
    crc: u32,
    inner: W,
}

impl<W: Write> Output<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            pos: 0,
            crc: 0,
        }
    }

    pub(crate) fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write + ?Sized> Output<W> {
    /// Offset of the next byte written.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// The CRC of everything emitted since the last [`Output::reset_crc`].
    pub(crate) fn crc(&self) -> u32 {
        self.crc
    }

    pub(crate) fn reset_crc(&mut self) {
        self.crc = 0;
    }

    /// Writes `bytes`, counting them and adding them to the running CRC.
    pub(crate) fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner.write_all(bytes)?;
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes `bytes` whose CRC32C the caller already computed (`crc`),
    /// folding that into the running CRC without a second pass over them.
    pub(crate) fn emit_precomputed(&mut self, bytes: &[u8], crc: u32) -> Result<()> {
        self.inner.write_all(bytes)?;
        self.crc = crc32c::crc32c_combine(self.crc, crc, bytes.len());
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes the running CRC (little-endian) without adding it to itself.
    pub(crate) fn emit_crc(&mut self) -> Result<()> {
        self.inner.write_all(&self.crc.to_le_bytes())?;
        self.pos += 4;
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> Result<()> {
        self.inner.flush()?;
        Ok(())
    }
}

/// Reads bytes from a buffered source, counting them and folding them into a
/// CRC32C. Slices can be lent straight out of the source's buffer.
pub(crate) struct Input<R: ?Sized> {
    pos: u64,
    crc: u32,
    /// Bytes lent out by [`Input::borrow`] that still have to be consumed.
    pending: usize,
    inner: R,
}

impl<R: BufRead> Input<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            pos: 0,
            crc: 0,
            pending: 0,
        }
    }
}

impl<R: BufRead + ?Sized> Input<R> {
    /// Offset of the next byte to be read.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    pub(crate) fn reset_crc(&mut self) {
        self.crc = 0;
    }

    fn settle(&mut self) {
        if self.pending > 0 {
            self.inner.consume(self.pending);
            self.pending = 0;
        }
    }

    /// The source's buffered bytes (empty at end of stream). Retries on EINTR.
    fn fill(&mut self) -> Result<&[u8]> {
        self.settle();
        loop {
            match self.inner.fill_buf() {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        // The buffer is filled now; asking again only returns it.
        Ok(self.inner.fill_buf()?)
    }

    /// Fills `buf` completely; `what` names the structure for a truncation error.
    pub(crate) fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let avail = self.fill()?;
            if avail.is_empty() {
                return Err(Error::truncated(self.pos, what));
            }
            let n = avail.len().min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&avail[..n]);
            self.inner.consume(n);
            self.crc = crc32c::crc32c_append(self.crc, &buf[done..done + n]);
            self.pos += n as u64;
            done += n;
        }
        Ok(())
    }

    pub(crate) fn read_array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.read_exact(&mut b, what)?;
        Ok(b)
    }

    pub(crate) fn read_u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.read_array::<1>(what)?[0])
    }

    pub(crate) fn read_u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.read_array(what)?))
    }

    pub(crate) fn read_u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.read_array(what)?))
    }

    /// Reads a stored CRC (not folded into the running CRC) and compares it
    /// with the running CRC of the structure that started at `start`.
    pub(crate) fn check_crc(&mut self, start: u64, what: &str) -> Result<u32> {
        let computed = self.crc;
        let stored = u32::from_le_bytes(self.read_array(what)?);
        if stored != computed {
            return Err(Error::Crc {
                offset: start,
                what: what.to_string(),
                stored,
                computed,
            });
        }
        Ok(stored)
    }

    /// Consumes `n` bytes, folding them into the CRC.
    pub(crate) fn skip(&mut self, mut n: u64, what: &str) -> Result<()> {
        while n > 0 {
            let (pos, crc) = (self.pos, self.crc);
            let avail = self.fill()?;
            if avail.is_empty() {
                return Err(Error::truncated(pos, what));
            }
            let k = (avail.len() as u64).min(n) as usize;
            self.crc = crc32c::crc32c_append(crc, &avail[..k]);
            self.inner.consume(k);
            self.pos += k as u64;
            n -= k as u64;
        }
        Ok(())
    }

    /// Moves `n` bytes on without reading them, through `seek` (a relative
    /// seek of the source), and folds `crc`, the CRC32C the stream records
    /// for those bytes, into the running CRC in their place.
    pub(crate) fn skip_unread(
        &mut self,
        n: u64,
        crc: u32,
        seek: fn(&mut R, i64) -> std::io::Result<()>,
    ) -> Result<()> {
        self.settle();
        let (Ok(delta), Ok(len)) = (i64::try_from(n), usize::try_from(n)) else {
            return Err(Error::malformed(self.pos, "page run", "too long to skip"));
        };
        seek(&mut self.inner, delta)?;
        self.pos += n;
        self.crc = crc32c::crc32c_combine(self.crc, crc, len);
        Ok(())
    }

    /// The next byte, left unread.
    pub(crate) fn peek_u8(&mut self, what: &str) -> Result<u8> {
        let pos = self.pos;
        match self.fill()?.first() {
            Some(&b) => Ok(b),
            None => Err(Error::truncated(pos, what)),
        }
    }

    /// How many bytes the source holds buffered (0 at end of stream).
    pub(crate) fn buffered(&mut self) -> Result<usize> {
        Ok(self.fill()?.len())
    }

    /// Lends the next `n` bytes straight from the source's buffer; they count
    /// as read (and CRC'd) at once. The caller checks [`Input::buffered`]
    /// first; a shorter buffer is a truncation error.
    pub(crate) fn borrow(&mut self, n: usize) -> Result<&[u8]> {
        if self.fill()?.len() < n {
            return Err(Error::truncated(self.pos, "page"));
        }
        self.pending = n;
        self.pos += n as u64;
        let slice = &self.inner.fill_buf()?[..n];
        self.crc = crc32c::crc32c_append(self.crc, slice);
        Ok(slice)
    }

    /// True when the source has no more bytes.
    pub(crate) fn at_eof(&mut self) -> Result<bool> {
        Ok(self.fill()?.is_empty())
    }
}

impl<R: BufRead + Seek> Input<R> {
    /// Moves to absolute offset `pos` (the CRC is left for the caller to reset).
    pub(crate) fn seek_to(&mut self, pos: u64) -> Result<()> {
        self.settle();
        self.inner.seek(SeekFrom::Start(pos))?;
        self.pos = pos;
        Ok(())
    }

    /// Length of the whole source.
    pub(crate) fn len(&mut self) -> Result<u64> {
        self.settle();
        let end = self.inner.seek(SeekFrom::End(0))?;
        self.inner.seek(SeekFrom::Start(self.pos))?;
        Ok(end)
    }
}
