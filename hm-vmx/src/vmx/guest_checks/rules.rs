//! The rules the guest-state checks report: ids, SDM sections and texts,
//! and a broken rule with what broke it.

use std::fmt;

macro_rules! rules {
    ($($(#[$doc:meta])* $v:ident = $id:literal, $sec:literal, $text:literal;)*) => {
        /// A rule of the SDM's guest-state checks.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Rule {
            $($(#[$doc])* $v,)*
        }

        impl Rule {
            /// Every rule, in the order the checker evaluates them.
            pub const ALL: &'static [Rule] = &[$(Rule::$v,)*];

            /// Stable identifier, e.g. `GS-CR0-FIXED`.
            pub const fn id(self) -> &'static str {
                match self { $(Rule::$v => $id,)* }
            }

            /// SDM section (recent-edition numbering; older editions use
            /// 26.3.1.x for 28.3.1.x).
            pub const fn section(self) -> &'static str {
                match self { $(Rule::$v => $sec,)* }
            }

            /// The rule as a sentence.
            pub const fn text(self) -> &'static str {
                match self { $(Rule::$v => $text,)* }
            }
        }
    };
}

rules! {
    /// CR0 fixed bits.
    Cr0Fixed = "GS-CR0-FIXED", "28.3.1.1",
        "CR0 must have every bit IA32_VMX_CR0_FIXED0 sets and no bit IA32_VMX_CR0_FIXED1 clears (PE and PG exempt with unrestricted guest).";
    /// CR0.PG without CR0.PE.
    Cr0PgWithoutPe = "GS-CR0-PG-PE", "28.3.1.1",
        "If CR0.PG is 1, CR0.PE must be 1.";
    /// CR4 fixed bits.
    Cr4Fixed = "GS-CR4-FIXED", "28.3.1.1",
        "CR4 must have every bit IA32_VMX_CR4_FIXED0 sets and no bit IA32_VMX_CR4_FIXED1 clears.";
    /// CR4.CET without CR0.WP.
    Cr4CetWithoutWp = "GS-CR4-CET-WP", "28.3.1.1",
        "If CR4.CET is 1, CR0.WP must be 1.";
    /// CR3 beyond MAXPHYADDR.
    Cr3Width = "GS-CR3-WIDTH", "28.3.1.1",
        "CR3 bits beyond the processor's physical-address width must be 0.";
    /// DR7 high bits.
    Dr7High = "GS-DR7-HIGH", "28.3.1.1",
        "With \"load debug controls\", DR7 bits 63:32 must be 0.";
    /// IA-32e mode guest without paging.
    Ia32eWithoutPg = "GS-IA32E-PG", "28.3.1.1",
        "With \"IA-32e mode guest\", CR0.PG must be 1.";
    /// IA-32e mode guest without PAE.
    Ia32eWithoutPae = "GS-IA32E-PAE", "28.3.1.1",
        "With \"IA-32e mode guest\", CR4.PAE must be 1.";
    /// PCIDE outside IA-32e mode.
    PcideOutsideIa32e = "GS-PCIDE", "28.3.1.1",
        "Without \"IA-32e mode guest\", CR4.PCIDE must be 0.";
    /// EFER reserved bits.
    EferReserved = "GS-EFER-RSVD", "28.3.1.1",
        "With \"load IA32_EFER\", the reserved bits of IA32_EFER must be 0.";
    /// EFER.LMA vs IA-32e mode guest.
    EferLma = "GS-EFER-LMA", "28.3.1.1",
        "With \"load IA32_EFER\", EFER.LMA must equal \"IA-32e mode guest\".";
    /// EFER.LME vs LMA with paging.
    EferLme = "GS-EFER-LME", "28.3.1.1",
        "With \"load IA32_EFER\" and CR0.PG = 1, EFER.LME must equal EFER.LMA.";
    /// TR selector TI.
    TrTi = "GS-TR-TI", "28.3.1.2",
        "The TI flag (bit 2) of the TR selector must be 0.";
    /// LDTR selector TI.
    LdtrTi = "GS-LDTR-TI", "28.3.1.2",
        "If LDTR is usable, the TI flag of its selector must be 0.";
    /// SS.RPL vs CS.RPL.
    SsRplCsRpl = "GS-SS-RPL", "28.3.1.2",
        "Outside virtual-8086 mode and without unrestricted guest, SS.RPL must equal CS.RPL.";
    /// Virtual-8086 bases.
    V86Base = "GS-V86-BASE", "28.3.1.2",
        "In virtual-8086 mode, the base of CS, SS, DS, ES, FS and GS must be the selector shifted left by 4.";
    /// Virtual-8086 limits.
    V86Limit = "GS-V86-LIMIT", "28.3.1.2",
        "In virtual-8086 mode, the limit of CS, SS, DS, ES, FS and GS must be 0xFFFF.";
    /// Virtual-8086 access rights.
    V86AccessRights = "GS-V86-AR", "28.3.1.2",
        "In virtual-8086 mode, the access rights of CS, SS, DS, ES, FS and GS must be 0xF3.";
    /// Canonical TR/FS/GS/LDTR bases.
    BaseCanonical = "GS-BASE-CANON", "28.3.1.2",
        "The bases of TR, FS and GS, and of LDTR if usable, must be canonical.";
    /// High bits of CS/SS/DS/ES bases.
    BaseHigh = "GS-BASE-HIGH", "28.3.1.2",
        "Bits 63:32 of the CS base, and of the SS, DS and ES bases if usable, must be 0.";
    /// CS type.
    CsType = "GS-CS-TYPE", "28.3.1.2",
        "The CS type must be 9, 11, 13 or 15 (accessed code), or 3 (accessed read/write data) with unrestricted guest.";
    /// SS type.
    SsType = "GS-SS-TYPE", "28.3.1.2",
        "If SS is usable, its type must be 3 or 7 (accessed read/write data).";
    /// DS/ES/FS/GS type.
    DataType = "GS-DATA-TYPE", "28.3.1.2",
        "A usable DS, ES, FS or GS must be accessed (type bit 0), and readable (type bit 1) if it is code.";
    /// S flag.
    SegDescriptorType = "GS-SEG-S", "28.3.1.2",
        "CS, and SS, DS, ES, FS and GS if usable, must be code or data segments (S = 1).";
    /// CS.DPL.
    CsDpl = "GS-CS-DPL", "28.3.1.2",
        "CS.DPL must be 0 for type 3, equal SS.DPL for non-conforming code, and not exceed SS.DPL for conforming code.";
    /// SS.DPL vs SS.RPL.
    SsDplRpl = "GS-SS-DPL", "28.3.1.2",
        "Without unrestricted guest, SS.DPL must equal the RPL of the SS selector.";
    /// SS.DPL in real mode / with data CS.
    SsDplZero = "GS-SS-DPL-0", "28.3.1.2",
        "SS.DPL must be 0 if the CS type is 3 or CR0.PE is 0.";
    /// DS/ES/FS/GS DPL vs RPL.
    DataDpl = "GS-DATA-DPL", "28.3.1.2",
        "Without unrestricted guest, a usable DS, ES, FS or GS of type 0-11 must have DPL >= RPL.";
    /// Present flag.
    SegPresent = "GS-SEG-P", "28.3.1.2",
        "CS, and SS, DS, ES, FS and GS if usable, must be present.";
    /// Access-rights reserved bits.
    SegReserved = "GS-SEG-RSVD", "28.3.1.2",
        "Access-rights bits 11:8 and 31:17 of CS, TR and every usable segment must be 0.";
    /// CS.L with CS.D.
    CsLongAndDefaultSize = "GS-CS-L-D", "28.3.1.2",
        "With \"IA-32e mode guest\" and CS.L = 1, CS.D/B must be 0.";
    /// Limit vs granularity.
    SegGranularity = "GS-SEG-G", "28.3.1.2",
        "If any of limit bits 11:0 is 0, G must be 0; if any of limit bits 31:20 is 1, G must be 1.";
    /// TR type.
    TrType = "GS-TR-TYPE", "28.3.1.2",
        "The TR type must be 11 (busy 32/64-bit TSS), or 3 (busy 16-bit TSS) outside IA-32e mode.";
    /// TR descriptor.
    TrDescriptor = "GS-TR-DESC", "28.3.1.2",
        "TR must be usable, present and a system descriptor (S = 0).";
    /// LDTR descriptor.
    LdtrDescriptor = "GS-LDTR-DESC", "28.3.1.2",
        "If LDTR is usable, it must be a present LDT descriptor (type 2, S = 0).";
    /// GDTR/IDTR bases.
    DescriptorTableBase = "GS-DT-BASE", "28.3.1.3",
        "The GDTR and IDTR bases must be canonical.";
    /// GDTR/IDTR limits.
    DescriptorTableLimit = "GS-DT-LIMIT", "28.3.1.3",
        "Bits 31:16 of the GDTR and IDTR limits must be 0.";
    /// RIP high bits outside 64-bit code.
    RipHigh = "GS-RIP-HIGH", "28.3.1.4",
        "Without \"IA-32e mode guest\" or with CS.L = 0, RIP bits 63:32 must be 0.";
    /// RIP canonical in 64-bit code.
    RipCanonical = "GS-RIP-CANON", "28.3.1.4",
        "With \"IA-32e mode guest\" and CS.L = 1, RIP must be canonical.";
    /// RFLAGS reserved bits.
    RflagsReserved = "GS-RFLAGS-RSVD", "28.3.1.4",
        "RFLAGS bits 63:22, 15, 5 and 3 must be 0 and bit 1 must be 1.";
    /// RFLAGS.VM.
    RflagsVm = "GS-RFLAGS-VM", "28.3.1.4",
        "RFLAGS.VM must be 0 with \"IA-32e mode guest\" or CR0.PE = 0.";
    /// RFLAGS.IF with an injected external interrupt.
    RflagsIf = "GS-RFLAGS-IF", "28.3.1.4",
        "RFLAGS.IF must be 1 when VM entry injects an external interrupt.";
    /// Activity state value.
    ActivityValid = "GS-ACT-VALID", "28.3.1.5",
        "The activity state must be 0-3 and one the processor supports (IA32_VMX_MISC bits 8:6).";
    /// HLT with SS.DPL != 0.
    ActivityHltDpl = "GS-ACT-HLT-DPL", "28.3.1.5",
        "The activity state must not be HLT if SS.DPL is not 0.";
    /// Non-active state with STI/MOV SS blocking.
    ActivityBlocking = "GS-ACT-BLOCK", "28.3.1.5",
        "The activity state must be active if there is blocking by STI or by MOV SS.";
    /// Events allowed per activity state.
    ActivityEvent = "GS-ACT-EVENT", "28.3.1.5",
        "In HLT only external interrupts, NMIs, #DB, #MC and pending MTF may be injected; in shutdown only NMIs and #MC; in wait-for-SIPI nothing.";
    /// Interruptibility reserved bits.
    IntReserved = "GS-INT-RSVD", "28.3.1.5",
        "Interruptibility-state bits 31:5 must be 0.";
    /// STI and MOV SS both.
    IntStiAndMovSs = "GS-INT-STI-MOVSS", "28.3.1.5",
        "Blocking by STI and blocking by MOV SS must not both be set.";
    /// STI blocking with IF=0.
    IntStiWithoutIf = "GS-INT-STI-IF", "28.3.1.5",
        "Blocking by STI must be 0 if RFLAGS.IF is 0.";
    /// Blocking vs injected interrupt/NMI.
    IntEventBlocked = "GS-INT-EVENT", "28.3.1.5",
        "Injecting an external interrupt requires no blocking by STI or MOV SS; injecting an NMI requires no blocking by MOV SS.";
    /// SMI blocking outside SMM.
    IntSmi = "GS-INT-SMI", "28.3.1.5",
        "Blocking by SMI must be 0 (the processor is not in SMM).";
    /// NMI blocking with virtual NMIs and an injected NMI.
    IntNmiBlocked = "GS-INT-NMI", "28.3.1.5",
        "With virtual NMIs, injecting an NMI requires blocking by NMI to be 0.";
    /// Enclave interruption with MOV SS blocking.
    IntEnclaveMovSs = "GS-INT-ENCLAVE", "28.3.1.5",
        "If the enclave-interruption bit is 1, blocking by MOV SS must be 0.";
    /// Pending debug exceptions reserved bits.
    PendingDebugReserved = "GS-PDE-RSVD", "28.3.1.5",
        "Pending-debug-exceptions bits 11:4, 13, 15 and 63:17 must be 0.";
    /// Pending BS vs TF/BTF.
    PendingDebugBs = "GS-PDE-BS", "28.3.1.5",
        "With blocking by STI or MOV SS, or in HLT, BS must be 1 if RFLAGS.TF = 1 and DEBUGCTL.BTF = 0, and 0 otherwise.";
    /// Pending RTM debug exception.
    PendingDebugRtm = "GS-PDE-RTM", "28.3.1.5",
        "If pending-debug RTM (bit 16) is 1, bits 3:0 and 14 must be 0, bit 12 must be 1, and there must be no blocking by MOV SS.";
    /// PDPTE reserved bits.
    PdpteReserved = "GS-PDPTE-RSVD", "28.3.1.6",
        "With EPT and PAE paging outside IA-32e mode, each present PDPTE must have bits 2:1, 8:5 and those beyond MAXPHYADDR clear.";
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] SDM {}: {}", self.id(), self.section(), self.text())
    }
}

/// One broken rule, with what broke it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule.
    pub rule: Rule,
    /// The offending values.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.rule, self.detail)
    }
}
