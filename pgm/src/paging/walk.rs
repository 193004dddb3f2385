//! The page walker: linear to guest-physical, with the CPU's checks.

use super::entry::{self, Reserved};
use super::fault::{Access, AccessKind, PageFault, Privilege, WalkError, pf_err};
use super::mode::PagingMode;
use super::phys_access::PhysAccess;
use super::state::{PagingState, cr0, cr4};

/// Size of the page a translation ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageSize {
    /// 4 KiB (PTE, or no paging).
    Size4K,
    /// 2 MiB (PAE / long-mode PDE).
    Size2M,
    /// 4 MiB (32-bit PDE with CR4.PSE).
    Size4M,
    /// 1 GiB (long-mode PDPTE).
    Size1G,
}

impl PageSize {
    /// Size in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            Self::Size4K => 1 << 12,
            Self::Size2M => 1 << 21,
            Self::Size4M => 1 << 22,
            Self::Size1G => 1 << 30,
        }
    }
}

/// One paging-structure entry the walk read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WalkEntry {
    /// Paging level (1 = PTE, 2 = PDE, 3 = PDPTE, 4 = PML4E, 5 = PML5E).
    pub level: u8,
    /// Guest-physical address of the entry.
    pub gpa: u64,
    /// The entry as read (before any accessed/dirty update).
    pub value: u64,
}

/// Options for [`translate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WalkOptions {
    /// Set the accessed flag in every entry used and the dirty flag in the
    /// leaf on writes, as the CPU does, once the access is allowed.
    pub update_accessed_dirty: bool,
}

/// A successful walk: where the address lands and the combined rights of
/// all entries on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The linear address translated (truncated to 32 bits outside long
    /// mode).
    pub linear: u64,
    /// The guest-physical address of that byte (A20 mask applied).
    pub gpa: u64,
    /// Size of the page.
    pub page_size: PageSize,
    /// R/W set in every entry.
    pub writable: bool,
    /// U/S set in every entry (a "user-mode address").
    pub user: bool,
    /// No entry has XD set (or NX is not enabled).
    pub executable: bool,
    /// The leaf's dirty flag (set after a write with A/D updates on).
    pub dirty: bool,
    /// The leaf's global flag.
    pub global: bool,
    entries: [WalkEntry; 5],
    depth: u8,
}

impl Translation {
    /// The entries read, top level first (empty without paging).
    pub fn entries(&self) -> &[WalkEntry] {
        &self.entries[..usize::from(self.depth)]
    }

    /// Guest-physical address of the start of the page.
    pub fn page_gpa(&self) -> u64 {
        self.gpa & !(self.page_size.bytes() - 1)
    }

    /// Checks `access` against the rights of this translation under
    /// `state` (CR0.WP, CR4.SMEP/SMAP); on refusal returns the page fault
    /// the CPU raises.
    pub fn check(&self, state: &PagingState, access: Access) -> Result<(), PageFault> {
        let rights = (self.writable, self.user, self.executable);
        if !access_denied(state, state.mode(), access, rights) {
            return Ok(());
        }
        Err(PageFault {
            address: self.linear,
            error_code: error_code(state, access, pf_err::P),
            level: self.entries().last().map_or(0, |e| e.level),
        })
    }
}

/// Whether the CPU refuses `access` to a page with the combined rights
/// `writable`, `user` and `executable` under `state`.
/// `mode` is `state.mode()`, passed in by callers that have it at hand.
#[inline]
pub(crate) fn access_denied(
    state: &PagingState,
    mode: PagingMode,
    access: Access,
    (writable, user_page, executable): (bool, bool, bool),
) -> bool {
    if !mode.is_paged() {
        return false;
    }
    let smap_blocks = state.cr4 & cr4::SMAP != 0
        && user_page
        && matches!(
            access.privilege,
            Privilege::Implicit | Privilege::Supervisor { ac: false }
        );
    let user = access.is_user();
    match access.kind {
        AccessKind::Read => (user && !user_page) || (!user && smap_blocks),
        AccessKind::Write => {
            if user {
                !user_page || !writable
            } else {
                (!writable && state.cr0 & cr0::WP != 0) || smap_blocks
            }
        }
        AccessKind::Execute => {
            !executable
                || (user && !user_page)
                || (!user && user_page && state.cr4 & cr4::SMEP != 0)
        }
    }
}

/// The error code for `access` with the cause bits `cause`.
fn error_code(state: &PagingState, access: Access, cause: u32) -> u32 {
    let mut code = cause;
    if access.kind == AccessKind::Write {
        code |= pf_err::W;
    }
    if access.is_user() {
        code |= pf_err::U;
    }
    if access.kind == AccessKind::Execute && (state.cr4 & cr4::SMEP != 0 || state.mode().has_nx()) {
        code |= pf_err::ID;
    }
    code
}

/// The linear address the CPU uses for `addr` in `state`, or the #GP for a
/// non-canonical one.
pub fn linear_address(state: &PagingState, addr: u64) -> Result<u64, WalkError> {
    linear_in(state.mode(), state.la57(), addr)
}

/// [`linear_address`] for a known mode.
#[inline]
pub(crate) fn linear_in(mode: PagingMode, la57: bool, addr: u64) -> Result<u64, WalkError> {
    if !mode.is_long() {
        return Ok(addr & 0xffff_ffff);
    }
    let width = if la57 { 57 } else { 48 };
    let shift = 64 - width;
    if (((addr << shift) as i64) >> shift) as u64 != addr {
        return Err(WalkError::NonCanonical(addr));
    }
    Ok(addr)
}

/// Walks the guest page tables for `addr` without checking rights: only
/// not-present entries, reserved bits and canonicality stop it. `access`
/// only shapes the error code of a fault. Nothing is written.
///
/// ```
/// use pgm::paging::{walk, Access, CpuFeatures, FlatMemory, PagingState, PhysAccess, cr0};
/// let mem = FlatMemory::new(0x3000);
/// mem.write_u32(0x1000, 0x2000 | 0x3).unwrap(); // PDE 0 -> page table at 0x2000
/// mem.write_u32(0x2000 + 5 * 4, 0xabc000 | 0x1).unwrap(); // PTE 5 -> frame 0xabc000
/// let st = PagingState::new(CpuFeatures::new(36).unwrap())
///     .with_cr0(cr0::PE | cr0::PG)
///     .with_cr3(0x1000);
/// let t = walk(&st, &mem, 0x5123, Access::supervisor_read()).unwrap();
/// assert_eq!(t.gpa, 0xabc123);
/// assert!(!t.writable);
/// let pf = walk(&st, &mem, 0x6000, Access::user_write()).unwrap_err();
/// assert_eq!(pf.page_fault().unwrap().error_code, 0b110); // not present, user write
/// ```
pub fn walk<M: PhysAccess + ?Sized>(
    state: &PagingState,
    mem: &M,
    addr: u64,
    access: Access,
) -> Result<Translation, WalkError> {
    let mode = state.mode();
    let la57 = mode.is_long() && state.cr4 & cr4::LA57 != 0;
    let linear = linear_in(mode, la57, addr)?;
    let mut w = Walker {
        state,
        mode,
        la57,
        access,
        linear,
        a20: state.a20_mask(),
        t: Translation {
            linear,
            gpa: linear & state.a20_mask(),
            page_size: PageSize::Size4K,
            writable: true,
            user: true,
            executable: true,
            dirty: true,
            global: false,
            entries: [WalkEntry::default(); 5],
            depth: 0,
        },
    };
    match mode {
        PagingMode::Real | PagingMode::Protected => {}
        PagingMode::Bits32 => w.legacy(mem)?,
        PagingMode::Pae | PagingMode::PaeNx => w.pae(mem)?,
        PagingMode::Amd64 | PagingMode::Amd64Nx => w.long(mem)?,
    }
    Ok(w.t)
}

/// Translates `addr` for `access` exactly as the CPU would: walk, rights
/// check, then (if asked) accessed/dirty updates.
///
/// ```
/// use pgm::paging::{translate, Access, CpuFeatures, FlatMemory, PagingState, PhysAccess,
///     WalkOptions, cr0};
/// let mem = FlatMemory::new(0x3000);
/// mem.write_u32(0x1000, 0x2000 | 0x7).unwrap();
/// mem.write_u32(0x2000, 0x5000 | 0x5).unwrap(); // read-only user page
/// let st = PagingState::new(CpuFeatures::new(36).unwrap())
///     .with_cr0(cr0::PE | cr0::PG | cr0::WP)
///     .with_cr3(0x1000);
/// let mut opts = WalkOptions::default();
/// opts.update_accessed_dirty = true;
/// assert_eq!(translate(&st, &mem, 0x10, Access::user_read(), opts).unwrap().gpa, 0x5010);
/// assert_eq!(mem.read_u32(0x2000).unwrap(), 0x5000 | 0x25); // accessed set
/// let e = translate(&st, &mem, 0x10, Access::supervisor_write(), opts).unwrap_err();
/// assert_eq!(e.page_fault().unwrap().error_code, 0b011); // protection, write
/// ```
pub fn translate<M: PhysAccess + ?Sized>(
    state: &PagingState,
    mem: &M,
    addr: u64,
    access: Access,
    options: WalkOptions,
) -> Result<Translation, WalkError> {
    let mut t = walk(state, mem, addr, access)?;
    t.check(state, access).map_err(WalkError::PageFault)?;
    if options.update_accessed_dirty {
        update_accessed_dirty(state, mem, &mut t, access.kind == AccessKind::Write)?;
    }
    Ok(t)
}

fn update_accessed_dirty<M: PhysAccess + ?Sized>(
    state: &PagingState,
    mem: &M,
    t: &mut Translation,
    write: bool,
) -> Result<(), WalkError> {
    let wide = state.mode().is_pae_format();
    let depth = usize::from(t.depth);
    let pae = !state.mode().is_long() && wide;
    for (i, e) in t.entries[..depth].iter().enumerate() {
        // PAE PDPTEs have no accessed flag: bit 5 is reserved there.
        if pae && e.level == 3 {
            continue;
        }
        let leaf = i + 1 == depth;
        let bits = entry::A | if leaf && write { entry::D } else { 0 };
        // Only flags are ORed in, so a concurrent change of the entry by
        // another vCPU is not overwritten.
        if e.value & bits != bits {
            if wide {
                mem.or_u64(e.gpa, bits)?;
            } else {
                mem.or_u32(e.gpa, bits as u32)?;
            }
        }
    }
    if write {
        t.dirty = true;
    }
    Ok(())
}

struct Walker<'a> {
    state: &'a PagingState,
    mode: PagingMode,
    la57: bool,
    access: Access,
    linear: u64,
    a20: u64,
    t: Translation,
}

impl Walker<'_> {
    fn fault(&self, level: u8, cause: u32) -> WalkError {
        WalkError::PageFault(PageFault {
            address: self.linear,
            error_code: error_code(self.state, self.access, cause),
            level,
        })
    }

    fn record(&mut self, level: u8, gpa: u64, value: u64) {
        self.t.entries[usize::from(self.t.depth)] = WalkEntry { level, gpa, value };
        self.t.depth += 1;
    }

    /// Folds a present, valid entry's rights into the result.
    fn rights(&mut self, e: u64, nx: bool) {
        self.t.writable &= e & entry::RW != 0;
        self.t.user &= e & entry::US != 0;
        if nx {
            self.t.executable &= e & entry::XD == 0;
        }
    }

    fn leaf(&mut self, e: u64, frame: u64, size: PageSize) {
        let off = self.linear & (size.bytes() - 1);
        self.t.gpa = (frame | off) & self.a20;
        self.t.page_size = size;
        self.t.dirty = e & entry::D != 0;
        self.t.global = e & entry::G != 0;
    }

    /// Reads one entry and applies the not-present and reserved-bit checks.
    fn entry<M: PhysAccess + ?Sized>(
        &mut self,
        mem: &M,
        level: u8,
        gpa: u64,
        wide: bool,
    ) -> Result<u64, WalkError> {
        let gpa = gpa & self.a20;
        let e = if wide {
            mem.read_u64(gpa)?
        } else {
            u64::from(mem.read_u32(gpa)?)
        };
        self.record(level, gpa, e);
        if e & entry::P == 0 {
            return Err(self.fault(level, 0));
        }
        Ok(e)
    }

    fn reserved(&self, level: u8, e: u64, mask: u64) -> Result<(), WalkError> {
        if e & mask != 0 {
            return Err(self.fault(level, pf_err::P | pf_err::RSVD));
        }
        Ok(())
    }

    fn legacy<M: PhysAccess + ?Sized>(&mut self, mem: &M) -> Result<(), WalkError> {
        let rsvd = Reserved::new(self.state, self.mode);
        let pd = self.state.cr3 & rsvd.addr;
        let pde = self.entry(mem, 2, pd + ((self.linear >> 22) & 0x3ff) * 4, false)?;
        if pde & entry::PS != 0 && self.state.cr4 & cr4::PSE != 0 {
            self.reserved(2, pde, rsvd.large)?;
            self.rights(pde, false);
            let high = ((pde >> 13) & 0xff) << 32;
            self.leaf(pde, (pde & 0xffc0_0000) | high, PageSize::Size4M);
            return Ok(());
        }
        self.rights(pde, false);
        let pt = pde & rsvd.addr;
        let pte = self.entry(mem, 1, pt + ((self.linear >> 12) & 0x3ff) * 4, false)?;
        self.rights(pte, false);
        self.leaf(pte, pte & rsvd.addr, PageSize::Size4K);
        Ok(())
    }

    fn pae<M: PhysAccess + ?Sized>(&mut self, mem: &M) -> Result<(), WalkError> {
        let rsvd = Reserved::new(self.state, self.mode);
        let index = (self.linear >> 30) & 3;
        let slot = (self.state.cr3 & 0xffff_ffe0) + index * 8;
        let pdpte = match self.state.pae_pdptes {
            // Registers loaded at the last CR3 write win over memory.
            Some(regs) => {
                let e = regs[index as usize];
                self.record(3, slot & self.a20, e);
                if e & entry::P == 0 {
                    return Err(self.fault(3, 0));
                }
                e
            }
            None => self.entry(mem, 3, slot, true)?,
        };
        if pdpte & rsvd.pdpte != 0 {
            return Err(WalkError::InvalidPdpte {
                index: index as u8,
                entry: pdpte,
            });
        }
        self.lower_levels(mem, &rsvd, 2, pdpte & rsvd.addr)
    }

    fn long<M: PhysAccess + ?Sized>(&mut self, mem: &M) -> Result<(), WalkError> {
        let rsvd = Reserved::new(self.state, self.mode);
        let top = if self.la57 { 5 } else { 4 };
        let mut table = self.state.cr3 & rsvd.addr;
        for level in (4..=top).rev() {
            let e = self.entry(mem, level, table + self.index(level) * 8, true)?;
            self.reserved(level, e, rsvd.top)?;
            self.rights(e, true);
            table = e & rsvd.addr;
        }
        self.lower_levels(mem, &rsvd, 3, table)
    }

    fn index(&self, level: u8) -> u64 {
        (self.linear >> (12 + 9 * (u32::from(level) - 1))) & 0x1ff
    }

    /// PDPTE (long mode), PDE and PTE levels of PAE-format tables.
    fn lower_levels<M: PhysAccess + ?Sized>(
        &mut self,
        mem: &M,
        rsvd: &Reserved,
        from: u8,
        mut table: u64,
    ) -> Result<(), WalkError> {
        let nx = self.mode.has_nx();
        for level in (1..=from).rev() {
            let e = self.entry(mem, level, table + self.index(level) * 8, true)?;
            let large = level > 1 && e & entry::PS != 0;
            let mask = match (level, large) {
                (1, _) => rsvd.pte,
                (3, true) => rsvd.huge,
                (2, true) => rsvd.large,
                _ => rsvd.table,
            };
            self.reserved(level, e, mask)?;
            self.rights(e, nx);
            if level == 1 || large {
                let (size, frame_mask) = match level {
                    1 => (PageSize::Size4K, rsvd.addr),
                    2 => (PageSize::Size2M, rsvd.addr & !0x1f_ffff),
                    _ => (PageSize::Size1G, rsvd.addr & !0x3fff_ffff),
                };
                self.leaf(e, e & frame_mask, size);
                return Ok(());
            }
            table = e & rsvd.addr;
        }
        Ok(())
    }
}
