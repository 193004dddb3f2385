//! An in-memory [`DebugTarget`]: a register file per vCPU, identity-mapped memory and
//! a fake CPU that "executes" an instruction by advancing RIP by its decoded length.
//!
//! It honours the guest-debug state like the hardware does (DR0..DR3/DR7 execute and
//! data breakpoints, single step, `int3` interception, port breakpoints through an
//! [`IoWatch`], page traps checked against a [`MemWatch`] like the VMM's EMT does) so
//! that the debugger core and the gdb stub can be exercised without a VM. Instructions other than `hlt` have no effect beyond RIP; `hlt` powers the fake
//! machine off.

use iced_x86::{
    Decoder, DecoderOptions, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind,
    Register,
};

use super::dr7::HW_SLOTS;
use super::{
    DebugTarget, GuestDebug, IoWatch, MemWatch, PAGE_SIZE, PageTrap, Registers, ResumeScope,
    StopCause, StopNotifier, TargetError, VcpuStop,
};

const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// DR6 with its active-low bits set, as KVM reports it.
const DR6_INIT: u64 = 0xffff_0ff0;
const DR6_BS: u64 = 1 << 14;
const INT3: u8 = 0xcc;

/// What one fake instruction did.
enum Outcome {
    Ran,
    Stop(StopCause),
}

/// An in-memory VM in 64-bit mode with `virtual == physical` addresses.
///
/// ```
/// use dbgf::debugger::{stop_channel, DebugTarget, MemTarget, ResumeScope, StopCause};
/// let (tx, rx) = stop_channel();
/// let mut vm = MemTarget::new(1, 0x2000, tx);
/// vm.write_phys(0x100, &[0x90, 0xf4]).unwrap(); // nop; hlt
/// let mut regs = vm.read_regs(0).unwrap();
/// regs.rip = 0x100;
/// vm.write_regs(0, &regs).unwrap();
/// vm.resume(ResumeScope::All).unwrap();
/// assert_eq!(rx.recv().unwrap().cause, StopCause::PoweredOff);
/// assert_eq!(vm.read_regs(0).unwrap().rip, 0x102);
/// ```
#[derive(Debug)]
pub struct MemTarget {
    regs: Vec<Registers>,
    debug: Vec<GuestDebug>,
    mem: Vec<u8>,
    stops: StopNotifier,
    io_watch: IoWatch,
    /// The vCPU that stopped on a port breakpoint completes that access unchecked.
    io_stopped: Option<u32>,
    /// Instructions a resume may run before the fake machine reports `Halted`.
    budget: u64,
    mem_watch: MemWatch,
    /// Trapped pages, as the debugger last set them.
    traps: Vec<PageTrap>,
    /// Whether DR7 data breakpoints fire (see [`MemTarget::set_data_breakpoints`]).
    data_breakpoints: bool,
    /// The last resume reported its stop: a halt request races with it and gets no
    /// report of its own, as with the VMM.
    resume_reported: bool,
}

impl MemTarget {
    /// `cpus` vCPUs in 64-bit mode at RIP 0, `mem_size` bytes of zeroed memory; stops
    /// are reported through `stops`.
    pub fn new(cpus: u32, mem_size: usize, stops: StopNotifier) -> Self {
        let mut r = Registers {
            rflags: 2,
            cr0: CR0_PE | CR0_PG,
            efer: EFER_LME | EFER_LMA,
            ..Default::default()
        };
        r.cs.long = true;
        Self {
            regs: vec![r; cpus as usize],
            debug: vec![GuestDebug::default(); cpus as usize],
            mem: vec![0; mem_size],
            stops,
            io_watch: IoWatch::default(),
            io_stopped: None,
            budget: 100_000,
            mem_watch: MemWatch::default(),
            traps: Vec::new(),
            data_breakpoints: true,
            resume_reported: false,
        }
    }

    /// Lets accesses to trapped pages consult `watch` like the VMM's EMT does on MMIO
    /// exits.
    pub fn set_mem_watch(&mut self, watch: MemWatch) {
        self.mem_watch = watch;
    }

    /// Makes DR7 data breakpoints fire (the default) or not, like a backend that does
    /// not deliver them.
    pub fn set_data_breakpoints(&mut self, on: bool) {
        self.data_breakpoints = on;
    }

    /// The pages trapped now.
    pub fn page_traps(&self) -> &[PageTrap] {
        &self.traps
    }

    /// Whether an access reaches the VMM: some byte is on a trapped page (reads only
    /// where reads are trapped).
    fn trapped(&self, addr: u64, len: u64, write: bool) -> bool {
        let last = addr.saturating_add(len.max(1) - 1);
        self.traps.iter().any(|t| {
            (write || t.reads) && t.page <= last && addr < t.page.saturating_add(PAGE_SIZE)
        })
    }

    /// Lets `in`/`out` instructions consult `watch` like the VMM's EMT does.
    pub fn set_io_watch(&mut self, watch: IoWatch) {
        self.io_watch = watch;
    }

    /// The guest-debug state last loaded into `cpu`.
    pub fn guest_debug(&self, cpu: u32) -> Option<GuestDebug> {
        self.debug.get(cpu as usize).copied()
    }

    fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>, TargetError> {
        let err = || TargetError::PhysAccess {
            addr,
            len: len as u64,
        };
        let start = usize::try_from(addr).map_err(|_| err())?;
        let end = start.checked_add(len).ok_or_else(err)?;
        if end > self.mem.len() {
            return Err(err());
        }
        Ok(start..end)
    }

    fn cpu(&self, cpu: u32) -> Result<usize, TargetError> {
        let i = cpu as usize;
        if i < self.regs.len() {
            Ok(i)
        } else {
            Err(TargetError::InvalidCpu(cpu))
        }
    }

    /// Executes one fake instruction on vCPU `i`.
    fn step_one(&mut self, i: usize) -> Outcome {
        let dbg = self.debug[i];
        let rip = self.regs[i].rip;
        let enabled = |s: usize| dbg.use_hw_bp && (dbg.dr7 >> (2 * s)) & 3 != 0;
        let rw = |s: usize| (dbg.dr7 >> (16 + 4 * s)) & 3;
        // Instruction breakpoints are faults: they fire before the instruction.
        for s in 0..HW_SLOTS {
            if enabled(s) && rw(s) == 0 && dbg.dr[s] == rip {
                return Outcome::Stop(StopCause::Debug {
                    exception: 1,
                    dr6: DR6_INIT | 1 << s,
                    pc: rip,
                });
            }
        }
        let mut code = [0u8; 15];
        for (k, b) in code.iter_mut().enumerate() {
            *b = self
                .mem
                .get(rip.wrapping_add(k as u64) as usize)
                .copied()
                .unwrap_or(0);
        }
        if code[0] == INT3 && dbg.use_sw_bp {
            return Outcome::Stop(StopCause::Debug {
                exception: 3,
                dr6: 0,
                pc: rip,
            });
        }
        let mut decoder = Decoder::with_ip(64, &code, rip, DecoderOptions::NONE);
        let insn = decoder.decode();
        if insn.is_invalid() {
            // #UD: report it as an unexplained exception.
            return Outcome::Stop(StopCause::Debug {
                exception: 6,
                dr6: 0,
                pc: rip,
            });
        }
        if let Some((port, size, write)) = self.port_access(i, &insn) {
            let resumed_here = self.io_stopped == Some(i as u32);
            if resumed_here {
                self.io_stopped = None;
            } else if self.io_watch.matches(port, size, write) {
                self.io_stopped = Some(i as u32);
                return Outcome::Stop(StopCause::Io { port, size, write });
            }
        }
        let next = insn.next_ip();
        let mut dr6 = DR6_INIT;
        let mut watched = None;
        let mut factory = InstructionInfoFactory::new();
        let regs = self.regs[i];
        for m in factory.info(&insn).used_memory() {
            let (read, write) = match m.access() {
                OpAccess::Read | OpAccess::CondRead => (true, false),
                OpAccess::Write | OpAccess::CondWrite => (false, true),
                OpAccess::ReadWrite | OpAccess::ReadCondWrite => (true, true),
                _ => continue,
            };
            let Some(addr) = m.virtual_address(0, |r, _, _| reg_value(&regs, r, next)) else {
                continue;
            };
            let len = m.memory_size().size().max(1) as u64;
            for (trap_write, on) in [(false, read), (true, write)] {
                if on
                    && watched.is_none()
                    && self.trapped(addr, len, trap_write)
                    && self.mem_watch.matches(addr, len as u32, trap_write)
                {
                    watched = Some(StopCause::Mem {
                        addr,
                        size: len as u32,
                        write: trap_write,
                    });
                }
            }
            if !self.data_breakpoints {
                continue;
            }
            for s in 0..HW_SLOTS {
                let slot_len = match (dbg.dr7 >> (18 + 4 * s)) & 3 {
                    0 => 1,
                    1 => 2,
                    3 => 4,
                    _ => 8,
                };
                let hit = match rw(s) {
                    1 => write,
                    3 => read || write,
                    _ => false,
                };
                let (a, b) = (dbg.dr[s], addr);
                if enabled(s) && hit && a < b.saturating_add(len) && b < a.saturating_add(slot_len)
                {
                    dr6 |= 1 << s;
                }
            }
        }
        self.regs[i].rip = next;
        if let Some(cause) = watched {
            // Reported after the instruction, which the VMM completes first.
            return Outcome::Stop(cause);
        }
        if insn.mnemonic() == Mnemonic::Hlt {
            return Outcome::Stop(StopCause::PoweredOff);
        }
        if dbg.single_step {
            dr6 |= DR6_BS;
        }
        if dr6 != DR6_INIT {
            return Outcome::Stop(StopCause::Debug {
                exception: 1,
                dr6,
                pc: next,
            });
        }
        Outcome::Ran
    }

    /// `(port, size, write)` of an `in`/`out` instruction.
    fn port_access(&self, i: usize, insn: &Instruction) -> Option<(u16, u8, bool)> {
        let (write, data_op, port_op) = match insn.mnemonic() {
            Mnemonic::In => (false, 0, 1),
            Mnemonic::Out => (true, 1, 0),
            _ => return None,
        };
        let port = match insn.op_kind(port_op) {
            OpKind::Immediate8 => u16::from(insn.immediate8()),
            _ => self.regs[i].rdx as u16,
        };
        let size = insn.op_register(data_op).size() as u8;
        Some((port, size, write))
    }
}

/// Value of a register for address computation.
fn reg_value(r: &Registers, reg: Register, next_rip: u64) -> Option<u64> {
    let full = reg.full_register();
    let v = match full {
        Register::RAX => r.rax,
        Register::RBX => r.rbx,
        Register::RCX => r.rcx,
        Register::RDX => r.rdx,
        Register::RSI => r.rsi,
        Register::RDI => r.rdi,
        Register::RSP => r.rsp,
        Register::RBP => r.rbp,
        Register::R8 => r.r8,
        Register::R9 => r.r9,
        Register::R10 => r.r10,
        Register::R11 => r.r11,
        Register::R12 => r.r12,
        Register::R13 => r.r13,
        Register::R14 => r.r14,
        Register::R15 => r.r15,
        Register::RIP => next_rip,
        Register::FS => r.fs.base,
        Register::GS => r.gs.base,
        Register::ES | Register::CS | Register::SS | Register::DS => 0,
        _ => return None,
    };
    Some(v)
}

impl DebugTarget for MemTarget {
    fn cpu_count(&self) -> u32 {
        self.regs.len() as u32
    }

    fn read_regs(&mut self, cpu: u32) -> Result<Registers, TargetError> {
        Ok(self.regs[self.cpu(cpu)?])
    }

    fn write_regs(&mut self, cpu: u32, regs: &Registers) -> Result<(), TargetError> {
        let i = self.cpu(cpu)?;
        self.regs[i] = *regs;
        Ok(())
    }

    fn read_phys(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        let r = self.range(addr, buf.len())?;
        buf.copy_from_slice(&self.mem[r]);
        Ok(())
    }

    fn write_phys(&mut self, addr: u64, data: &[u8]) -> Result<(), TargetError> {
        let r = self.range(addr, data.len())?;
        self.mem[r].copy_from_slice(data);
        Ok(())
    }

    fn translate(&mut self, cpu: u32, vaddr: u64) -> Result<u64, TargetError> {
        self.cpu(cpu)?;
        if vaddr < self.mem.len() as u64 {
            Ok(vaddr)
        } else {
            Err(TargetError::Unmapped { addr: vaddr })
        }
    }

    fn delivers_data_breakpoints(&self) -> bool {
        self.data_breakpoints
    }

    fn set_page_traps(&mut self, traps: &[PageTrap]) -> Result<(), TargetError> {
        if let Some(t) = traps.iter().find(|t| t.page >= self.mem.len() as u64) {
            return Err(TargetError::PhysAccess {
                addr: t.page,
                len: PAGE_SIZE,
            });
        }
        self.traps = traps.to_vec();
        Ok(())
    }

    fn set_guest_debug(&mut self, cpu: u32, dbg: &GuestDebug) -> Result<(), TargetError> {
        let i = self.cpu(cpu)?;
        self.debug[i] = *dbg;
        Ok(())
    }

    /// Runs synchronously (round robin over the vCPUs in `scope`) until a stop, which it
    /// sends to the stop channel.
    fn resume(&mut self, scope: ResumeScope) -> Result<(), TargetError> {
        let cpus: Vec<usize> = match scope {
            ResumeScope::All => (0..self.regs.len()).collect(),
            ResumeScope::Only(cpu) => vec![self.cpu(cpu)?],
        };
        let mut stop = VcpuStop {
            cpu: 0,
            cause: StopCause::Halted,
        };
        'run: for _ in 0..self.budget {
            for &i in &cpus {
                if let Outcome::Stop(cause) = self.step_one(i) {
                    stop = VcpuStop {
                        cpu: i as u32,
                        cause,
                    };
                    break 'run;
                }
            }
        }
        self.resume_reported = true;
        self.stops
            .notify(stop)
            .map_err(|e| TargetError::Other(Box::new(e)))
    }

    /// The fake machine is never running between calls: the stop of the last resume
    /// answers the request (it raced with it); without one the halt is reported at once.
    fn halt(&mut self) -> Result<(), TargetError> {
        if std::mem::replace(&mut self.resume_reported, true) {
            return Ok(());
        }
        self.stops
            .notify(VcpuStop {
                cpu: 0,
                cause: StopCause::Halted,
            })
            .map_err(|e| TargetError::Other(Box::new(e)))
    }
}
