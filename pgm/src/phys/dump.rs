//! Dumping guest-physical memory to a file (`vmm run --dump-phys`).

use std::io::{Seek, SeekFrom, Write};

use super::error::PhysError;
use super::map::PhysMap;
use super::page::{PAGE_SIZE, PageState};
use super::range::Backing;

/// Outcome of [`PhysMap::dump`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpReport {
    /// Pages written.
    pub written: u64,
    /// Zero pages skipped (left as holes).
    pub skipped_zero: u64,
}

impl PhysMap {
    /// Writes guest-physical memory to `out`, file offset = guest address:
    /// RAM, ROM (as the guest reads it) and MMIO2; MMIO and unassigned
    /// space are holes. With `include_zero` false, zero-state pages are
    /// skipped by seeking (as VirtualBox's `pgmphystofile` does without
    /// `zero`), which leaves sparse holes reading as zero.
    ///
    /// ```
    /// use pgm::phys::PhysMap;
    /// let mut map = PhysMap::with_defaults();
    /// map.add_ram(0, 0x4000, "ram").unwrap();
    /// map.write(0x1000, b"hi").unwrap();
    /// let mut out = std::io::Cursor::new(Vec::new());
    /// let r = map.dump(&mut out, false).unwrap();
    /// assert_eq!(r.written, 1);
    /// assert_eq!(out.get_ref().len(), 0x4000);
    /// assert_eq!(&out.get_ref()[0x1000..0x1002], b"hi");
    /// ```
    pub fn dump<W: Write + Seek>(
        &self,
        out: &mut W,
        include_zero: bool,
    ) -> Result<DumpReport, PhysError> {
        let mut report = DumpReport::default();
        let mut page = vec![0u8; PAGE_SIZE as usize];
        let mut end = 0u64;
        let mut pos = out.stream_position()?;
        let base = pos;
        for r in &self.ranges {
            if matches!(r.backing, Backing::Mmio) {
                continue;
            }
            let Some(mem) = r.readable_memory() else {
                continue;
            };
            for (i, p) in mem.pages.iter().enumerate() {
                let off = i as u64 * PAGE_SIZE;
                let gpa = r.start + off;
                end = gpa + PAGE_SIZE;
                if !include_zero && p.get().state == PageState::Zero {
                    report.skipped_zero += 1;
                    continue;
                }
                if pos != base + gpa {
                    pos = out.seek(SeekFrom::Start(base + gpa))?;
                }
                mem.read(off, &mut page);
                if let Backing::Rom { prot, .. } = &r.backing {
                    self.rom_patches
                        .unpatch_page(gpa, !prot.reads_rom(), &mut page);
                }
                out.write_all(&page)?;
                pos += PAGE_SIZE;
                report.written += 1;
            }
        }
        if end > 0 && pos < base + end {
            out.seek(SeekFrom::Start(base + end - 1))?;
            out.write_all(&[0])?;
        }
        out.flush()?;
        Ok(report)
    }
}
