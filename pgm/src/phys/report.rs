//! Page statistics and the text of the `phys` and `handlers` info handlers.

use std::fmt::{self, Write};

use super::map::PhysMap;
use super::page::{PAGE_SHIFT, PAGE_SIZE, PageInfo, PageState};
use super::range::{Backing, PhysRange};

/// Page counts over the whole map (VirtualBox's `/PGM/Page/...`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageStats {
    /// All tracked pages (RAM, ROM and shadow, MMIO2) plus MMIO pages.
    pub all: u64,
    /// Pages backed by private host memory (allocated or write-monitored).
    pub private: u64,
    /// Pages in the zero state.
    pub zero: u64,
    /// Pages of MMIO ranges.
    pub mmio: u64,
    /// Pages of MMIO2 ranges.
    pub mmio2: u64,
    /// ROM pages (image and shadow).
    pub rom: u64,
    /// Write-monitored pages.
    pub monitored: u64,
    /// Pages written since monitoring was last armed (dirty).
    pub written: u64,
    /// Shared pages.
    pub shared: u64,
    /// Ballooned pages.
    pub ballooned: u64,
}

impl PageStats {
    fn count(&mut self, info: PageInfo) {
        self.all += 1;
        match info.state {
            PageState::Zero => self.zero += 1,
            PageState::Allocated => self.private += 1,
            PageState::WriteMonitored => {
                self.private += 1;
                self.monitored += 1;
            }
            PageState::Shared => self.shared += 1,
            PageState::Ballooned => self.ballooned += 1,
        }
        self.written += u64::from(info.dirty);
    }
}

fn range_memories(r: &PhysRange) -> Vec<&super::range::Memory> {
    match &r.backing {
        Backing::Rom { rom, shadow, .. } => vec![rom, shadow],
        _ => r.writable_memory().into_iter().collect(),
    }
}

impl PhysMap {
    /// Counts the pages by state and type.
    pub fn page_stats(&self) -> PageStats {
        let mut s = PageStats::default();
        for r in &self.ranges {
            let pages = r.size >> PAGE_SHIFT;
            match &r.backing {
                Backing::Mmio => {
                    s.all += pages;
                    s.mmio += pages;
                    continue;
                }
                Backing::Rom { .. } => s.rom += 2 * pages,
                Backing::Mmio2 { .. } => s.mmio2 += pages,
                Backing::Ram(_) => {}
            }
            for mem in range_memories(r) {
                mem.pages.iter().for_each(|p| s.count(p.get()));
            }
        }
        s
    }

    /// Writes the `phys` info: one line per range; `verbose` adds runs of
    /// pages with the same type and state.
    pub fn write_phys_info(&self, out: &mut dyn Write, verbose: bool) -> fmt::Result {
        writeln!(
            out,
            "Guest-physical map: {} ranges, A20 {}, KVM slot generation {}",
            self.ranges.len(),
            if self.a20_enabled() { "on" } else { "off" },
            self.kvm_slots().generation
        )?;
        for r in &self.ranges {
            write!(
                out,
                "{:016x}-{:016x} {:<6} {}",
                r.start,
                r.last(),
                r.kind().name(),
                r.name
            )?;
            if let Backing::Rom { prot, .. } = &r.backing {
                write!(out, " ({})", prot.name())?;
            }
            writeln!(out)?;
            if !verbose {
                continue;
            }
            for mem in range_memories(r) {
                let mut run: Option<(usize, PageInfo, usize)> = None;
                let flush = |out: &mut dyn Write, run: &Option<(usize, PageInfo, usize)>| {
                    if let Some((first, info, n)) = *run {
                        let start = r.start + first as u64 * PAGE_SIZE;
                        writeln!(
                            out,
                            "    {:016x}-{:016x} {:<10} {:<15} {:>8} pages",
                            start,
                            start + n as u64 * PAGE_SIZE - 1,
                            info.page_type.name(),
                            info.state.name(),
                            n
                        )?;
                    }
                    Ok(())
                };
                for (i, p) in mem.pages.iter().enumerate() {
                    let info = p.get();
                    let key = PageInfo {
                        dirty: false,
                        ..info
                    };
                    match &mut run {
                        Some((_, k, n)) if *k == key => *n += 1,
                        _ => {
                            flush(out, &run)?;
                            run = Some((i, key, 1));
                        }
                    }
                }
                flush(out, &run)?;
            }
        }
        Ok(())
    }

    /// Writes the `handlers` info: every physical access handler range.
    pub fn write_handlers_info(&self, out: &mut dyn Write) -> fmt::Result {
        writeln!(
            out,
            "Physical access handlers: {} of at most {}",
            self.handlers.len(),
            self.handlers.max()
        )?;
        for h in self.handlers.iter() {
            let (kind, tdesc) = self
                .handler_type_info(h.type_id)
                .unwrap_or((super::handler::HandlerKind::All, "<unknown type>"));
            writeln!(
                out,
                "{:016x}-{:016x} {:<5} user={:#x} {} [{}]",
                h.first,
                h.last,
                kind.name(),
                h.user,
                h.desc,
                tdesc
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::phys::{HandlerAction, HandlerKind, PhysMap, RomProtection};

    #[test]
    fn stats_and_info_text() {
        let mut map = PhysMap::with_defaults();
        map.add_ram(0, 0x10000, "Low RAM").unwrap();
        map.add_rom(
            0xf_0000,
            0x2000,
            &[1; 0x1000],
            RomProtection::ReadRomWriteRam,
            "BIOS",
        )
        .unwrap();
        let t = map.register_handler_type(HandlerKind::Mmio, "dev", |_| Ok(HandlerAction::Handled));
        map.map_mmio(0x1000_0000, 0x3000, t, 5, "Device").unwrap();
        map.write(0x1000, &[1]).unwrap();
        let s = map.page_stats();
        assert_eq!(s.all, 16 + 4 + 3);
        assert_eq!(s.mmio, 3);
        assert_eq!(s.rom, 4);
        assert_eq!(s.private, 1 + 2);
        assert_eq!(s.zero, 15 + 2);
        assert_eq!(s.written, 1);

        let mut text = String::new();
        map.write_phys_info(&mut text, false).unwrap();
        assert!(text.contains("BIOS (read-ROM/write-RAM)"), "{text}");
        assert_eq!(text.lines().count(), 4);
        let mut verbose = String::new();
        map.write_phys_info(&mut verbose, true).unwrap();
        assert!(
            verbose.contains("0000000000001000-0000000000001fff RAM        allocated"),
            "{verbose}"
        );
        assert!(
            verbose.contains("0000000000002000-000000000000ffff RAM        zero"),
            "{verbose}"
        );
        let mut h = String::new();
        map.write_handlers_info(&mut h).unwrap();
        assert!(h.contains("MMIO  user=0x5 Device [dev]"), "{h}");
    }
}
