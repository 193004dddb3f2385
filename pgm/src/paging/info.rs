//! Text producers for the `mode` and `pgmcr3` info handlers.

use std::fmt::{self, Write};

use super::entry::{self, Reserved};
use super::mode::{HostPaging, ModeTracker, PagingMode};
use super::phys_access::{PhysAccess, PhysAccessError};
use super::state::{PagingState, cr4};

/// Why an info producer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InfoError {
    /// The arguments were not understood.
    #[error("bad arguments {args:?}: expected {expected}")]
    BadArgs {
        /// What was given.
        args: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// Writing the output failed.
    #[error("formatting failed")]
    Fmt(#[from] fmt::Error),
    /// A table could not be read.
    #[error("reading guest memory failed: {0}")]
    Memory(#[from] PhysAccessError),
}

/// Writes the `mode` info: guest, shadow and host paging modes of vCPU
/// `cpu`. `args` is `all` (or empty), `guest`, `shadow` or `host`.
///
/// ```
/// use pgm::paging::{info_mode, HostPaging, HostVendor, ModeTracker, PagingMode};
/// let host = HostPaging { mode: PagingMode::Amd64Nx, vendor: HostVendor::Intel };
/// let mut out = String::new();
/// info_mode(&mut out, "shadow", 0, &ModeTracker::new(), &host).unwrap();
/// assert_eq!(out, "Shadow paging mode (vCPU 0): EPT\n");
/// assert!(info_mode(&mut out, "bogus", 0, &ModeTracker::new(), &host).is_err());
/// ```
pub fn info_mode(
    out: &mut dyn Write,
    args: &str,
    cpu: u32,
    tracker: &ModeTracker,
    host: &HostPaging,
) -> Result<(), InfoError> {
    let (guest, shadow, hostm) = match args.trim() {
        "" | "all" => (true, true, true),
        "guest" => (true, false, false),
        "shadow" => (false, true, false),
        "host" => (false, false, true),
        other => {
            return Err(InfoError::BadArgs {
                args: other.to_owned(),
                expected: "all, guest, shadow or host",
            });
        }
    };
    if guest {
        writeln!(
            out,
            "Guest paging mode (vCPU {cpu}):  {}{} (changed {} times), A20 {} (changed {} times)",
            tracker.mode(),
            if tracker.la57() { "/LA57" } else { "" },
            tracker.mode_changes(),
            if tracker.a20_enabled() {
                "enabled"
            } else {
                "disabled"
            },
            tracker.a20_changes(),
        )?;
    }
    if shadow {
        writeln!(
            out,
            "Shadow paging mode (vCPU {cpu}): {}",
            host.shadow_mode()
        )?;
    }
    if hostm {
        writeln!(out, "Host paging mode:{:13}{}", "", host.mode)?;
    }
    Ok(())
}

/// Writes the `pgmcr3` info: CR3 and the present entries of the top-level
/// table of the current mode (PD for 32-bit, the four PDPTEs for PAE, the
/// PML4 or PML5 for long mode).
///
/// ```
/// use pgm::paging::{info_pgmcr3, CpuFeatures, FlatMemory, PagingState, PhysAccess, cr0};
/// let mem = FlatMemory::new(0x2000);
/// mem.write_u32(0x1000 + 4, 0x40_0000 | 0x87).unwrap();
/// let st = PagingState::new(CpuFeatures::new(36).unwrap())
///     .with_cr0(cr0::PE | cr0::PG)
///     .with_cr4(pgm::paging::cr4::PSE)
///     .with_cr3(0x1000);
/// let mut out = String::new();
/// info_pgmcr3(&mut out, &st, &mem).unwrap();
/// assert!(out.contains("PDE[001] 0x00400000 -> 4M page 0x400000"), "{out}");
/// ```
pub fn info_pgmcr3<M: PhysAccess + ?Sized>(
    out: &mut dyn Write,
    state: &PagingState,
    mem: &M,
) -> Result<(), InfoError> {
    let mode = state.mode();
    let rsvd = Reserved::for_state(state);
    let a20 = state.a20_mask();
    writeln!(out, "CR3={:#x} mode {mode}", state.cr3)?;
    match mode {
        PagingMode::Real | PagingMode::Protected => {
            writeln!(out, "paging is off: no tables")?;
        }
        PagingMode::Bits32 => {
            let base = state.cr3 & rsvd.addr;
            writeln!(out, "page directory at {base:#x}")?;
            let pse = state.cr4 & cr4::PSE != 0;
            for i in 0..1024u64 {
                let e = u64::from(mem.read_u32((base + i * 4) & a20)?);
                if e & entry::P == 0 {
                    continue;
                }
                let va = i << 22;
                if pse && e & entry::PS != 0 {
                    let pa = (e & 0xffc0_0000) | (((e >> 13) & 0xff) << 32);
                    write!(out, "PDE[{i:03}] {va:#010x} -> 4M page {pa:#x}")?;
                } else {
                    write!(
                        out,
                        "PDE[{i:03}] {va:#010x} -> page table {:#x}",
                        e & rsvd.addr
                    )?;
                }
                writeln!(out, " {}", flags(e, false))?;
            }
        }
        PagingMode::Pae | PagingMode::PaeNx => {
            let base = state.cr3 & 0xffff_ffe0;
            let source = if state.pae_pdptes.is_some() {
                "PDPTE registers"
            } else {
                "memory"
            };
            writeln!(out, "PDPT at {base:#x} (entries from {source})")?;
            for i in 0..4u64 {
                let e = match state.pae_pdptes {
                    Some(regs) => regs[i as usize],
                    None => mem.read_u64((base + i * 8) & a20)?,
                };
                write!(out, "PDPTE[{i}] {:#010x} = {e:#018x}", i << 30)?;
                if e & entry::P == 0 {
                    writeln!(out, " not present")?;
                } else if e & rsvd.pdpte != 0 {
                    writeln!(out, " reserved bits set")?;
                } else {
                    writeln!(out, " -> page directory {:#x}", e & rsvd.addr)?;
                }
            }
        }
        PagingMode::Amd64 | PagingMode::Amd64Nx => {
            let (name, shift, width) = if state.la57() {
                ("PML5E", 48, 57)
            } else {
                ("PML4E", 39, 48)
            };
            let base = state.cr3 & rsvd.addr;
            writeln!(
                out,
                "{} at {base:#x}",
                if state.la57() { "PML5" } else { "PML4" }
            )?;
            for i in 0..512u64 {
                let e = mem.read_u64((base + i * 8) & a20)?;
                if e & entry::P == 0 {
                    continue;
                }
                let va = canonical(i << shift, width);
                write!(out, "{name}[{i:03}] {va:#018x} -> {:#x}", e & rsvd.addr)?;
                if e & rsvd.top != 0 {
                    write!(out, " RESERVED-BITS")?;
                }
                writeln!(out, " {}", flags(e, true))?;
            }
        }
    }
    Ok(())
}

fn canonical(va: u64, width: u32) -> u64 {
    let shift = 64 - width;
    (((va << shift) as i64) >> shift) as u64
}

/// Compact flag string: `P W U A D PS G NX PWT PCD`, `-` for clear bits
/// (R/W and U/S clear print as `R` and `S`).
fn flags(e: u64, xd: bool) -> String {
    let mut s = String::with_capacity(24);
    let mut put = |on: bool, yes: &str, no: &str| {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(if on { yes } else { no });
    };
    put(e & entry::P != 0, "P", "-");
    put(e & entry::RW != 0, "W", "R");
    put(e & entry::US != 0, "U", "S");
    put(e & entry::A != 0, "A", "-");
    put(e & entry::D != 0, "D", "-");
    put(e & entry::PS != 0, "PS", "--");
    put(e & entry::G != 0, "G", "-");
    if xd {
        put(e & entry::XD != 0, "NX", "--");
    }
    put(e & entry::PWT != 0, "PWT", "---");
    put(e & entry::PCD != 0, "PCD", "---");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::{CpuFeatures, FlatMemory, HostVendor, cr0, efer};

    #[test]
    fn mode_all_lists_three_lines() {
        let host = HostPaging {
            mode: PagingMode::Amd64Nx,
            vendor: HostVendor::Amd,
        };
        let mut t = ModeTracker::new();
        let st = PagingState::new(CpuFeatures::new(48).unwrap())
            .with_cr0(cr0::PE | cr0::PG)
            .with_cr4(cr4::PAE | cr4::LA57)
            .with_efer(efer::LMA | efer::NXE);
        t.update(&st);
        let mut out = String::new();
        info_mode(&mut out, "all", 1, &t, &host).unwrap();
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].contains("AMD64+NX/LA57 (changed 1 times)"),
            "{out}"
        );
        assert!(lines[1].ends_with("Nested-AMD64"));
        assert!(lines[2].ends_with("AMD64+NX"));
    }

    #[test]
    fn pgmcr3_for_every_mode() {
        let mem = FlatMemory::new(0x3000);
        mem.write_u64(0x1000, 0x2000 | 0x27).unwrap();
        mem.write_u64(0x1ff8, 0x2000 | 0x3 | entry::XD).unwrap();
        let f = CpuFeatures::new(48).unwrap();
        let base = PagingState::new(f).with_cr3(0x1000);
        let text = |st: PagingState| {
            let mut out = String::new();
            info_pgmcr3(&mut out, &st, &mem).unwrap();
            out
        };
        assert!(text(base).contains("paging is off"));
        let pg = base.with_cr0(cr0::PE | cr0::PG);
        assert!(text(pg).contains("PDE[000] 0x00000000 -> page table 0x2000 P W U A"));
        let pae = text(pg.with_cr4(cr4::PAE));
        assert!(
            pae.contains("PDPTE[0] 0x00000000 = 0x0000000000002027 reserved bits set"),
            "{pae}"
        );
        assert!(pae.contains("PDPTE[1] 0x40000000 = 0x0000000000000000 not present"));
        let lm = text(pg.with_cr4(cr4::PAE).with_efer(efer::LMA | efer::NXE));
        assert!(
            lm.contains("PML4E[000] 0x0000000000000000 -> 0x2000 P W U A"),
            "{lm}"
        );
        assert!(
            lm.contains("PML4E[511] 0xffffff8000000000 -> 0x2000 P W S - - -- - NX"),
            "{lm}"
        );
        let la57 = text(pg.with_cr4(cr4::PAE | cr4::LA57).with_efer(efer::LMA));
        assert!(
            la57.contains("PML5E[511] 0xffff000000000000 -> 0x2000"),
            "{la57}"
        );
        assert!(la57.contains("RESERVED-BITS"), "{la57}");
    }
}
