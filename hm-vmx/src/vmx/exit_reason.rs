//! VMX basic exit reasons (Intel SDM Vol. 3, Appendix C).
//!
//! The basic exit reason is bits 15:0 of the VMCS "exit reason" field. The
//! backend reports every KVM exit under the VMX reason that a VT-x VMM would
//! have seen for the same guest event.

macro_rules! exit_reasons {
    ($($(#[$doc:meta])* $variant:ident = $num:literal, $name:literal;)*) => {
        /// A VMX basic exit reason, numbered as in the Intel SDM.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum ExitReason {
            $($(#[$doc])* $variant = $num,)*
        }

        impl ExitReason {
            /// Every basic exit reason the SDM defines, in numeric order.
            pub const ALL: &'static [ExitReason] = &[$(ExitReason::$variant,)*];

            /// The SDM's name for this exit reason.
            pub const fn name(self) -> &'static str {
                match self { $(ExitReason::$variant => $name,)* }
            }

            /// Decodes a basic exit reason number; `None` for numbers the SDM
            /// does not assign.
            pub const fn from_raw(raw: u16) -> Option<ExitReason> {
                match raw { $($num => Some(ExitReason::$variant),)* _ => None }
            }
        }
    };
}

exit_reasons! {
    /// Exception or non-maskable interrupt.
    ExceptionOrNmi = 0, "Exception or non-maskable interrupt (NMI)";
    /// External interrupt.
    ExternalInterrupt = 1, "External interrupt";
    /// Triple fault.
    TripleFault = 2, "Triple fault";
    /// INIT signal.
    InitSignal = 3, "INIT signal";
    /// Start-up IPI.
    Sipi = 4, "Start-up IPI (SIPI)";
    /// I/O system-management interrupt.
    IoSmi = 5, "I/O system-management interrupt (SMI)";
    /// Other SMI.
    OtherSmi = 6, "Other SMI";
    /// Interrupt window.
    InterruptWindow = 7, "Interrupt window";
    /// NMI window.
    NmiWindow = 8, "NMI window";
    /// Task switch.
    TaskSwitch = 9, "Task switch";
    /// CPUID.
    Cpuid = 10, "CPUID";
    /// GETSEC.
    Getsec = 11, "GETSEC";
    /// HLT.
    Hlt = 12, "HLT";
    /// INVD.
    Invd = 13, "INVD";
    /// INVLPG.
    Invlpg = 14, "INVLPG";
    /// RDPMC.
    Rdpmc = 15, "RDPMC";
    /// RDTSC.
    Rdtsc = 16, "RDTSC";
    /// RSM.
    Rsm = 17, "RSM";
    /// VMCALL.
    Vmcall = 18, "VMCALL";
    /// VMCLEAR.
    Vmclear = 19, "VMCLEAR";
    /// VMLAUNCH.
    Vmlaunch = 20, "VMLAUNCH";
    /// VMPTRLD.
    Vmptrld = 21, "VMPTRLD";
    /// VMPTRST.
    Vmptrst = 22, "VMPTRST";
    /// VMREAD.
    Vmread = 23, "VMREAD";
    /// VMRESUME.
    Vmresume = 24, "VMRESUME";
    /// VMWRITE.
    Vmwrite = 25, "VMWRITE";
    /// VMXOFF.
    Vmxoff = 26, "VMXOFF";
    /// VMXON.
    Vmxon = 27, "VMXON";
    /// Control-register accesses.
    CrAccess = 28, "Control-register accesses";
    /// MOV DR.
    MovDr = 29, "MOV DR";
    /// I/O instruction.
    IoInstruction = 30, "I/O instruction";
    /// RDMSR.
    Rdmsr = 31, "RDMSR";
    /// WRMSR.
    Wrmsr = 32, "WRMSR";
    /// VM-entry failure due to invalid guest state.
    EntryFailureGuestState = 33, "VM-entry failure due to invalid guest state";
    /// VM-entry failure due to MSR loading.
    EntryFailureMsrLoading = 34, "VM-entry failure due to MSR loading";
    /// MWAIT.
    Mwait = 36, "MWAIT";
    /// Monitor trap flag.
    MonitorTrapFlag = 37, "Monitor trap flag";
    /// MONITOR.
    Monitor = 39, "MONITOR";
    /// PAUSE.
    Pause = 40, "PAUSE";
    /// VM-entry failure due to machine-check event.
    EntryFailureMachineCheck = 41, "VM-entry failure due to machine-check event";
    /// TPR below threshold.
    TprBelowThreshold = 43, "TPR below threshold";
    /// APIC access.
    ApicAccess = 44, "APIC access";
    /// Virtualized EOI.
    VirtualizedEoi = 45, "Virtualized EOI";
    /// Access to GDTR or IDTR.
    GdtrIdtrAccess = 46, "Access to GDTR or IDTR";
    /// Access to LDTR or TR.
    LdtrTrAccess = 47, "Access to LDTR or TR";
    /// EPT violation.
    EptViolation = 48, "EPT violation";
    /// EPT misconfiguration.
    EptMisconfig = 49, "EPT misconfiguration";
    /// INVEPT.
    Invept = 50, "INVEPT";
    /// RDTSCP.
    Rdtscp = 51, "RDTSCP";
    /// VMX-preemption timer expired.
    PreemptionTimer = 52, "VMX-preemption timer expired";
    /// INVVPID.
    Invvpid = 53, "INVVPID";
    /// WBINVD or WBNOINVD.
    Wbinvd = 54, "WBINVD or WBNOINVD";
    /// XSETBV.
    Xsetbv = 55, "XSETBV";
    /// APIC write.
    ApicWrite = 56, "APIC write";
    /// RDRAND.
    Rdrand = 57, "RDRAND";
    /// INVPCID.
    Invpcid = 58, "INVPCID";
    /// VMFUNC.
    Vmfunc = 59, "VMFUNC";
    /// ENCLS.
    Encls = 60, "ENCLS";
    /// RDSEED.
    Rdseed = 61, "RDSEED";
    /// Page-modification log full.
    PmlFull = 62, "Page-modification log full";
    /// XSAVES.
    Xsaves = 63, "XSAVES";
    /// XRSTORS.
    Xrstors = 64, "XRSTORS";
    /// PCONFIG.
    Pconfig = 65, "PCONFIG";
    /// SPP-related event.
    SppEvent = 66, "SPP-related event";
    /// UMWAIT.
    Umwait = 67, "UMWAIT";
    /// TPAUSE.
    Tpause = 68, "TPAUSE";
    /// LOADIWKEY.
    Loadiwkey = 69, "LOADIWKEY";
    /// ENCLV.
    Enclv = 70, "ENCLV";
    /// ENQCMD PASID translation failure.
    EnqcmdPasidFailure = 72, "ENQCMD PASID translation failure";
    /// ENQCMDS PASID translation failure.
    EnqcmdsPasidFailure = 73, "ENQCMDS PASID translation failure";
    /// Bus lock.
    BusLock = 74, "Bus lock";
    /// Instruction timeout.
    InstructionTimeout = 75, "Instruction timeout";
    /// SEAMCALL.
    Seamcall = 76, "SEAMCALL";
    /// TDCALL.
    Tdcall = 77, "TDCALL";
    /// RDMSRLIST.
    Rdmsrlist = 78, "RDMSRLIST";
    /// WRMSRLIST.
    Wrmsrlist = 79, "WRMSRLIST";
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_numbers_round_trip() {
        for &r in ExitReason::ALL {
            assert_eq!(ExitReason::from_raw(r as u16), Some(r));
        }
        assert_eq!(ExitReason::from_raw(35), None);
        assert_eq!(ExitReason::from_raw(38), None);
        assert_eq!(ExitReason::IoInstruction as u16, 30);
        assert_eq!(ExitReason::Hlt as u16, 12);
        assert_eq!(ExitReason::EptViolation as u16, 48);
        assert_eq!(ExitReason::TripleFault as u16, 2);
    }
}
