//! Debug-register encoding: DR7 from a slot table, DR6 decoding, Intel alignment rules.

use super::DebuggerError;

/// Number of hardware breakpoint slots (DR0..DR3).
pub const HW_SLOTS: usize = 4;

/// DR7 bit 10 reads as one.
const DR7_FIXED_1: u64 = 1 << 10;
/// DR7.GE: exact global data breakpoints (recommended whenever data breakpoints are set).
const DR7_GE: u64 = 1 << 9;
/// DR6.BS: the `#DB` was caused by single stepping.
const DR6_BS: u64 = 1 << 14;

/// What a hardware breakpoint slot triggers on (DR7 R/W field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HwAccess {
    /// Instruction fetch (R/W = 00); length must be 1.
    Execute,
    /// Data writes (R/W = 01).
    Write,
    /// Data reads and writes (R/W = 11); x86 has no read-only data breakpoint.
    ReadWrite,
}

impl HwAccess {
    fn rw_bits(self) -> u64 {
        match self {
            Self::Execute => 0b00,
            Self::Write => 0b01,
            Self::ReadWrite => 0b11,
        }
    }
}

/// Length of a hardware breakpoint (DR7 LEN field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HwLen {
    /// One byte (LEN = 00).
    B1,
    /// Two bytes (LEN = 01).
    B2,
    /// Four bytes (LEN = 11).
    B4,
    /// Eight bytes (LEN = 10; 64-bit capable processors).
    B8,
}

impl HwLen {
    /// Converts a byte count (1, 2, 4 or 8).
    pub fn from_bytes(len: u64) -> Result<Self, DebuggerError> {
        match len {
            1 => Ok(Self::B1),
            2 => Ok(Self::B2),
            4 => Ok(Self::B4),
            8 => Ok(Self::B8),
            _ => Err(DebuggerError::InvalidLength(len)),
        }
    }

    /// The length in bytes.
    pub fn bytes(self) -> u64 {
        match self {
            Self::B1 => 1,
            Self::B2 => 2,
            Self::B4 => 4,
            Self::B8 => 8,
        }
    }

    fn len_bits(self) -> u64 {
        match self {
            Self::B1 => 0b00,
            Self::B2 => 0b01,
            Self::B4 => 0b11,
            Self::B8 => 0b10,
        }
    }
}

/// One armed debug-register slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HwSlot {
    /// Linear address loaded into DRn.
    pub addr: u64,
    /// Trigger condition.
    pub access: HwAccess,
    /// Length.
    pub len: HwLen,
}

impl HwSlot {
    /// Builds a slot, enforcing the Intel rules: execute breakpoints have length 1,
    /// data breakpoints are aligned to their length.
    ///
    /// ```
    /// use dbgf::debugger::{HwAccess, HwLen, HwSlot};
    /// assert!(HwSlot::new(0x1000, HwAccess::Write, HwLen::B8).is_ok());
    /// assert!(HwSlot::new(0x1004, HwAccess::Write, HwLen::B8).is_err());
    /// assert!(HwSlot::new(0x1000, HwAccess::Execute, HwLen::B4).is_err());
    /// ```
    pub fn new(addr: u64, access: HwAccess, len: HwLen) -> Result<Self, DebuggerError> {
        if access == HwAccess::Execute && len != HwLen::B1 {
            return Err(DebuggerError::InvalidLength(len.bytes()));
        }
        if addr % len.bytes() != 0 {
            return Err(DebuggerError::Misaligned {
                addr,
                len: len.bytes(),
            });
        }
        Ok(Self { addr, access, len })
    }

    /// Whether a data access `[addr, addr + len)` of kind `write` overlaps this slot.
    pub fn matches_data(&self, addr: u64, len: u64, write: bool) -> bool {
        let kind_ok = match self.access {
            HwAccess::Execute => false,
            HwAccess::Write => write,
            HwAccess::ReadWrite => true,
        };
        kind_ok && ranges_overlap(self.addr, self.len.bytes(), addr, len)
    }
}

fn ranges_overlap(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    let a_end = a.saturating_add(alen);
    let b_end = b.saturating_add(blen);
    a < b_end && b < a_end
}

/// Computes DR0..DR3 and DR7 for a slot table. `masked` slots stay loaded but disabled
/// (used to step one vCPU over an execute breakpoint at its RIP).
///
/// Slots are enabled with the global-enable bits G0..G3 (local enables are cleared by
/// task switches); GE and the fixed bit 10 are set as the SDM recommends.
///
/// ```
/// use dbgf::debugger::{encode_debug_regs, HwAccess, HwLen, HwSlot};
/// let slot = HwSlot::new(0x2000, HwAccess::Write, HwLen::B4).unwrap();
/// let (dr, dr7) = encode_debug_regs(&[None, Some(slot), None, None], [false; 4]);
/// assert_eq!(dr[1], 0x2000);
/// assert_eq!(dr7, 0x0000_00d0_0608); // G1, GE, bit 10, R/W1 = 01, LEN1 = 11
/// ```
pub fn encode_debug_regs(
    slots: &[Option<HwSlot>; HW_SLOTS],
    masked: [bool; HW_SLOTS],
) -> ([u64; HW_SLOTS], u64) {
    let mut dr = [0u64; HW_SLOTS];
    let mut dr7 = 0u64;
    for (i, slot) in slots.iter().enumerate() {
        let Some(s) = slot else { continue };
        dr[i] = s.addr;
        if masked[i] {
            continue;
        }
        dr7 |= 1 << (2 * i + 1);
        dr7 |= s.access.rw_bits() << (16 + 4 * i);
        dr7 |= s.len.len_bits() << (18 + 4 * i);
    }
    if dr7 != 0 {
        dr7 |= DR7_GE | DR7_FIXED_1;
    }
    (dr, dr7)
}

/// The parts of DR6 the debugger interprets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dr6 {
    /// B0..B3: which slot conditions were met.
    pub hit: [bool; HW_SLOTS],
    /// BS: single step.
    pub single_step: bool,
}

impl Dr6 {
    /// Decodes a raw DR6 value (KVM reports it with the active-low bits set).
    pub fn decode(dr6: u64) -> Self {
        let mut hit = [false; HW_SLOTS];
        for (i, h) in hit.iter_mut().enumerate() {
            *h = dr6 & (1 << i) != 0;
        }
        Self {
            hit,
            single_step: dr6 & DR6_BS != 0,
        }
    }
}

/// Covers `[addr, addr + len)` with the fewest naturally aligned pieces of 1, 2, 4 or 8
/// bytes, so that a watchpoint of any length/alignment can be built from DR slots.
///
/// ```
/// use dbgf::debugger::{split_aligned, HwLen};
/// assert_eq!(split_aligned(0x1003, 6).unwrap(),
///            vec![(0x1003, HwLen::B1), (0x1004, HwLen::B4), (0x1008, HwLen::B1)]);
/// ```
pub fn split_aligned(addr: u64, len: u64) -> Result<Vec<(u64, HwLen)>, DebuggerError> {
    if len == 0 || addr.checked_add(len).is_none() {
        return Err(DebuggerError::InvalidLength(len));
    }
    let mut out = Vec::new();
    let (mut cur, end) = (addr, addr + len);
    while cur < end {
        let mut size = 8u64;
        while size > 1 && (cur % size != 0 || size > end - cur) {
            size /= 2;
        }
        out.push((cur, HwLen::from_bytes(size)?));
        cur += size;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slot(addr: u64, access: HwAccess, len: HwLen) -> Option<HwSlot> {
        Some(HwSlot::new(addr, access, len).unwrap())
    }

    #[test]
    fn dr7_fields_per_slot() {
        let slots = [
            slot(0x1000, HwAccess::Execute, HwLen::B1),
            slot(0x2002, HwAccess::Write, HwLen::B2),
            slot(0x3000, HwAccess::ReadWrite, HwLen::B8),
            slot(0x4004, HwAccess::ReadWrite, HwLen::B4),
        ];
        let (dr, dr7) = encode_debug_regs(&slots, [false; 4]);
        assert_eq!(dr, [0x1000, 0x2002, 0x3000, 0x4004]);
        // G0..G3 = 0xaa, GE | bit 10 = 0x600.
        assert_eq!(dr7 & 0xffff, 0x06aa);
        assert_eq!((dr7 >> 16) & 0xf, 0b0000); // exec, len 1
        assert_eq!((dr7 >> 20) & 0xf, 0b0101); // write, len 2
        assert_eq!((dr7 >> 24) & 0xf, 0b1011); // rw, len 8
        assert_eq!((dr7 >> 28) & 0xf, 0b1111); // rw, len 4
        assert_eq!(dr7 >> 32, 0);
    }

    #[test]
    fn empty_and_masked_tables() {
        assert_eq!(encode_debug_regs(&[None; 4], [false; 4]), ([0; 4], 0));
        let slots = [slot(0x1000, HwAccess::Execute, HwLen::B1), None, None, None];
        let (dr, dr7) = encode_debug_regs(&slots, [true, false, false, false]);
        assert_eq!(dr[0], 0x1000);
        assert_eq!(dr7, 0);
    }

    #[test]
    fn alignment_rules() {
        for (len, bad) in [
            (HwLen::B2, 0x1001),
            (HwLen::B4, 0x1002),
            (HwLen::B8, 0x1004),
        ] {
            assert!(matches!(
                HwSlot::new(bad, HwAccess::ReadWrite, len),
                Err(DebuggerError::Misaligned { .. })
            ));
            assert!(HwSlot::new(bad & !7, HwAccess::ReadWrite, len).is_ok());
        }
        assert!(HwSlot::new(0x1003, HwAccess::Write, HwLen::B1).is_ok());
        assert!(HwSlot::new(0x1001, HwAccess::Execute, HwLen::B1).is_ok());
        assert!(matches!(
            HwSlot::new(0x1000, HwAccess::Execute, HwLen::B2),
            Err(DebuggerError::InvalidLength(2))
        ));
        assert!(HwLen::from_bytes(3).is_err());
    }

    #[test]
    fn dr6_decoding() {
        let d = Dr6::decode(0xffff_4ff2);
        assert_eq!(d.hit, [false, true, false, false]);
        assert!(d.single_step);
        let d = Dr6::decode(0xffff_0ff0);
        assert_eq!(d.hit, [false; 4]);
        assert!(!d.single_step);
    }

    #[test]
    fn data_match() {
        let s = HwSlot::new(0x1000, HwAccess::Write, HwLen::B4).unwrap();
        assert!(s.matches_data(0x1003, 1, true));
        assert!(!s.matches_data(0x1003, 1, false));
        assert!(!s.matches_data(0x1004, 8, true));
        assert!(s.matches_data(0x0ffc, 8, true));
    }

    proptest! {
        #[test]
        fn split_covers_exactly_with_aligned_pieces(addr in 0u64..1 << 40, len in 1u64..64) {
            let pieces = split_aligned(addr, len).unwrap();
            let mut cur = addr;
            for (a, l) in &pieces {
                prop_assert_eq!(*a, cur);
                prop_assert_eq!(a % l.bytes(), 0);
                prop_assert!(HwSlot::new(*a, HwAccess::Write, *l).is_ok());
                cur += l.bytes();
            }
            prop_assert_eq!(cur, addr + len);
            // Never more pieces than a greedy byte-exact cover needs.
            prop_assert!(pieces.len() as u64 <= len.div_ceil(8) + 6);
        }

        #[test]
        fn split_near_the_top_of_the_address_space(back in 1u64..16, len in 1u64..16) {
            let addr = u64::MAX - back;
            match split_aligned(addr, len) {
                Ok(p) => prop_assert_eq!(p.iter().map(|(_, l)| l.bytes()).sum::<u64>(), len),
                Err(e) => prop_assert!(matches!(e, DebuggerError::InvalidLength(_))),
            }
        }

        #[test]
        fn encoded_dr7_round_trips(lens in proptest::collection::vec(0usize..4, 4),
                                   kinds in proptest::collection::vec(0usize..3, 4),
                                   present in proptest::collection::vec(any::<bool>(), 4)) {
            let all_lens = [HwLen::B1, HwLen::B2, HwLen::B4, HwLen::B8];
            let all_kinds = [HwAccess::Execute, HwAccess::Write, HwAccess::ReadWrite];
            let mut slots = [None; 4];
            for i in 0..4 {
                let access = all_kinds[kinds[i]];
                let len = if access == HwAccess::Execute { HwLen::B1 } else { all_lens[lens[i]] };
                if present[i] {
                    slots[i] = Some(HwSlot::new(0x1000 * (i as u64 + 1), access, len).unwrap());
                }
            }
            let (_, dr7) = encode_debug_regs(&slots, [false; 4]);
            for (i, s) in slots.iter().enumerate() {
                let enabled = (dr7 >> (2 * i)) & 3;
                let field = (dr7 >> (16 + 4 * i)) & 0xf;
                match s {
                    None => { prop_assert_eq!(enabled, 0); prop_assert_eq!(field, 0); }
                    Some(s) => {
                        prop_assert_eq!(enabled, 0b10);
                        prop_assert_eq!(field & 3, s.access.rw_bits());
                        let bytes = match field >> 2 { 0 => 1, 1 => 2, 3 => 4, _ => 8 };
                        prop_assert_eq!(bytes, s.len.bytes());
                    }
                }
            }
        }
    }
}
