//! A virtual CPU: register state and the run call.

use kvm_bindings::{KVM_EXIT_IO_IN, KVM_EXIT_MEMORY_FAULT, kvm_regs, kvm_sregs};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::entry_check::{EntryGate, EntryStage};
use crate::error::{Result, ioctl};
use crate::exit::{DebugExit, Exit, InternalError, IoAccess, IoData, MmioAccess, MmioData};

/// General-purpose registers, RIP and RFLAGS (KVM's layout).
pub type Regs = kvm_regs;
/// Segment, control and descriptor-table registers and EFER (KVM's layout).
pub type Sregs = kvm_sregs;

/// A virtual CPU created by [`Vm::create_vcpu`](crate::Vm::create_vcpu).
///
/// It starts in the x86 reset state: real mode, `CS` selector `0xf000` with
/// base `0xffff0000`, `RIP` `0xfff0`.
pub struct Vcpu {
    fd: VcpuFd,
    id: u32,
    pub(crate) entry: EntryGate,
}

impl Vcpu {
    pub(crate) fn new(fd: VcpuFd, id: u32, entry: EntryGate) -> Result<Self> {
        Ok(Vcpu { fd, id, entry })
    }

    /// The vCPU's index (and initial APIC id).
    pub fn id(&self) -> u32 {
        self.id
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
        if self.entry.due() {
            self.pre_entry_check()?;
        }
        // Exits that carry data are rebuilt from the run page after the
        // match, so that the returned slices borrow `self` only once.
        let exit: Exit<'static> = match self.fd.run() {
            Ok(VcpuExit::IoIn(..) | VcpuExit::IoOut(..)) => return Ok(self.io_exit()),
            Ok(VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..)) => return Ok(self.mmio_exit()),
            Ok(VcpuExit::InternalError) => return Ok(self.internal_error()),
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
            Ok(VcpuExit::Intr) => Exit::Interrupted,
            Ok(VcpuExit::IrqWindowOpen) => Exit::InterruptWindow,
            Ok(VcpuExit::SystemEvent(kind, _)) => Exit::SystemEvent { kind },
            Ok(VcpuExit::MemoryFault { .. }) => Exit::Other {
                kvm_reason: KVM_EXIT_MEMORY_FAULT,
            },
            Ok(_) => {
                return Ok(Exit::Other {
                    kvm_reason: self.fd.get_kvm_run().exit_reason,
                });
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
            Err(e) => return Err(self.explain_run_failure(e)),
        };
        Ok(exit)
    }

    /// Decodes a `KVM_EXIT_MMIO` from the run page.
    fn mmio_exit(&mut self) -> Exit<'_> {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_MMIO, so the kernel filled the
        // `mmio` member of the union.
        let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
        let len = (mmio.len as usize).min(mmio.data.len());
        let data = if mmio.is_write != 0 {
            MmioData::Write(&mmio.data[..len])
        } else {
            MmioData::Read(&mut mmio.data[..len])
        };
        Exit::Mmio(MmioAccess {
            addr: mmio.phys_addr,
            data,
        })
    }

    /// Decodes a `KVM_EXIT_IO` from the run page, keeping the access size
    /// that kvm-ioctls folds away.
    fn io_exit(&mut self) -> Exit<'_> {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_IO, so the kernel filled the
        // `io` member of the union.
        let io = unsafe { run.__bindgen_anon_1.io };
        let len = io.size as usize * io.count as usize;
        let base = (run as *mut kvm_bindings::kvm_run).cast::<u8>();
        // SAFETY: the kernel places `len` bytes of I/O data at `data_offset`
        // inside the run mapping, which stays mapped for as long as the vCPU
        // lives; the returned slice borrows `self` mutably, so nothing else
        // can touch the run page while it exists.
        let data =
            unsafe { std::slice::from_raw_parts_mut(base.add(io.data_offset as usize), len) };
        let data = if u32::from(io.direction) == KVM_EXIT_IO_IN {
            IoData::In(data)
        } else {
            IoData::Out(data)
        };
        Exit::Io(IoAccess {
            port: io.port,
            size: io.size,
            data,
        })
    }

    fn internal_error(&mut self) -> Exit<'_> {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so the kernel
        // filled the `internal` member of the union.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        Exit::InternalError(InternalError::new(internal.suberror, &internal.data[..n]))
    }

    /// Reads the general-purpose registers, RIP and RFLAGS.
    pub fn regs(&self) -> Result<Regs> {
        self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))
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

    /// Writes segment, control and descriptor-table registers and EFER.
    /// When KVM refuses them and they break a VM-entry rule, the error
    /// names it.
    pub fn set_sregs(&self, sregs: &Sregs) -> Result<()> {
        match self.fd.set_sregs(sregs) {
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

    /// Sets or clears `immediate_exit`: while set, `run` returns
    /// [`Exit::Interrupted`] without entering the guest.
    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }

    /// The underlying KVM vCPU file descriptor, for state this backend does
    /// not wrap yet.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }
}
