//! Arming breakpoints and watchpoints: debug-register slots, `int3`
//! patches, I/O breakpoints and page traps, and removing them again.

use super::*;

impl Debugger {
    /// Adds a hardware execute breakpoint at a linear address.
    pub fn add_hw_breakpoint(&mut self, addr: u64) -> Result<BreakpointId, DebuggerError> {
        self.table.add_hw(addr, 1, HwAccess::Execute)
    }

    /// Adds a data watchpoint over `[addr, addr + len)` (`access` is
    /// [`HwAccess::Write`] or [`HwAccess::ReadWrite`]); unaligned or odd-sized ranges
    /// take several slots.
    pub fn add_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        access: HwAccess,
    ) -> Result<BreakpointId, DebuggerError> {
        if access == HwAccess::Execute {
            return Err(DebuggerError::InvalidLength(len));
        }
        self.table.add_hw(addr, len, access)
    }

    /// Adds a data watchpoint over the linear range `[addr, addr + len)` as seen by
    /// `cpu`, armed as the [`WatchMode`] says. Debug registers have no read-only
    /// condition: there a [`MemAccess::Read`] watch triggers on writes too.
    pub fn add_data_watch<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        cpu: u32,
        addr: u64,
        len: u64,
        access: MemAccess,
    ) -> Result<BreakpointId, DebuggerError> {
        let hw = match access {
            MemAccess::Write => HwAccess::Write,
            MemAccess::Read | MemAccess::ReadWrite => HwAccess::ReadWrite,
        };
        match self.watch_mode {
            WatchMode::DebugRegisters => self.add_watchpoint(addr, len, hw),
            WatchMode::PageTraps => self.add_page_watch(target, cpu, addr, len, access),
            WatchMode::Auto if !target.delivers_data_breakpoints() => {
                self.add_page_watch(target, cpu, addr, len, access)
            }
            WatchMode::Auto => match self.add_watchpoint(addr, len, hw) {
                Err(
                    DebuggerError::NoFreeSlot { .. }
                    | DebuggerError::InvalidLength(_)
                    | DebuggerError::Misaligned { .. },
                ) => self.add_page_watch(target, cpu, addr, len, access),
                other => other,
            },
        }
    }

    /// Adds a page-trap watchpoint over the linear range `[addr, addr + len)`, translated
    /// now with `cpu`'s paging (page by page: the range may span pages that are not
    /// physically contiguous). The VM must be halted.
    pub fn add_page_watch<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        cpu: u32,
        addr: u64,
        len: u64,
        access: MemAccess,
    ) -> Result<BreakpointId, DebuggerError> {
        check_cpu(target, cpu)?;
        let size = watch_len(addr, len)?;
        let mut pieces: Vec<(u64, u64)> = Vec::new();
        for (off, n) in page_chunks(addr, size) {
            let first = target.translate(cpu, addr.wrapping_add(off as u64))?;
            let last = first + (n as u64 - 1);
            match pieces.last_mut() {
                Some(prev) if prev.1 + 1 == first => prev.1 = last,
                _ => pieces.push((first, last)),
            }
        }
        self.insert_page_watch(target, addr, len, access, pieces)
    }

    /// Adds a page-trap watchpoint over the guest-physical range `[phys, phys + len)`.
    /// The VM must be halted.
    pub fn add_phys_watch<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        phys: u64,
        len: u64,
        access: MemAccess,
    ) -> Result<BreakpointId, DebuggerError> {
        watch_len(phys, len)?;
        self.insert_page_watch(target, phys, len, access, vec![(phys, phys + (len - 1))])
    }

    fn insert_page_watch<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        addr: u64,
        len: u64,
        access: MemAccess,
        pieces: Vec<(u64, u64)>,
    ) -> Result<BreakpointId, DebuggerError> {
        if self.running {
            return Err(DebuggerError::Running);
        }
        let id = self.table.add_page_trap(addr, len, access, pieces);
        if let Err(e) = self.sync_page_traps(target) {
            self.table.remove(id)?;
            // Back to the traps that worked before; the first error is the one to report.
            let _ = self.sync_page_traps(target);
            return Err(e);
        }
        Ok(id)
    }

    /// Hands the page-trap set to the target and the exact ranges to the EMTs' filter.
    fn sync_page_traps<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
    ) -> Result<(), DebuggerError> {
        let ranges = self.table.mem_ranges();
        if ranges.is_empty() {
            self.mem_watch.set(ranges);
            target.set_page_traps(&[])?;
        } else {
            target.set_page_traps(&self.table.trap_pages())?;
            self.mem_watch.set(ranges);
        }
        Ok(())
    }

    /// Adds an `int3` breakpoint at a linear address (translated with `cpu`'s paging).
    pub fn add_sw_breakpoint<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        cpu: u32,
        addr: u64,
    ) -> Result<BreakpointId, DebuggerError> {
        check_cpu(target, cpu)?;
        let phys = target.translate(cpu, addr)?;
        if self.table.software().any(|(p, _)| p == phys) {
            return Err(DebuggerError::DuplicateSoftware(phys));
        }
        let mut original = [0u8];
        target.read_phys(phys, &mut original)?;
        target.write_phys(phys, &[INT3])?;
        Ok(self.table.add_sw(addr, phys, original[0]))
    }

    /// Adds an execute breakpoint: a DR slot while one is free, else an `int3`.
    pub fn add_breakpoint<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        cpu: u32,
        addr: u64,
    ) -> Result<BreakpointId, DebuggerError> {
        if self.table.free_slots() > 0 {
            self.add_hw_breakpoint(addr)
        } else {
            self.add_sw_breakpoint(target, cpu, addr)
        }
    }

    /// Adds an I/O-port breakpoint over ports `first..=last`.
    pub fn add_io_breakpoint(
        &mut self,
        first: u16,
        last: u16,
        access: IoAccess,
    ) -> Result<BreakpointId, DebuggerError> {
        if first > last {
            return Err(DebuggerError::InvalidPortRange { first, last });
        }
        let id = self.table.add_io(first, last, access);
        self.io_watch.set(self.table.io_ranges());
        Ok(id)
    }

    /// Removes a breakpoint, restoring the original byte of an `int3` (unless the guest
    /// has overwritten the `int3` since). A page-trap watchpoint gives its pages back
    /// ([`DebugTarget::set_page_traps`]), so the VM must be halted for it.
    pub fn remove_breakpoint<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
        id: BreakpointId,
    ) -> Result<(), DebuggerError> {
        let lifted =
            matches!(&self.pending, Some(Pending::StepOver(s)) if s.lifted_sw.contains(&id));
        let page_trap = matches!(
            self.table.get(id).map(|e| e.bp.kind),
            Some(BreakpointKind::PageTrap { .. })
        );
        if page_trap && self.running {
            return Err(DebuggerError::Running);
        }
        let entry = self.table.remove(id)?;
        match entry.bp.kind {
            BreakpointKind::Software { phys, .. } if !lifted => {
                // If the guest overwrote the int3 meanwhile, its byte wins.
                let mut current = [0u8];
                target.read_phys(phys, &mut current)?;
                if current[0] == INT3 {
                    target.write_phys(phys, &[entry.original])?;
                }
            }
            BreakpointKind::Io { .. } => self.io_watch.set(self.table.io_ranges()),
            BreakpointKind::PageTrap { .. } => self.sync_page_traps(target)?,
            _ => {}
        }
        Ok(())
    }

    /// Removes every breakpoint.
    pub fn remove_all<T: DebugTarget + ?Sized>(
        &mut self,
        target: &mut T,
    ) -> Result<(), DebuggerError> {
        for id in self.table.ids() {
            self.remove_breakpoint(target, id)?;
        }
        Ok(())
    }
}
