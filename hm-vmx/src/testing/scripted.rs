//! A vCPU that replays a script of exits instead of running a guest.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::{Error, Result};
use iom::Data;

use crate::exit::{DebugExit, Exit, InternalError, IoAccess, MmioAccess};
use crate::kick::{KickBinding, Kicker, bind_flag};
use crate::vcpu::Regs;
use crate::virtual_cpu::VirtualCpu;

/// One exit of a [`ScriptedVcpu`]'s script, with the data it carries.
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptedExit {
    /// `in`: `count` accesses of `size` bytes from `port`; what the handler
    /// fills in is recorded (see [`ScriptedVcpu::answers`]).
    In {
        /// The port.
        port: u16,
        /// Bytes per access (1, 2 or 4).
        size: u8,
        /// Accesses (more than one for `ins`).
        count: usize,
    },
    /// `out` of `data` (`size` bytes per access) to `port`.
    Out {
        /// The port.
        port: u16,
        /// Bytes per access (1, 2 or 4).
        size: u8,
        /// The bytes written.
        data: Vec<u8>,
    },
    /// An MMIO read of `len` bytes; what the handler fills in is recorded.
    MmioRead {
        /// Guest-physical address.
        addr: u64,
        /// Bytes read.
        len: usize,
    },
    /// An MMIO write of `data`.
    MmioWrite {
        /// Guest-physical address.
        addr: u64,
        /// The bytes written.
        data: Vec<u8>,
    },
    /// `hlt`.
    Hlt,
    /// Triple fault.
    Shutdown,
    /// A signal or `immediate_exit` stopped the run.
    Interrupted,
    /// A debug exception for the debugger.
    Debug(DebugExit),
    /// KVM could not handle an exit (suberror 1: emulation failure).
    InternalError {
        /// KVM's sub-error code.
        suberror: u32,
    },
    /// VM entry failed.
    FailEntry {
        /// The hardware's entry-failure reason.
        hardware_reason: u64,
    },
}

/// A vCPU for tests: each [`run`](VirtualCpu::run) returns the next exit
/// of its script, and what the caller answers to `in` and MMIO reads is
/// recorded. Kicks and `immediate_exit` work as on a real vCPU (the next
/// run returns [`Exit::Interrupted`]); a run past the end of the script is
/// an error.
///
/// ```
/// use hm_vmx::testing::{ScriptedExit, ScriptedVcpu};
/// use hm_vmx::{Exit, VirtualCpu};
///
/// let mut vcpu = ScriptedVcpu::new(0, [ScriptedExit::In { port: 0x71, size: 1, count: 1 }]);
/// if let Exit::Io(io) = vcpu.run()? {
///     if let iom::Data::Read(data) = io.data {
///         data[0] = 0x42;
///     }
/// }
/// assert!(vcpu.run().is_err()); // the script is over
/// assert_eq!(vcpu.answers(), [vec![0x42]]);
/// # Ok::<(), hm_vmx::Error>(())
/// ```
#[derive(Debug)]
pub struct ScriptedVcpu {
    id: u32,
    script: VecDeque<ScriptedExit>,
    /// The exit last returned, and the buffer of a read the caller fills.
    current: Option<(ScriptedExit, Vec<u8>)>,
    /// The exit returned last was an I/O or MMIO access.
    io_pending: bool,
    answers: Vec<Vec<u8>>,
    regs: Regs,
    /// `immediate_exit`, boxed so that a kick (a signal handler on the
    /// EMT) can set it at a fixed address.
    immediate_exit: Box<AtomicU8>,
    runs: usize,
    nmis: usize,
    halted_with_interrupts_off: bool,
}

impl ScriptedVcpu {
    /// A vCPU `id` that will return `script`'s exits in order.
    pub fn new(id: u32, script: impl IntoIterator<Item = ScriptedExit>) -> Self {
        ScriptedVcpu {
            id,
            script: script.into_iter().collect(),
            current: None,
            io_pending: false,
            answers: Vec::new(),
            regs: Regs::default(),
            immediate_exit: Box::new(AtomicU8::new(0)),
            runs: 0,
            nmis: 0,
            halted_with_interrupts_off: false,
        }
    }

    /// What the caller put into each `in` and MMIO read, in order.
    pub fn answers(&self) -> &[Vec<u8>] {
        &self.answers
    }

    /// Exits of the script not returned yet.
    pub fn remaining(&self) -> usize {
        self.script.len()
    }

    /// How many times [`run`](VirtualCpu::run) was called.
    pub fn runs(&self) -> usize {
        self.runs
    }

    /// How many NMIs were injected.
    pub fn nmis(&self) -> usize {
        self.nmis
    }

    /// Makes [`halted_with_interrupts_off`](VirtualCpu::halted_with_interrupts_off)
    /// answer `halted` (false at first).
    pub fn set_halted_with_interrupts_off(&mut self, halted: bool) {
        self.halted_with_interrupts_off = halted;
    }

    /// Records the answer to the read returned last, if it was one.
    fn complete_pending_read(&mut self) {
        if let Some((ScriptedExit::In { .. } | ScriptedExit::MmioRead { .. }, data)) =
            self.current.take()
        {
            self.answers.push(data);
        }
    }
}

impl VirtualCpu for ScriptedVcpu {
    fn id(&self) -> u32 {
        self.id
    }

    fn run(&mut self) -> Result<Exit<'_>> {
        self.runs += 1;
        self.complete_pending_read();
        self.io_pending = false;
        if self.immediate_exit.swap(0, Ordering::SeqCst) != 0 {
            return Ok(Exit::Interrupted);
        }
        let next = self.script.pop_front().ok_or_else(|| {
            Error::ScriptEnded(format!(
                "scripted vCPU {}: run {} is past the end of the script",
                self.id, self.runs
            ))
        })?;
        let buffer = match &next {
            ScriptedExit::In { size, count, .. } => vec![0; usize::from(*size) * count],
            ScriptedExit::MmioRead { len, .. } => vec![0; *len],
            _ => Vec::new(),
        };
        let (exit, data) = self.current.insert((next, buffer));
        self.io_pending = matches!(
            exit,
            ScriptedExit::In { .. }
                | ScriptedExit::Out { .. }
                | ScriptedExit::MmioRead { .. }
                | ScriptedExit::MmioWrite { .. }
        );
        Ok(match exit {
            ScriptedExit::In { port, size, .. } => Exit::Io(IoAccess {
                port: *port,
                size: *size,
                data: Data::Read(data),
            }),
            ScriptedExit::Out { port, size, data } => Exit::Io(IoAccess {
                port: *port,
                size: *size,
                data: Data::Write(data),
            }),
            ScriptedExit::MmioRead { addr, .. } => Exit::Mmio(MmioAccess {
                addr: *addr,
                data: Data::Read(data),
            }),
            ScriptedExit::MmioWrite { addr, data } => Exit::Mmio(MmioAccess {
                addr: *addr,
                data: Data::Write(data),
            }),
            ScriptedExit::Hlt => Exit::Hlt,
            ScriptedExit::Shutdown => Exit::Shutdown,
            ScriptedExit::Interrupted => Exit::Interrupted,
            ScriptedExit::Debug(d) => Exit::Debug(*d),
            ScriptedExit::InternalError { suberror } => {
                Exit::InternalError(InternalError::new(*suberror, &[]))
            }
            ScriptedExit::FailEntry { hardware_reason } => Exit::FailEntry {
                hardware_reason: *hardware_reason,
                cpu: 0,
            },
        })
    }

    fn set_immediate_exit(&mut self, on: bool) {
        self.immediate_exit.store(u8::from(on), Ordering::SeqCst);
    }

    fn io_pending(&self) -> bool {
        self.io_pending
    }

    fn bind_kicks(&mut self) -> Result<(Kicker, KickBinding)> {
        let flag = self.immediate_exit.as_ptr();
        // SAFETY: the boxed byte does not move while the vCPU lives, and
        // the binding (not `Send`) is dropped by this thread before it is.
        unsafe { bind_flag(flag) }
    }

    fn regs(&self) -> Result<Regs> {
        Ok(self.regs)
    }

    fn set_regs(&mut self, regs: &Regs) -> Result<()> {
        self.regs = *regs;
        Ok(())
    }

    fn inject_nmi(&mut self) -> Result<()> {
        self.nmis += 1;
        Ok(())
    }

    fn halted_with_interrupts_off(&self) -> Result<bool> {
        Ok(self.halted_with_interrupts_off)
    }

    fn diagnose_entry_failure(&self) -> String {
        format!("scripted vCPU {}: no VT-x state to explain", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_carried_and_reads_answered_in_order() {
        let mut vcpu = ScriptedVcpu::new(
            1,
            [
                ScriptedExit::Out {
                    port: 0x80,
                    size: 1,
                    data: vec![7],
                },
                ScriptedExit::MmioRead {
                    addr: 0x1000,
                    len: 4,
                },
                ScriptedExit::Hlt,
            ],
        );
        assert!(matches!(
            vcpu.run().unwrap(),
            Exit::Io(IoAccess {
                port: 0x80,
                data: Data::Write([7]),
                ..
            })
        ));
        match vcpu.run().unwrap() {
            Exit::Mmio(MmioAccess {
                addr: 0x1000,
                data: Data::Read(d),
            }) => d.copy_from_slice(&[1, 2, 3, 4]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(vcpu.run().unwrap(), Exit::Hlt));
        assert_eq!(vcpu.answers(), [vec![1, 2, 3, 4]]);
        assert!(vcpu.run().is_err());
        assert_eq!(vcpu.runs(), 4);
    }

    #[test]
    fn registers_and_nmis_are_kept() {
        let mut vcpu = ScriptedVcpu::new(0, []);
        let regs = Regs {
            rip: 0x1234,
            ..Regs::default()
        };
        vcpu.set_regs(&regs).unwrap();
        vcpu.inject_nmi().unwrap();
        assert_eq!(vcpu.regs().unwrap().rip, 0x1234);
        assert_eq!(vcpu.nmis(), 1);
    }

    #[test]
    fn immediate_exit_interrupts_the_next_run_only() {
        let mut vcpu = ScriptedVcpu::new(0, [ScriptedExit::Hlt]);
        vcpu.set_immediate_exit(true);
        assert!(matches!(vcpu.run().unwrap(), Exit::Interrupted));
        assert!(matches!(vcpu.run().unwrap(), Exit::Hlt));
        assert_eq!(vcpu.remaining(), 0);
    }

    #[test]
    fn only_an_access_leaves_its_instruction_to_complete() {
        let mut vcpu = ScriptedVcpu::new(
            0,
            [
                ScriptedExit::Out {
                    port: 0x80,
                    size: 1,
                    data: vec![1],
                },
                ScriptedExit::Hlt,
            ],
        );
        vcpu.run().unwrap();
        assert!(vcpu.io_pending());
        assert!(vcpu.complete_pending_io().unwrap().is_none());
        assert!(!vcpu.io_pending());
        // Completed: the next run is the script's next exit, and a halt
        // leaves nothing to complete (no further run).
        assert!(matches!(vcpu.run().unwrap(), Exit::Hlt));
        assert!(!vcpu.io_pending());
        assert!(vcpu.complete_pending_io().unwrap().is_none());
        assert_eq!(vcpu.runs(), 3);
    }

    #[test]
    fn a_kick_from_another_thread_interrupts_the_run() {
        let mut vcpu = ScriptedVcpu::new(0, [ScriptedExit::Hlt]);
        let (kicker, _binding) = vcpu.bind_kicks().unwrap();
        std::thread::spawn(move || kicker.kick()).join().unwrap();
        assert!(matches!(vcpu.run().unwrap(), Exit::Interrupted));
        assert!(matches!(vcpu.run().unwrap(), Exit::Hlt));
    }
}
