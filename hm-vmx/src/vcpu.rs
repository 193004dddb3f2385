//! A virtual CPU: register state and the run call.

use std::sync::Arc;

use kvm_bindings::{
    KVM_EXIT_IO_IN, KVM_EXIT_MEMORY_FAULT, KVM_MAX_CPUID_ENTRIES, kvm_debugregs, kvm_fpu,
    kvm_guest_debug, kvm_guest_debug_arch, kvm_lapic_state, kvm_mp_state, kvm_regs, kvm_sregs,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use stam::Profile;

use crate::entry_check::{EntryGate, EntryStage};
use crate::error::{Result, ioctl};
use iom::Data;

use crate::exit::{DebugExit, Exit, InternalError, IoAccess, MmioAccess};
use crate::stats::ExitStats;
use crate::tr_busy::TrReport;
use crate::types::Cpuid;

/// General-purpose registers, RIP and RFLAGS (KVM's layout).
pub type Regs = kvm_regs;
/// Segment, control and descriptor-table registers and EFER (KVM's layout).
pub type Sregs = kvm_sregs;
/// DR0–DR3, DR6 and DR7 (KVM's layout).
pub type DebugRegs = kvm_debugregs;
/// x87 and SSE state (KVM's layout).
pub type Fpu = kvm_fpu;
/// The in-kernel local APIC's registers.
pub type LapicState = kvm_lapic_state;

/// A vCPU's state at power-on: what a reset (INIT) puts back.
#[derive(Clone)]
pub struct CpuSnapshot {
    regs: Regs,
    sregs: Sregs,
    fpu: Fpu,
    /// Multi-processor state and local APIC, with an in-kernel irqchip.
    apic: Option<(kvm_mp_state, LapicState)>,
}

/// A virtual CPU created by [`Vm::create_vcpu`](crate::Vm::create_vcpu).
///
/// It starts in the x86 reset state: real mode, `CS` selector `0xf000` with
/// base `0xffff0000`, `RIP` `0xfff0`.
pub struct Vcpu {
    fd: VcpuFd,
    state: VcpuState,
    exits: Arc<ExitStats>,
    in_guest: Profile,
    /// The last run ended in an I/O or MMIO exit whose instruction KVM
    /// completes on the next `KVM_RUN`.
    io_pending: bool,
}

impl Vcpu {
    pub(crate) fn new(
        fd: VcpuFd,
        state: VcpuState,
        exits: Arc<ExitStats>,
        in_guest: Profile,
    ) -> Self {
        Vcpu {
            fd,
            state,
            exits,
            in_guest,
            io_pending: false,
        }
    }

    /// The vCPU's index (and initial APIC id).
    pub fn id(&self) -> u32 {
        self.state.id
    }

    /// The vCPU's register state, also reachable through clones of the
    /// returned handle from other threads.
    pub fn state(&self) -> &VcpuState {
        &self.state
    }

    /// Runs guest code until the next exit that needs the VMM.
    ///
    /// One `KVM_RUN` ioctl and nothing else: the I/O and MMIO paths make no
    /// further system call. With [entry checks](Vcpu::set_entry_checks) on,
    /// the first run and the first after a register write check the guest
    /// state first and fail with [`Error::EntryState`](crate::Error::EntryState)
    /// instead of entering when it breaks a VM-entry rule; a failing
    /// `KVM_RUN` whose state breaks a rule fails the same way.
    pub fn run(&mut self) -> Result<Exit<'_>> {
        if self.state.entry.due() {
            self.state.pre_entry_check()?;
        }
        self.io_pending = false;
        let exit =
            enter(&mut self.fd, &self.in_guest).map_err(|e| self.state.explain_run_failure(e))?;
        self.io_pending = matches!(exit, Exit::Io(_) | Exit::Mmio(_));
        self.exits.count(&exit);
        Ok(exit)
    }

    /// Whether the last [`run`](Vcpu::run) ended in an I/O or MMIO exit
    /// whose instruction is not complete yet: KVM stores an `in`'s or MMIO
    /// read's value into its register and moves RIP past the instruction
    /// only on the next `KVM_RUN`, so the registers read until then are
    /// those before the instruction (see
    /// [`VirtualCpu::complete_pending_io`](crate::VirtualCpu::complete_pending_io)).
    pub fn io_pending(&self) -> bool {
        self.io_pending
    }

    pub(crate) fn run_page(&mut self) -> &mut kvm_bindings::kvm_run {
        self.fd.get_kvm_run()
    }

    /// Sets or clears `immediate_exit`: while set, `run` returns
    /// [`Exit::Interrupted`] without entering the guest.
    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }
}

/// A handle on a vCPU's register state that any thread may hold (it uses its
/// own duplicate of the vCPU file descriptor).
///
/// KVM serialises these calls with `KVM_RUN`: made while the vCPU runs guest
/// code, they wait until it exits, so call them from the vCPU's EMT or while
/// it is stopped.
#[derive(Clone)]
pub struct VcpuState {
    fd: Arc<VcpuFd>,
    id: u32,
    pub(crate) entry: Arc<EntryGate>,
    tr: TrReport,
}

impl VcpuState {
    /// Wraps vCPU `id`'s descriptor; probes how its KVM reports TR (see
    /// [`TrReport`]), so call it before the vCPU runs.
    pub(crate) fn new(fd: VcpuFd, id: u32, entry: Arc<EntryGate>) -> Result<Self> {
        let tr = TrReport::probe(&fd)?;
        Ok(VcpuState {
            fd: Arc::new(fd),
            id,
            entry,
            tr,
        })
    }

    /// The vCPU's KVM file descriptor (this handle's duplicate).
    pub(crate) fn kvm_fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The vCPU's index.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Reads the general-purpose registers, RIP and RFLAGS.
    pub fn regs(&self) -> Result<Regs> {
        self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))
    }

    /// Queues a non-maskable interrupt for the vCPU (`KVM_NMI`; needs the
    /// in-kernel irqchip): the guest takes it before its next instruction
    /// unless NMIs are blocked.
    pub fn inject_nmi(&self) -> Result<()> {
        self.fd.nmi().map_err(ioctl("KVM_NMI"))
    }

    /// Writes the general-purpose registers, RIP and RFLAGS. When KVM
    /// refuses them and they break a VM-entry rule, the error names it.
    pub fn set_regs(&self, regs: &Regs) -> Result<()> {
        match self.fd.set_regs(regs) {
            Ok(()) => {
                self.entry.state_written();
                Ok(())
            }
            Err(e) => Err(self.explain_write_failure(
                EntryStage::SetRegs,
                "KVM_SET_REGS",
                |st| st.regs = *regs,
                e,
            )),
        }
    }

    /// Reads segment, control and descriptor-table registers and EFER.
    pub fn sregs(&self) -> Result<Sregs> {
        self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))
    }

    /// Writes segment, control and descriptor-table registers and EFER, as
    /// [`sregs`](VcpuState::sregs) reads them: KVM then holds what a read
    /// saw (on AMD-V, TR's busy bit that KVM adds to what it reads is not
    /// written into the guest's state). When KVM refuses
    /// them and they break a VM-entry rule, the error names it.
    pub fn set_sregs(&self, sregs: &Sregs) -> Result<()> {
        match self.fd.set_sregs(&self.tr.to_kvm(sregs)) {
            Ok(()) => {
                self.entry.state_written();
                Ok(())
            }
            Err(e) => Err(self.explain_write_failure(
                EntryStage::SetSregs,
                "KVM_SET_SREGS",
                |st| st.sregs = *sregs,
                e,
            )),
        }
    }

    /// Reads DR0–DR3, DR6 and DR7.
    pub fn debug_regs(&self) -> Result<DebugRegs> {
        self.fd.get_debug_regs().map_err(ioctl("KVM_GET_DEBUGREGS"))
    }

    /// Reads the x87 and SSE state.
    pub fn fpu(&self) -> Result<Fpu> {
        self.fd.get_fpu().map_err(ioctl("KVM_GET_FPU"))
    }

    /// Writes the x87 and SSE state.
    pub fn set_fpu(&self, fpu: &Fpu) -> Result<()> {
        self.fd.set_fpu(fpu).map_err(ioctl("KVM_SET_FPU"))
    }

    /// The CPUID leaves this vCPU was given (`KVM_GET_CPUID2`), as set by
    /// [`set_cpuid`](VcpuState::set_cpuid).
    pub fn cpuid(&self) -> Result<Cpuid> {
        self.fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_CPUID2"))
    }

    /// Loads the guest-debug state (`KVM_SET_GUEST_DEBUG`): `control` is the
    /// `KVM_GUESTDBG_*` flags word, `debugreg` DR0–DR3 in 0..4 and DR7 in 7.
    pub fn set_guest_debug(&self, control: u32, debugreg: [u64; 8]) -> Result<()> {
        let dbg = kvm_guest_debug {
            control,
            pad: 0,
            arch: kvm_guest_debug_arch { debugreg },
        };
        self.fd
            .set_guest_debug(&dbg)
            .map_err(ioctl("KVM_SET_GUEST_DEBUG"))
    }

    /// Captures the state a reset must restore (`with_apic`: the VM has an
    /// in-kernel irqchip, so MP state and local APIC are part of it).
    pub fn snapshot(&self, with_apic: bool) -> Result<CpuSnapshot> {
        let apic = if with_apic {
            let mp = self.fd.get_mp_state().map_err(ioctl("KVM_GET_MP_STATE"))?;
            let lapic = self.fd.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
            Some((mp, lapic))
        } else {
            None
        };
        Ok(CpuSnapshot {
            regs: self.regs()?,
            sregs: self.sregs()?,
            fpu: self.fd.get_fpu().map_err(ioctl("KVM_GET_FPU"))?,
            apic,
        })
    }

    /// Puts back a state captured by [`snapshot`](VcpuState::snapshot).
    pub fn restore(&self, snapshot: &CpuSnapshot) -> Result<()> {
        if let Some((mp, lapic)) = &snapshot.apic {
            self.fd.set_lapic(lapic).map_err(ioctl("KVM_SET_LAPIC"))?;
            self.fd
                .set_mp_state(*mp)
                .map_err(ioctl("KVM_SET_MP_STATE"))?;
        }
        self.fd
            .set_fpu(&snapshot.fpu)
            .map_err(ioctl("KVM_SET_FPU"))?;
        self.set_sregs(&snapshot.sregs)?;
        self.set_regs(&snapshot.regs)
    }
}

/// One `KVM_RUN`, timed, and its exit decoded; a failing `KVM_RUN`
/// returns KVM's error for the caller to explain.
fn enter<'a>(
    fd: &'a mut VcpuFd,
    in_guest: &Profile,
) -> std::result::Result<Exit<'a>, kvm_ioctls::Error> {
    let timer = in_guest.start();
    let result = fd.run();
    drop(timer);
    // Exits that carry data are rebuilt from the run page after the
    // match, so that the returned slices borrow `self` only once.
    let exit: Exit<'static> = match result {
        Ok(VcpuExit::IoIn(..) | VcpuExit::IoOut(..)) => return Ok(io_exit(fd)),
        Ok(VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..)) => return Ok(mmio_exit(fd)),
        Ok(VcpuExit::InternalError) => return Ok(internal_error(fd)),
        Ok(VcpuExit::Hlt) => Exit::Hlt,
        Ok(VcpuExit::Shutdown) => Exit::Shutdown,
        Ok(VcpuExit::Debug(arch)) => Exit::Debug(DebugExit {
            exception: arch.exception,
            rip: arch.pc,
            dr6: arch.dr6,
            dr7: arch.dr7,
        }),
        Ok(VcpuExit::FailEntry(hardware_reason, cpu)) => Exit::FailEntry {
            hardware_reason,
            cpu,
        },
        Ok(VcpuExit::Intr) => interrupted(fd),
        Ok(VcpuExit::IrqWindowOpen) => Exit::InterruptWindow,
        Ok(VcpuExit::SystemEvent(kind, _)) => Exit::SystemEvent { kind },
        Ok(VcpuExit::MemoryFault { .. }) => Exit::Other {
            kvm_reason: KVM_EXIT_MEMORY_FAULT,
        },
        Ok(_) => {
            return Ok(Exit::Other {
                kvm_reason: fd.get_kvm_run().exit_reason,
            });
        }
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => interrupted(fd),
        Err(e) => return Err(e),
    };
    Ok(exit)
}

/// Decodes a `KVM_EXIT_MMIO` from the run page.
fn mmio_exit(fd: &mut VcpuFd) -> Exit<'_> {
    let run = fd.get_kvm_run();
    // SAFETY: the exit reason is KVM_EXIT_MMIO, so the kernel filled the
    // `mmio` member of the union.
    let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
    let len = (mmio.len as usize).min(mmio.data.len());
    let data = if mmio.is_write != 0 {
        Data::Write(&mmio.data[..len])
    } else {
        Data::Read(&mut mmio.data[..len])
    };
    Exit::Mmio(MmioAccess {
        addr: mmio.phys_addr,
        data,
    })
}

/// Decodes a `KVM_EXIT_IO` from the run page, keeping the access size
/// that kvm-ioctls folds away.
fn io_exit(fd: &mut VcpuFd) -> Exit<'_> {
    let run = fd.get_kvm_run();
    // SAFETY: the exit reason is KVM_EXIT_IO, so the kernel filled the
    // `io` member of the union.
    let io = unsafe { run.__bindgen_anon_1.io };
    let len = io.size as usize * io.count as usize;
    let base = (run as *mut kvm_bindings::kvm_run).cast::<u8>();
    // SAFETY: the kernel places `len` bytes of I/O data at `data_offset`
    // inside the run mapping, which stays mapped for as long as the vCPU
    // lives; the returned slice borrows the vCPU mutably, so nothing else
    // can touch the run page while it exists.
    let data = unsafe { std::slice::from_raw_parts_mut(base.add(io.data_offset as usize), len) };
    let data = if u32::from(io.direction) == KVM_EXIT_IO_IN {
        Data::Read(data)
    } else {
        Data::Write(data)
    };
    Exit::Io(IoAccess {
        port: io.port,
        size: io.size,
        data,
    })
}

fn internal_error(fd: &mut VcpuFd) -> Exit<'_> {
    let run = fd.get_kvm_run();
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so the kernel
    // filled the `internal` member of the union.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    Exit::InternalError(InternalError::new(internal.suberror, &internal.data[..n]))
}

/// An interrupted entry: a kick may have set `immediate_exit`; clear it so
/// that the next entry runs the guest.
fn interrupted(fd: &mut VcpuFd) -> Exit<'static> {
    fd.set_kvm_immediate_exit(0);
    Exit::Interrupted
}
