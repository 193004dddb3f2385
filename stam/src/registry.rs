//! The sample registry: registration, lookup by pattern, snapshot and reset.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::counter::{self, Counter, CounterCells};
use crate::error::Error;
use crate::flag::Flag;
use crate::gauge::{Gauge, GaugeCell, GaugeValue};
use crate::name::validate_name;
use crate::pattern::Pattern;
use crate::profile::{self, Profile, ProfileCell, ProfileCells};
use crate::ratio::{Ratio, RatioCells};
use crate::shard::SlotAllocator;
use crate::snapshot::{SampleSnapshot, Snapshot, Value};
use crate::unit::{Unit, Visibility};

type ReadFn = Arc<dyn Fn() -> u64 + Send + Sync>;
type ResetFn = Arc<dyn Fn() + Send + Sync>;

/// The storage of one sample, shared with its handles.
enum Kind {
    Counter(CounterCells),
    Gauge {
        cell: GaugeCell,
        hex: bool,
    },
    Flag(Arc<AtomicBool>),
    Profile(ProfileCells),
    Ratio(Arc<RatioCells>),
    Callback {
        read: ReadFn,
        reset: Option<ResetFn>,
        hex: bool,
    },
}

struct Entry {
    name: Arc<str>,
    unit: Unit,
    description: Arc<str>,
    visibility: Visibility,
    resettable: bool,
    kind: Kind,
}

impl Entry {
    fn value(&self) -> Value {
        match &self.kind {
            Kind::Counter(c) => Value::Counter {
                value: counter::read(c),
            },
            Kind::Gauge { cell, hex } => Value::Gauge {
                value: cell.read(),
                bits: cell.bits(),
                hex: *hex,
            },
            Kind::Flag(f) => Value::Bool {
                value: f.load(Ordering::Relaxed),
            },
            Kind::Profile(p) => {
                let s = profile::read(p);
                Value::Profile {
                    periods: s.periods,
                    total_ns: s.total_ns,
                    min_ns: s.min_ns,
                    max_ns: s.max_ns,
                }
            }
            Kind::Ratio(r) => {
                let (a, b) = r.read();
                Value::Ratio { a, b }
            }
            Kind::Callback { read, hex, .. } => Value::Callback {
                value: read(),
                hex: *hex,
            },
        }
    }

    fn reset(&self) {
        match &self.kind {
            Kind::Counter(c) => counter::reset(c),
            Kind::Gauge { cell, .. } => cell.reset(),
            Kind::Flag(f) => f.store(false, Ordering::Relaxed),
            Kind::Profile(p) => profile::reset(p),
            Kind::Ratio(r) => r.reset(),
            Kind::Callback { reset, .. } => {
                if let Some(reset) = reset {
                    reset();
                }
            }
        }
    }

    fn snapshot_with(&self, value: Value) -> SampleSnapshot {
        SampleSnapshot {
            name: Arc::clone(&self.name),
            unit: self.unit,
            description: Arc::clone(&self.description),
            visibility: self.visibility,
            resettable: self.resettable,
            value,
        }
    }
}

/// A thread-safe registry of statistics samples with hierarchical names.
///
/// Cloning is cheap and every clone sees the same samples. Registration
/// returns a handle whose updates take no lock; the registry lock is only
/// taken to register, remove, snapshot, reset and print. Callbacks and reset
/// hooks run without the registry lock held, so they may use the registry.
///
/// ```
/// let reg = stam::Registry::new();
/// let c = reg.counter("/GMM/cChunks", stam::Unit::Count, "Chunks allocated")?;
/// let g = reg.gauge_u64("/PGM/Page/cAllPages", stam::Unit::Pages, "All pages")?;
/// let p = reg.profile("/HM/RunLoop", "Run loop")?;
/// reg.callback("/GMM/cAllocated", stam::Unit::Pages, "Pages allocated", || 42)?;
/// c.add(2);
/// g.set(7);
/// drop(p.start());
///
/// let snap = reg.snapshot("/GMM/*");
/// assert_eq!(snap.samples.len(), 2);
/// assert_eq!(snap.get("/GMM/cAllocated").map(|s| s.value.clone()),
///            Some(stam::Value::Callback { value: 42, hex: false }));
///
/// assert_eq!(reg.reset(""), 2); // the counter and the profile
/// assert_eq!((c.get(), g.get()), (0, 7));
/// # Ok::<(), stam::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    samples: Arc<RwLock<Samples>>,
}

/// Everything behind the registry lock.
#[derive(Default)]
struct Samples {
    map: BTreeMap<Arc<str>, Arc<Entry>>,
    counters: SlotAllocator<AtomicU64>,
    profiles: SlotAllocator<ProfileCell>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("samples", &self.len())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts registering a sample with options beyond the shortcuts
    /// (visibility, resettability, hexadecimal display).
    ///
    /// ```
    /// let reg = stam::Registry::new();
    /// let g: stam::Gauge<u32> = reg
    ///     .sample("/HM/LastExitQual", stam::Unit::None, "Last exit qualification")
    ///     .hex()
    ///     .resettable(true)
    ///     .visibility(stam::Visibility::Used)
    ///     .gauge()?;
    /// g.set(0x1234);
    /// # Ok::<(), stam::Error>(())
    /// ```
    pub fn sample(
        &self,
        name: impl Into<String>,
        unit: Unit,
        description: impl Into<String>,
    ) -> SampleBuilder<'_> {
        SampleBuilder {
            registry: self,
            name: name.into(),
            unit,
            description: description.into(),
            visibility: Visibility::Always,
            resettable: None,
            hex: false,
        }
    }

    /// Registers a counter (reset by [`reset`](Registry::reset)).
    pub fn counter(
        &self,
        name: impl Into<String>,
        unit: Unit,
        description: impl Into<String>,
    ) -> Result<Counter, Error> {
        self.sample(name, unit, description).counter()
    }

    /// Registers a plain `u64` gauge (left alone by [`reset`](Registry::reset)).
    pub fn gauge_u64(
        &self,
        name: impl Into<String>,
        unit: Unit,
        description: impl Into<String>,
    ) -> Result<Gauge<u64>, Error> {
        self.gauge(name, unit, description)
    }

    /// Registers a plain gauge of width `T` (`u8`, `u16`, `u32` or `u64`).
    pub fn gauge<T: GaugeValue>(
        &self,
        name: impl Into<String>,
        unit: Unit,
        description: impl Into<String>,
    ) -> Result<Gauge<T>, Error> {
        self.sample(name, unit, description).gauge()
    }

    /// Registers a boolean sample (left alone by [`reset`](Registry::reset)).
    pub fn flag(
        &self,
        name: impl Into<String>,
        description: impl Into<String>,
    ) -> Result<Flag, Error> {
        self.sample(name, Unit::None, description).flag()
    }

    /// Registers a profile in `ns/call` (reset by [`reset`](Registry::reset)).
    pub fn profile(
        &self,
        name: impl Into<String>,
        description: impl Into<String>,
    ) -> Result<Profile, Error> {
        self.sample(name, Unit::NsPerCall, description).profile()
    }

    /// Registers a ratio `A:B` (left alone by [`reset`](Registry::reset)).
    pub fn ratio(
        &self,
        name: impl Into<String>,
        unit: Unit,
        description: impl Into<String>,
    ) -> Result<Ratio, Error> {
        self.sample(name, unit, description).ratio()
    }

    /// Registers a sample whose value `read` computes whenever it is read.
    pub fn callback(
        &self,
        name: impl Into<String>,
        unit: Unit,
        description: impl Into<String>,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Result<(), Error> {
        self.sample(name, unit, description).callback(read)
    }

    /// Removes the sample called `name`; returns whether there was one.
    /// Handles to it keep working but are no longer reported. (The cells of
    /// a removed counter or profile are not handed to a new sample; their
    /// block of cells is freed once all samples in it are gone.)
    pub fn remove(&self, name: &str) -> bool {
        self.samples.write().map.remove(name).is_some()
    }

    /// Removes every sample matching `pattern`; returns how many.
    pub fn remove_matching(&self, pattern: &str) -> usize {
        let pattern = Pattern::new(pattern);
        let map = &mut self.samples.write().map;
        let before = map.len();
        map.retain(|name, _| !pattern.matches(name));
        before - map.len()
    }

    /// Whether a sample called `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.samples.read().map.contains_key(name)
    }

    /// Number of registered samples.
    pub fn len(&self) -> usize {
        self.samples.read().map.len()
    }

    /// Whether no sample is registered.
    pub fn is_empty(&self) -> bool {
        self.samples.read().map.is_empty()
    }

    /// Copies the values of the samples matching `pattern`, sorted by name,
    /// leaving out [`Visibility::Used`] samples that are still zero.
    pub fn snapshot(&self, pattern: &str) -> Snapshot {
        self.snapshot_filtered(pattern, false)
    }

    /// Like [`snapshot`](Registry::snapshot) but includes unused samples too.
    pub fn snapshot_all(&self, pattern: &str) -> Snapshot {
        self.snapshot_filtered(pattern, true)
    }

    fn snapshot_filtered(&self, pattern: &str, include_unused: bool) -> Snapshot {
        let mut samples = Vec::new();
        // Callbacks run user code, so they are read after the lock is released.
        let mut callbacks = Vec::new();
        self.for_each_matching(&Pattern::new(pattern), |entry| {
            let value = if let Kind::Callback { hex, .. } = entry.kind {
                callbacks.push((samples.len(), Arc::clone(entry)));
                Value::Callback { value: 0, hex }
            } else {
                entry.value()
            };
            samples.push(entry.snapshot_with(value));
        });
        for (index, entry) in callbacks {
            samples[index].value = entry.value();
        }
        if !include_unused {
            samples.retain(|s| s.visibility != Visibility::Used || !s.value.is_zero());
        }
        Snapshot { samples }
    }

    /// Prints the samples matching `pattern` as a text table (see
    /// [`Snapshot::write_text`]).
    ///
    /// ```
    /// let reg = stam::Registry::new();
    /// reg.counter("/A/c", stam::Unit::Count, "Things")?.add(3);
    /// let mut out = String::new();
    /// reg.print("/A/*", &mut out, true).unwrap();
    /// assert!(out.ends_with("3 count - Things\n"));
    /// # Ok::<(), stam::Error>(())
    /// ```
    pub fn print(
        &self,
        pattern: &str,
        out: &mut dyn std::fmt::Write,
        descriptions: bool,
    ) -> std::fmt::Result {
        self.snapshot(pattern).write_text(out, descriptions)
    }

    /// Resets the resettable samples matching `pattern`; returns how many.
    ///
    /// Counters and profiles go back to zero (a profile's minimum back to
    /// its maximum value); gauges, booleans and ratios registered as
    /// resettable go back to zero; plain ones are left alone; callbacks run
    /// their reset hook if they have one.
    pub fn reset(&self, pattern: &str) -> usize {
        let mut entries = Vec::new();
        self.for_each_matching(&Pattern::new(pattern), |e| {
            if e.resettable {
                entries.push(Arc::clone(e));
            }
        });
        // Reset hooks run user code: call them without the lock.
        entries.iter().for_each(|e| e.reset());
        entries.len()
    }

    /// Calls `f` on the entries matching `pattern`, in name order, with the
    /// registry lock held (`f` must not run user code).
    fn for_each_matching(&self, pattern: &Pattern, mut f: impl FnMut(&Arc<Entry>)) {
        let samples = self.samples.read();
        let map = &samples.map;
        match pattern.prefixes() {
            None => map
                .iter()
                .filter(|(name, _)| pattern.matches(name))
                .for_each(|(_, e)| f(e)),
            Some(prefixes) => {
                for prefix in prefixes {
                    map.range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                        .take_while(|(name, _)| name.starts_with(prefix))
                        .filter(|(name, _)| pattern.matches(name))
                        .for_each(|(_, e)| f(e));
                }
            }
        }
    }

    /// Registers the sample described by `b`; `make` creates its storage
    /// (under the registry lock, after the name was found free) and the
    /// handle returned to the caller.
    fn insert<H>(
        &self,
        b: SampleBuilder<'_>,
        default_reset: bool,
        make: impl FnOnce(&mut Samples) -> (Kind, H),
    ) -> Result<H, Error> {
        let name: Arc<str> = Arc::from(b.name);
        let mut samples = self.samples.write();
        if samples.map.contains_key(&name) {
            return Err(Error::Duplicate(name.to_string()));
        }
        let (kind, handle) = make(&mut samples);
        let entry = Arc::new(Entry {
            name: Arc::clone(&name),
            unit: b.unit,
            description: Arc::from(b.description),
            visibility: b.visibility,
            resettable: b.resettable.unwrap_or(default_reset),
            kind,
        });
        samples.map.insert(name, entry);
        Ok(handle)
    }
}

/// Registers one sample with non-default options; made by [`Registry::sample`].
#[must_use = "a builder registers nothing until a type method such as `counter()` is called"]
pub struct SampleBuilder<'r> {
    registry: &'r Registry,
    name: String,
    unit: Unit,
    description: String,
    visibility: Visibility,
    resettable: Option<bool>,
    hex: bool,
}

impl SampleBuilder<'_> {
    /// Sets when the sample is shown (default [`Visibility::Always`]).
    pub fn visibility(mut self, visibility: Visibility) -> Self {
        self.visibility = visibility;
        self
    }

    /// Overrides whether [`Registry::reset`] clears the sample. By default
    /// counters and profiles are reset, gauges, booleans and ratios are not,
    /// and callbacks are when they have a reset hook.
    pub fn resettable(mut self, resettable: bool) -> Self {
        self.resettable = Some(resettable);
        self
    }

    /// Shows the value in hexadecimal (gauges and callbacks only).
    pub fn hex(mut self) -> Self {
        self.hex = true;
        self
    }

    fn check(&self) -> Result<(), Error> {
        validate_name(&self.name).map_err(|reason| Error::InvalidName {
            name: self.name.clone(),
            reason,
        })?;
        if self.description.trim().is_empty() {
            return Err(Error::NoDescription(self.name.clone()));
        }
        Ok(())
    }

    fn no_hex(&self) -> Result<(), Error> {
        if self.hex {
            return Err(Error::HexNotSupported {
                name: self.name.clone(),
            });
        }
        Ok(())
    }

    /// Registers a counter.
    pub fn counter(self) -> Result<Counter, Error> {
        self.check()?;
        self.no_hex()?;
        let registry = self.registry;
        registry.insert(self, true, |samples| {
            let cells = samples.counters.alloc();
            (Kind::Counter(cells.clone()), Counter::from_cells(cells))
        })
    }

    /// Registers a gauge of width `T`.
    pub fn gauge<T: GaugeValue>(self) -> Result<Gauge<T>, Error> {
        self.check()?;
        let (gauge, cell) = Gauge::<T>::new();
        let hex = self.hex;
        let registry = self.registry;
        registry.insert(self, false, |_| (Kind::Gauge { cell, hex }, gauge))
    }

    /// Registers a boolean.
    pub fn flag(self) -> Result<Flag, Error> {
        self.check()?;
        self.no_hex()?;
        let (flag, cell) = Flag::new();
        let registry = self.registry;
        registry.insert(self, false, |_| (Kind::Flag(cell), flag))
    }

    /// Registers a profile.
    pub fn profile(self) -> Result<Profile, Error> {
        self.check()?;
        self.no_hex()?;
        let registry = self.registry;
        registry.insert(self, true, |samples| {
            let cells = samples.profiles.alloc();
            (Kind::Profile(cells.clone()), Profile::from_cells(cells))
        })
    }

    /// Registers a ratio.
    pub fn ratio(self) -> Result<Ratio, Error> {
        self.check()?;
        self.no_hex()?;
        let (ratio, cells) = Ratio::new();
        let registry = self.registry;
        registry.insert(self, false, |_| (Kind::Ratio(cells), ratio))
    }

    /// Registers a callback sample without a reset hook.
    pub fn callback(self, read: impl Fn() -> u64 + Send + Sync + 'static) -> Result<(), Error> {
        self.register_callback(Arc::new(read), None)
    }

    /// Registers a callback sample whose `reset` hook runs on a registry reset.
    pub fn callback_with_reset(
        self,
        read: impl Fn() -> u64 + Send + Sync + 'static,
        reset: impl Fn() + Send + Sync + 'static,
    ) -> Result<(), Error> {
        self.register_callback(Arc::new(read), Some(Arc::new(reset)))
    }

    fn register_callback(self, read: ReadFn, reset: Option<ResetFn>) -> Result<(), Error> {
        self.check()?;
        let hex = self.hex;
        let has_reset = reset.is_some();
        let registry = self.registry;
        registry.insert(self, has_reset, |_| {
            (Kind::Callback { read, reset, hex }, ())
        })
    }
}
