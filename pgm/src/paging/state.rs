//! The guest CPU state that decides how linear addresses are translated.

use super::mode::PagingMode;

/// CR0 bits the walker looks at.
pub mod cr0 {
    /// Protection enable.
    pub const PE: u64 = 1 << 0;
    /// Write protect: supervisor writes honour read-only pages.
    pub const WP: u64 = 1 << 16;
    /// Paging.
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits the walker looks at.
pub mod cr4 {
    /// Page size extensions (4 MiB pages in 32-bit paging).
    pub const PSE: u64 = 1 << 4;
    /// Physical address extension.
    pub const PAE: u64 = 1 << 5;
    /// 57-bit linear addresses (5-level paging).
    pub const LA57: u64 = 1 << 12;
    /// Supervisor-mode execution prevention.
    pub const SMEP: u64 = 1 << 20;
    /// Supervisor-mode access prevention.
    pub const SMAP: u64 = 1 << 21;
}

/// EFER bits the walker looks at.
pub mod efer {
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active.
    pub const LMA: u64 = 1 << 10;
    /// No-execute enable.
    pub const NXE: u64 = 1 << 11;
}

/// Why a [`CpuFeatures`] value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FeatureError {
    /// MAXPHYADDR outside what x86 allows for paging (32..=52).
    #[error("MAXPHYADDR {0} is outside 32..=52")]
    MaxPhysAddr(u8),
}

/// The guest CPUID facts that change page walks.
///
/// ```
/// use pgm::paging::CpuFeatures;
/// let f = CpuFeatures::new(48).unwrap().with_page_1gb(true);
/// assert_eq!(f.max_phys_addr(), 48);
/// assert!(CpuFeatures::new(60).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFeatures {
    max_phys_addr: u8,
    page_1gb: bool,
    pse36: bool,
}

impl CpuFeatures {
    /// Features with the given MAXPHYADDR (CPUID 0x80000008 EAX bits 7:0),
    /// PSE-36 present and 1 GiB pages absent.
    pub fn new(max_phys_addr: u8) -> Result<Self, FeatureError> {
        if !(32..=52).contains(&max_phys_addr) {
            return Err(FeatureError::MaxPhysAddr(max_phys_addr));
        }
        Ok(Self {
            max_phys_addr,
            page_1gb: false,
            pse36: true,
        })
    }

    /// Builds the features from raw CPUID values: leaf 1 EDX, leaf
    /// 0x80000001 EDX and leaf 0x80000008 EAX (pass `None` when the guest
    /// has no such leaf; MAXPHYADDR then defaults to 36, or 32 without PAE).
    pub fn from_cpuid(
        leaf1_edx: u32,
        ext1_edx: u32,
        ext8_eax: Option<u32>,
    ) -> Result<Self, FeatureError> {
        let pae = leaf1_edx & (1 << 6) != 0;
        let maxphy = match ext8_eax {
            Some(eax) => (eax & 0xff) as u8,
            None if pae => 36,
            None => 32,
        };
        Ok(Self::new(maxphy)?
            .with_pse36(leaf1_edx & (1 << 17) != 0)
            .with_page_1gb(ext1_edx & (1 << 26) != 0))
    }

    /// Sets whether 1 GiB pages exist (CPUID 0x80000001 EDX bit 26).
    #[must_use]
    pub fn with_page_1gb(mut self, on: bool) -> Self {
        self.page_1gb = on;
        self
    }

    /// Sets whether PSE-36 exists (CPUID 1 EDX bit 17).
    #[must_use]
    pub fn with_pse36(mut self, on: bool) -> Self {
        self.pse36 = on;
        self
    }

    /// The guest's MAXPHYADDR.
    pub fn max_phys_addr(&self) -> u8 {
        self.max_phys_addr
    }

    /// Whether 1 GiB pages exist.
    pub fn page_1gb(&self) -> bool {
        self.page_1gb
    }

    /// Whether PSE-36 exists.
    pub fn pse36(&self) -> bool {
        self.pse36
    }

    /// Mask of the physical address bits below MAXPHYADDR.
    pub fn phys_mask(&self) -> u64 {
        (1u64 << self.max_phys_addr) - 1
    }
}

/// The guest registers that decide translation: CR0, CR3, CR4, EFER, the
/// A20 gate, plus the CPUID facts.
///
/// ```
/// use pgm::paging::{CpuFeatures, PagingMode, PagingState, cr0, cr4, efer};
/// let s = PagingState::new(CpuFeatures::new(48).unwrap())
///     .with_cr0(cr0::PE | cr0::PG)
///     .with_cr4(cr4::PAE)
///     .with_efer(efer::LME | efer::LMA | efer::NXE)
///     .with_cr3(0x1000);
/// assert_eq!(s.mode(), PagingMode::Amd64Nx);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagingState {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// IA32_EFER.
    pub efer: u64,
    /// Whether the A20 gate is open (address bit 20 passes through).
    pub a20_enabled: bool,
    /// The guest's CPUID facts.
    pub features: CpuFeatures,
    /// The PAE PDPTE registers, when known. The CPU loads them from memory
    /// when CR3 is written in PAE mode and then ignores the PDPT in memory;
    /// `KVM_GET_SREGS2` reports them. With `None` the walker reads the
    /// PDPT from memory.
    pub pae_pdptes: Option<[u64; 4]>,
}

impl PagingState {
    /// Reset state (real mode, A20 open) for a CPU with `features`.
    pub fn new(features: CpuFeatures) -> Self {
        Self {
            cr0: 0,
            cr3: 0,
            cr4: 0,
            efer: 0,
            a20_enabled: true,
            features,
            pae_pdptes: None,
        }
    }

    /// Sets CR0.
    #[must_use]
    pub fn with_cr0(mut self, v: u64) -> Self {
        self.cr0 = v;
        self
    }

    /// Sets CR3.
    #[must_use]
    pub fn with_cr3(mut self, v: u64) -> Self {
        self.cr3 = v;
        self
    }

    /// Sets CR4.
    #[must_use]
    pub fn with_cr4(mut self, v: u64) -> Self {
        self.cr4 = v;
        self
    }

    /// Sets EFER.
    #[must_use]
    pub fn with_efer(mut self, v: u64) -> Self {
        self.efer = v;
        self
    }

    /// Sets the A20 gate.
    #[must_use]
    pub fn with_a20(mut self, enabled: bool) -> Self {
        self.a20_enabled = enabled;
        self
    }

    /// Sets (or clears) the PAE PDPTE registers.
    #[must_use]
    pub fn with_pae_pdptes(mut self, pdptes: Option<[u64; 4]>) -> Self {
        self.pae_pdptes = pdptes;
        self
    }

    /// The guest paging mode these registers select.
    pub fn mode(&self) -> PagingMode {
        PagingMode::from_regs(self.cr0, self.cr4, self.efer)
    }

    /// Whether 5-level paging is in use (long mode with CR4.LA57).
    pub fn la57(&self) -> bool {
        self.mode().is_long() && self.cr4 & cr4::LA57 != 0
    }

    /// Whether the NX bit is honoured (EFER.NXE in PAE or long mode).
    pub fn nx_enabled(&self) -> bool {
        self.mode().has_nx()
    }

    /// The mask applied to every physical address: clears bit 20 while
    /// the A20 gate is closed.
    pub fn a20_mask(&self) -> u64 {
        if self.a20_enabled { !0 } else { !(1u64 << 20) }
    }
}
