//! Page states that follow the host's page sharing.
//!
//! A host memory provider that deduplicates pages (GMM's sharing scan) does
//! so underneath `pgm`; [`PhysMap::sync_sharing`] brings the RAM page states
//! up to date afterwards, as VirtualBox's PGM marks pages shared.

use super::error::PhysError;
use super::map::PhysMap;
use super::page::PageState;

/// Outcome of [`PhysMap::sync_sharing`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharingSync {
    /// Pages that became [`PageState::Shared`].
    pub shared: u64,
    /// Shared pages the host no longer shares (the guest wrote them and got
    /// its own copy), now [`PageState::Allocated`].
    pub unshared: u64,
}

impl PhysMap {
    /// Asks the host memory provider which RAM pages it shares and updates
    /// their states: a shared page becomes [`PageState::Shared`], a page no
    /// longer shared becomes [`PageState::Allocated`] again. Ballooned and
    /// write-monitored pages (a live save is tracking them) are left alone.
    pub fn sync_sharing(&self) -> Result<SharingSync, PhysError> {
        let mut report = SharingSync::default();
        let mut shared = Vec::new();
        for mem in self.ram() {
            self.host
                .sharing(&mem.region, 0, mem.region.size(), &mut shared)?;
            for (slot, &is_shared) in mem.pages.iter().zip(&shared) {
                let state = slot.get().state;
                let next = match state {
                    PageState::Zero | PageState::Allocated if is_shared => PageState::Shared,
                    PageState::Shared if !is_shared => PageState::Allocated,
                    _ => continue,
                };
                slot.update(|mut p| {
                    p.state = next;
                    p
                });
                if next == PageState::Shared {
                    report.shared += 1;
                } else {
                    report.unshared += 1;
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::phys::PhysConfig;
    use crate::phys::testing::ScriptedHost;

    #[test]
    fn page_states_follow_the_hosts_sharing() {
        let host = Arc::new(ScriptedHost::default());
        let mut map = PhysMap::new(host.clone(), PhysConfig::default()).unwrap();
        map.add_ram(0, 0x8000, "ram").unwrap();
        map.write(0x1000, &[1]).unwrap();
        map.write(0x2000, &[1]).unwrap();
        map.balloon(&[0x3000], true).unwrap();
        host.share_pages(&[1, 2, 3, 4]);
        let r = map.sync_sharing().unwrap();
        assert_eq!(
            r,
            SharingSync {
                shared: 3,
                unshared: 0
            }
        );
        let state = |gpa| map.page_info(gpa).state;
        assert_eq!(state(0x1000), PageState::Shared);
        assert_eq!(
            state(0x4000),
            PageState::Shared,
            "written behind pgm's back"
        );
        assert_eq!(state(0x3000), PageState::Ballooned);
        assert_eq!(state(0x0000), PageState::Zero);
        assert_eq!(map.page_stats().shared, 3);
        // The guest wrote page 2: the host gave it its own copy.
        host.share_pages(&[1, 4]);
        let r = map.sync_sharing().unwrap();
        assert_eq!(
            r,
            SharingSync {
                shared: 0,
                unshared: 1
            }
        );
        assert_eq!(state(0x2000), PageState::Allocated);
        assert_eq!(map.sync_sharing().unwrap(), SharingSync::default());
    }

    #[test]
    fn providers_without_sharing_share_nothing() {
        let mut map = PhysMap::with_defaults();
        map.add_ram(0, 0x4000, "ram").unwrap();
        map.write(0, &[1]).unwrap();
        assert_eq!(map.sync_sharing().unwrap(), SharingSync::default());
        assert_eq!(map.page_info(0).state, PageState::Allocated);
    }
}
