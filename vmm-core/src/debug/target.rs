//! The VM as a `dbgf` debug target.

use super::page_traps::{PageTraps, handler_runs};
use super::registers::{fpu_eq, from_registers, to_registers};
use super::*;
use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::sync::vmstate::VmState;
use dbgf::debugger::{
    DebugTarget, Debugger, GuestDebug, PageTrap, Registers, ResumeScope, StopCause, StopListener,
    TargetError, VcpuStop, stop_channel,
};
use pgm::paging::{Access, AccessKind, CpuFeatures, PagingState, Privilege, walk};
use std::sync::Arc;

/// What [`crate::Vm::new_debuggable`] hands to the debugger: the target, a
/// debugger core wired to the EMTs' I/O-port check, and the stop listener.
pub struct DebugAttachment {
    /// The VM as a debug target.
    pub target: VmDebugTarget,
    /// The debugger core (its I/O watch is the one the EMTs check).
    pub debugger: Debugger,
    /// Where the EMTs report stops.
    pub stops: StopListener,
}

/// Attaches a new debugger to `machine`.
pub(crate) fn attach(machine: &Arc<Machine>, features: CpuFeatures) -> Result<DebugAttachment> {
    let (notifier, stops) = stop_channel();
    let debugger = Debugger::new();
    machine
        .debug
        .attach(notifier, debugger.io_watch(), debugger.mem_watch())?;
    Ok(DebugAttachment {
        target: VmDebugTarget {
            machine: Arc::clone(machine),
            features,
            data_breakpoints: host_delivers_data_breakpoints(),
            traps: PageTraps::default(),
        },
        debugger,
        stops,
    })
}

/// The VM as a [`DebugTarget`]: registers through the vCPUs' state handles,
/// memory through PGM's physical map, translations through PGM's page walker.
pub struct VmDebugTarget {
    machine: Arc<Machine>,
    features: CpuFeatures,
    data_breakpoints: bool,
    traps: PageTraps,
}

/// Whether the host's KVM delivers DR7 data breakpoints to the debugger.
/// Hardware KVM (VT-x, AMD-V) does; the kvm_pvm software layer emulates
/// guest CPL0 code and never reports them. It is recognised by its module
/// in sysfs, as `hm`'s backend report does.
fn host_delivers_data_breakpoints() -> bool {
    !std::path::Path::new("/sys/module/kvm_pvm").exists()
}

impl std::fmt::Debug for VmDebugTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmDebugTarget")
            .field("cpus", &self.machine.cpus())
            .finish_non_exhaustive()
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> TargetError {
    TargetError::Other(Box::new(e))
}

impl VmDebugTarget {
    fn vcpu(&self, cpu: u32) -> std::result::Result<&hm_vmx::VcpuState, TargetError> {
        self.machine
            .vcpu_states
            .get(cpu as usize)
            .ok_or(TargetError::InvalidCpu(cpu))
    }
}

impl DebugTarget for VmDebugTarget {
    fn cpu_count(&self) -> u32 {
        self.machine.cpus()
    }

    fn read_regs(&mut self, cpu: u32) -> std::result::Result<Registers, TargetError> {
        let v = self.vcpu(cpu)?;
        let regs = v.regs().map_err(other)?;
        let sregs = v.sregs().map_err(other)?;
        let fpu = v.fpu().map_err(other)?;
        Ok(to_registers(&regs, &sregs, &fpu))
    }

    fn write_regs(&mut self, cpu: u32, r: &Registers) -> std::result::Result<(), TargetError> {
        let v = self.vcpu(cpu)?;
        let (mut regs, mut sregs, mut fpu) = (
            v.regs().map_err(other)?,
            v.sregs().map_err(other)?,
            v.fpu().map_err(other)?,
        );
        let (old_sregs, old_fpu) = (sregs, fpu);
        from_registers(r, &mut regs, &mut sregs, &mut fpu);
        v.set_regs(&regs).map_err(other)?;
        if sregs != old_sregs {
            v.set_sregs(&sregs).map_err(other)?;
        }
        if !fpu_eq(&fpu, &old_fpu) {
            v.set_fpu(&fpu).map_err(other)?;
        }
        Ok(())
    }

    fn read_phys(&mut self, addr: u64, buf: &mut [u8]) -> std::result::Result<(), TargetError> {
        let len = buf.len() as u64;
        self.machine
            .memory
            .phys()
            .read()
            .read(addr, buf)
            .map_err(|_| TargetError::PhysAccess { addr, len })
    }

    fn write_phys(&mut self, addr: u64, data: &[u8]) -> std::result::Result<(), TargetError> {
        let len = data.len() as u64;
        self.machine
            .memory
            .phys()
            .read()
            // Past ROM write protection: an int3 in ROM must reach the page
            // the guest executes from (and come out again on removal).
            .write_past_rom_protection(addr, data)
            .map_err(|_| TargetError::PhysAccess { addr, len })
    }

    fn translate(&mut self, cpu: u32, vaddr: u64) -> std::result::Result<u64, TargetError> {
        let sregs = self.vcpu(cpu)?.sregs().map_err(other)?;
        let phys = self.machine.memory.phys().read();
        let state = PagingState::new(self.features)
            .with_cr0(sregs.cr0)
            .with_cr3(sregs.cr3)
            .with_cr4(sregs.cr4)
            .with_efer(sregs.efer)
            .with_a20(phys.a20_enabled());
        // The debugger sees every mapped page, whatever its rights.
        let access = Access::new(AccessKind::Read, Privilege::Supervisor { ac: true });
        walk(&state, &*phys, vaddr, access)
            .map(|t| t.gpa)
            .map_err(|_| TargetError::Unmapped { addr: vaddr })
    }

    fn delivers_data_breakpoints(&self) -> bool {
        self.data_breakpoints
    }

    /// Registers the `pgm` handlers for `traps` and updates the KVM slots;
    /// only while the debugger has the VM halted.
    fn set_page_traps(&mut self, traps: &[PageTrap]) -> std::result::Result<(), TargetError> {
        let m = &self.machine;
        if !m.debug.is_halted() {
            return Err(other(Error::Config(
                "page traps change only while the debugger has the VM halted".into(),
            )));
        }
        let mut map = m.memory.phys().write();
        let runs = handler_runs(traps, &map.ranges())?;
        self.traps.replace(&mut map, runs).map_err(other)?;
        drop(map);
        m.memory.sync_slots(&m.saved.backend).map_err(other)
    }

    fn set_guest_debug(
        &mut self,
        cpu: u32,
        dbg: &GuestDebug,
    ) -> std::result::Result<(), TargetError> {
        self.vcpu(cpu)?
            .set_guest_debug(dbg.control(), dbg.debugreg())
            .map_err(other)
    }

    fn resume(&mut self, scope: ResumeScope) -> std::result::Result<(), TargetError> {
        let m = &self.machine;
        let scope = match scope {
            ResumeScope::All => Scope::All,
            ResumeScope::Only(cpu) => {
                self.vcpu(cpu)?;
                Scope::Only(cpu)
            }
        };
        let mut attached = m.debug.attached.lock();
        let a = attached
            .as_mut()
            .ok_or_else(|| other(Error::Config("no debugger attached".into())))?;
        match m.state.state() {
            // Not powered on yet: the scope applies from power-on.
            VmState::Created | VmState::PoweringOn => {}
            VmState::Debugging if scope == Scope::All => {
                m.state.set(VmState::Running).map_err(other)?;
            }
            VmState::Debugging => {}
            s => {
                return Err(other(Error::Config(format!(
                    "cannot resume a VM in state {s}"
                ))));
            }
        }
        a.scope = scope;
        drop(attached);
        for cpu in 0..m.cpus() {
            m.ffs.unhalt(cpu).map_err(other)?;
        }
        Ok(())
    }

    fn halt(&mut self) -> std::result::Result<(), TargetError> {
        let m = &self.machine;
        if !m.debug.claim_stop(&m.state) {
            // Halted already, or a stop raced with us and is being reported.
            return Ok(());
        }
        m.wait_out_of_guest(None).map_err(other)?;
        m.debug.notify(VcpuStop {
            cpu: 0,
            cause: StopCause::Halted,
        });
        Ok(())
    }
}
