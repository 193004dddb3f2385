//! vCPUs stuck inside one guest entry, and the ones the VMM can free.
//!
//! A vCPU that loads a segment whose descriptor lies in ROM with its
//! accessed bit clear makes the CPU write the descriptor. A PC drops that
//! write (real KVM emulates the load and reports the write as an MMIO
//! exit, which `pgm` ignores); some KVMs (the development host's kvm_pvm)
//! fault on it forever inside `KVM_RUN`, and no exit ever reaches the VMM.
//!
//! The [`StallWatch`] thread kicks an EMT whose vCPU has stayed in one
//! guest entry for a whole [`WATCH_PERIOD`]. The EMT then looks at the
//! vCPU ([`recover`]): if its descriptor tables lie in read-only ROM and
//! hold a present descriptor with the accessed bit clear, it runs one
//! instruction with those ROM pages writable (a `pgm` ROM window) and puts
//! their bytes back: the write is dropped, as on a PC, and the guest runs
//! on. If even that instruction does not complete, the run ends with a
//! clear error instead of spinning silently.
//!
//! A kicked vCPU may also be halted with interrupts off (`cli; hlt`, as
//! Linux halts every CPU when it cannot power the machine off): no
//! interrupt can wake it. Once every vCPU is seen so (see
//! [`StallWatch::halted_for_good`]) nothing is left to send one an NMI or
//! INIT, and the run ends ([`RunOutcome::GuestHalted`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use hm_vmx::{Exit, Sregs, VirtualCpu};

use super::EmtState;
use super::exit::{DebugHooks, handle_exit};
use super::host::EmtHost;
use crate::error::{Error, Result};
use crate::outcome::RunOutcome;
use crate::sync::ffs::{ExecState, ForcedActions};

/// How long a vCPU may stay in one guest entry before its EMT looks at it
/// (it is looked at after one to two periods).
pub(crate) const WATCH_PERIOD: Duration = Duration::from_millis(50);

/// Per vCPU: guest entries so far, whether the watchdog kicked it, and
/// when it was last seen halted with interrupts off.
#[derive(Debug)]
pub(crate) struct StallWatch {
    entries: Box<[AtomicU64]>,
    suspect: Box<[AtomicBool]>,
    /// The [`halt_epoch`](Self::halt_epoch) at which each vCPU was last
    /// seen halted with interrupts off; [`NOT_HALTED`] since it ran.
    halted: Box<[AtomicU64]>,
    /// Counts the vCPUs that started a halt with interrupts off.
    halt_epoch: AtomicU64,
}

/// A vCPU not seen halted with interrupts off since it last ran.
const NOT_HALTED: u64 = 0;

impl StallWatch {
    /// A watch over `cpus` vCPUs.
    pub(crate) fn new(cpus: u32) -> Self {
        StallWatch {
            entries: (0..cpus).map(|_| AtomicU64::new(0)).collect(),
            suspect: (0..cpus).map(|_| AtomicBool::new(false)).collect(),
            halted: (0..cpus).map(|_| AtomicU64::new(NOT_HALTED)).collect(),
            halt_epoch: AtomicU64::new(NOT_HALTED + 1),
        }
    }

    /// Records that `cpu` was seen halted with interrupts off; true when
    /// the whole guest is halted for good: every vCPU was seen so since the
    /// last of them began its halt. (A vCPU woken inside one guest entry by
    /// another's NMI or INIT is not noticed at once; but the one that woke
    /// it was running then, and its halt afterwards makes every vCPU be
    /// seen halted again before the run ends.)
    pub(crate) fn halted_for_good(&self, cpu: u32) -> bool {
        let Some(slot) = self.halted.get(cpu as usize) else {
            return false;
        };
        let epoch = if slot.load(Ordering::SeqCst) == NOT_HALTED {
            self.halt_epoch.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.halt_epoch.load(Ordering::SeqCst)
        };
        slot.store(epoch, Ordering::SeqCst);
        self.halted
            .iter()
            .all(|s| s.load(Ordering::SeqCst) == epoch)
    }

    /// Records that `cpu` left the guest other than halted with interrupts
    /// off (it ran, or may have).
    pub(crate) fn running(&self, cpu: u32) {
        if let Some(slot) = self.halted.get(cpu as usize) {
            slot.store(NOT_HALTED, Ordering::SeqCst);
        }
    }

    /// Counts an entry of `cpu` into the guest (called by its EMT).
    pub(crate) fn entering(&self, cpu: u32) {
        if let Some(e) = self.entries.get(cpu as usize) {
            e.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks `cpu` as kicked out of a long guest entry.
    pub(crate) fn mark(&self, cpu: u32) {
        if let Some(s) = self.suspect.get(cpu as usize) {
            s.store(true, Ordering::SeqCst);
        }
    }

    /// Whether the watchdog kicked `cpu` out of a long guest entry (and
    /// forgets it).
    pub(crate) fn take_suspect(&self, cpu: u32) -> bool {
        self.suspect
            .get(cpu as usize)
            .is_some_and(|s| s.swap(false, Ordering::SeqCst))
    }

    /// The watchdog: every [`WATCH_PERIOD`] until `stop` is dropped (or
    /// sends), kicks each vCPU that was in the guest at the last look and
    /// has not left that entry since.
    pub(crate) fn watch(&self, ffs: &ForcedActions, stop: &Receiver<()>) {
        let mut last: Vec<Option<u64>> = vec![None; self.entries.len()];
        while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(WATCH_PERIOD) {
            for (cpu, seen) in last.iter_mut().enumerate() {
                let entries = self.entries[cpu].load(Ordering::Relaxed);
                let in_guest = matches!(ffs.exec_state(cpu as u32), Ok(ExecState::InGuest));
                let now = in_guest.then_some(entries);
                if now.is_some() && *seen == now {
                    self.mark(cpu as u32);
                    if let Err(e) = ffs.notify_cpu(cpu as u32) {
                        tracing::debug!("stall watch: kicking vCPU {cpu}: {e}");
                    }
                }
                *seen = now;
            }
        }
    }
}

/// The accessed bit of a segment descriptor.
const ACCESSED: u64 = 1 << 40;
/// The descriptor-type bit: code or data segment (rather than system).
const CODE_OR_DATA: u64 = 1 << 44;
/// The present bit.
const PRESENT: u64 = 1 << 47;

/// Whether the descriptor table `table` holds a present code or data
/// descriptor with its accessed bit clear (one whose load writes it).
pub(crate) fn writes_on_load(table: &[u8]) -> bool {
    table.chunks_exact(8).any(|d| {
        let d = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
        d & (PRESENT | CODE_OR_DATA) == PRESENT | CODE_OR_DATA && d & ACCESSED == 0
    })
}

/// The guest-physical ranges (first byte, length) of `sregs`' GDT and LDT,
/// when the guest runs protected mode without paging (linear addresses
/// are physical). Firmware loads its first segments that way.
pub(crate) fn descriptor_tables(sregs: &Sregs) -> Vec<(u64, u64)> {
    const PE: u64 = 1;
    const PG: u64 = 1 << 31;
    if sregs.cr0 & PE == 0 || sregs.cr0 & PG != 0 {
        return Vec::new();
    }
    let mut tables = vec![(sregs.gdt.base, u64::from(sregs.gdt.limit) + 1)];
    if sregs.ldt.present != 0 && sregs.ldt.unusable == 0 {
        tables.push((sregs.ldt.base, u64::from(sregs.ldt.limit) + 1));
    }
    tables
}

/// After the watchdog kicked `vcpu` out of a long guest entry: ends the
/// run if it and every other vCPU are halted for good (not while a
/// debugger is attached: its user may want to look at the halted guest),
/// frees it if it is stuck on a descriptor write to ROM (see the module),
/// and says what the EMT does next.
pub(crate) fn recover(vcpu: &mut impl VirtualCpu, host: &impl EmtHost) -> Result<EmtState> {
    let cpu = vcpu.id();
    if vcpu.halted_with_interrupts_off()? {
        let watch = host.stall_watch();
        if watch.halted_for_good(cpu) && !host.exit_context(cpu).debug.is_attached() {
            host.end_run(RunOutcome::GuestHalted);
            return Ok(EmtState::Terminated);
        }
        return Ok(EmtState::Ready);
    }
    host.stall_watch().running(cpu);
    let Some(window) = host.open_descriptor_window(cpu)? else {
        return Ok(EmtState::Ready);
    };
    let Some(guest) = host.forced_actions().enter_guest(cpu)? else {
        host.close_descriptor_window(cpu, window)?;
        return Ok(EmtState::Ready);
    };
    host.stall_watch().entering(cpu);
    let exit = vcpu.run();
    drop(guest);
    let next = match exit? {
        Exit::Debug(_) => Ok(EmtState::Ready),
        Exit::Interrupted if host.stall_watch().take_suspect(cpu) => Err(()),
        Exit::Interrupted => Ok(EmtState::Ready),
        other => {
            let action = handle_exit(other, &host.exit_context(cpu))?;
            host.close_descriptor_window(cpu, window)?;
            return super::after_exit(vcpu, host, action);
        }
    };
    host.close_descriptor_window(cpu, window)?;
    next.map_err(|()| Error::GuestStuck {
        cpu,
        rip: vcpu.regs().map(|r| r.rip).unwrap_or(u64::MAX),
        why: "it loads a segment whose descriptor is in ROM, and the instruction does not \
              complete even with the descriptor tables writable: this host's KVM cannot run \
              the firmware (descriptor tables in RAM, or accessed bits set in the image, avoid it)"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::ffs::Kick;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn only_present_code_or_data_descriptors_with_accessed_clear_write() {
        let bytes = |ds: &[u64]| -> Vec<u8> { ds.iter().flat_map(|d| d.to_le_bytes()).collect() };
        // null, flat code and data with accessed set: nothing to write
        assert!(!writes_on_load(&bytes(&[
            0,
            0x00cf_9b00_0000_ffff,
            0x00cf_9300_0000_ffff
        ])));
        // data with accessed clear
        assert!(writes_on_load(&bytes(&[0, 0x00cf_9200_0000_ffff])));
        // not present, or a system descriptor (an available TSS): no
        assert!(!writes_on_load(&bytes(&[0x00cf_1200_0000_ffff])));
        assert!(!writes_on_load(&bytes(&[0x0000_8900_0000_0067])));
        // a partial descriptor at the end is ignored
        assert!(!writes_on_load(&[0x00; 7]));
    }

    #[test]
    fn tables_only_in_protected_mode_without_paging() {
        let mut s = Sregs::default();
        s.gdt.base = 0xf0000;
        s.gdt.limit = 0x17;
        assert!(descriptor_tables(&s).is_empty());
        s.cr0 = 1;
        assert_eq!(descriptor_tables(&s), vec![(0xf0000, 0x18)]);
        s.ldt.present = 1;
        s.ldt.base = 0x1000;
        s.ldt.limit = 7;
        assert_eq!(descriptor_tables(&s), vec![(0xf0000, 0x18), (0x1000, 8)]);
        s.cr0 |= 1 << 31;
        assert!(descriptor_tables(&s).is_empty());
    }

    #[test]
    fn the_guest_is_halted_for_good_once_every_vcpu_is_seen_halted_after_the_last_halt() {
        let watch = StallWatch::new(3);
        assert!(!watch.halted_for_good(0));
        assert!(!watch.halted_for_good(1));
        // vCPU 2 halts last: 0 and 1 were seen before, they must be again
        assert!(!watch.halted_for_good(2));
        assert!(!watch.halted_for_good(0));
        assert!(watch.halted_for_good(1));
        // vCPU 1 ran: it must halt again, and the others be seen after
        watch.running(1);
        assert!(!watch.halted_for_good(0));
        assert!(!watch.halted_for_good(2));
        assert!(!watch.halted_for_good(1));
        assert!(!watch.halted_for_good(0));
        assert!(!watch.halted_for_good(1));
        assert!(watch.halted_for_good(2));
        // a vCPU the watch does not know is never halted for good
        assert!(!watch.halted_for_good(3));
    }

    #[test]
    fn a_single_vcpu_is_halted_for_good_when_first_seen_halted() {
        let watch = StallWatch::new(1);
        assert!(watch.halted_for_good(0));
        watch.running(0);
        assert!(watch.halted_for_good(0));
    }

    struct CountKicks(AtomicU32);

    impl Kick for CountKicks {
        fn kick(&self, _cpu: u32) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_watch_kicks_a_vcpu_only_when_it_stays_in_one_entry() {
        let kicks = Arc::new(CountKicks(AtomicU32::new(0)));
        let ffs = ForcedActions::new(1, kicks.clone()).unwrap();
        let watch = StallWatch::new(1);
        let (stop, stopped) = std::sync::mpsc::channel();
        let guest = ffs.enter_guest(0).unwrap().unwrap();
        std::thread::scope(|s| {
            let (w, f) = (&watch, &ffs);
            s.spawn(move || w.watch(f, &stopped));
            // entering again and again: never a stall
            for _ in 0..10 {
                watch.entering(0);
                std::thread::sleep(WATCH_PERIOD / 4);
            }
            assert_eq!(kicks.0.load(Ordering::SeqCst), 0);
            assert!(!watch.take_suspect(0));
            // one long entry: kicked within two periods and a bit
            std::thread::sleep(WATCH_PERIOD * 3);
            assert!(kicks.0.load(Ordering::SeqCst) >= 1);
            assert!(watch.take_suspect(0));
            // out of the guest: no more kicks
            drop(guest);
            std::thread::sleep(WATCH_PERIOD);
            let before = kicks.0.load(Ordering::SeqCst);
            std::thread::sleep(WATCH_PERIOD * 3);
            assert_eq!(kicks.0.load(Ordering::SeqCst), before);
            stop.send(()).unwrap();
        });
    }
}
