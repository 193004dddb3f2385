//! The `pgm` access handlers behind page-trap watchpoints.

use dbgf::debugger::{PAGE_SIZE, PageTrap, TargetError};
use pgm::phys::{HandlerAction, HandlerKind, HandlerTypeId, PhysMap, RangeInfo, RangeKind};

/// The `pgm` handlers behind page-trap watchpoints.
#[derive(Debug, Default)]
pub(super) struct PageTraps {
    /// Handler types for write and read traps, registered on first use.
    types: Option<(HandlerTypeId, HandlerTypeId)>,
    /// Handler ranges registered now: `(first, last, reads)`.
    registered: Vec<(u64, u64, bool)>,
}

/// The handler ranges for a set of traps: runs of adjacent RAM or MMIO2
/// pages (of one range) with the same read flag. MMIO and unassigned pages
/// exit on every access already and need none; ROM traps writes already
/// (unless it is writable RAM now) and cannot trap reads.
pub(super) fn handler_runs(
    traps: &[PageTrap],
    ranges: &[RangeInfo],
) -> std::result::Result<Vec<(u64, u64, bool)>, TargetError> {
    let mut runs: Vec<(u64, u64, bool, u64)> = Vec::new();
    for t in traps {
        let Some(r) = ranges
            .iter()
            .find(|r| r.start <= t.page && t.page - r.start < r.size)
        else {
            continue;
        };
        match r.kind {
            RangeKind::Mmio => continue,
            RangeKind::Rom => {
                let writes_exit = r
                    .rom_protection
                    .is_some_and(|p| !p.writes_ram() || p.reads_rom());
                if t.reads || !writes_exit {
                    return Err(TargetError::Unsupported("page traps on this ROM page"));
                }
                continue;
            }
            RangeKind::Ram | RangeKind::Mmio2 => {}
        }
        let last = t.page + (PAGE_SIZE - 1);
        match runs.last_mut() {
            Some(run) if run.1 + 1 == t.page && run.2 == t.reads && run.3 == r.start => {
                run.1 = last;
            }
            _ => runs.push((t.page, last, t.reads, r.start)),
        }
    }
    Ok(runs
        .into_iter()
        .map(|(f, l, reads, _)| (f, l, reads))
        .collect())
}

impl PageTraps {
    pub(super) fn types(&mut self, map: &mut PhysMap) -> (HandlerTypeId, HandlerTypeId) {
        *self.types.get_or_insert_with(|| {
            // The handlers only let the access happen: the EMT checks the
            // exact bytes against the debugger's memory watch.
            let pass = |_: &mut pgm::phys::HandlerAccess<'_>| Ok(HandlerAction::Default);
            (
                map.register_handler_type(HandlerKind::Write, "debugger write watch", pass),
                map.register_handler_type(HandlerKind::All, "debugger access watch", pass),
            )
        })
    }

    /// Replaces the registered handlers with `runs`; on failure the old
    /// ones are back.
    pub(super) fn replace(
        &mut self,
        map: &mut PhysMap,
        runs: Vec<(u64, u64, bool)>,
    ) -> std::result::Result<(), pgm::phys::PhysError> {
        let (write, all) = self.types(map);
        let register = |map: &mut PhysMap, runs: &[(u64, u64, bool)]| {
            for (i, &(first, last, reads)) in runs.iter().enumerate() {
                let ty = if reads { all } else { write };
                if let Err(e) = map.register_handler(ty, first, last, 0, "debugger watchpoint") {
                    for &(f, ..) in &runs[..i] {
                        // Registered just now, so it is there to remove.
                        let _ = map.deregister_handler(f);
                    }
                    return Err(e);
                }
            }
            Ok(())
        };
        for &(first, ..) in &self.registered {
            map.deregister_handler(first)?;
        }
        if let Err(e) = register(map, &runs) {
            // The old set registered before, so it fits again.
            let _ = register(map, &self.registered);
            return Err(e);
        }
        self.registered = runs;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
