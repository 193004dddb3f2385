//! Boolean samples.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A hot-path handle to a boolean sample.
///
/// ```
/// let reg = stam::Registry::new();
/// let f = reg.flag("/PGM/A20Enabled", "Whether the A20 gate is open")?;
/// f.set(true);
/// assert!(f.get());
/// # Ok::<(), stam::Error>(())
/// ```
#[derive(Clone)]
pub struct Flag {
    cell: Arc<AtomicBool>,
}

impl Flag {
    pub(crate) fn new() -> (Self, Arc<AtomicBool>) {
        let cell = Arc::new(AtomicBool::new(false));
        (
            Flag {
                cell: Arc::clone(&cell),
            },
            cell,
        )
    }

    /// Sets the value.
    #[inline]
    pub fn set(&self, v: bool) {
        self.cell.store(v, Ordering::Relaxed);
    }

    /// Reads the value.
    #[inline]
    pub fn get(&self) -> bool {
        self.cell.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Flag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flag").field("value", &self.get()).finish()
    }
}
