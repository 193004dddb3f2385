//! Saving a VM into a file, plain or live, and the live save's core that
//! teleport shares.
//!
//! Nothing durable happens while the guest is stopped when it runs on
//! afterwards: the VM resumes once the last byte is written (to the
//! kernel), and the file is synced and renamed into place with the guest
//! running ([`ssm::WrittenFile::commit`]). The save succeeds only once the
//! file is durable; a commit that fails leaves no file at the target, and
//! the VM runs on. A VM that powers off after the save does so only once
//! the file is durable (a failed commit resumes it instead).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ssm::SaveOptions;

use super::{AfterSave, SaveReport, SaveRequest, manager};
use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::sync::rendezvous::{RendezvousFlags, RendezvousType};
use crate::sync::vmstate::{VmState, VmStateError};

/// Updates `pgm`'s page states from guest memory (call with the vCPUs out
/// of the guest): pages the guest wrote through KVM are no longer taken
/// for zero pages. Nothing is given back to the host, so the devices,
/// still serving requests until they are parked, lose no write.
fn allocate_written_pages(machine: &Machine) -> Result<()> {
    machine
        .memory
        .phys()
        .read()
        .allocate_written_zero_pages()
        .map_err(|e| Error::Memory(e.to_string()))?;
    Ok(())
}

/// Live passes may send at most this many times the guest's RAM before
/// the save gives up (a guest that dirties memory faster than it can be
/// sent never converges).
const MAX_LIVE_RAM_MULTIPLE: u64 = 4;

/// Live passes allowed. pgm votes by VirtualBox's rule, whose long-term
/// average spans 64 passes: a guest that keeps dirtying a steady few hundred
/// pages (Linux's timers and page cache) is done only once that history has
/// filled, so the passes must not run out before it (32, ssm's default, made
/// every live save of an idle Linux guest fail). The byte limit above is
/// what bounds a guest that dirties memory faster than it can be sent.
const MAX_LIVE_PASSES: u32 = 256;
const _: () = assert!(MAX_LIVE_PASSES as usize > 2 * pgm::phys::DIRTY_HISTORY);

fn save_options(machine: &Machine) -> SaveOptions {
    let mut options = SaveOptions::default();
    options.creator = concat!("vmm ", env!("CARGO_PKG_VERSION")).to_string();
    options.max_passes = MAX_LIVE_PASSES;
    options.max_live_bytes = Some(
        machine
            .saved
            .config
            .ram_bytes
            .saturating_mul(MAX_LIVE_RAM_MULTIPLE),
    );
    options
}

/// Takes every EMT out of the guest: `from -> via`, a rendezvous, and
/// `to` once the last EMT is out.
fn stop_emts(machine: &Arc<Machine>, from: VmState, via: VmState, to: VmState) -> Result<()> {
    machine.state.try_transition(&[(from, via)])?;
    let m = Arc::clone(machine);
    machine.rendezvous.call(
        RendezvousType::Descending,
        RendezvousFlags::default(),
        move |cpu| {
            // Descending: vCPU 0 is the last, when every EMT is out.
            if cpu == 0 {
                m.state.set(to)?;
            }
            Ok(None)
        },
    )?;
    Ok(())
}

/// Stops a running VM as a pause does (`Running -> Suspending ->
/// Suspended`).
fn suspend(machine: &Arc<Machine>) -> Result<()> {
    stop_emts(
        machine,
        VmState::Running,
        VmState::Suspending,
        VmState::Suspended,
    )
}

/// A save whose every byte is written, with the VM still stopped: what it
/// wrote, when the vCPUs stopped, and the end of its sink.
pub(super) struct Written<T> {
    bytes: u64,
    units: u32,
    live_passes: u32,
    stopped: Instant,
    sink: T,
}

impl<T> Written<T> {
    /// Ends the sink with `f` (committing the file, say).
    fn map_sink<U>(self, f: impl FnOnce(T) -> Result<U>) -> Result<Written<U>> {
        Ok(Written {
            bytes: self.bytes,
            units: self.units,
            live_passes: self.live_passes,
            stopped: self.stopped,
            sink: f(self.sink)?,
        })
    }

    /// The report, the VM stopped from the vCPUs' stop until now, and the
    /// sink.
    pub(super) fn end(self) -> (SaveReport, T) {
        let report = SaveReport {
            bytes: self.bytes,
            units: self.units,
            live_passes: self.live_passes,
            downtime: self.stopped.elapsed(),
        };
        (report, self.sink)
    }
}

/// Saves the VM to `path` (see the module documentation): returns once the
/// file is durable, the VM resumed (or powered off) as asked.
pub(crate) fn save(
    machine: &Arc<Machine>,
    path: &Path,
    request: SaveRequest,
) -> Result<SaveReport> {
    let (report, unsynced) = save_and_resume(machine, path, request)?;
    if let Some(file) = unsynced {
        file.commit()?;
    }
    Ok(report)
}

/// A save up to the VM being where the caller wants it. A VM that was
/// running and resumes is back in the guest before its file is durable:
/// the file comes back written, to be committed; otherwise it has been
/// committed already. The report's downtime ends when the VM runs again
/// (or, when it does not, once the file is durable).
pub(super) fn save_and_resume(
    machine: &Arc<Machine>,
    path: &Path,
    request: SaveRequest,
) -> Result<(SaveReport, Option<ssm::WrittenFile>)> {
    let was_running = match machine.state.state() {
        VmState::Running => true,
        VmState::Suspended => false,
        current => {
            return Err(VmStateError::WrongState {
                who: "save",
                current,
                expected: vec![VmState::Running, VmState::Suspended],
            }
            .into());
        }
    };
    // Refused before the VM stops: a configuration that could not be
    // restored, or a target that is not a regular file.
    machine.saved.config.check()?;
    let file = ssm::AtomicFile::create(path)?;
    let written = if request.live && was_running {
        save_live(machine, file)
    } else {
        if was_running {
            suspend(machine)?;
        }
        save_stopped(machine, file)
    };
    // A VM that runs on is back in the guest before its file is synced; one
    // that stays stopped or powers off only once it is.
    let resumes = was_running && request.then == AfterSave::Resume;
    let written = written.and_then(|w| {
        w.map_sink(|file| {
            if resumes {
                return Ok(Some(file));
            }
            file.commit()?;
            Ok(None)
        })
    });
    // Back to where the caller wants the VM, also after a failed save.
    let resume = || crate::VmHandle::new(Arc::clone(machine)).resume();
    match written {
        Ok(w) => {
            match request.then {
                AfterSave::PowerOff => machine.power_off()?,
                AfterSave::Resume if was_running => resume()?,
                AfterSave::Resume => {}
            }
            Ok(w.end())
        }
        Err(e) => {
            if was_running {
                resume()?;
            }
            Err(e)
        }
    }
}

/// About what the first pass of a save writes: the guest pages that hold
/// data (as far as `pgm` knows).
fn expected_bytes(machine: &Machine) -> u64 {
    let pages = machine.memory.phys().read().page_stats();
    (pages.private + pages.rom) * pgm::phys::PAGE_SIZE
}

/// A save of a suspended VM into `file`, up to its last byte written.
fn save_stopped(
    machine: &Arc<Machine>,
    mut file: ssm::AtomicFile,
) -> Result<Written<ssm::WrittenFile>> {
    let stopped = Instant::now();
    machine
        .state
        .try_transition(&[(VmState::Suspended, VmState::Saving)])?;
    // Guest writes through KVM bypass `pgm`'s page states: bring them up
    // to date so that no written page is saved as a zero page.
    let stats = allocate_written_pages(machine)
        .and_then(|()| manager(machine, None))
        .and_then(|mut m| {
            let sink = machine
                .saved
                .progress
                .track(expected_bytes(machine), &mut file);
            Ok(m.save(sink, &save_options(machine))?)
        });
    machine.state.set(VmState::Suspended)?;
    let stats = stats?;
    Ok(Written {
        bytes: stats.bytes,
        units: stats.units,
        live_passes: 0,
        stopped,
        sink: file.finish_writes()?,
    })
}

/// A live save of a running VM into `file`, up to its last byte written.
fn save_live(machine: &Arc<Machine>, file: ssm::AtomicFile) -> Result<Written<ssm::WrittenFile>> {
    live_to(machine, file, |file| Ok(file.finish_writes()?))
}

/// A live save of a running VM into `sink`; `finish` ends the sink with
/// the VM still stopped (writes the file's last bytes, waits for the
/// teleport target's answer). On success the VM is suspended.
pub(super) fn live_to<W: Write, T>(
    machine: &Arc<Machine>,
    sink: W,
    finish: impl FnOnce(W) -> Result<T>,
) -> Result<Written<T>> {
    let mut sink = machine.saved.progress.track(expected_bytes(machine), sink);
    machine
        .state
        .try_transition(&[(VmState::Running, VmState::RunningLs)])?;
    let mut stopped_at = None;
    let result = (|| {
        let mut m = manager(machine, Some(machine))?;
        let registered = u32::try_from(m.unit_ids().len()).unwrap_or(u32::MAX);
        let stats = m.save_live(&mut sink, &save_options(machine), || {
            stop_emts(
                machine,
                VmState::RunningLs,
                VmState::SuspendingLs,
                VmState::SuspendedLs,
            )
            .map_err(ssm::Error::callback)?;
            stopped_at = Some(Instant::now());
            Ok(())
        })?;
        sink.flush().map_err(ssm::Error::from)?;
        let end = finish(sink.into_inner())?;
        Ok::<_, crate::Error>((stats, registered, end))
    })();
    // Wherever the save ended, bring the state back to Suspended (stopped)
    // or Running (never stopped).
    let back: &[(VmState, VmState)] = &[
        (VmState::SuspendedLs, VmState::Suspended),
        (VmState::RunningLs, VmState::Running),
    ];
    machine.state.try_transition(back)?;
    if machine.state.state() == VmState::Running {
        // The live save failed before stopping the VM; stop it now so
        // that the caller's resume finds it suspended.
        suspend(machine)?;
    }
    let (stats, registered, sink) = result?;
    // The final pass writes one record per unit; `pgm` is the only live
    // unit, so the other records are its live passes.
    Ok(Written {
        bytes: stats.bytes,
        units: stats.units,
        live_passes: stats.units.saturating_sub(registered),
        // ssm stops the VM before the final pass of every live save that
        // succeeds.
        stopped: stopped_at.unwrap_or_else(Instant::now),
        sink,
    })
}

#[cfg(test)]
mod tests;
