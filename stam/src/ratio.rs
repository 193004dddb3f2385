//! Ratio samples (`A:B`, two 32-bit values).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// The shared cells behind a [`Ratio`].
#[derive(Default)]
pub(crate) struct RatioCells {
    a: AtomicU32,
    b: AtomicU32,
}

impl RatioCells {
    pub(crate) fn read(&self) -> (u32, u32) {
        (
            self.a.load(Ordering::Relaxed),
            self.b.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn reset(&self) {
        self.a.store(0, Ordering::Relaxed);
        self.b.store(0, Ordering::Relaxed);
    }
}

/// A hot-path handle to a ratio sample `A:B` (for example good:bad, hits:misses).
///
/// ```
/// let reg = stam::Registry::new();
/// let r = reg.ratio("/PGM/CR3/HitsMisses", stam::Unit::GoodBad, "CR3 cache hits:misses")?;
/// r.add_a(3);
/// r.add_b(1);
/// assert_eq!(r.get(), (3, 1));
/// # Ok::<(), stam::Error>(())
/// ```
#[derive(Clone)]
pub struct Ratio {
    cells: Arc<RatioCells>,
}

impl Ratio {
    pub(crate) fn new() -> (Self, Arc<RatioCells>) {
        let cells = Arc::new(RatioCells::default());
        (
            Ratio {
                cells: Arc::clone(&cells),
            },
            cells,
        )
    }

    /// Sets both parts.
    pub fn set(&self, a: u32, b: u32) {
        self.cells.a.store(a, Ordering::Relaxed);
        self.cells.b.store(b, Ordering::Relaxed);
    }

    /// Adds to part A (wrapping).
    #[inline]
    pub fn add_a(&self, n: u32) {
        self.cells.a.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds to part B (wrapping).
    #[inline]
    pub fn add_b(&self, n: u32) {
        self.cells.b.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads `(A, B)`.
    pub fn get(&self) -> (u32, u32) {
        self.cells.read()
    }
}

impl std::fmt::Debug for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ratio").field("value", &self.get()).finish()
    }
}
