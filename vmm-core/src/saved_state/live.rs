//! `pgm` in a live save: its live preparation runs with every EMT out of
//! the guest.

use std::sync::Arc;

use parking_lot::Mutex;
use pgm::phys::PgmUnit;
use ssm::{Unit, UnitReader, UnitWriter, Vote};

use crate::machine::Machine;
use crate::sync::rendezvous::{RendezvousFlags, RendezvousType};

/// [`PgmUnit`] for a live save of a running VM.
///
/// Guest writes through KVM bypass `pgm`'s page states, so before the first
/// pass the pages must be scanned (written zero-state pages become
/// allocated) and dirty logging switched on, with no vCPU in the guest in
/// between: otherwise a write could land in a page the first pass sends as
/// zero and the dirty log never reports. Both happen inside one EMT
/// rendezvous; the guest runs on right after. The scan only reads guest
/// memory: the devices go on serving requests meanwhile, and a scan that
/// gave all-zero pages back to the host would drop what they write into
/// a page between its check and the discard.
pub(crate) struct LivePgm {
    inner: Arc<Mutex<PgmUnit>>,
    name: String,
    version: u32,
    machine: Arc<Machine>,
}

impl LivePgm {
    pub(crate) fn new(inner: PgmUnit, machine: Arc<Machine>) -> Self {
        LivePgm {
            name: inner.name().to_owned(),
            version: inner.version(),
            inner: Arc::new(Mutex::new(inner)),
            machine,
        }
    }
}

impl Unit for LivePgm {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn is_live(&self) -> bool {
        true
    }

    fn live_prep(&mut self) -> ssm::Result<()> {
        let inner = Arc::clone(&self.inner);
        let machine = Arc::clone(&self.machine);
        self.machine
            .rendezvous
            .call(
                RendezvousType::Descending,
                RendezvousFlags::default(),
                move |cpu| {
                    // Descending: vCPU 0 is the last, when every EMT is out.
                    if cpu == 0 {
                        machine.memory.phys().read().allocate_written_zero_pages()?;
                        inner.lock().live_prep()?;
                    }
                    Ok(None)
                },
            )
            .map_err(ssm::Error::callback)?;
        Ok(())
    }

    fn live_exec(&mut self, w: &mut UnitWriter<'_>, pass: u32) -> ssm::Result<()> {
        self.inner.lock().live_exec(w, pass)
    }

    fn live_vote(&mut self, pass: u32) -> ssm::Result<Vote> {
        self.inner.lock().live_vote(pass)
    }

    fn save_prep(&mut self) -> ssm::Result<()> {
        self.inner.lock().save_prep()
    }

    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        self.inner.lock().save_exec(w)
    }

    fn save_done(&mut self) -> ssm::Result<()> {
        self.inner.lock().save_done()
    }

    fn load_exec(&mut self, r: &mut UnitReader<'_>, version: u32, pass: u32) -> ssm::Result<()> {
        self.inner.lock().load_exec(r, version, pass)
    }
}
