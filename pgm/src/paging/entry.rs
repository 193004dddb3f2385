//! Paging-structure entry bits and the reserved (must-be-zero) bits of
//! each entry kind, computed from the guest's MAXPHYADDR and features.

use super::mode::PagingMode;
use super::state::{CpuFeatures, PagingState};

/// Present.
pub const P: u64 = 1 << 0;
/// Read/write.
pub const RW: u64 = 1 << 1;
/// User/supervisor.
pub const US: u64 = 1 << 2;
/// Page-level write-through.
pub const PWT: u64 = 1 << 3;
/// Page-level cache disable.
pub const PCD: u64 = 1 << 4;
/// Accessed.
pub const A: u64 = 1 << 5;
/// Dirty (leaf entries only).
pub const D: u64 = 1 << 6;
/// Page size (maps a large page at PDE / PDPTE level).
pub const PS: u64 = 1 << 7;
/// Global (leaf entries only).
pub const G: u64 = 1 << 8;
/// Execute-disable (PAE and long mode, with EFER.NXE).
pub const XD: u64 = 1 << 63;

/// Bits `lo..=hi` set.
pub(crate) const fn bits(lo: u32, hi: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

/// Reserved-bit masks for one paging configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reserved {
    /// Physical-address bits of table pointers and 4 KiB frames.
    pub addr: u64,
    /// Non-leaf entries.
    pub table: u64,
    /// Top-level long-mode entries (PML5E, PML4E).
    pub top: u64,
    /// 4 KiB leaf entries (PTEs).
    pub pte: u64,
    /// 2 MiB / 4 MiB leaf entries (PDEs with PS).
    pub large: u64,
    /// 1 GiB leaf entries (PDPTEs with PS).
    pub huge: u64,
    /// PAE PDPTEs.
    pub pdpte: u64,
}

impl Reserved {
    /// Masks for the mode `state` selects.
    pub fn for_state(state: &PagingState) -> Self {
        Self::new(state, state.mode())
    }

    /// Masks for `mode`, which is `state.mode()`.
    #[inline]
    pub fn new(state: &PagingState, mode: PagingMode) -> Self {
        let f = state.features;
        if !mode.is_pae_format() {
            return Self::legacy(&f);
        }
        let m = u32::from(f.max_phys_addr());
        let xd = if mode.has_nx() { 0 } else { XD };
        // PAE entries reserve everything above MAXPHYADDR up to bit 62;
        // long-mode entries only up to bit 51 (62:52 are ignored).
        let high = if mode.is_long() {
            bits_from(m, 51)
        } else {
            bits_from(m, 62)
        };
        let table = high | xd;
        Self {
            addr: bits(12, m - 1),
            table,
            top: table | PS,
            pte: table,
            large: table | bits(13, 20),
            huge: if f.page_1gb() {
                table | bits(13, 29)
            } else {
                table | PS
            },
            pdpte: bits_from(m, 63) | bits(1, 2) | bits(5, 8),
        }
    }

    fn legacy(f: &CpuFeatures) -> Self {
        // PSE-36 puts physical-address bits 32 and up in PDE bits 13..,
        // up to MAXPHYADDR capped at 40; bits above that up to 21 must be
        // zero.
        let m = if f.pse36() {
            u32::from(f.max_phys_addr()).min(40)
        } else {
            32
        };
        Self {
            addr: bits(12, 31),
            table: 0,
            top: 0,
            pte: 0,
            large: bits(13 + (m - 32), 21),
            huge: 0,
            pdpte: 0,
        }
    }
}

/// Bits `lo..=hi`, empty when `lo > hi`.
const fn bits_from(lo: u32, hi: u32) -> u64 {
    if lo > hi { 0 } else { bits(lo, hi) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::state::{cr0, cr4, efer};

    fn state(m: u8) -> PagingState {
        PagingState::new(CpuFeatures::new(m).unwrap()).with_cr0(cr0::PE | cr0::PG)
    }

    #[test]
    fn bit_ranges() {
        assert_eq!(bits(0, 0), 1);
        assert_eq!(bits(13, 20), 0x1f_e000);
        assert_eq!(bits(0, 63), u64::MAX);
        assert_eq!(bits_from(52, 51), 0);
    }

    #[test]
    fn legacy_pse36_width_follows_maxphyaddr() {
        assert_eq!(Reserved::for_state(&state(48)).large, 1 << 21);
        assert_eq!(Reserved::for_state(&state(36)).large, bits(17, 21));
        let no36 = PagingState::new(CpuFeatures::new(48).unwrap().with_pse36(false));
        assert_eq!(Reserved::for_state(&no36).large, bits(13, 21));
    }

    #[test]
    fn pae_and_long_masks() {
        let pae = Reserved::for_state(&state(36).with_cr4(cr4::PAE));
        assert_eq!(pae.pte, bits(36, 63));
        assert_eq!(pae.pdpte, bits(36, 63) | 0b1_1110_0110);
        let lm = state(48)
            .with_cr4(cr4::PAE)
            .with_efer(efer::LMA | efer::NXE);
        let r = Reserved::for_state(&lm);
        assert_eq!(r.pte, bits(48, 51));
        assert_eq!(r.top, bits(48, 51) | PS);
        assert_eq!(r.huge, bits(48, 51) | PS);
        let lm1g = PagingState {
            features: lm.features.with_page_1gb(true),
            ..lm
        };
        assert_eq!(Reserved::for_state(&lm1g).huge, bits(48, 51) | bits(13, 29));
        assert_eq!(
            Reserved::for_state(&state(52).with_cr4(cr4::PAE).with_efer(efer::LMA)).pte,
            XD
        );
    }
}
