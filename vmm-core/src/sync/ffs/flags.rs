//! The flag sets: global (`VM_FF_*`) and per vCPU (`VMCPU_FF_*`), each a
//! newtype over `u64` with named bits.

use std::fmt;

/// Defines a set-of-flags newtype over `u64` with named constants.
macro_rules! ff_set {
    (
        $(#[$meta:meta])*
        $name:ident, $prefix:literal {
            $( $(#[$fmeta:meta])* $flag:ident = $bit:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(u64);

        impl $name {
            $( $(#[$fmeta])* pub const $flag: $name = $name(1 << $bit); )*
            /// No flag.
            pub const NONE: $name = $name(0);
            /// Every defined flag.
            pub const ALL: $name = $name(0 $( | (1 << $bit) )*);
            const NAMES: &'static [(u64, &'static str)] =
                &[$( (1 << $bit, concat!($prefix, stringify!($flag))), )*];

            /// The raw bits.
            pub const fn bits(self) -> u64 {
                self.0
            }
            /// The defined flags among `bits` (undefined bits are dropped).
            pub const fn from_bits_truncate(bits: u64) -> Self {
                $name(bits & Self::ALL.0)
            }
            /// Whether every flag of `other` is set.
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }
            /// Whether any flag of `other` is set.
            pub const fn intersects(self, other: Self) -> bool {
                self.0 & other.0 != 0
            }
            /// Whether no flag is set.
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }
            /// The names of the set flags, lowest bit first.
            pub fn names(self) -> impl Iterator<Item = &'static str> {
                Self::NAMES
                    .iter()
                    .filter(move |(bit, _)| self.0 & bit != 0)
                    .map(|(_, name)| *name)
            }
        }

        impl std::ops::BitOr for $name {
            type Output = $name;
            fn bitor(self, rhs: $name) -> $name {
                $name(self.0 | rhs.0)
            }
        }

        impl std::ops::BitAnd for $name {
            type Output = $name;
            fn bitand(self, rhs: $name) -> $name {
                $name(self.0 & rhs.0)
            }
        }

        impl std::ops::Not for $name {
            type Output = $name;
            fn not(self) -> $name {
                $name(!self.0 & Self::ALL.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut names = self.names();
                match names.next() {
                    None => f.write_str("-"),
                    Some(first) => {
                        f.write_str(first)?;
                        names.try_for_each(|n| write!(f, " {n}"))
                    }
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:#x}: {})", stringify!($name), self.0, self)
            }
        }
    };
}

ff_set! {
    /// Global forced actions (VirtualBox's `VM_FF_*`), seen by every EMT.
    VmFf, "VM_FF_" {
        /// The virtual-sync clock's timers need servicing.
        TM_VIRTUAL_SYNC = 0,
        /// PDM queues are pending.
        PDM_QUEUES = 1,
        /// PDM DMA transfers are pending.
        PDM_DMA = 2,
        /// A debugger event is pending.
        DBGF = 3,
        /// Requests for any EMT are queued.
        REQUEST = 4,
        /// The VM state changed and the EMTs should look at it.
        CHECK_VM_STATE = 5,
        /// The VM is to be reset.
        RESET = 6,
        /// An EMT rendezvous is waiting for this EMT.
        EMT_RENDEZVOUS = 7,
        /// PGM needs handy pages allocated.
        PGM_NEED_HANDY_PAGES = 8,
        /// PGM is out of memory.
        PGM_NO_MEMORY = 9,
        /// A PGM pool flush is pending.
        PGM_POOL_FLUSH_PENDING = 10,
        /// Suspend for the debugger.
        DEBUG_SUSPEND = 11,
        /// The VM is to be suspended.
        SUSPEND = 12,
        /// The VM is to be powered off.
        POWER_OFF = 13,
        /// The EMTs are to terminate.
        TERMINATE = 14,
    }
}

ff_set! {
    /// Per-vCPU forced actions (VirtualBox's `VMCPU_FF_*`).
    CpuFf, "VMCPU_FF_" {
        /// The local APIC has an interrupt pending.
        INTERRUPT_APIC = 0,
        /// The PIC has an interrupt pending.
        INTERRUPT_PIC = 1,
        /// The vCPU's timer needs servicing.
        TIMER = 2,
        /// An NMI is pending.
        INTERRUPT_NMI = 3,
        /// An SMI is pending.
        INTERRUPT_SMI = 4,
        /// The APIC state must be updated before entering the guest.
        UPDATE_APIC = 5,
        /// Leave the halted state (no interrupt needed).
        UNHALT = 6,
        /// Requests for this EMT are queued.
        REQUEST = 7,
        /// A debugger event is pending for this vCPU.
        DBGF = 8,
        /// The guest TLB must be flushed.
        TLB_FLUSH = 9,
        /// The shadow/guest CR3 must be resynced (global pages included).
        PGM_SYNC_CR3 = 10,
        /// The shadow/guest CR3 must be resynced (non-global pages only).
        PGM_SYNC_CR3_NON_GLOBAL = 11,
        /// Return to ring-3 (user space) as soon as possible.
        TO_R3 = 12,
    }
}

impl VmFf {
    /// Global flags that end a halt wait.
    pub const HALT_WAKE_MASK: VmFf = VmFf::ALL;
    /// Global flags that keep an EMT out of the guest.
    pub const GUEST_EXIT_MASK: VmFf = VmFf::ALL;
}

impl CpuFf {
    /// Per-vCPU flags that end a halt wait.
    pub const HALT_WAKE_MASK: CpuFf = CpuFf(
        CpuFf::INTERRUPT_APIC.0
            | CpuFf::INTERRUPT_PIC.0
            | CpuFf::TIMER.0
            | CpuFf::INTERRUPT_NMI.0
            | CpuFf::INTERRUPT_SMI.0
            | CpuFf::UPDATE_APIC.0
            | CpuFf::UNHALT.0
            | CpuFf::REQUEST.0
            | CpuFf::DBGF.0,
    );
    /// Per-vCPU flags that keep an EMT out of the guest.
    pub const GUEST_EXIT_MASK: CpuFf = CpuFf::ALL;
}
