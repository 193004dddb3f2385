//! Paging modes with VirtualBox's names, the shadow (second-level) side and
//! per-vCPU mode tracking.

use std::fmt;

use super::state::{PagingState, cr0, cr4, efer};

/// The guest paging mode (VirtualBox `PGMMODE`, guest side).
///
/// Long mode with CR4.LA57 keeps the AMD64 names and is shown with a
/// `/LA57` suffix by [`PagingMode::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PagingMode {
    /// CR0.PE clear.
    Real,
    /// Protected mode without paging.
    Protected,
    /// Legacy 32-bit paging.
    Bits32,
    /// PAE paging, EFER.NXE clear.
    Pae,
    /// PAE paging with NX.
    PaeNx,
    /// Long mode (4- or 5-level), EFER.NXE clear.
    Amd64,
    /// Long mode with NX.
    Amd64Nx,
}

impl PagingMode {
    /// Decodes the mode from CR0, CR4 and EFER the way the CPU does.
    ///
    /// ```
    /// use pgm::paging::{PagingMode, cr0, cr4};
    /// assert_eq!(PagingMode::from_regs(0, 0, 0), PagingMode::Real);
    /// assert_eq!(PagingMode::from_regs(cr0::PE | cr0::PG, cr4::PAE, 0), PagingMode::Pae);
    /// ```
    pub fn from_regs(cr0: u64, cr4: u64, efer: u64) -> Self {
        let nx = efer & efer::NXE != 0;
        if cr0 & cr0::PE == 0 {
            Self::Real
        } else if cr0 & cr0::PG == 0 {
            Self::Protected
        } else if efer & efer::LMA != 0 {
            if nx { Self::Amd64Nx } else { Self::Amd64 }
        } else if cr4 & cr4::PAE == 0 {
            Self::Bits32
        } else if nx {
            Self::PaeNx
        } else {
            Self::Pae
        }
    }

    /// VirtualBox's name for the mode ("Real", "32-bit", "PAE+NX", ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Real => "Real",
            Self::Protected => "Protected",
            Self::Bits32 => "32-bit",
            Self::Pae => "PAE",
            Self::PaeNx => "PAE+NX",
            Self::Amd64 => "AMD64",
            Self::Amd64Nx => "AMD64+NX",
        }
    }

    /// Whether paging is on.
    pub fn is_paged(self) -> bool {
        !matches!(self, Self::Real | Self::Protected)
    }

    /// Whether this is long mode.
    pub fn is_long(self) -> bool {
        matches!(self, Self::Amd64 | Self::Amd64Nx)
    }

    /// Whether page-table entries are 64-bit (PAE or long mode).
    pub fn is_pae_format(self) -> bool {
        matches!(self, Self::Pae | Self::PaeNx | Self::Amd64 | Self::Amd64Nx)
    }

    /// Whether the XD/NX bit is honoured.
    pub fn has_nx(self) -> bool {
        matches!(self, Self::PaeNx | Self::Amd64Nx)
    }
}

impl fmt::Display for PagingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// CPU vendor of the host, which decides the nested-paging flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostVendor {
    /// Intel (VT-x with EPT).
    Intel,
    /// AMD or Hygon (AMD-V with nested page tables).
    Amd,
    /// Anything else.
    Other,
}

/// The host's own paging mode and vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPaging {
    /// The paging mode the host kernel runs in.
    pub mode: PagingMode,
    /// The host CPU vendor.
    pub vendor: HostVendor,
}

impl HostPaging {
    /// Reads the host's vendor and NX support from CPUID. A 64-bit Linux
    /// host always runs in long mode.
    #[cfg(target_arch = "x86_64")]
    pub fn detect() -> Self {
        use std::arch::x86_64::__cpuid;
        // CPUID is available on every x86_64 CPU; it has no preconditions.
        let l0 = __cpuid(0);
        let vendor = match (
            &l0.ebx.to_le_bytes(),
            &l0.edx.to_le_bytes(),
            &l0.ecx.to_le_bytes(),
        ) {
            (b"Genu", b"ineI", b"ntel") => HostVendor::Intel,
            (b"Auth", b"enti", b"cAMD") | (b"Hygo", b"nGen", b"uine") => HostVendor::Amd,
            _ => HostVendor::Other,
        };
        let max_ext = __cpuid(0x8000_0000).eax;
        let nx = max_ext >= 0x8000_0001 && __cpuid(0x8000_0001).edx & (1 << 20) != 0;
        Self {
            mode: if nx {
                PagingMode::Amd64Nx
            } else {
                PagingMode::Amd64
            },
            vendor,
        }
    }

    /// The shadow (second-level) paging mode KVM's hardware nested paging
    /// uses under this host: EPT on Intel, nested paging matching the
    /// host's own mode on AMD, none otherwise.
    pub fn shadow_mode(&self) -> ShadowMode {
        match self.vendor {
            HostVendor::Intel => ShadowMode::Ept,
            HostVendor::Amd => match self.mode {
                PagingMode::Bits32 => ShadowMode::Nested32,
                PagingMode::Pae | PagingMode::PaeNx => ShadowMode::NestedPae,
                _ => ShadowMode::NestedAmd64,
            },
            HostVendor::Other => ShadowMode::None,
        }
    }
}

/// The shadow side (VirtualBox `PGMMODE` for the shadow tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShadowMode {
    /// No shadow tables known.
    None,
    /// AMD nested paging with 32-bit host tables.
    Nested32,
    /// AMD nested paging with PAE host tables.
    NestedPae,
    /// AMD nested paging with long-mode host tables.
    NestedAmd64,
    /// Intel extended page tables.
    Ept,
}

impl ShadowMode {
    /// VirtualBox's name for the mode.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Nested32 => "Nested-32",
            Self::NestedPae => "Nested-PAE",
            Self::NestedAmd64 => "Nested-AMD64",
            Self::Ept => "EPT",
        }
    }
}

impl fmt::Display for ShadowMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Per-vCPU record of the guest mode and the A20 gate, with change counts.
///
/// ```
/// use pgm::paging::{CpuFeatures, ModeTracker, PagingMode, PagingState, cr0};
/// let mut t = ModeTracker::new();
/// let s = PagingState::new(CpuFeatures::new(36).unwrap()).with_cr0(cr0::PE);
/// assert!(t.update(&s));
/// assert!(!t.update(&s));
/// assert_eq!((t.mode(), t.mode_changes()), (PagingMode::Protected, 1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeTracker {
    mode: PagingMode,
    la57: bool,
    mode_changes: u64,
    a20_enabled: bool,
    a20_changes: u64,
}

impl Default for ModeTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl ModeTracker {
    /// A tracker in the reset state (real mode, A20 open, no changes).
    pub fn new() -> Self {
        Self {
            mode: PagingMode::Real,
            la57: false,
            mode_changes: 0,
            a20_enabled: true,
            a20_changes: 0,
        }
    }

    /// Records `state`; returns whether the paging mode (including LA57)
    /// or the A20 gate changed.
    pub fn update(&mut self, state: &PagingState) -> bool {
        let (mode, la57) = (state.mode(), state.la57());
        let mode_changed = mode != self.mode || la57 != self.la57;
        if mode_changed {
            self.mode = mode;
            self.la57 = la57;
            self.mode_changes += 1;
        }
        let a20_changed = state.a20_enabled != self.a20_enabled;
        if a20_changed {
            self.a20_enabled = state.a20_enabled;
            self.a20_changes += 1;
        }
        mode_changed || a20_changed
    }

    /// Current guest paging mode.
    pub fn mode(&self) -> PagingMode {
        self.mode
    }

    /// Whether 5-level paging is in use.
    pub fn la57(&self) -> bool {
        self.la57
    }

    /// How many times the mode changed.
    pub fn mode_changes(&self) -> u64 {
        self.mode_changes
    }

    /// Whether A20 is open.
    pub fn a20_enabled(&self) -> bool {
        self.a20_enabled
    }

    /// How many times the A20 gate changed.
    pub fn a20_changes(&self) -> u64 {
        self.a20_changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_decode_like_the_cpu() {
        let pg = cr0::PE | cr0::PG;
        assert_eq!(PagingMode::from_regs(cr0::PG, 0, 0), PagingMode::Real);
        assert_eq!(PagingMode::from_regs(pg, cr4::PSE, 0), PagingMode::Bits32);
        assert_eq!(PagingMode::from_regs(pg, 0, efer::NXE), PagingMode::Bits32);
        assert_eq!(
            PagingMode::from_regs(pg, cr4::PAE, efer::NXE),
            PagingMode::PaeNx
        );
        assert_eq!(
            PagingMode::from_regs(pg, cr4::PAE, efer::LME),
            PagingMode::Pae
        );
        let lm = efer::LME | efer::LMA;
        assert_eq!(PagingMode::from_regs(pg, cr4::PAE, lm), PagingMode::Amd64);
        assert_eq!(
            PagingMode::from_regs(pg, cr4::PAE, lm | efer::NXE),
            PagingMode::Amd64Nx
        );
        assert_eq!(PagingMode::Amd64Nx.to_string(), "AMD64+NX");
    }

    #[test]
    fn shadow_follows_vendor() {
        let h = |vendor, mode| HostPaging { mode, vendor }.shadow_mode();
        assert_eq!(h(HostVendor::Intel, PagingMode::Amd64Nx), ShadowMode::Ept);
        assert_eq!(
            h(HostVendor::Amd, PagingMode::Amd64Nx),
            ShadowMode::NestedAmd64
        );
        assert_eq!(h(HostVendor::Amd, PagingMode::PaeNx), ShadowMode::NestedPae);
        assert_eq!(h(HostVendor::Amd, PagingMode::Bits32), ShadowMode::Nested32);
        assert_eq!(h(HostVendor::Other, PagingMode::Amd64), ShadowMode::None);
        assert_eq!(ShadowMode::NestedPae.name(), "Nested-PAE");
    }

    #[test]
    fn tracker_counts_mode_and_a20_changes() {
        let f = super::super::CpuFeatures::new(36).unwrap();
        let mut t = ModeTracker::new();
        let s = PagingState::new(f);
        assert!(!t.update(&s));
        assert!(t.update(&s.with_a20(false)));
        assert_eq!((t.a20_changes(), t.mode_changes()), (1, 0));
        let paged = s
            .with_a20(false)
            .with_cr0(cr0::PE | cr0::PG)
            .with_cr4(cr4::PAE)
            .with_efer(efer::LMA);
        assert!(t.update(&paged));
        assert!(t.update(&paged.with_cr4(cr4::PAE | cr4::LA57)));
        assert!(t.la57());
        assert_eq!(t.mode_changes(), 2);
        assert!(!t.a20_enabled());
    }
}
