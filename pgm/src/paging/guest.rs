//! Per-vCPU paging: state, mode tracking, the software TLB and access to
//! guest-virtual memory.

use super::fault::{Access, AccessKind, WalkError};
use super::mode::ModeTracker;
use super::mode::PagingMode;
use super::phys_access::PhysAccess;
use super::state::{PagingState, cr0};
use super::tlb::{Tlb, TlbStats};
use super::walk::{Translation, WalkOptions, access_denied, linear_address, linear_in, translate};

/// One vCPU's view of guest paging.
///
/// Feed it the guest's control registers with [`set_state`](Self::set_state)
/// (the TLB is flushed when CR3, CR4, EFER, the paging bits of CR0 or the A20
/// gate change), call [`invalidate_page`](Self::invalidate_page) for INVLPG,
/// and translate or access guest-virtual memory.
///
/// ```
/// use pgm::paging::{Access, CpuFeatures, FlatMemory, GuestPaging, PagingState, PhysAccess,
///     cr0, cr4, efer};
/// // 4-level tables: PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000 with one 2 MiB page.
/// let mem = FlatMemory::new(0x40_0000);
/// mem.write_u64(0x1000, 0x2000 | 3).unwrap();
/// mem.write_u64(0x2000, 0x3000 | 3).unwrap();
/// mem.write_u64(0x3000 + 8, 0x20_0000 | 0x83).unwrap(); // VA 2 MiB -> GPA 2 MiB
/// let st = PagingState::new(CpuFeatures::new(48).unwrap())
///     .with_cr0(cr0::PE | cr0::PG)
///     .with_cr4(cr4::PAE)
///     .with_efer(efer::LME | efer::LMA)
///     .with_cr3(0x1000);
/// let mut paging = GuestPaging::new(st);
/// // Write across the boundary between two 4 KiB pieces of the large page.
/// paging.write_virt(&mem, 0x20_0ffe, b"abcd", Access::supervisor_write()).unwrap();
/// let mut back = [0u8; 4];
/// mem.read(0x20_0ffe, &mut back).unwrap();
/// assert_eq!(&back, b"abcd");
/// assert!(paging.translate(&mem, 0x40_0000, Access::supervisor_read()).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct GuestPaging {
    state: PagingState,
    /// `state.mode()` and `state.la57()`, kept for the TLB-hit path.
    mode: PagingMode,
    la57: bool,
    tracker: ModeTracker,
    tlb: Tlb,
    options: WalkOptions,
}

impl GuestPaging {
    /// Starts with `state`, accessed/dirty updates off.
    pub fn new(state: PagingState) -> Self {
        let mut tracker = ModeTracker::new();
        tracker.update(&state);
        Self {
            state,
            mode: state.mode(),
            la57: state.la57(),
            tracker,
            tlb: Tlb::new(),
            options: WalkOptions::default(),
        }
    }

    /// The current register state.
    pub fn state(&self) -> &PagingState {
        &self.state
    }

    /// Mode and A20 history.
    pub fn tracker(&self) -> &ModeTracker {
        &self.tracker
    }

    /// TLB counters.
    pub fn tlb_stats(&self) -> TlbStats {
        self.tlb.stats
    }

    /// Walk options used for every translation.
    pub fn options(&self) -> WalkOptions {
        self.options
    }

    /// Changes the walk options (flushes the TLB, whose dirty tracking
    /// depends on them).
    pub fn set_options(&mut self, options: WalkOptions) {
        if options != self.options {
            self.options = options;
            self.tlb.flush();
        }
    }

    /// Installs new register state; returns whether the mode or A20
    /// changed.
    pub fn set_state(&mut self, state: PagingState) -> bool {
        const CR0_PAGING: u64 = cr0::PE | cr0::PG | cr0::WP;
        let old = &self.state;
        if old.cr3 != state.cr3
            || old.cr4 != state.cr4
            || old.efer != state.efer
            || old.a20_enabled != state.a20_enabled
            || old.features != state.features
            || old.pae_pdptes != state.pae_pdptes
            || (old.cr0 ^ state.cr0) & CR0_PAGING != 0
        {
            self.tlb.flush();
        }
        self.state = state;
        self.mode = state.mode();
        self.la57 = state.la57();
        self.tracker.update(&state)
    }

    /// Forgets the translation of the page holding `addr` (INVLPG).
    pub fn invalidate_page(&mut self, addr: u64) {
        if let Ok(linear) = linear_address(&self.state, addr) {
            self.tlb.invalidate(linear);
        }
    }

    /// Forgets every cached translation.
    pub fn flush_tlb(&mut self) {
        self.tlb.flush();
    }

    /// Translates `addr` for `access`, from the TLB when possible.
    #[inline]
    pub fn translate<M: PhysAccess + ?Sized>(
        &mut self,
        mem: &M,
        addr: u64,
        access: Access,
    ) -> Result<u64, WalkError> {
        let linear = linear_in(self.mode, self.la57, addr)?;
        if let Some(&e) = self.tlb.lookup(linear) {
            let needs_dirty =
                access.kind == AccessKind::Write && self.options.update_accessed_dirty && !e.dirty;
            if !needs_dirty && e.allowed & (1 << access.index()) != 0 {
                self.tlb.stats.hits += 1;
                return Ok(e.frame | (linear & 0xfff));
            }
        }
        self.tlb.stats.misses += 1;
        let t = translate(&self.state, mem, linear, access, self.options)?;
        let allowed = self.allowed(&t);
        self.tlb.insert(&t, allowed);
        Ok(t.gpa)
    }

    /// The accesses `t`'s rights allow under the current state, one bit per
    /// [`Access::index`].
    fn allowed(&self, t: &Translation) -> u16 {
        let rights = (t.writable, t.user, t.executable);
        Access::ALL
            .iter()
            .filter(|a| !access_denied(&self.state, self.mode, **a, rights))
            .fold(0, |bits, a| bits | 1 << a.index())
    }

    /// Reads guest-virtual memory at `addr` into `buf`, across page
    /// boundaries. On error, `buf` may be partly filled.
    pub fn read_virt<M: PhysAccess + ?Sized>(
        &mut self,
        mem: &M,
        addr: u64,
        buf: &mut [u8],
        access: Access,
    ) -> Result<(), WalkError> {
        let mut done = 0;
        for (va, len) in pieces(addr, buf.len(), self.wraps_at_4g()) {
            let gpa = self.translate(mem, va, access)?;
            mem.read(gpa, &mut buf[done..done + len])?;
            done += len;
        }
        Ok(())
    }

    /// Writes `data` to guest-virtual memory at `addr`, across page
    /// boundaries. Every page is translated before any byte is written, so
    /// a fault leaves memory untouched.
    pub fn write_virt<M: PhysAccess + ?Sized>(
        &mut self,
        mem: &M,
        addr: u64,
        data: &[u8],
        access: Access,
    ) -> Result<(), WalkError> {
        let mut targets = Vec::new();
        for (va, len) in pieces(addr, data.len(), self.wraps_at_4g()) {
            targets.push((self.translate(mem, va, access)?, len));
        }
        let mut done = 0;
        for (gpa, len) in targets {
            mem.write(gpa, &data[done..done + len])?;
            done += len;
        }
        Ok(())
    }

    fn wraps_at_4g(&self) -> bool {
        !self.mode.is_long()
    }
}

/// Splits `[addr, addr + len)` at 4 KiB boundaries into (address, length)
/// pieces; addresses wrap at 4 GiB outside long mode and at 2^64 in it.
fn pieces(addr: u64, len: usize, wrap_4g: bool) -> impl Iterator<Item = (u64, usize)> {
    let mask = if wrap_4g { 0xffff_ffff } else { u64::MAX };
    let mut va = addr & mask;
    let mut left = len;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let room = 0x1000 - (va & 0xfff) as usize;
        let n = room.min(left);
        let piece = (va, n);
        va = va.wrapping_add(n as u64) & mask;
        left -= n;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_at_page_boundaries() {
        let v: Vec<_> = pieces(0xffe, 0x1004, false).collect();
        assert_eq!(v, vec![(0xffe, 2), (0x1000, 0x1000), (0x2000, 2)]);
        let w: Vec<_> = pieces(0xffff_fffe, 4, true).collect();
        assert_eq!(w, vec![(0xffff_fffe, 2), (0, 2)]);
        assert_eq!(pieces(0x1234, 0, false).count(), 0);
    }
}
