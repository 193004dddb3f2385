//! The target trait: what the debugger core needs from a VM.
//!
//! `vmm-core` implements [`DebugTarget`] over the real KVM VM; tests implement it over
//! an in-memory register file and memory.

/// Size of the guest page used when splitting virtual-address accesses.
pub const PAGE_SIZE: u64 = 4096;

/// Errors reported by a [`DebugTarget`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The vCPU index does not exist.
    #[error("no vCPU {0}")]
    InvalidCpu(u32),
    /// The virtual address has no translation in the vCPU's current paging mode.
    #[error("virtual address {addr:#x} is not mapped")]
    Unmapped {
        /// The virtual address that failed to translate.
        addr: u64,
    },
    /// The guest-physical range is not backed by RAM/ROM the debugger may access.
    #[error("guest-physical range {addr:#x}+{len:#x} is not accessible")]
    PhysAccess {
        /// First byte of the access.
        addr: u64,
        /// Length of the access.
        len: u64,
    },
    /// The target cannot do this (for example trap guest-physical pages).
    #[error("the target does not support {0}")]
    Unsupported(&'static str),
    /// Any other failure of the VMM (an ioctl, a VM that is gone, ...).
    #[error("target: {0}")]
    Other(#[from] Box<dyn std::error::Error + Send + Sync>),
}

/// One segment register, as KVM reports it in `kvm_segment`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Limit (byte granular).
    pub limit: u32,
    /// `L`: 64-bit code segment.
    pub long: bool,
    /// `D/B`: default operand size 32 bits.
    pub default_big: bool,
}

/// x87 and SSE state, as KVM reports it in `kvm_fpu`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FpuRegs {
    /// ST0..ST7 as 80-bit values (little endian).
    pub st: [[u8; 10]; 8],
    /// FPU control word.
    pub fcw: u16,
    /// FPU status word.
    pub fsw: u16,
    /// FPU tag word (full 16-bit form).
    pub ftw: u16,
    /// Last opcode.
    pub fop: u16,
    /// Last instruction pointer.
    pub fip: u64,
    /// Last data pointer.
    pub fdp: u64,
    /// XMM0..XMM15.
    pub xmm: [u128; 16],
    /// SSE control/status register.
    pub mxcsr: u32,
}

/// The register file of one vCPU (the union of `kvm_regs`, the parts of `kvm_sregs` a
/// debugger needs, and `kvm_fpu`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Registers {
    /// RAX.
    pub rax: u64,
    /// RBX.
    pub rbx: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// RSP.
    pub rsp: u64,
    /// RBP.
    pub rbp: u64,
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// R10.
    pub r10: u64,
    /// R11.
    pub r11: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// CS.
    pub cs: Segment,
    /// SS.
    pub ss: Segment,
    /// DS.
    pub ds: Segment,
    /// ES.
    pub es: Segment,
    /// FS (base is the FS base MSR).
    pub fs: Segment,
    /// GS (base is the GS base MSR).
    pub gs: Segment,
    /// CR0.
    pub cr0: u64,
    /// CR2.
    pub cr2: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER MSR.
    pub efer: u64,
    /// x87/SSE state.
    pub fpu: FpuRegs,
}

/// Code size of the instruction stream a vCPU is executing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeBitness {
    /// Real mode or a 16-bit code segment.
    Bits16,
    /// A 32-bit code segment (or compatibility mode).
    Bits32,
    /// 64-bit mode.
    Bits64,
}

impl CodeBitness {
    /// Width in bits (16, 32 or 64), as `iced-x86` wants it.
    pub fn bits(self) -> u32 {
        match self {
            Self::Bits16 => 16,
            Self::Bits32 => 32,
            Self::Bits64 => 64,
        }
    }
}

const CR0_PE: u64 = 1;
const EFER_LMA: u64 = 1 << 10;

impl Registers {
    /// Linear address of the next instruction (`CS.base + RIP`; the base is ignored
    /// in 64-bit mode).
    pub fn linear_rip(&self) -> u64 {
        match self.bitness() {
            CodeBitness::Bits64 => self.rip,
            _ => self.cs.base.wrapping_add(self.rip) & 0xffff_ffff,
        }
    }

    /// Code size of the current code segment.
    pub fn bitness(&self) -> CodeBitness {
        if self.cr0 & CR0_PE == 0 {
            CodeBitness::Bits16
        } else if self.efer & EFER_LMA != 0 && self.cs.long {
            CodeBitness::Bits64
        } else if self.cs.default_big {
            CodeBitness::Bits32
        } else {
            CodeBitness::Bits16
        }
    }
}

/// `KVM_GUESTDBG_ENABLE`.
pub const KVM_GUESTDBG_ENABLE: u32 = 0x0000_0001;
/// `KVM_GUESTDBG_SINGLESTEP`.
pub const KVM_GUESTDBG_SINGLESTEP: u32 = 0x0000_0002;
/// `KVM_GUESTDBG_USE_SW_BP` (x86: intercept `#BP`).
pub const KVM_GUESTDBG_USE_SW_BP: u32 = 0x0001_0000;
/// `KVM_GUESTDBG_USE_HW_BP` (x86: load DR0-DR3/DR7 below, intercept `#DB`).
pub const KVM_GUESTDBG_USE_HW_BP: u32 = 0x0002_0000;

/// Per-vCPU guest-debug state: exactly the contents of `struct kvm_guest_debug`.
///
/// `vmm-core` copies [`GuestDebug::control`] into `control` and [`GuestDebug::debugreg`]
/// into `arch.debugreg` (DR0..DR3 in 0..3, DR7 in 7) and issues `KVM_SET_GUEST_DEBUG`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GuestDebug {
    /// Intercept `#DB` and `#BP`, turn debugging on.
    pub enable: bool,
    /// Trap after every instruction (`#DB` with DR6.BS).
    pub single_step: bool,
    /// Intercept `#BP` (`int3`): software breakpoints are in use.
    pub use_sw_bp: bool,
    /// Load [`GuestDebug::dr`] and [`GuestDebug::dr7`] into the hardware.
    pub use_hw_bp: bool,
    /// DR0..DR3 addresses.
    pub dr: [u64; 4],
    /// DR7 value.
    pub dr7: u64,
}

impl GuestDebug {
    /// The `control` flags word of `kvm_guest_debug`.
    pub fn control(&self) -> u32 {
        let mut c = 0;
        for (on, bit) in [
            (self.enable, KVM_GUESTDBG_ENABLE),
            (self.single_step, KVM_GUESTDBG_SINGLESTEP),
            (self.use_sw_bp, KVM_GUESTDBG_USE_SW_BP),
            (self.use_hw_bp, KVM_GUESTDBG_USE_HW_BP),
        ] {
            if on {
                c |= bit;
            }
        }
        c
    }

    /// The `arch.debugreg` array of `kvm_guest_debug` (DR0..DR3, zeros, DR7).
    pub fn debugreg(&self) -> [u64; 8] {
        let mut r = [0; 8];
        r[..4].copy_from_slice(&self.dr);
        r[7] = self.dr7;
        r
    }
}

/// Which vCPUs a resume lets run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeScope {
    /// Every vCPU runs.
    All,
    /// Only this vCPU runs; the others stay halted (used for single steps and for
    /// stepping over a breakpoint, so no other vCPU can run past a lifted `int3`).
    Only(u32),
}

/// A guest-physical page whose guest accesses must reach the VMM, so that the EMTs can
/// check them against the [`MemWatch`](super::MemWatch) (page-trap watchpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PageTrap {
    /// Guest-physical address of the page (a multiple of [`PAGE_SIZE`]).
    pub page: u64,
    /// Trap reads too (else only writes).
    pub reads: bool,
}

/// What the debugger core needs from a VM.
///
/// Execution control is asynchronous: [`DebugTarget::resume`] returns at once and the
/// VMM later reports where the VM stopped through a [`StopNotifier`](super::StopNotifier)
/// (from its EMT thread), after it has halted every vCPU (all-stop). Registers and
/// memory are only accessed while the VM is halted.
///
/// Virtual addresses are linear addresses translated with the given vCPU's paging
/// state; the default [`DebugTarget::read_virt`]/[`DebugTarget::write_virt`] split the
/// access at page boundaries and go through [`DebugTarget::translate`] and the
/// physical accessors.
pub trait DebugTarget {
    /// Number of vCPUs (indices `0..cpu_count()`).
    fn cpu_count(&self) -> u32;

    /// Reads the register file of a halted vCPU.
    fn read_regs(&mut self, cpu: u32) -> Result<Registers, TargetError>;

    /// Writes the register file of a halted vCPU.
    fn write_regs(&mut self, cpu: u32, regs: &Registers) -> Result<(), TargetError>;

    /// Reads guest-physical memory.
    fn read_phys(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), TargetError>;

    /// Writes guest-physical memory.
    fn write_phys(&mut self, addr: u64, data: &[u8]) -> Result<(), TargetError>;

    /// Translates a linear address with `cpu`'s paging state into a guest-physical one.
    fn translate(&mut self, cpu: u32, vaddr: u64) -> Result<u64, TargetError>;

    /// Reads memory at a linear address as seen by `cpu`.
    fn read_virt(&mut self, cpu: u32, vaddr: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        for (off, len) in page_chunks(vaddr, buf.len()) {
            let phys = self.translate(cpu, vaddr.wrapping_add(off as u64))?;
            self.read_phys(phys, &mut buf[off..off + len])?;
        }
        Ok(())
    }

    /// Writes memory at a linear address as seen by `cpu`.
    fn write_virt(&mut self, cpu: u32, vaddr: u64, data: &[u8]) -> Result<(), TargetError> {
        for (off, len) in page_chunks(vaddr, data.len()) {
            let phys = self.translate(cpu, vaddr.wrapping_add(off as u64))?;
            self.write_phys(phys, &data[off..off + len])?;
        }
        Ok(())
    }

    /// Loads the guest-debug state of one vCPU (`KVM_SET_GUEST_DEBUG`).
    fn set_guest_debug(&mut self, cpu: u32, dbg: &GuestDebug) -> Result<(), TargetError>;

    /// Whether `KVM_SET_GUEST_DEBUG` data breakpoints (DR7 write/read-write slots) fire
    /// on this target. [`WatchMode::Auto`](super::WatchMode::Auto) uses page traps for
    /// every watchpoint when they do not. The default says they do.
    fn delivers_data_breakpoints(&self) -> bool {
        true
    }

    /// Makes guest accesses to exactly these guest-physical pages exit to the VMM (writes,
    /// and reads where [`PageTrap::reads`] is set), replacing the previous set; an empty
    /// set removes every trap. Called only while the VM is halted. An EMT that sees such
    /// an access (or any MMIO exit) matching the debugger's
    /// [`MemWatch`](super::MemWatch) completes it, halts the VM and reports
    /// [`StopCause::Mem`](super::StopCause::Mem).
    ///
    /// The default supports no traps (an empty set is fine).
    fn set_page_traps(&mut self, traps: &[PageTrap]) -> Result<(), TargetError> {
        if traps.is_empty() {
            Ok(())
        } else {
            Err(TargetError::Unsupported("page-trap watchpoints"))
        }
    }

    /// Lets the vCPUs in `scope` run. Returns at once; the stop is reported later.
    fn resume(&mut self, scope: ResumeScope) -> Result<(), TargetError>;

    /// Asks the VMM to halt every vCPU; it reports
    /// [`StopCause::Halted`](super::StopCause::Halted) once they are all stopped (or a
    /// stop that raced with the request). Returns at once.
    fn halt(&mut self) -> Result<(), TargetError>;
}

/// Splits `[addr, addr + len)` at page boundaries into `(offset, length)` pieces.
pub(crate) fn page_chunks(addr: u64, len: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        if off >= len {
            return None;
        }
        let cur = addr.wrapping_add(off as u64);
        let room = (PAGE_SIZE - (cur % PAGE_SIZE)) as usize;
        let n = room.min(len - off);
        let item = (off, n);
        off += n;
        Some(item)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_flags_match_kvm() {
        let d = GuestDebug {
            enable: true,
            single_step: true,
            use_sw_bp: false,
            use_hw_bp: true,
            dr: [1, 2, 3, 4],
            dr7: 0x402,
        };
        assert_eq!(d.control(), 0x0002_0003);
        assert_eq!(d.debugreg(), [1, 2, 3, 4, 0, 0, 0, 0x402]);
        assert_eq!(GuestDebug::default().control(), 0);
    }

    #[test]
    fn page_chunks_split_at_boundaries() {
        let v: Vec<_> = page_chunks(0x0ffe, 0x1004).collect();
        assert_eq!(v, vec![(0, 2), (2, 0x1000), (0x1002, 2)]);
        assert_eq!(page_chunks(0x1000, 0).count(), 0);
    }

    #[test]
    fn bitness_and_linear_rip() {
        let mut r = Registers {
            rip: 0x10,
            ..Default::default()
        };
        r.cs.base = 0xf0000;
        assert_eq!(r.bitness(), CodeBitness::Bits16);
        assert_eq!(r.linear_rip(), 0xf0010);
        r.cr0 = CR0_PE;
        r.cs.default_big = true;
        assert_eq!(r.bitness(), CodeBitness::Bits32);
        r.efer = EFER_LMA;
        r.cs.long = true;
        assert_eq!(r.bitness(), CodeBitness::Bits64);
        assert_eq!(r.linear_rip(), 0x10);
    }
}
