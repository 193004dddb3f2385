//! The debugger wired into the VM: [`VmDebugTarget`] implements
//! [`dbgf::debugger::DebugTarget`] over the real vCPUs and guest memory, and
//! the EMTs report debug exits, I/O-port breakpoints and page-trap
//! watchpoint hits through the VM's [`StopNotifier`].
//!
//! Page-trap watchpoints: [`VmDebugTarget`] puts a `pgm` physical access
//! handler on each trapped RAM page (a write handler for write watches, the
//! page gets a read-only KVM slot; an all-access handler for read watches,
//! the page gets no slot) and updates the KVM slots while the VM is halted.
//! The handler only lets the access happen; the EMT checks every MMIO exit
//! against the debugger's [`MemWatch`], and on a match completes the
//! instruction (one `KVM_RUN` with `immediate_exit`) before it halts the VM,
//! so the stop comes after the access like an x86 data breakpoint. MMIO and
//! unassigned pages exit on every access anyway and need no handler; ROM
//! writes exit (read-only slot), ROM reads cannot be trapped. A page under a
//! read trap has no KVM mapping at all: the guest cannot execute code or
//! keep page tables there while the watch is set (page walks, which also
//! set accessed and dirty bits, cannot be handed to the VMM, so a write
//! trap on a page-table page is not safe either). A page already covered by
//! another `pgm` handler cannot be trapped (the watchpoint is refused).
//!
//! Which mechanism a watchpoint gets is the debugger's
//! [`WatchMode`](dbgf::debugger::WatchMode); under `Auto` the target says
//! whether the host delivers DR7 data breakpoints
//! ([`VmDebugTarget::delivers_data_breakpoints`](DebugTarget::delivers_data_breakpoints)):
//! not on the kvm_pvm software layer, which emulates CPL0 code without them.
//!
//! All-stop: a stop (a debug exit, a matching I/O access, a requested halt)
//! moves the VM to [`VmState::Debugging`], keeps every EMT out of the guest
//! and only then reports the stop. While the VM is in that state an EMT runs
//! its vCPU only when the debugger lets it (a single step, a step over a
//! breakpoint, a continue of one vCPU).
//!
//! ```no_run
//! use dbgf::debugger::{Resume, StopReason};
//! use vmm_core::{Vm, VmConfig, guests};
//!
//! let config = VmConfig::new(16 << 20, guests::find("demo")?.firmware()?);
//! let (mut vm, attach) = Vm::new_debuggable(config)?; // halted before the first instruction
//! let (mut target, mut dbg, stops) = (attach.target, attach.debugger, attach.stops);
//! let runner = std::thread::spawn(move || vm.run());
//! dbg.resume(&mut target, Resume::Step(0)).unwrap();
//! let stop = dbg.handle_stop(&mut target, stops.recv().unwrap()).unwrap();
//! assert_eq!(stop.map(|s| s.reason), Some(StopReason::Step));
//! dbg.detach(&mut target).unwrap(); // the demo guest runs to its end
//! runner.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dbgf::debugger::{
    DebugTarget, Debugger, FpuRegs, GuestDebug, IoWatch, MemWatch, PAGE_SIZE, PageTrap, Registers,
    ResumeScope, Segment, StopCause, StopListener, StopNotifier, TargetError, VcpuStop,
    stop_channel,
};
use hm_vmx::{Fpu, Regs, Segment as KvmSegment, Sregs};
use parking_lot::Mutex;
use pgm::paging::{Access, AccessKind, CpuFeatures, PagingState, Privilege, walk};
use pgm::phys::{HandlerAction, HandlerKind, HandlerTypeId, PhysMap, RangeInfo, RangeKind};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::sync::ffs::ExecState;
use crate::sync::vmstate::{VmState, VmStateMachine};

/// How long a stop waits for the other EMTs to leave the guest.
const LEAVE_GUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Which vCPUs the debugger lets run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// None: the VM is halted (or a stop is being reported).
    Halted,
    /// Every vCPU (the VM is in the running state).
    All,
    /// Only this one (the VM stays in the debugging state).
    Only(u32),
}

struct Attached {
    notifier: Option<StopNotifier>,
    scope: Scope,
}

/// The VM's side of the debugger: set up once by [`crate::Vm::new_debuggable`].
pub(crate) struct DebugCtl {
    io_watch: OnceLock<IoWatch>,
    mem_watch: OnceLock<MemWatch>,
    attached: Mutex<Option<Attached>>,
}

impl DebugCtl {
    pub(crate) fn new() -> Self {
        DebugCtl {
            io_watch: OnceLock::new(),
            mem_watch: OnceLock::new(),
            attached: Mutex::new(None),
        }
    }

    /// Attaches a debugger: the VM starts halted.
    fn attach(&self, notifier: StopNotifier, io_watch: IoWatch, mem_watch: MemWatch) -> Result<()> {
        let mut attached = self.attached.lock();
        if attached.is_some() {
            return Err(Error::Config("a debugger is already attached".into()));
        }
        // Set once, under the lock that makes a second attach fail.
        let _ = self.io_watch.set(io_watch);
        let _ = self.mem_watch.set(mem_watch);
        *attached = Some(Attached {
            notifier: Some(notifier),
            scope: Scope::Halted,
        });
        Ok(())
    }

    /// Whether a debugger is attached.
    pub(crate) fn is_attached(&self) -> bool {
        self.attached.lock().is_some()
    }

    /// Whether a port access hits an I/O-port breakpoint (one atomic load
    /// when none is set).
    #[inline]
    pub(crate) fn io_matches(&self, port: u16, size: u8, write: bool) -> bool {
        self.io_watch
            .get()
            .is_some_and(|w| w.matches(port, size, write))
    }

    /// Whether a guest-physical access (an MMIO exit) hits a page-trap
    /// watchpoint (one atomic load when none is set).
    #[inline]
    pub(crate) fn mem_matches(&self, addr: u64, size: u32, write: bool) -> bool {
        self.mem_watch
            .get()
            .is_some_and(|w| w.matches(addr, size, write))
    }

    /// Whether the debugger has the VM halted (nothing runs).
    fn is_halted(&self) -> bool {
        self.attached
            .lock()
            .as_ref()
            .is_some_and(|a| a.scope == Scope::Halted)
    }

    /// Powers on: `Running`, then `Debugging` unless the debugger let every
    /// vCPU run already.
    pub(crate) fn power_on(&self, state: &VmStateMachine) -> Result<()> {
        let attached = self.attached.lock();
        state.set(VmState::Running)?;
        if attached.as_ref().is_some_and(|a| a.scope != Scope::All) {
            state.set(VmState::Debugging)?;
        }
        Ok(())
    }

    /// In the debugging state: whether the debugger lets `cpu` run.
    pub(crate) fn allows(&self, cpu: u32) -> bool {
        self.attached
            .lock()
            .as_ref()
            .is_some_and(|a| matches!(a.scope, Scope::Only(c) if c == cpu))
    }

    /// Claims the stop being reported: halts the VM's execution (the state
    /// goes to `Debugging`). False when the VM is already halted (another stop
    /// won the race) or no debugger is attached.
    fn claim_stop(&self, state: &VmStateMachine) -> bool {
        let mut attached = self.attached.lock();
        let Some(a) = attached.as_mut() else {
            return false;
        };
        if a.scope == Scope::Halted {
            return false;
        }
        a.scope = Scope::Halted;
        if let Err(e) = state.try_transition(&[(VmState::Running, VmState::Debugging)]) {
            tracing::debug!("debugger stop: {e}");
        }
        true
    }

    fn notify(&self, stop: VcpuStop) {
        let attached = self.attached.lock();
        if let Some(n) = attached.as_ref().and_then(|a| a.notifier.as_ref()) {
            if n.notify(stop).is_err() {
                tracing::debug!("debugger gone; stop {stop:?} dropped");
            }
        }
    }

    /// The VM's run ended: tells the debugger and closes the stop channel.
    pub(crate) fn powered_off(&self) {
        let notifier = self
            .attached
            .lock()
            .as_mut()
            .and_then(|a| a.notifier.take());
        if let Some(n) = notifier {
            // The debugger may be gone already; nothing to tell then.
            let _ = n.notify(VcpuStop {
                cpu: 0,
                cause: StopCause::PoweredOff,
            });
        }
    }
}

impl Machine {
    /// Whether `cpu`'s EMT may enter the guest now.
    pub(crate) fn may_run(&self, cpu: u32) -> bool {
        match self.state.state() {
            VmState::Running | VmState::RunningLs => true,
            VmState::Debugging => self.debug.allows(cpu),
            _ => false,
        }
    }

    /// Reports a stop from `cpu`'s EMT (a debug exit, an I/O breakpoint):
    /// halts the VM, waits for the other EMTs to leave the guest and tells
    /// the debugger. False when the stop was not reported (no debugger, or
    /// another stop already halted the VM).
    pub(crate) fn debug_stop(&self, cpu: u32, cause: StopCause) -> Result<bool> {
        if !self.debug.claim_stop(&self.state) {
            return Ok(false);
        }
        self.wait_out_of_guest(Some(cpu))?;
        self.debug.notify(VcpuStop { cpu, cause });
        Ok(true)
    }

    /// Makes every EMT but `except` leave the guest and waits until they have.
    /// The VM's state already keeps them out once they look at it; `UNHALT`
    /// stops an EMT that is about to enter and kicks one that is in.
    fn wait_out_of_guest(&self, except: Option<u32>) -> Result<()> {
        let others: Vec<u32> = (0..self.cpus()).filter(|&c| Some(c) != except).collect();
        for &cpu in &others {
            self.ffs.unhalt(cpu)?;
        }
        let deadline = Instant::now() + LEAVE_GUEST_TIMEOUT;
        for &cpu in &others {
            while self.ffs.exec_state(cpu)? == ExecState::InGuest {
                if Instant::now() >= deadline {
                    return Err(Error::Config(format!(
                        "vCPU {cpu} did not leave the guest for the debugger within {LEAVE_GUEST_TIMEOUT:?}"
                    )));
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        Ok(())
    }
}

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

/// The `pgm` handlers behind page-trap watchpoints.
#[derive(Debug, Default)]
struct PageTraps {
    /// Handler types for write and read traps, registered on first use.
    types: Option<(HandlerTypeId, HandlerTypeId)>,
    /// Handler ranges registered now: `(first, last, reads)`.
    registered: Vec<(u64, u64, bool)>,
}

/// The handler ranges for a set of traps: runs of adjacent RAM or MMIO2
/// pages (of one range) with the same read flag. MMIO and unassigned pages
/// exit on every access already and need none; ROM traps writes already
/// (unless it is writable RAM now) and cannot trap reads.
fn handler_runs(
    traps: &[PageTrap],
    ranges: &[RangeInfo],
) -> std::result::Result<Vec<(u64, u64, bool)>, TargetError> {
    let mut runs: Vec<(u64, u64, bool, u64)> = Vec::new();
    for t in traps {
        let Some(r) = ranges
            .iter()
            .find(|r| r.start <= t.page && t.page - r.start < r.size)
        else {
            continue;
        };
        match r.kind {
            RangeKind::Mmio => continue,
            RangeKind::Rom => {
                let writes_exit = r
                    .rom_protection
                    .is_some_and(|p| !p.writes_ram() || p.reads_rom());
                if t.reads || !writes_exit {
                    return Err(TargetError::Unsupported("page traps on this ROM page"));
                }
                continue;
            }
            RangeKind::Ram | RangeKind::Mmio2 => {}
        }
        let last = t.page + (PAGE_SIZE - 1);
        match runs.last_mut() {
            Some(run) if run.1 + 1 == t.page && run.2 == t.reads && run.3 == r.start => {
                run.1 = last;
            }
            _ => runs.push((t.page, last, t.reads, r.start)),
        }
    }
    Ok(runs
        .into_iter()
        .map(|(f, l, reads, _)| (f, l, reads))
        .collect())
}

impl PageTraps {
    fn types(&mut self, map: &mut PhysMap) -> (HandlerTypeId, HandlerTypeId) {
        *self.types.get_or_insert_with(|| {
            // The handlers only let the access happen: the EMT checks the
            // exact bytes against the debugger's memory watch.
            let pass = |_: &mut pgm::phys::HandlerAccess<'_>| Ok(HandlerAction::Default);
            (
                map.register_handler_type(HandlerKind::Write, "debugger write watch", pass),
                map.register_handler_type(HandlerKind::All, "debugger access watch", pass),
            )
        })
    }

    /// Replaces the registered handlers with `runs`; on failure the old
    /// ones are back.
    fn replace(
        &mut self,
        map: &mut PhysMap,
        runs: Vec<(u64, u64, bool)>,
    ) -> std::result::Result<(), pgm::phys::PhysError> {
        let (write, all) = self.types(map);
        let register = |map: &mut PhysMap, runs: &[(u64, u64, bool)]| {
            for (i, &(first, last, reads)) in runs.iter().enumerate() {
                let ty = if reads { all } else { write };
                if let Err(e) = map.register_handler(ty, first, last, 0, "debugger watchpoint") {
                    for &(f, ..) in &runs[..i] {
                        // Registered just now, so it is there to remove.
                        let _ = map.deregister_handler(f);
                    }
                    return Err(e);
                }
            }
            Ok(())
        };
        for &(first, ..) in &self.registered {
            map.deregister_handler(first)?;
        }
        if let Err(e) = register(map, &runs) {
            // The old set registered before, so it fits again.
            let _ = register(map, &self.registered);
            return Err(e);
        }
        self.registered = runs;
        Ok(())
    }
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

fn to_segment(s: &KvmSegment) -> Segment {
    Segment {
        selector: s.selector,
        base: s.base,
        limit: s.limit,
        long: s.l != 0,
        default_big: s.db != 0,
    }
}

fn from_segment(s: &Segment, k: &mut KvmSegment) {
    k.selector = s.selector;
    k.base = s.base;
    k.limit = s.limit;
    k.l = u8::from(s.long);
    k.db = u8::from(s.default_big);
}

/// KVM's register layouts to the debugger's register file.
fn to_registers(regs: &Regs, sregs: &Sregs, fpu: &Fpu) -> Registers {
    Registers {
        rax: regs.rax,
        rbx: regs.rbx,
        rcx: regs.rcx,
        rdx: regs.rdx,
        rsi: regs.rsi,
        rdi: regs.rdi,
        rsp: regs.rsp,
        rbp: regs.rbp,
        r8: regs.r8,
        r9: regs.r9,
        r10: regs.r10,
        r11: regs.r11,
        r12: regs.r12,
        r13: regs.r13,
        r14: regs.r14,
        r15: regs.r15,
        rip: regs.rip,
        rflags: regs.rflags,
        cs: to_segment(&sregs.cs),
        ss: to_segment(&sregs.ss),
        ds: to_segment(&sregs.ds),
        es: to_segment(&sregs.es),
        fs: to_segment(&sregs.fs),
        gs: to_segment(&sregs.gs),
        cr0: sregs.cr0,
        cr2: sregs.cr2,
        cr3: sregs.cr3,
        cr4: sregs.cr4,
        efer: sregs.efer,
        fpu: to_fpu_regs(fpu),
    }
}

/// The debugger's register file back into KVM's layouts (segment attributes
/// the register file does not carry are kept).
fn from_registers(r: &Registers, regs: &mut Regs, sregs: &mut Sregs, fpu: &mut Fpu) {
    *regs = Regs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    };
    for (s, k) in [
        (&r.cs, &mut sregs.cs),
        (&r.ss, &mut sregs.ss),
        (&r.ds, &mut sregs.ds),
        (&r.es, &mut sregs.es),
        (&r.fs, &mut sregs.fs),
        (&r.gs, &mut sregs.gs),
    ] {
        from_segment(s, k);
    }
    sregs.cr0 = r.cr0;
    sregs.cr2 = r.cr2;
    sregs.cr3 = r.cr3;
    sregs.cr4 = r.cr4;
    sregs.efer = r.efer;
    from_fpu_regs(&r.fpu, fpu);
}

/// Tag of one x87 register in the full tag word: 0 valid, 1 zero, 2 special.
fn x87_tag(value: &[u8]) -> u16 {
    let mantissa = u64::from_le_bytes(value[..8].try_into().unwrap_or([0; 8]));
    let exponent = u16::from_le_bytes([value[8], value[9]]) & 0x7fff;
    match exponent {
        0 if mantissa == 0 => 1,
        0 | 0x7fff => 2,
        _ if mantissa >> 63 == 0 => 2,
        _ => 0,
    }
}

/// `kvm_fpu` (stack-ordered ST registers, abridged tag byte) to [`FpuRegs`].
fn to_fpu_regs(fpu: &Fpu) -> FpuRegs {
    let top = usize::from((fpu.fsw >> 11) & 7);
    let mut st = [[0u8; 10]; 8];
    for (out, reg) in st.iter_mut().zip(&fpu.fpr) {
        out.copy_from_slice(&reg[..10]);
    }
    let mut ftw = 0u16;
    for phys in 0..8 {
        let tag = if fpu.ftwx & (1 << phys) == 0 {
            3
        } else {
            x87_tag(&st[(phys + 8 - top) % 8])
        };
        ftw |= tag << (2 * phys);
    }
    let mut xmm = [0u128; 16];
    for (out, reg) in xmm.iter_mut().zip(&fpu.xmm) {
        *out = u128::from_le_bytes(*reg);
    }
    FpuRegs {
        st,
        fcw: fpu.fcw,
        fsw: fpu.fsw,
        ftw,
        fop: fpu.last_opcode,
        fip: fpu.last_ip,
        fdp: fpu.last_dp,
        xmm,
        mxcsr: fpu.mxcsr,
    }
}

fn from_fpu_regs(r: &FpuRegs, fpu: &mut Fpu) {
    for (reg, st) in fpu.fpr.iter_mut().zip(&r.st) {
        reg[..10].copy_from_slice(st);
    }
    fpu.fcw = r.fcw;
    fpu.fsw = r.fsw;
    fpu.ftwx = (0..8).fold(0u8, |acc, phys| {
        let empty = (r.ftw >> (2 * phys)) & 3 == 3;
        acc | (u8::from(!empty) << phys)
    });
    fpu.last_opcode = r.fop;
    fpu.last_ip = r.fip;
    fpu.last_dp = r.fdp;
    for (reg, x) in fpu.xmm.iter_mut().zip(&r.xmm) {
        *reg = x.to_le_bytes();
    }
    fpu.mxcsr = r.mxcsr;
}

fn fpu_eq(a: &Fpu, b: &Fpu) -> bool {
    a.fpr == b.fpr
        && a.fcw == b.fcw
        && a.fsw == b.fsw
        && a.ftwx == b.ftwx
        && a.last_opcode == b.last_opcode
        && a.last_ip == b.last_ip
        && a.last_dp == b.last_dp
        && a.xmm == b.xmm
        && a.mxcsr == b.mxcsr
}

#[cfg(test)]
mod tests;
