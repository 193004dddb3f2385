//! The A20 gate: each vCPU's gate as VirtualBox's PGM keeps it
//! (`fA20Enabled`, `GCPhysA20Mask`, `cA20Changes`), set VM-wide the way a
//! chipset's A20 line reaches every CPU, and the KVM slot alias that makes
//! the real-mode wrap visible to guest code.
//!
//! KVM has no A20 mask. While the gate is closed, the slot set maps the
//! 64 KiB at 1 MiB ([`A20_ALIAS_START`], the most a real-mode segment
//! reaches above 1 MiB: FFFF:0010..FFFF:FFFF) onto the host memory of
//! 0..64 KiB, so that `FFFF:0010` reads what `0000:0000` holds. The rest of
//! memory is not aliased (a guest in protected mode with A20 closed sees
//! every odd megabyte plainly); `pgm`'s own accesses ([`PhysMap::read`],
//! [`PhysMap::write`], [`PhysMap::mmio_exit`]) mask bit 20 everywhere. The
//! slot set is always split at the alias's end, so that opening or closing
//! the gate swaps one 64 KiB slot and leaves the big RAM slot alone.

use super::map::PhysMap;

/// Where the A20 alias starts: the first byte real mode reaches only with
/// the gate open (1 MiB).
pub const A20_ALIAS_START: u64 = 1 << 20;
/// Size of the A20 alias: what a real-mode segment reaches above 1 MiB,
/// rounded up to whole pages (64 KiB).
pub const A20_ALIAS_SIZE: u64 = 64 << 10;

/// One vCPU's A20 gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct A20State {
    /// Whether the gate is open (address bit 20 passes through).
    pub enabled: bool,
    /// The mask applied to guest-physical addresses: all ones when open,
    /// bit 20 clear when closed.
    pub mask: u64,
    /// How many times the gate opened or closed.
    pub changes: u64,
}

impl A20State {
    /// The reset state: open, no changes.
    pub(crate) const OPEN: A20State = A20State {
        enabled: true,
        mask: !0,
        changes: 0,
    };

    /// Sets the gate; returns whether it changed (and counts the change).
    fn set(&mut self, enabled: bool) -> bool {
        if self.enabled == enabled {
            return false;
        }
        *self = A20State {
            enabled,
            mask: mask_of(enabled),
            changes: self.changes + 1,
        };
        true
    }
}

fn mask_of(enabled: bool) -> u64 {
    if enabled { !0 } else { !A20_ALIAS_START }
}

/// A KVM slot piece: (guest address, size, host address, read-only).
pub(crate) type Piece = (u64, u64, u64, bool);

/// Splits `pieces` (sorted, not overlapping) at the alias's bounds and,
/// with the gate closed, replaces what lies in the alias by the pieces of
/// 0..64 KiB moved up by 1 MiB.
pub(crate) fn alias_pieces(pieces: &mut Vec<Piece>, enabled: bool) {
    const END: u64 = A20_ALIAS_START + A20_ALIAS_SIZE;
    let mut split = Vec::with_capacity(pieces.len() + 2);
    for &(guest, size, host, ro) in pieces.iter() {
        let mut cut = guest;
        for at in [A20_ALIAS_START, END] {
            if cut < at && at < guest + size {
                split.push((cut, at - cut, host + (cut - guest), ro));
                cut = at;
            }
        }
        split.push((cut, guest + size - cut, host + (cut - guest), ro));
    }
    if !enabled {
        let low: Vec<Piece> = split
            .iter()
            .filter(|p| p.0 < A20_ALIAS_SIZE)
            .map(|&(guest, size, host, ro)| {
                let size = size.min(A20_ALIAS_SIZE - guest);
                (guest + A20_ALIAS_START, size, host, ro)
            })
            .collect();
        split.retain(|p| !(A20_ALIAS_START..END).contains(&p.0));
        split.extend(low);
        split.sort_unstable_by_key(|p| p.0);
    }
    *pieces = split;
}

impl PhysMap {
    /// Opens or closes the A20 gate of every vCPU, as a chipset's A20 line
    /// does (closed: address bit 20 is masked in [`read`](Self::read),
    /// [`write`](Self::write) and [`mmio_exit`](Self::mmio_exit), and the
    /// KVM slots alias 1 MiB..1 MiB+64 KiB onto 0..64 KiB). Each vCPU
    /// whose gate changes counts the change. Returns whether any did.
    ///
    /// ```
    /// use pgm::phys::PhysMap;
    /// let mut map = PhysMap::with_defaults();
    /// map.add_ram(0, 0x20_0000, "ram").unwrap();
    /// map.write(0x500, &[0x5a]).unwrap();
    /// assert!(map.set_a20(false));
    /// let mut b = [0u8];
    /// map.read(0x10_0500, &mut b).unwrap(); // wraps to 0x500
    /// assert_eq!(b[0], 0x5a);
    /// assert_eq!(map.a20_state(0).unwrap().changes, 1);
    /// ```
    pub fn set_a20(&mut self, enabled: bool) -> bool {
        let mut changed = false;
        for cpu in &mut self.a20 {
            changed |= cpu.set(enabled);
        }
        if changed {
            self.refresh_slots();
        }
        changed
    }

    /// Whether the A20 gate is open (vCPU 0's gate, which `pgm`'s own
    /// accesses and the KVM slots follow).
    pub fn a20_enabled(&self) -> bool {
        self.a20_mask() == !0
    }

    /// The A20 gate of vCPU `cpu` (`None` past [`PhysConfig::cpus`](super::PhysConfig::cpus)).
    pub fn a20_state(&self, cpu: u32) -> Option<A20State> {
        self.a20.get(cpu as usize).copied()
    }

    /// The A20 gates of all vCPUs, vCPU 0 first.
    pub fn a20_states(&self) -> &[A20State] {
        &self.a20
    }

    /// Puts back gates a saved state recorded (one per vCPU): not counted
    /// as changes.
    #[cfg(feature = "saved-state")]
    pub(crate) fn load_a20(&mut self, enabled: &[bool]) {
        for (cpu, &on) in self.a20.iter_mut().zip(enabled) {
            cpu.enabled = on;
            cpu.mask = mask_of(on);
        }
        self.refresh_slots();
    }

    /// The mask `pgm`'s own accesses apply (vCPU 0's).
    pub(crate) fn a20_mask(&self) -> u64 {
        self.a20.first().map_or(!0, |s| s.mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phys::{HandlerAction, HandlerKind, PhysConfig};

    fn pc_map(cpus: u32) -> PhysMap {
        let config = PhysConfig {
            cpus,
            ..PhysConfig::default()
        };
        let host = std::sync::Arc::new(crate::phys::MmapHostMemory::new());
        let mut map = PhysMap::new(host, config).unwrap();
        map.add_ram(0, 0xa_0000, "low").unwrap();
        map.add_ram(A20_ALIAS_START, 0x30_0000, "high").unwrap();
        map
    }

    #[test]
    fn the_slot_set_is_split_at_the_alias_and_aliases_low_memory_when_closed() {
        let mut map = pc_map(1);
        let open = map.kvm_slots().clone();
        let guest: Vec<(u64, u64)> = open.slots.iter().map(|s| (s.guest_addr, s.size)).collect();
        assert_eq!(
            guest,
            [(0, 0xa_0000), (0x10_0000, 0x1_0000), (0x11_0000, 0x2f_0000)]
        );
        assert!(map.set_a20(false));
        let closed = map.kvm_slots().clone();
        assert_eq!(closed.generation, open.generation + 1);
        let changes = closed.changes_from(&open);
        // only the 64 KiB at 1 MiB is swapped, for one onto low memory
        assert_eq!(changes.remove, vec![open.slots[1]]);
        assert_eq!(changes.add.len(), 1);
        let alias = changes.add[0];
        assert_eq!((alias.guest_addr, alias.size), (0x10_0000, 0x1_0000));
        assert_eq!(alias.host_addr, open.slots[0].host_addr);
        assert!(!alias.read_only);
        assert!(!map.set_a20(false), "no change, no refresh");
        assert!(map.set_a20(true));
        let mapping = |set: &crate::phys::SlotSet| -> Vec<(u64, u64, u64, bool)> {
            set.slots
                .iter()
                .map(|s| (s.guest_addr, s.size, s.host_addr, s.read_only))
                .collect()
        };
        assert_eq!(mapping(map.kvm_slots()), mapping(&open));
    }

    #[test]
    fn alias_pieces_keep_low_handlers_read_only() {
        let mut map = pc_map(1);
        let w = map.register_handler_type(HandlerKind::Write, "w", |_| Ok(HandlerAction::Default));
        map.register_handler(w, 0x2000, 0x2fff, 0, "watched")
            .unwrap();
        map.set_a20(false);
        let at = |gpa: u64| {
            *map.kvm_slots()
                .slots
                .iter()
                .find(|s| s.guest_addr <= gpa && gpa < s.guest_addr + s.size)
                .unwrap()
        };
        assert!(at(0x10_2000).read_only);
        assert!(!at(0x10_3000).read_only);
        // the low piece after the handler, cut at 64 KiB
        let after = at(0x10_3000);
        assert_eq!((after.guest_addr, after.size), (0x10_3000, 0xd000));
        assert_eq!(after.host_addr, at(0x3000).host_addr);
        assert_eq!(at(0x11_0000).guest_addr, 0x11_0000);
    }

    #[test]
    fn every_vcpu_counts_its_changes_and_accesses_wrap() {
        let mut map = pc_map(3);
        map.write(0x500, &[0x11]).unwrap();
        map.write(0x10_0500, &[0x22]).unwrap();
        map.set_a20(false);
        map.set_a20(true);
        map.set_a20(false);
        let states = map.a20_states();
        assert_eq!(states.len(), 3);
        assert!(states.iter().all(|s| !s.enabled && s.changes == 3));
        assert_eq!(map.a20_state(2).unwrap().mask, !(1u64 << 20));
        assert!(map.a20_state(3).is_none());
        let mut b = [0u8];
        map.read(0x10_0500, &mut b).unwrap();
        assert_eq!(b[0], 0x11);
        map.set_a20(true);
        map.read(0x10_0500, &mut b).unwrap();
        assert_eq!(b[0], 0x22);
    }

    #[test]
    fn writes_through_the_alias_dirty_the_low_pages() {
        let mut map = pc_map(1);
        map.set_a20(false);
        map.set_write_monitoring(true);
        let alias = *map
            .kvm_slots()
            .slots
            .iter()
            .find(|s| s.guest_addr == A20_ALIAS_START)
            .unwrap();
        assert!(alias.log_dirty);
        assert_eq!(map.apply_slot_dirty_bitmap(&alias, &[0b10]).unwrap(), 1);
        let mut dirty = Vec::new();
        map.take_dirty_pages(&mut dirty);
        assert_eq!(dirty, vec![0x1000]);
    }
}
