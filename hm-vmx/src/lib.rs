//! Hardware-assisted execution backend with VT-x semantics over KVM.
//!
//! `hm-vmx` runs guests through Linux KVM and reports what happens the way a
//! VT-x VMM sees it: every exit carries its VMX basic exit reason. It is the
//! only crate of the workspace that talks to KVM; nothing it exports is a
//! raw KVM descriptor.
//!
//! An exit's data is an [`iom::Data`] borrowing the vCPU's run page: the
//! bytes of a guest write, or the buffer of a read the VMM fills. A VMM
//! drives a vCPU through the [`VirtualCpu`] trait, which
//! [`testing::ScriptedVcpu`] also implements by replaying a list of exits,
//! so exit handling can be tested without `/dev/kvm`.
//!
//! Guest states are checked against the VT-x VM-entry rules of the
//! [`vmx`] model: before entering (see [`Vcpu::set_entry_checks`], on by
//! default in debug builds), when KVM refuses a state, and on demand with
//! [`VcpuState::diagnose_entry_failure`] after a failed entry.
//!
//! ```no_run
//! use hm_vmx::{Exit, Hypervisor};
//!
//! let hv = Hypervisor::open()?;
//! let vm = hv.create_vm()?;
//! let mut vcpu = vm.create_vcpu(0)?;
//! // ... map guest memory with `vm.set_memory_slot`, then:
//! match vcpu.run()? {
//!     Exit::Io(io) => println!("port {:#x}: {:?}", io.port, io.data),
//!     other => println!("exit: {}", other.name()),
//! }
//! # Ok::<(), hm_vmx::Error>(())
//! ```

mod clock_state;
mod cpu_state;
mod cpuid;
mod entry_check;
mod error;
mod exit;
mod host_caps;
mod hypervisor;
mod irqfd;
mod kick;
mod kvm_state;
mod lapic;
mod mp_check;
mod mp_state;
mod msrs;
mod routing;
mod stats;
pub mod testing;
mod tr_busy;
mod types;
mod vcpu;
mod virtual_cpu;
mod vm;
pub mod vmx;

pub use clock_state::ClockState;
pub use cpu_state::{CpuState, IrqchipState, PitState};
pub use entry_check::{EntryCheckFailure, EntryChecker, EntryDiagnosis, EntryStage};
pub use error::{Error, Result};
pub use exit::{DebugExit, Exit, InternalError, IoAccess, MmioAccess};
pub use hypervisor::{CAPABILITIES, Capability, Hypervisor};
pub use kick::{KickBinding, Kicker, kick_signal};
pub use kvm_state::SegmentLine;
pub use lapic::LapicRegisters;
pub use mp_state::MpState;
pub use msrs::MsrValue;
pub use routing::{FIRST_MSI_GSI, MsiMessage};
pub use stats::ExitStats;
pub use types::{Cpuid, CpuidEntry, DescriptorTable, MAX_CPUID_ENTRIES, Segment};
pub use vcpu::{CpuSnapshot, DebugRegs, Fpu, LapicState, Regs, Sregs, Vcpu, VcpuState};
pub use virtual_cpu::VirtualCpu;
pub use vm::{MemorySlot, Vm};

// The README's example runs as a doctest, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
