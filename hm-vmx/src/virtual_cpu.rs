//! The vCPU an EMT drives, as a trait: hm-vmx's KVM [`Vcpu`] implements it,
//! and so does [`ScriptedVcpu`](crate::testing::ScriptedVcpu), which replays
//! a list of exits so that exit handling can be tested without `/dev/kvm`.

use crate::error::Result;
use crate::exit::Exit;
use crate::kick::{KickBinding, Kicker};
use crate::vcpu::{Regs, Vcpu};

/// What an EMT needs of its vCPU: run it to the next exit, stop it from
/// other threads, its registers, and events to inject.
///
/// ```
/// use hm_vmx::testing::{ScriptedExit, ScriptedVcpu};
/// use hm_vmx::{Exit, VirtualCpu};
///
/// fn count_halts(vcpu: &mut impl VirtualCpu) -> hm_vmx::Result<usize> {
///     let mut halts = 0;
///     while let Exit::Hlt = vcpu.run()? {
///         halts += 1;
///     }
///     Ok(halts)
/// }
///
/// let mut vcpu = ScriptedVcpu::new(0, [ScriptedExit::Hlt, ScriptedExit::Hlt, ScriptedExit::Shutdown]);
/// assert_eq!(count_halts(&mut vcpu)?, 2);
/// # Ok::<(), hm_vmx::Error>(())
/// ```
pub trait VirtualCpu {
    /// The vCPU's index (and initial APIC id).
    fn id(&self) -> u32;

    /// Runs guest code until the next exit that needs the VMM. The data of
    /// an `in` or an MMIO read that the caller fills reaches the guest on
    /// the next run.
    fn run(&mut self) -> Result<Exit<'_>>;

    /// Sets or clears `immediate_exit`: while set, [`run`](Self::run)
    /// returns [`Exit::Interrupted`] without running guest code (after
    /// completing a pending I/O or MMIO read).
    fn set_immediate_exit(&mut self, on: bool);

    /// Whether the last exit was an I/O or MMIO access whose instruction
    /// completes only on the next run (see [`Vcpu::io_pending`]).
    fn io_pending(&self) -> bool;

    /// Completes the instruction of the last I/O or MMIO exit without
    /// running further guest code: one run with `immediate_exit` set, in
    /// which KVM stores the value of an `in` or MMIO read and moves RIP
    /// past the instruction. Call it before the vCPU's state is read from
    /// outside the run loop (a save, a teleport, a reset): otherwise the
    /// state has the instruction not executed yet, and a restored guest
    /// executes it again, accessing the device twice.
    ///
    /// `None` once the instruction is complete (at once, without a run,
    /// when nothing is pending). Completing it may need the VMM again (the
    /// next piece of a string I/O, a single step it ended): that exit is
    /// returned, to be handled as any other before calling again. After
    /// such an exit `immediate_exit` may still be set, and the next run
    /// returns [`Exit::Interrupted`] at once.
    ///
    /// ```
    /// use hm_vmx::testing::{ScriptedExit, ScriptedVcpu};
    /// use hm_vmx::VirtualCpu;
    ///
    /// let mut vcpu = ScriptedVcpu::new(0, [ScriptedExit::In { port: 0x60, size: 1, count: 1 }]);
    /// assert!(vcpu.complete_pending_io()?.is_none()); // nothing ran yet
    /// vcpu.run()?;
    /// assert!(vcpu.io_pending());
    /// assert!(vcpu.complete_pending_io()?.is_none());
    /// assert!(!vcpu.io_pending());
    /// assert_eq!((vcpu.runs(), vcpu.answers().len()), (2, 1));
    /// # Ok::<(), hm_vmx::Error>(())
    /// ```
    fn complete_pending_io(&mut self) -> Result<Option<Exit<'_>>> {
        if !self.io_pending() {
            return Ok(None);
        }
        self.set_immediate_exit(true);
        match self.run()? {
            Exit::Interrupted => Ok(None),
            exit => Ok(Some(exit)),
        }
    }

    /// Binds the vCPU to the calling thread for kicks (see
    /// [`Vcpu::bind_kicks`]).
    fn bind_kicks(&mut self) -> Result<(Kicker, KickBinding)>;

    /// The general-purpose registers and RIP.
    fn regs(&self) -> Result<Regs>;

    /// Writes the general-purpose registers and RIP.
    fn set_regs(&mut self, regs: &Regs) -> Result<()>;

    /// Queues a non-maskable interrupt, taken before the next guest
    /// instruction unless NMIs are blocked.
    fn inject_nmi(&mut self) -> Result<()>;

    /// Whether the vCPU is halted with interrupts disabled and no NMI
    /// pending (see [`VcpuState::halted_with_interrupts_off`](crate::VcpuState::halted_with_interrupts_off)).
    fn halted_with_interrupts_off(&self) -> Result<bool>;

    /// Why the last entry failed, explained against the VT-x entry rules.
    fn diagnose_entry_failure(&self) -> String;
}

impl VirtualCpu for Vcpu {
    fn id(&self) -> u32 {
        Vcpu::id(self)
    }

    fn run(&mut self) -> Result<Exit<'_>> {
        Vcpu::run(self)
    }

    fn set_immediate_exit(&mut self, on: bool) {
        Vcpu::set_immediate_exit(self, on);
    }

    fn io_pending(&self) -> bool {
        Vcpu::io_pending(self)
    }

    fn bind_kicks(&mut self) -> Result<(Kicker, KickBinding)> {
        Vcpu::bind_kicks(self)
    }

    fn regs(&self) -> Result<Regs> {
        self.state().regs()
    }

    fn set_regs(&mut self, regs: &Regs) -> Result<()> {
        self.state().set_regs(regs)
    }

    fn inject_nmi(&mut self) -> Result<()> {
        self.state().inject_nmi()
    }

    fn halted_with_interrupts_off(&self) -> Result<bool> {
        self.state().halted_with_interrupts_off()
    }

    fn diagnose_entry_failure(&self) -> String {
        self.state().diagnose_entry_failure().to_string()
    }
}
