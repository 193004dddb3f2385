//! Gauges: u8/u16/u32/u64 values that are set rather than counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};

mod sealed {
    pub trait Sealed {}
}

/// A shared gauge cell of any width, as the registry sees it (not exported).
#[derive(Clone)]
pub enum GaugeCell {
    U8(Arc<AtomicU8>),
    U16(Arc<AtomicU16>),
    U32(Arc<AtomicU32>),
    U64(Arc<AtomicU64>),
}

impl GaugeCell {
    pub(crate) fn read(&self) -> u64 {
        match self {
            GaugeCell::U8(a) => u64::from(a.load(Ordering::Relaxed)),
            GaugeCell::U16(a) => u64::from(a.load(Ordering::Relaxed)),
            GaugeCell::U32(a) => u64::from(a.load(Ordering::Relaxed)),
            GaugeCell::U64(a) => a.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn bits(&self) -> u8 {
        match self {
            GaugeCell::U8(_) => 8,
            GaugeCell::U16(_) => 16,
            GaugeCell::U32(_) => 32,
            GaugeCell::U64(_) => 64,
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            GaugeCell::U8(a) => a.store(0, Ordering::Relaxed),
            GaugeCell::U16(a) => a.store(0, Ordering::Relaxed),
            GaugeCell::U32(a) => a.store(0, Ordering::Relaxed),
            GaugeCell::U64(a) => a.store(0, Ordering::Relaxed),
        }
    }
}

/// An unsigned integer type a [`Gauge`] can hold: `u8`, `u16`, `u32` or `u64`.
pub trait GaugeValue: sealed::Sealed + Copy + Send + Sync + 'static {
    /// The atomic type storing the value.
    #[doc(hidden)]
    type Atomic: Send + Sync;
    #[doc(hidden)]
    fn new_cell() -> (Arc<Self::Atomic>, GaugeCell);
    #[doc(hidden)]
    fn load(a: &Self::Atomic) -> Self;
    #[doc(hidden)]
    fn store(a: &Self::Atomic, v: Self);
    #[doc(hidden)]
    fn fetch_add(a: &Self::Atomic, v: Self);
    #[doc(hidden)]
    fn fetch_sub(a: &Self::Atomic, v: Self);
    #[doc(hidden)]
    const ONE: Self;
}

macro_rules! gauge_value {
    ($t:ty, $atomic:ty, $variant:ident) => {
        impl sealed::Sealed for $t {}
        impl GaugeValue for $t {
            type Atomic = $atomic;
            fn new_cell() -> (Arc<$atomic>, GaugeCell) {
                let a = Arc::new(<$atomic>::new(0));
                (a.clone(), GaugeCell::$variant(a))
            }
            #[inline]
            fn load(a: &$atomic) -> $t {
                a.load(Ordering::Relaxed)
            }
            #[inline]
            fn store(a: &$atomic, v: $t) {
                a.store(v, Ordering::Relaxed)
            }
            #[inline]
            fn fetch_add(a: &$atomic, v: $t) {
                a.fetch_add(v, Ordering::Relaxed);
            }
            #[inline]
            fn fetch_sub(a: &$atomic, v: $t) {
                a.fetch_sub(v, Ordering::Relaxed);
            }
            const ONE: $t = 1;
        }
    };
}

gauge_value!(u8, AtomicU8, U8);
gauge_value!(u16, AtomicU16, U16);
gauge_value!(u32, AtomicU32, U32);
gauge_value!(u64, AtomicU64, U64);

/// A hot-path handle to a gauge sample of width `T` (default `u64`).
///
/// Plain gauges are left alone by a registry reset; gauges registered as
/// resettable (see [`SampleBuilder::resettable`](crate::SampleBuilder::resettable))
/// go back to zero.
///
/// ```
/// let reg = stam::Registry::new();
/// let g = reg.gauge_u64("/PGM/Page/cAllPages", stam::Unit::Pages, "All pages")?;
/// g.set(7);
/// g.add(3);
/// assert_eq!(g.get(), 10);
/// let small: stam::Gauge<u8> = reg.gauge("/Dev/State", stam::Unit::None, "Device state")?;
/// small.set(0xff);
/// assert_eq!(small.get(), 0xff);
/// # Ok::<(), stam::Error>(())
/// ```
pub struct Gauge<T: GaugeValue = u64> {
    cell: Arc<T::Atomic>,
}

impl<T: GaugeValue> Clone for Gauge<T> {
    fn clone(&self) -> Self {
        Gauge {
            cell: Arc::clone(&self.cell),
        }
    }
}

impl<T: GaugeValue> Gauge<T> {
    pub(crate) fn new() -> (Self, GaugeCell) {
        let (cell, erased) = T::new_cell();
        (Gauge { cell }, erased)
    }

    /// Sets the value.
    #[inline]
    pub fn set(&self, v: T) {
        T::store(&self.cell, v);
    }

    /// Reads the value.
    #[inline]
    pub fn get(&self) -> T {
        T::load(&self.cell)
    }

    /// Adds `v` (wrapping).
    #[inline]
    pub fn add(&self, v: T) {
        T::fetch_add(&self.cell, v);
    }

    /// Subtracts `v` (wrapping).
    #[inline]
    pub fn sub(&self, v: T) {
        T::fetch_sub(&self.cell, v);
    }

    /// Adds one (wrapping).
    #[inline]
    pub fn inc(&self) {
        self.add(T::ONE);
    }

    /// Subtracts one (wrapping).
    #[inline]
    pub fn dec(&self) {
        self.sub(T::ONE);
    }
}

impl<T: GaugeValue + std::fmt::Debug> std::fmt::Debug for Gauge<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gauge").field("value", &self.get()).finish()
    }
}
