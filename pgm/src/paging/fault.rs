//! Access descriptions and the faults a translation can raise.

use std::fmt;

use super::phys_access::PhysAccessError;

/// Page-fault error-code bits (the value the CPU pushes with #PF).
pub mod pf_err {
    /// The fault was caused by a present entry (protection or reserved
    /// bit), not by a not-present one.
    pub const P: u32 = 1 << 0;
    /// The access was a write.
    pub const W: u32 = 1 << 1;
    /// The access was a user-mode access.
    pub const U: u32 = 1 << 2;
    /// A reserved bit was set in some paging-structure entry.
    pub const RSVD: u32 = 1 << 3;
    /// The access was an instruction fetch (reported only with SMEP or
    /// PAE/long-mode NX).
    pub const ID: u32 = 1 << 4;
}

/// What an access does with the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessKind {
    /// Data read.
    Read,
    /// Data write.
    Write,
    /// Instruction fetch.
    Execute,
}

/// Who performs an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Privilege {
    /// CPL 3.
    User,
    /// CPL 0–2; `ac` is RFLAGS.AC (SMAP is waived for data accesses when set).
    Supervisor {
        /// RFLAGS.AC at the time of the access.
        ac: bool,
    },
    /// An implicit supervisor access (descriptor tables, TSS, ...): always
    /// supervisor and always subject to SMAP, even from CPL 3.
    Implicit,
}

/// One access: its kind and privilege.
///
/// ```
/// use pgm::paging::{Access, AccessKind, Privilege};
/// let a = Access::new(AccessKind::Write, Privilege::User);
/// assert_eq!(a, Access::user_write());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Access {
    /// Read, write or fetch.
    pub kind: AccessKind,
    /// Who does it.
    pub privilege: Privilege,
}

impl Access {
    /// An access of `kind` by `privilege`.
    pub const fn new(kind: AccessKind, privilege: Privilege) -> Self {
        Self { kind, privilege }
    }

    /// Supervisor data read with RFLAGS.AC clear.
    pub const fn supervisor_read() -> Self {
        Self::new(AccessKind::Read, Privilege::Supervisor { ac: false })
    }

    /// Supervisor data write with RFLAGS.AC clear.
    pub const fn supervisor_write() -> Self {
        Self::new(AccessKind::Write, Privilege::Supervisor { ac: false })
    }

    /// Supervisor instruction fetch.
    pub const fn supervisor_exec() -> Self {
        Self::new(AccessKind::Execute, Privilege::Supervisor { ac: false })
    }

    /// User data read.
    pub const fn user_read() -> Self {
        Self::new(AccessKind::Read, Privilege::User)
    }

    /// User data write.
    pub const fn user_write() -> Self {
        Self::new(AccessKind::Write, Privilege::User)
    }

    /// User instruction fetch.
    pub const fn user_exec() -> Self {
        Self::new(AccessKind::Execute, Privilege::User)
    }

    /// Whether this is a user-mode access (sets the U bit of a fault).
    pub fn is_user(&self) -> bool {
        self.privilege == Privilege::User
    }

    /// Every distinct access, in [`index`](Self::index) order.
    pub(crate) const ALL: [Access; 12] = {
        let kinds = [AccessKind::Read, AccessKind::Write, AccessKind::Execute];
        let privs = [
            Privilege::User,
            Privilege::Supervisor { ac: false },
            Privilege::Supervisor { ac: true },
            Privilege::Implicit,
        ];
        let mut all = [Access::supervisor_read(); 12];
        let mut i = 0;
        while i < 12 {
            all[i] = Access::new(kinds[i / 4], privs[i % 4]);
            i += 1;
        }
        all
    };

    /// A number 0..12 unique to this access.
    #[inline]
    pub(crate) fn index(&self) -> usize {
        let kind = match self.kind {
            AccessKind::Read => 0,
            AccessKind::Write => 4,
            AccessKind::Execute => 8,
        };
        kind + match self.privilege {
            Privilege::User => 0,
            Privilege::Supervisor { ac: false } => 1,
            Privilege::Supervisor { ac: true } => 2,
            Privilege::Implicit => 3,
        }
    }
}

/// A page fault the access would raise: what the CPU puts in CR2 and the
/// error code it pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFault {
    /// The faulting linear address (CR2).
    pub address: u64,
    /// The x86 page-fault error code (see [`pf_err`]).
    pub error_code: u32,
    /// Paging level of the entry that ended the walk (1 = page table,
    /// 2 = page directory, ... 5 = PML5).
    pub level: u8,
}

impl fmt::Display for PageFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.error_code;
        let bit = |b: u32, s: &'static str| if e & b != 0 { s } else { "" };
        write!(
            f,
            "#PF({e:#x}) at {:#x}, level {}: {}{}{}{}{}",
            self.address,
            self.level,
            if e & pf_err::P != 0 {
                "present"
            } else {
                "not-present"
            },
            bit(pf_err::W, " write"),
            bit(pf_err::U, " user"),
            bit(pf_err::RSVD, " reserved-bit"),
            bit(pf_err::ID, " fetch"),
        )
    }
}

/// Why a translation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WalkError {
    /// The CPU would raise #PF.
    #[error("{0}")]
    PageFault(PageFault),
    /// The address is not canonical: the CPU raises #GP (or #SS) before
    /// any page walk.
    #[error("linear address {0:#x} is not canonical")]
    NonCanonical(u64),
    /// A present PAE PDPTE has reserved bits set; the CPU refuses such a
    /// CR3 load with #GP, so no translation through it exists.
    #[error("PAE PDPTE {index} = {entry:#x} has reserved bits set (#GP on CR3 load)")]
    InvalidPdpte {
        /// PDPTE index 0..=3.
        index: u8,
        /// The entry value.
        entry: u64,
    },
    /// A page-table read, an accessed/dirty write or a data access hit no
    /// usable guest memory.
    #[error("guest-physical access failed: {0}")]
    Memory(#[from] PhysAccessError),
}

impl WalkError {
    /// The page fault, if this is one.
    pub fn page_fault(&self) -> Option<&PageFault> {
        match self {
            Self::PageFault(pf) => Some(pf),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_indices_are_distinct_and_ordered() {
        for (i, a) in Access::ALL.iter().enumerate() {
            assert_eq!(a.index(), i, "{a:?}");
        }
    }

    #[test]
    fn fault_text_names_the_cause() {
        let pf = PageFault {
            address: 0x1000,
            error_code: pf_err::P | pf_err::W | pf_err::RSVD,
            level: 2,
        };
        assert_eq!(
            pf.to_string(),
            "#PF(0xb) at 0x1000, level 2: present write reserved-bit"
        );
    }
}
