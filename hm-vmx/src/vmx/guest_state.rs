//! A plain guest-state area: the VMCS guest-register state the VM-entry
//! checks look at, plus the few control bits they depend on.
//!
//! The backend fills it from KVM's `kvm_regs`/`kvm_sregs`; segment registers
//! come in through [`KvmSegmentFields`], which mirrors `kvm_segment` field
//! by field with plain integers (no kvm-bindings dependency).
//!
//! ```
//! use hm_vmx::vmx::{GuestState, KvmSegmentFields, Segment};
//!
//! let mut gs = GuestState::long_mode_flat();
//! // A 64-bit code segment as KVM reports it.
//! gs.cs = Segment::from(KvmSegmentFields {
//!     base: 0, limit: 0xffff_ffff, selector: 0x08, type_: 11,
//!     present: 1, dpl: 0, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: 0,
//! });
//! assert_eq!(gs.cs.access_rights.raw(), 0xa09b);
//! ```

use std::fmt;

/// VMX segment access rights (the VMCS "access rights" format: the
/// descriptor's bits 47:40 and 55:52 at bits 7:0 and 15:12, plus an
/// "unusable" flag at bit 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccessRights(pub u32);

impl AccessRights {
    /// "Segment unusable" (bit 16).
    pub const UNUSABLE: u32 = 1 << 16;
    /// Bits that must be 0: 11:8 and 31:17.
    pub const RESERVED: u32 = 0xfffe_0f00;

    /// The raw 32-bit value.
    pub const fn raw(self) -> u32 {
        self.0
    }
    /// Segment type (bits 3:0).
    pub const fn type_(self) -> u8 {
        (self.0 & 0xf) as u8
    }
    /// Descriptor type S, 1 = code or data (bit 4).
    pub const fn s(self) -> bool {
        self.0 & (1 << 4) != 0
    }
    /// Descriptor privilege level (bits 6:5).
    pub const fn dpl(self) -> u8 {
        ((self.0 >> 5) & 3) as u8
    }
    /// Segment present (bit 7).
    pub const fn present(self) -> bool {
        self.0 & (1 << 7) != 0
    }
    /// Available for system software (bit 12).
    pub const fn avl(self) -> bool {
        self.0 & (1 << 12) != 0
    }
    /// 64-bit code segment, L (bit 13).
    pub const fn l(self) -> bool {
        self.0 & (1 << 13) != 0
    }
    /// Default operation size, D/B (bit 14).
    pub const fn db(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    /// Granularity, G (bit 15).
    pub const fn g(self) -> bool {
        self.0 & (1 << 15) != 0
    }
    /// Segment unusable (bit 16).
    pub const fn unusable(self) -> bool {
        self.0 & Self::UNUSABLE != 0
    }
    /// The set reserved bits.
    pub const fn reserved(self) -> u32 {
        self.0 & Self::RESERVED
    }
}

/// `kvm_segment`'s fields as plain integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvmSegmentFields {
    /// Segment base.
    pub base: u64,
    /// Byte-granular limit.
    pub limit: u32,
    /// Selector.
    pub selector: u16,
    /// Type (4 bits).
    pub type_: u8,
    /// Present flag.
    pub present: u8,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// Default size D/B.
    pub db: u8,
    /// Descriptor type S.
    pub s: u8,
    /// 64-bit code L.
    pub l: u8,
    /// Granularity.
    pub g: u8,
    /// Available bit.
    pub avl: u8,
    /// KVM's "unusable" flag.
    pub unusable: u8,
}

impl KvmSegmentFields {
    /// The VMX access-rights value for these fields (flags are taken as
    /// "non-zero means set"; type and DPL are masked to their widths).
    pub fn access_rights(&self) -> AccessRights {
        let f = |v: u8, bit: u32| if v != 0 { 1u32 << bit } else { 0 };
        AccessRights(
            (self.type_ as u32 & 0xf)
                | f(self.s, 4)
                | ((self.dpl as u32 & 3) << 5)
                | f(self.present, 7)
                | f(self.avl, 12)
                | f(self.l, 13)
                | f(self.db, 14)
                | f(self.g, 15)
                | f(self.unusable, 16),
        )
    }
}

/// One segment register as the VMCS holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Byte-granular limit.
    pub limit: u32,
    /// Access rights in VMX format.
    pub access_rights: AccessRights,
}

impl Segment {
    /// Builds a segment from raw values.
    pub const fn new(selector: u16, base: u64, limit: u32, access_rights: u32) -> Segment {
        Segment {
            selector,
            base,
            limit,
            access_rights: AccessRights(access_rights),
        }
    }

    /// An unusable segment with a null selector.
    pub const fn unusable() -> Segment {
        Segment::new(0, 0, 0, AccessRights::UNUSABLE)
    }

    /// Whether the segment is usable (bit 16 of its access rights clear).
    pub const fn usable(&self) -> bool {
        !self.access_rights.unusable()
    }

    /// Requested privilege level of the selector (bits 1:0).
    pub const fn rpl(&self) -> u8 {
        (self.selector & 3) as u8
    }

    /// Table indicator of the selector (bit 2): the LDT.
    pub const fn ti(&self) -> bool {
        self.selector & 4 != 0
    }
}

impl From<KvmSegmentFields> for Segment {
    fn from(k: KvmSegmentFields) -> Segment {
        Segment {
            selector: k.selector,
            base: k.base,
            limit: k.limit,
            access_rights: k.access_rights(),
        }
    }
}

/// The eight segment registers of the guest-state area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegReg {
    /// ES.
    Es,
    /// CS.
    Cs,
    /// SS.
    Ss,
    /// DS.
    Ds,
    /// FS.
    Fs,
    /// GS.
    Gs,
    /// LDTR.
    Ldtr,
    /// TR.
    Tr,
}

impl SegReg {
    /// All eight, in VMCS field order.
    pub const ALL: [SegReg; 8] = [
        SegReg::Es,
        SegReg::Cs,
        SegReg::Ss,
        SegReg::Ds,
        SegReg::Fs,
        SegReg::Gs,
        SegReg::Ldtr,
        SegReg::Tr,
    ];

    /// Register name.
    pub const fn name(self) -> &'static str {
        match self {
            SegReg::Es => "ES",
            SegReg::Cs => "CS",
            SegReg::Ss => "SS",
            SegReg::Ds => "DS",
            SegReg::Fs => "FS",
            SegReg::Gs => "GS",
            SegReg::Ldtr => "LDTR",
            SegReg::Tr => "TR",
        }
    }
}

impl fmt::Display for SegReg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// GDTR or IDTR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DescriptorTable {
    /// Base address.
    pub base: u64,
    /// Limit (the VMCS field is 32 bits; bits 31:16 must be 0).
    pub limit: u32,
}

/// Type of an event injected by VM entry (VM-entry interruption-information
/// bits 10:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// External interrupt (0).
    ExternalInterrupt,
    /// Non-maskable interrupt (2).
    Nmi,
    /// Hardware exception (3).
    HardwareException,
    /// Software interrupt (4).
    SoftwareInterrupt,
    /// Privileged software exception (5).
    PrivilegedSoftwareException,
    /// Software exception (6).
    SoftwareException,
    /// Other event (7), e.g. vector 0 = pending MTF VM exit.
    Other,
}

/// An event VM entry injects (the valid VM-entry interruption information).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InjectedEvent {
    /// Interruption type.
    pub kind: EventKind,
    /// Vector.
    pub vector: u8,
}

/// Guest activity states (SDM "Guest Non-Register State").
pub mod activity {
    /// Active.
    pub const ACTIVE: u32 = 0;
    /// HLT.
    pub const HLT: u32 = 1;
    /// Shutdown.
    pub const SHUTDOWN: u32 = 2;
    /// Wait-for-SIPI.
    pub const WAIT_FOR_SIPI: u32 = 3;
}

/// Guest interruptibility-state bits.
pub mod interruptibility {
    /// Blocking by STI.
    pub const STI: u32 = 1 << 0;
    /// Blocking by MOV SS.
    pub const MOV_SS: u32 = 1 << 1;
    /// Blocking by SMI.
    pub const SMI: u32 = 1 << 2;
    /// Blocking by NMI.
    pub const NMI: u32 = 1 << 3;
    /// Enclave interruption.
    pub const ENCLAVE: u32 = 1 << 4;
}

/// Pending-debug-exceptions bits.
pub mod pending_debug {
    /// B3-B0 (bits 3:0).
    pub const B0_3: u64 = 0xf;
    /// Enabled breakpoint (bit 12).
    pub const ENABLED_BREAKPOINT: u64 = 1 << 12;
    /// Single step, BS (bit 14).
    pub const BS: u64 = 1 << 14;
    /// RTM (bit 16).
    pub const RTM: u64 = 1 << 16;
}

/// The control bits the guest-state checks depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuestControls {
    /// VM-entry "IA-32e mode guest".
    pub ia32e_mode_guest: bool,
    /// VM-entry "load debug controls".
    pub load_debug_controls: bool,
    /// VM-entry "load IA32_EFER".
    pub load_efer: bool,
    /// Secondary "unrestricted guest".
    pub unrestricted_guest: bool,
    /// Secondary "enable EPT" (the PDPTE fields are used only with EPT).
    pub enable_ept: bool,
    /// Pin-based "virtual NMIs".
    pub virtual_nmis: bool,
}

impl GuestControls {
    /// Reads the relevant bits out of raw pin-based, secondary and VM-entry
    /// control values (a secondary value counts only if the primary
    /// "activate secondary controls" bit is set in `proc`).
    pub fn from_values(pin: u32, proc: u32, proc2: u32, entry: u32) -> GuestControls {
        let proc2 = if proc & (1 << 31) != 0 { proc2 } else { 0 };
        GuestControls {
            ia32e_mode_guest: entry & (1 << 9) != 0,
            load_debug_controls: entry & (1 << 2) != 0,
            load_efer: entry & (1 << 15) != 0,
            unrestricted_guest: proc2 & (1 << 7) != 0,
            enable_ept: proc2 & (1 << 1) != 0,
            virtual_nmis: pin & (1 << 5) != 0,
        }
    }
}

/// The guest-state area as the VM-entry checks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestState {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// DR7.
    pub dr7: u64,
    /// IA32_DEBUGCTL.
    pub debugctl: u64,
    /// IA32_EFER.
    pub efer: u64,
    /// RSP.
    pub rsp: u64,
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// ES.
    pub es: Segment,
    /// CS.
    pub cs: Segment,
    /// SS.
    pub ss: Segment,
    /// DS.
    pub ds: Segment,
    /// FS.
    pub fs: Segment,
    /// GS.
    pub gs: Segment,
    /// LDTR.
    pub ldtr: Segment,
    /// TR.
    pub tr: Segment,
    /// GDTR.
    pub gdtr: DescriptorTable,
    /// IDTR.
    pub idtr: DescriptorTable,
    /// Activity state (see [`activity`]); raw so that invalid values can be
    /// represented and reported.
    pub activity_state: u32,
    /// Interruptibility state (see [`interruptibility`]).
    pub interruptibility: u32,
    /// Pending debug exceptions (see [`pending_debug`]).
    pub pending_debug_exceptions: u64,
    /// PDPTE0-3 (used in PAE paging with EPT).
    pub pdptes: [u64; 4],
    /// The control bits the checks depend on.
    pub controls: GuestControls,
    /// The event VM entry injects, if any.
    pub injected_event: Option<InjectedEvent>,
}

/// CR0 bits the model refers to.
pub mod cr0 {
    /// Protection enable.
    pub const PE: u64 = 1 << 0;
    /// Extension type.
    pub const ET: u64 = 1 << 4;
    /// Numeric error.
    pub const NE: u64 = 1 << 5;
    /// Write protect.
    pub const WP: u64 = 1 << 16;
    /// Paging.
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits the model refers to.
pub mod cr4 {
    /// Physical-address extension.
    pub const PAE: u64 = 1 << 5;
    /// VMX enable.
    pub const VMXE: u64 = 1 << 13;
    /// PCID enable.
    pub const PCIDE: u64 = 1 << 17;
    /// Control-flow enforcement.
    pub const CET: u64 = 1 << 23;
}

/// IA32_EFER bits the model refers to.
pub mod efer {
    /// SYSCALL enable.
    pub const SCE: u64 = 1 << 0;
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active.
    pub const LMA: u64 = 1 << 10;
    /// Execute-disable enable.
    pub const NXE: u64 = 1 << 11;
}

impl GuestState {
    /// A valid 64-bit flat guest: CPL 0, paging with PAE and long mode,
    /// 64-bit CS at selector 0x08, flat data at 0x10, busy 64-bit TSS at
    /// 0x18, unusable LDTR, IA-32e mode guest and "load IA32_EFER" set.
    pub fn long_mode_flat() -> GuestState {
        let data = Segment::new(0x10, 0, 0xffff_ffff, 0xc093);
        GuestState {
            cr0: cr0::PE | cr0::ET | cr0::NE | cr0::WP | cr0::PG,
            cr3: 0x1000,
            cr4: cr4::PAE | cr4::VMXE,
            dr7: 0x400,
            debugctl: 0,
            efer: efer::SCE | efer::LME | efer::LMA | efer::NXE,
            rsp: 0x20_0000,
            rip: 0x10_0000,
            rflags: 0x2,
            es: data,
            cs: Segment::new(0x08, 0, 0xffff_ffff, 0xa09b),
            ss: data,
            ds: data,
            fs: data,
            gs: data,
            ldtr: Segment::unusable(),
            tr: Segment::new(0x18, 0x3000, 0x67, 0x8b),
            gdtr: DescriptorTable {
                base: 0x2000,
                limit: 0x1f,
            },
            idtr: DescriptorTable {
                base: 0x4000,
                limit: 0xfff,
            },
            activity_state: activity::ACTIVE,
            interruptibility: 0,
            pending_debug_exceptions: 0,
            pdptes: [0; 4],
            controls: GuestControls {
                ia32e_mode_guest: true,
                load_efer: true,
                enable_ept: true,
                ..GuestControls::default()
            },
            injected_event: None,
        }
    }

    /// A valid real-mode guest as after RESET (CS:IP = F000:FFF0 with base
    /// 0xFFFF0000), which VM entry accepts only with "unrestricted guest"
    /// (set here, with EPT). CR0 has NE set, as IA32_VMX_CR0_FIXED0
    /// demands on every current CPU, and CR4 has VMXE.
    pub fn real_mode_reset() -> GuestState {
        let data = Segment::new(0, 0, 0xffff, 0x93);
        GuestState {
            cr0: cr0::ET | cr0::NE,
            cr3: 0,
            cr4: cr4::VMXE,
            dr7: 0x400,
            debugctl: 0,
            efer: 0,
            rsp: 0,
            rip: 0xfff0,
            rflags: 0x2,
            es: data,
            cs: Segment::new(0xf000, 0xffff_0000, 0xffff, 0x9b),
            ss: data,
            ds: data,
            fs: data,
            gs: data,
            ldtr: Segment::new(0, 0, 0xffff, 0x82),
            tr: Segment::new(0, 0, 0xffff, 0x8b),
            gdtr: DescriptorTable {
                base: 0,
                limit: 0xffff,
            },
            idtr: DescriptorTable {
                base: 0,
                limit: 0xffff,
            },
            activity_state: activity::ACTIVE,
            interruptibility: 0,
            pending_debug_exceptions: 0,
            pdptes: [0; 4],
            controls: GuestControls {
                unrestricted_guest: true,
                enable_ept: true,
                ..GuestControls::default()
            },
            injected_event: None,
        }
    }

    /// The segment register `r`.
    pub fn segment(&self, r: SegReg) -> &Segment {
        match r {
            SegReg::Es => &self.es,
            SegReg::Cs => &self.cs,
            SegReg::Ss => &self.ss,
            SegReg::Ds => &self.ds,
            SegReg::Fs => &self.fs,
            SegReg::Gs => &self.gs,
            SegReg::Ldtr => &self.ldtr,
            SegReg::Tr => &self.tr,
        }
    }

    /// The segment register `r`, mutably.
    pub fn segment_mut(&mut self, r: SegReg) -> &mut Segment {
        match r {
            SegReg::Es => &mut self.es,
            SegReg::Cs => &mut self.cs,
            SegReg::Ss => &mut self.ss,
            SegReg::Ds => &mut self.ds,
            SegReg::Fs => &mut self.fs,
            SegReg::Gs => &mut self.gs,
            SegReg::Ldtr => &mut self.ldtr,
            SegReg::Tr => &mut self.tr,
        }
    }

    /// Whether the guest will run in virtual-8086 mode (RFLAGS.VM).
    pub const fn v8086(&self) -> bool {
        self.rflags & (1 << 17) != 0
    }

    /// Whether the guest will run 64-bit code (IA-32e mode guest and CS.L).
    pub const fn in_64bit_code(&self) -> bool {
        self.controls.ia32e_mode_guest && self.cs.access_rights.l()
    }
}

#[cfg(test)]
mod tests;
