//! What the EMT's tests share: a real port bus with a recording device and
//! the debug-exit port, real guest memory with a `pgm` MMIO handler, and a
//! fake debugger.

use std::cell::RefCell;
use std::sync::Arc;

use dbgf::debugger::StopCause;
use hm_vmx::VirtualCpu;
use hm_vmx::testing::{ScriptedExit, ScriptedVcpu};
use parking_lot::Mutex;
use pgm::phys::{HandlerAction, HandlerKind};

use super::exit::{DebugHooks, ExitAction, ExitContext, handle_exit};
use crate::bus::IoBus;
use crate::devices::{DEBUG_EXIT_PORT, DeviceAction, PioDevice};
use crate::error::Result;
use crate::memory::GuestMemoryMap;

/// A port device that logs every access and answers reads with its last
/// written byte plus one.
#[derive(Default)]
pub(super) struct Recorder {
    pub(super) log: Vec<(u16, Vec<u8>, bool)>,
    last: u8,
}

impl PioDevice for Recorder {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        self.log.push((offset, data.to_vec(), false));
        data.fill(self.last.wrapping_add(1));
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        self.log.push((offset, data.to_vec(), true));
        self.last = data[0];
        DeviceAction::Continue
    }
}

pub(super) const RECORDER_PORT: u16 = 0x3f0;
/// A `pgm` MMIO range whose handler logs writes and answers reads.
pub(super) const MMIO: u64 = 0xfed0_0000;
pub(super) const MMIO_ANSWER: u8 = 0x5a;
/// The last page of the 4 KiB firmware ROM at the top of 4 GiB.
pub(super) const ROM: u64 = 0xffff_f000;

/// A fake debugger: which accesses it watches, and what it saw.
#[derive(Default)]
pub(super) struct FakeDebugger {
    pub(super) attached: bool,
    pub(super) io_break: Option<u16>,
    pub(super) mem_watch: Option<u64>,
    /// What `stop_before_io` answers (false: terminate).
    pub(super) resume: bool,
    /// Stops reported before port accesses, with how many accesses the
    /// recorder had seen by then.
    pub(super) stops: RefCell<Vec<(StopCause, usize)>>,
    pub(super) recorder: Option<Arc<Mutex<Recorder>>>,
}

impl DebugHooks for FakeDebugger {
    fn is_attached(&self) -> bool {
        self.attached
    }

    fn io_matches(&self, port: u16, _size: u8, _write: bool) -> bool {
        self.io_break == Some(port)
    }

    fn mem_matches(&self, addr: u64, _size: u32, _write: bool) -> bool {
        self.mem_watch == Some(addr)
    }

    fn stop_before_io(&self, _cpu: u32, cause: StopCause) -> Result<bool> {
        let seen = self.recorder.as_ref().map_or(0, |r| r.lock().log.len());
        self.stops.borrow_mut().push((cause, seen));
        Ok(self.resume)
    }
}

/// What the MMIO handler saw: offsets, and the bytes of writes.
pub(super) type MmioLog = Arc<Mutex<Vec<(u64, Option<Vec<u8>>)>>>;

/// A bus with the recorder and the debug-exit device, guest memory with a
/// `pgm` MMIO handler, and the log of what the handler saw.
pub(super) struct Machine {
    pub(super) io: IoBus,
    pub(super) memory: GuestMemoryMap,
    pub(super) recorder: Arc<Mutex<Recorder>>,
    pub(super) mmio_log: MmioLog,
}

impl Machine {
    pub(super) fn new() -> Machine {
        let stats = stam::Registry::new();
        let mut io = IoBus::new(&stats).unwrap();
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        io.register(RECORDER_PORT, 8, "recorder", recorder.clone())
            .unwrap();
        io.register(
            DEBUG_EXIT_PORT,
            1,
            "debug-exit",
            Arc::new(Mutex::new(crate::devices::DebugExit)),
        )
        .unwrap();
        let firmware = vec![0xf4; 4096];
        let memory =
            GuestMemoryMap::new(16 << 20, &firmware, 1, &stats, &dbgf::InfoRegistry::new())
                .unwrap();
        let mmio_log = MmioLog::default();
        let log = mmio_log.clone();
        {
            let mut map = memory.phys().write();
            let t = map.register_handler_type(HandlerKind::Mmio, "test device", move |a| {
                let written = match &a.data {
                    iom::Data::Write(bytes) => Some(bytes.to_vec()),
                    iom::Data::Read(_) => None,
                };
                log.lock().push((a.offset, written));
                a.data.fill_read(MMIO_ANSWER);
                Ok(HandlerAction::Handled)
            });
            map.map_mmio(MMIO, 0x1000, t, 0, "test device").unwrap();
        }
        Machine {
            io,
            memory,
            recorder,
            mmio_log,
        }
    }

    /// Runs `vcpu` to the end of its script, handling every exit; returns
    /// the actions.
    pub(super) fn run(&self, vcpu: &mut ScriptedVcpu, debug: &FakeDebugger) -> Vec<ExitAction> {
        let ctx = ExitContext {
            cpu: vcpu.id(),
            io: &self.io,
            memory: &self.memory,
            debug,
        };
        let mut actions = Vec::new();
        while vcpu.remaining() > 0 {
            let exit = vcpu.run().unwrap();
            actions.push(handle_exit(exit, &ctx).unwrap());
        }
        // Completes the last read, as the next entry would.
        assert!(vcpu.run().is_err());
        actions
    }

    pub(super) fn port_log(&self) -> Vec<(u16, Vec<u8>, bool)> {
        self.recorder.lock().log.clone()
    }
}

pub(super) fn out(port: u16, size: u8, data: &[u8]) -> ScriptedExit {
    ScriptedExit::Out {
        port,
        size,
        data: data.to_vec(),
    }
}

pub(super) fn input(port: u16, size: u8, count: usize) -> ScriptedExit {
    ScriptedExit::In { port, size, count }
}
