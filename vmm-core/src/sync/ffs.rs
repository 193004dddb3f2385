//! Forced-action flags: global (`VM_FF_*`) and per vCPU (`VMCPU_FF_*`).
//!
//! A forced action is a bit that tells an EMT (emulation thread) to leave the
//! guest and do something: process requests, join a rendezvous, reset,
//! suspend, service timers, ... [`ForcedActions`] holds the bits of one VM,
//! the execution state of every EMT and a [`Kick`] hook, and delivers every
//! set bit to the EMT promptly.
//!
//! # The no-lost-kick protocol
//!
//! Each EMT publishes an [`ExecState`]. Before running guest code it calls
//! [`ForcedActions::enter_guest`], which stores `InGuest` and *then* checks
//! the flags (both sequentially consistent). A setter stores the flag and
//! *then* reads the EMT's state: if it is `InGuest` the setter calls
//! [`Kick::kick`], if it is `Halted` it wakes the EMT's halt event. Because
//! both sides write first and read second, at least one of them sees the
//! other: either the EMT sees the flag and does not enter, or the setter sees
//! `InGuest` and kicks. The kick must therefore also work when it arrives
//! *before* the EMT is really in the guest; with KVM this is done by setting
//! `kvm_run.immediate_exit` before signalling the thread (the EMT clears it
//! after the run returns).
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use vmm_core::sync::ffs::{CpuFf, ForcedActions, Kick, VmFf};
//!
//! #[derive(Default)]
//! struct CountKicks(AtomicU32);
//! impl Kick for CountKicks {
//!     fn kick(&self, _cpu: u32) {
//!         self.0.fetch_add(1, Ordering::SeqCst);
//!     }
//! }
//!
//! let kicks = Arc::new(CountKicks::default());
//! let ffs = ForcedActions::new(2, kicks.clone()).unwrap();
//! // EMT 1 enters the guest ...
//! let guest = ffs.enter_guest(1).unwrap().expect("nothing pending");
//! // ... another thread posts a request for it: EMT 1 is kicked out.
//! ffs.set_cpu(1, CpuFf::REQUEST).unwrap();
//! assert_eq!(kicks.0.load(Ordering::SeqCst), 1);
//! drop(guest); // back from KVM_RUN
//! // While the flag is pending the EMT does not go back into the guest.
//! assert!(ffs.enter_guest(1).unwrap().is_none());
//! assert!(ffs.test_and_clear_cpu(1, CpuFf::REQUEST).unwrap());
//! ffs.set_vm(VmFf::EMT_RENDEZVOUS);
//! let mut text = String::new();
//! ffs.format_fflags(&mut text).unwrap();
//! assert!(text.contains("VM_FF_EMT_RENDEZVOUS"));
//! ```

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use thiserror::Error;

use crate::sync::halt::{HaltEvent, WaitOutcome};

mod flags;

pub use flags::{CpuFf, VmFf};

/// A vCPU index (VirtualBox's `VMCPUID`).
pub type CpuId = u32;

/// The largest number of vCPUs a VM may have.
pub const MAX_CPUS: u32 = 1024;

/// Leaves the guest promptly: implemented by the execution backend (a signal
/// to the EMT thread plus KVM's `immediate_exit`).
///
/// Called from any thread, possibly for an EMT that has already left the
/// guest or is just about to enter it; a kick arriving early must still make
/// the next guest entry return at once. Must not block.
pub trait Kick: Send + Sync {
    /// Makes `cpu`'s EMT leave the guest.
    fn kick(&self, cpu: CpuId);
}

/// What an EMT is doing, as far as forced-action delivery is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecState {
    /// In VMM code; it checks the flags before entering the guest or halting.
    Busy,
    /// Running guest code (or about to): needs a kick.
    InGuest,
    /// Sleeping in [`ForcedActions::halt_wait`]: needs a wake-up.
    Halted,
}

const BUSY: u8 = 0;
const IN_GUEST: u8 = 1;
const HALTED: u8 = 2;

/// Errors of the forced-action API.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FfError {
    /// A VM needs between 1 and [`MAX_CPUS`] vCPUs.
    #[error("invalid vCPU count {0} (1..={MAX_CPUS})")]
    InvalidCpuCount(u32),
    /// The vCPU index is out of range.
    #[error("vCPU {cpu} does not exist (the VM has {count})")]
    InvalidCpu {
        /// The index given.
        cpu: CpuId,
        /// The VM's vCPU count.
        count: u32,
    },
    /// The calling thread already is an EMT.
    #[error("this thread already is EMT {cpu} of a VM")]
    AlreadyEmt {
        /// Which vCPU it serves.
        cpu: CpuId,
    },
    /// Another thread already is this vCPU's EMT.
    #[error("vCPU {0} already has an EMT")]
    CpuTaken(CpuId),
}

/// Why [`ForcedActions::halt_wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaltOutcome {
    /// A wake-up forced action is pending.
    ForcedAction,
    /// The timeout expired.
    TimedOut,
}

struct CpuSlot {
    ff: AtomicU64,
    exec: AtomicU8,
    has_emt: AtomicBool,
    halt: HaltEvent,
}

struct Inner {
    id: u64,
    vm_ff: AtomicU64,
    cpus: Box<[CpuSlot]>,
    kicker: Arc<dyn Kick>,
}

static NEXT_VM_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// `(vm id, cpu)` when this thread is an EMT.
    static CURRENT_EMT: Cell<Option<(u64, CpuId)>> = const { Cell::new(None) };
}

/// The forced-action flags and EMT execution states of one VM. Cheap to clone.
#[derive(Clone)]
pub struct ForcedActions {
    inner: Arc<Inner>,
}

impl fmt::Debug for ForcedActions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForcedActions")
            .field("vm", &self.vm())
            .field("cpus", &self.cpu_count())
            .finish()
    }
}

/// Marks the current thread as an EMT until dropped
/// (see [`ForcedActions::register_emt`]).
#[derive(Debug)]
pub struct EmtRegistration {
    ffs: ForcedActions,
    cpu: CpuId,
}

impl EmtRegistration {
    /// The vCPU this thread serves.
    pub fn cpu(&self) -> CpuId {
        self.cpu
    }
}

impl Drop for EmtRegistration {
    fn drop(&mut self) {
        CURRENT_EMT.with(|c| c.set(None));
        if let Some(slot) = self.ffs.inner.cpus.get(self.cpu as usize) {
            slot.has_emt.store(false, Ordering::SeqCst);
        }
    }
}

/// The EMT is in the guest until this is dropped
/// (see [`ForcedActions::enter_guest`]).
#[derive(Debug)]
pub struct InGuest<'a> {
    ffs: &'a ForcedActions,
    cpu: CpuId,
}

impl Drop for InGuest<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.ffs.inner.cpus.get(self.cpu as usize) {
            slot.exec.store(BUSY, Ordering::SeqCst);
        }
    }
}

impl ForcedActions {
    /// Flags for a VM with `cpu_count` vCPUs, kicking through `kicker`.
    pub fn new(cpu_count: u32, kicker: Arc<dyn Kick>) -> Result<Self, FfError> {
        if cpu_count == 0 || cpu_count > MAX_CPUS {
            return Err(FfError::InvalidCpuCount(cpu_count));
        }
        let cpus = (0..cpu_count)
            .map(|_| CpuSlot {
                ff: AtomicU64::new(0),
                exec: AtomicU8::new(BUSY),
                has_emt: AtomicBool::new(false),
                halt: HaltEvent::new(),
            })
            .collect();
        Ok(ForcedActions {
            inner: Arc::new(Inner {
                id: NEXT_VM_ID.fetch_add(1, Ordering::Relaxed),
                vm_ff: AtomicU64::new(0),
                cpus,
                kicker,
            }),
        })
    }

    /// The number of vCPUs.
    pub fn cpu_count(&self) -> u32 {
        self.inner.cpus.len() as u32
    }

    fn slot(&self, cpu: CpuId) -> Result<&CpuSlot, FfError> {
        self.inner
            .cpus
            .get(cpu as usize)
            .ok_or(FfError::InvalidCpu {
                cpu,
                count: self.cpu_count(),
            })
    }

    /// The pending global flags.
    pub fn vm(&self) -> VmFf {
        VmFf::from_bits_truncate(self.inner.vm_ff.load(Ordering::SeqCst))
    }

    /// Sets global flags and makes every EMT notice them.
    pub fn set_vm(&self, flags: VmFf) {
        self.inner.vm_ff.fetch_or(flags.bits(), Ordering::SeqCst);
        for cpu in 0..self.cpu_count() {
            self.notify_slot(cpu, &self.inner.cpus[cpu as usize]);
        }
    }

    /// Clears global flags.
    pub fn clear_vm(&self, flags: VmFf) {
        self.inner.vm_ff.fetch_and(!flags.bits(), Ordering::SeqCst);
    }

    /// Clears global flags, returning whether any of them was set.
    pub fn test_and_clear_vm(&self, flags: VmFf) -> bool {
        self.inner.vm_ff.fetch_and(!flags.bits(), Ordering::SeqCst) & flags.bits() != 0
    }

    /// The pending flags of `cpu`.
    pub fn cpu(&self, cpu: CpuId) -> Result<CpuFf, FfError> {
        Ok(CpuFf::from_bits_truncate(
            self.slot(cpu)?.ff.load(Ordering::SeqCst),
        ))
    }

    /// Sets flags of `cpu` and makes its EMT notice them (kick or wake).
    pub fn set_cpu(&self, cpu: CpuId, flags: CpuFf) -> Result<(), FfError> {
        let slot = self.slot(cpu)?;
        slot.ff.fetch_or(flags.bits(), Ordering::SeqCst);
        self.notify_slot(cpu, slot);
        Ok(())
    }

    /// Clears flags of `cpu`.
    pub fn clear_cpu(&self, cpu: CpuId, flags: CpuFf) -> Result<(), FfError> {
        self.slot(cpu)?
            .ff
            .fetch_and(!flags.bits(), Ordering::SeqCst);
        Ok(())
    }

    /// Clears flags of `cpu`, returning whether any of them was set.
    pub fn test_and_clear_cpu(&self, cpu: CpuId, flags: CpuFf) -> Result<bool, FfError> {
        let old = self
            .slot(cpu)?
            .ff
            .fetch_and(!flags.bits(), Ordering::SeqCst);
        Ok(old & flags.bits() != 0)
    }

    /// Whether any of `vm` or of `cpu`'s `per_cpu` flags is pending.
    pub fn is_pending(&self, cpu: CpuId, vm: VmFf, per_cpu: CpuFf) -> Result<bool, FfError> {
        let slot = self.slot(cpu)?;
        Ok(Self::pending_in(&self.inner, slot, vm, per_cpu))
    }

    fn pending_in(inner: &Inner, slot: &CpuSlot, vm: VmFf, per_cpu: CpuFf) -> bool {
        inner.vm_ff.load(Ordering::SeqCst) & vm.bits() != 0
            || slot.ff.load(Ordering::SeqCst) & per_cpu.bits() != 0
    }

    /// Makes `cpu`'s EMT re-check its flags: kicks it out of the guest or
    /// wakes it from a halt.
    pub fn notify_cpu(&self, cpu: CpuId) -> Result<(), FfError> {
        let slot = self.slot(cpu)?;
        self.notify_slot(cpu, slot);
        Ok(())
    }

    fn notify_slot(&self, cpu: CpuId, slot: &CpuSlot) {
        match slot.exec.load(Ordering::SeqCst) {
            IN_GUEST => self.inner.kicker.kick(cpu),
            HALTED => slot.halt.wake(),
            _ => {}
        }
    }

    /// Ends `cpu`'s halt without an interrupt (sets `VMCPU_FF_UNHALT`).
    pub fn unhalt(&self, cpu: CpuId) -> Result<(), FfError> {
        self.set_cpu(cpu, CpuFf::UNHALT)
    }

    /// What `cpu`'s EMT is doing.
    pub fn exec_state(&self, cpu: CpuId) -> Result<ExecState, FfError> {
        Ok(match self.slot(cpu)?.exec.load(Ordering::SeqCst) {
            IN_GUEST => ExecState::InGuest,
            HALTED => ExecState::Halted,
            _ => ExecState::Busy,
        })
    }

    /// Makes the calling thread the EMT of `cpu` until the returned guard is
    /// dropped. Requests and rendezvous use this to recognise EMTs.
    pub fn register_emt(&self, cpu: CpuId) -> Result<EmtRegistration, FfError> {
        let slot = self.slot(cpu)?;
        if let Some((_, cur)) = CURRENT_EMT.with(|c| c.get()) {
            return Err(FfError::AlreadyEmt { cpu: cur });
        }
        if slot.has_emt.swap(true, Ordering::SeqCst) {
            return Err(FfError::CpuTaken(cpu));
        }
        CURRENT_EMT.with(|c| c.set(Some((self.inner.id, cpu))));
        Ok(EmtRegistration {
            ffs: self.clone(),
            cpu,
        })
    }

    /// The vCPU whose EMT the calling thread is, if it is one of this VM's.
    pub fn current_cpu(&self) -> Option<CpuId> {
        match CURRENT_EMT.with(|c| c.get()) {
            Some((vm, cpu)) if vm == self.inner.id => Some(cpu),
            _ => None,
        }
    }

    /// Publishes that `cpu` enters the guest, unless a flag of
    /// [`VmFf::GUEST_EXIT_MASK`] / [`CpuFf::GUEST_EXIT_MASK`] is pending
    /// (then `None`: handle the flags first). Run the guest while holding the
    /// returned guard; dropping it marks the EMT busy again.
    pub fn enter_guest(&self, cpu: CpuId) -> Result<Option<InGuest<'_>>, FfError> {
        self.enter_guest_unless(cpu, VmFf::GUEST_EXIT_MASK, CpuFf::GUEST_EXIT_MASK)
    }

    /// [`Self::enter_guest`] with explicit masks of blocking flags.
    pub fn enter_guest_unless(
        &self,
        cpu: CpuId,
        vm: VmFf,
        per_cpu: CpuFf,
    ) -> Result<Option<InGuest<'_>>, FfError> {
        let slot = self.slot(cpu)?;
        slot.exec.store(IN_GUEST, Ordering::SeqCst);
        if Self::pending_in(&self.inner, slot, vm, per_cpu) {
            slot.exec.store(BUSY, Ordering::SeqCst);
            return Ok(None);
        }
        Ok(Some(InGuest { ffs: self, cpu }))
    }

    /// Sleeps (the guest executed HLT, or the VM is suspended) until a flag of
    /// [`VmFf::HALT_WAKE_MASK`] / [`CpuFf::HALT_WAKE_MASK`] is pending or
    /// `timeout` expires (`None`: no limit).
    pub fn halt_wait(&self, cpu: CpuId, timeout: Option<Duration>) -> Result<HaltOutcome, FfError> {
        self.halt_wait_for(cpu, VmFf::HALT_WAKE_MASK, CpuFf::HALT_WAKE_MASK, timeout)
    }

    /// [`Self::halt_wait`] with explicit masks of wake-up flags.
    pub fn halt_wait_for(
        &self,
        cpu: CpuId,
        vm: VmFf,
        per_cpu: CpuFf,
        timeout: Option<Duration>,
    ) -> Result<HaltOutcome, FfError> {
        let slot = self.slot(cpu)?;
        slot.exec.store(HALTED, Ordering::SeqCst);
        let outcome = slot
            .halt
            .wait(timeout, || Self::pending_in(&self.inner, slot, vm, per_cpu));
        slot.exec.store(BUSY, Ordering::SeqCst);
        Ok(match outcome {
            WaitOutcome::Condition => HaltOutcome::ForcedAction,
            WaitOutcome::TimedOut => HaltOutcome::TimedOut,
        })
    }

    /// Writes the `fflags` info text: the global flags, then each vCPU's
    /// flags and execution state, with flag names.
    pub fn format_fflags(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        let vm = self.vm();
        writeln!(out, "Global FFs: {:#010x} {}", vm.bits(), vm)?;
        for cpu in 0..self.cpu_count() {
            let slot = &self.inner.cpus[cpu as usize];
            let ff = CpuFf::from_bits_truncate(slot.ff.load(Ordering::SeqCst));
            let state = match slot.exec.load(Ordering::SeqCst) {
                IN_GUEST => "in-guest",
                HALTED => "halted",
                _ => "busy",
            };
            writeln!(out, "CPU {cpu} ({state}): {:#010x} {}", ff.bits(), ff)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
