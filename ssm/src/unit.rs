//! The unit trait: what a component implements to take part in save/load.

use crate::error::Result;
use crate::reader::UnitReader;
use crate::writer::UnitWriter;

/// A unit's answer after a live pass ([`Unit::live_vote`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vote {
    /// Ready for the final pass; keep calling `live_exec` while other units
    /// still want passes.
    Ready,
    /// Needs another live pass (too much changed since the last one).
    AnotherPass,
    /// Finished with live passes: never call `live_exec` or `live_vote` again.
    Done,
    /// Cannot converge: abandon the live save.
    GiveUp,
}

/// A named, versioned piece of VM state that saves and loads itself.
///
/// Non-live save: `save_prep`, `save_exec`, `save_done`, each called for all
/// units in registration order. Live save ([`crate::Manager::save_live`]):
/// `live_prep` for the units that return true from `is_live`, then passes
/// 0, 1, 2, ... of `live_exec` (each pass becomes its own unit record in the
/// stream) followed by `live_vote`, until every live unit votes `Ready` or
/// `Done`; then the caller's stop-the-VM hook; then the final pass
/// (`save_prep`, `save_exec`, `save_done`) on the stopped VM. `save_done` is
/// called for every unit when the save ends, also when it fails, so units
/// can release what they set up.
///
/// Load: `load_prep` for all units, then `load_exec` for each unit record in
/// the stream, in stream order, with the stored data version and pass
/// ([`crate::PASS_FINAL`] for the final pass), then `load_done` for all units
/// (also on failure).
///
/// ```
/// use ssm::{Manager, SaveOptions, StreamReader, Unit, UnitReader, UnitWriter};
///
/// struct Pit { counter: u16 }
///
/// impl Unit for Pit {
///     fn name(&self) -> &str { "pit" }
///     fn version(&self) -> u32 { 1 }
///     fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
///         w.put_u16(self.counter)
///     }
///     fn load_exec(&mut self, r: &mut UnitReader<'_>, _version: u32, _pass: u32) -> ssm::Result<()> {
///         self.counter = r.get_u16()?;
///         Ok(())
///     }
/// }
///
/// # fn main() -> ssm::Result<()> {
/// let mut m = Manager::new();
/// m.register(Box::new(Pit { counter: 0x1234 }))?;
/// let mut bytes = Vec::new();
/// m.save(&mut bytes, &SaveOptions::default())?;
///
/// let mut m2 = Manager::new();
/// m2.register(Box::new(Pit { counter: 0 }))?;
/// m2.load(StreamReader::from_slice(&bytes)?)?;
/// # Ok(()) }
/// ```
pub trait Unit: Send {
    /// Unit name: 1 to 48 printable ASCII bytes, unique with the instance.
    fn name(&self) -> &str;

    /// Instance number (default 0).
    fn instance(&self) -> u32 {
        0
    }

    /// Version of the data this unit writes.
    fn version(&self) -> u32;

    /// Oldest stored version `load_exec` understands (default: only the current one).
    fn oldest_loadable_version(&self) -> u32 {
        self.version()
    }

    /// Whether the unit takes part in live passes (default false).
    fn is_live(&self) -> bool {
        false
    }

    /// Prepares for live passes (e.g. starts dirty tracking).
    fn live_prep(&mut self) -> Result<()> {
        Ok(())
    }

    /// Writes what changed since the last pass, while the VM runs.
    fn live_exec(&mut self, _w: &mut UnitWriter<'_>, _pass: u32) -> Result<()> {
        Ok(())
    }

    /// Votes after a live pass.
    fn live_vote(&mut self, _pass: u32) -> Result<Vote> {
        Ok(Vote::Done)
    }

    /// Prepares the final pass (the VM is stopped).
    fn save_prep(&mut self) -> Result<()> {
        Ok(())
    }

    /// Writes the final state.
    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> Result<()>;

    /// Cleans up after a save, successful or not.
    fn save_done(&mut self) -> Result<()> {
        Ok(())
    }

    /// Prepares for loading.
    fn load_prep(&mut self) -> Result<()> {
        Ok(())
    }

    /// Reads one record of this unit: stored data `version`, and `pass`
    /// ([`crate::PASS_FINAL`] for the final pass). Must read exactly what
    /// was written (or skip the rest explicitly).
    fn load_exec(&mut self, r: &mut UnitReader<'_>, version: u32, pass: u32) -> Result<()>;

    /// Finishes a load, successful or not.
    fn load_done(&mut self) -> Result<()> {
        Ok(())
    }
}
