//! Balloon accounting and dropping parked pages.

use super::*;

impl State {
    /// VirtualBox's balloon accounting for `vm`.
    pub(crate) fn balloon(&mut self, vm: VmId, action: BalloonAction, pages: u64) -> Result<()> {
        let v = self.vm_mut(vm)?;
        match action {
            BalloonAction::Inflate => {
                let base = v.allocated[Account::Base.idx()];
                let reserved = v.reserved[Account::Base.idx()];
                if base + v.ballooned + pages > reserved {
                    return Err(Error::BalloonInflateTooMuch {
                        requested: pages,
                        allocated: base,
                        ballooned: v.ballooned,
                        reserved,
                    });
                }
                v.ballooned += pages;
                self.ballooned_total += pages;
            }
            BalloonAction::Deflate => {
                if v.ballooned < pages {
                    return Err(Error::BalloonDeflateTooMuch {
                        requested: pages,
                        ballooned: v.ballooned,
                    });
                }
                v.ballooned -= pages;
                self.ballooned_total -= pages;
            }
            BalloonAction::Reset => {
                let regions: Vec<u64> = self
                    .regions
                    .iter()
                    .filter(|(_, r)| r.vm == vm)
                    .map(|(id, _)| *id)
                    .collect();
                for &id in &regions {
                    self.settle_deferred(Some(id))?;
                }
                let v = self.vm_mut(vm)?;
                let was = std::mem::take(&mut v.ballooned);
                self.ballooned_total -= was;
                // Parked pages become the VM's (zeroed) pages again: no
                // remap, which the host might refuse. Beyond the global
                // maximum they take the remap path and become empty.
                for &id in &regions {
                    let pages = self.region(id)?.slots.len() as u64;
                    if self.unpark(id, 0, pages).is_err()
                        && let Err(e) = self.drop_parked(id)
                    {
                        // What is still in the balloon stays counted there.
                        let left: u64 = regions
                            .iter()
                            .filter_map(|id| self.regions.get(id))
                            .map(|r| r.slots.iter().filter(|s| s.is_ballooned()).count() as u64)
                            .sum();
                        self.vm_mut(vm)?.ballooned = left;
                        self.ballooned_total += left;
                        return Err(e);
                    }
                }
                for r in self.regions.values_mut().filter(|r| r.vm == vm) {
                    for s in &mut r.slots {
                        if *s == Slot::Ballooned {
                            *s = Slot::Empty;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Points the parked pages of a region at zero memory and releases
    /// them; they become plain ballooned pages.
    fn drop_parked(&mut self, id: u64) -> Result<()> {
        let r = self.region(id)?;
        let parked: Vec<(u64, PageId)> = (0..)
            .zip(&r.slots)
            .filter_map(|(i, s)| match s {
                Slot::Parked(p) => Some((i, *p)),
                _ => None,
            })
            .collect();
        let mut k = 0;
        while k < parked.len() {
            let n = parked[k..]
                .windows(2)
                .position(|w| w[1].0 != w[0].0 + 1)
                .map_or(parked.len() - k, |i| i + 1);
            let remapped = self.region(id).and_then(|r| {
                r.map
                    .map(&self.backing, parked[k].0, n as u64, Target::Zero)
            });
            if let Err(e) = remapped {
                // The runs done so far are plain ballooned pages now.
                self.flush()?;
                return Err(e);
            }
            // Only now that the region maps zero there may the ids go.
            for &(i, p) in &parked[k..k + n] {
                self.release_pages(&[Slot::Parked(p)]);
                if let Some(r) = self.regions.get_mut(&id) {
                    r.slots[i as usize] = Slot::Ballooned;
                }
            }
            k += n;
        }
        self.flush()
    }
}

/// Balloon operations (VirtualBox `GMMBALLOONACTION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalloonAction {
    /// The guest gave pages back: count them as ballooned.
    Inflate,
    /// The guest took pages back out of the balloon.
    Deflate,
    /// The VM was reset: nothing is ballooned any more.
    Reset,
}
