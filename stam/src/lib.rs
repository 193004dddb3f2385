//! Statistics registry (VirtualBox STAM): counters, gauges, profiles with hierarchical names.
//!
//! A [`Registry`] holds samples named like `/PGM/Page/cZeroPages`. Registering
//! a sample returns a cheap hot-path handle ([`Counter`], [`Gauge`], [`Flag`],
//! [`Profile`], [`Ratio`]); callbacks compute numbers owned elsewhere on read.
//! Samples are queried, reset and printed by [`Pattern`]
//! (`*`, `?`, `|` between alternatives; the empty pattern is everything).
//!
//! - **Names** follow [`validate_name`]: `/`-separated, at most
//!   [`MAX_NAME_LEN`] characters; duplicates are an error, and every sample
//!   needs a description.
//! - **Hot paths** take no lock and allocate nothing: a counter add is one
//!   relaxed atomic add on a cache line of the calling thread's shard (see
//!   [`set_thread_shard`]); a profile scope reads the clock once at each end.
//! - **Reset** ([`Registry::reset`]) zeroes counters and profiles (a
//!   profile's minimum goes back to its maximum value) and the gauges,
//!   booleans and ratios registered as resettable; plain ones keep their value.
//! - **Output** from a [`Snapshot`]: a text table in the style of
//!   `VBoxManage debugvm statistics` ([`Snapshot::write_text`]), JSON
//!   (`Snapshot::to_json`, feature `json`), the Prometheus text exposition
//!   format ([`Snapshot::write_prometheus`]) and VirtualBox's XML snapshot
//!   form ([`Snapshot::write_xml`]).
//!
//! # How data flows
//!
//! A component registers its samples once, at setup, and keeps the handles;
//! the hot path bumps a handle (no lock, no allocation); a reader (the CLI,
//! an HTTP endpoint, a test) takes a [`Snapshot`] by pattern, which sums the
//! per-thread shards and runs the callbacks, and renders or compares it.
//! `stam` depends on no other workspace crate; other crates take a
//! `&Registry` to register into.
//!
//! # Using it alone
//!
//! ```
//! let reg = stam::Registry::new();
//! let exits = reg.counter("/HM/Exit/Io", stam::Unit::Occurrences, "I/O exits")?;
//! let run = reg.profile("/HM/RunLoop", "Time in KVM_RUN")?;
//! exits.inc();
//! {
//!     let _t = run.start();
//! }
//! let snap = reg.snapshot("/HM/*");
//! assert_eq!(snap.samples.len(), 2);
//! let mut table = String::new();
//! snap.write_text(&mut table, true).unwrap();
//! assert!(table.contains("/HM/Exit/Io"));
//! # Ok::<(), stam::Error>(())
//! ```
//!
//! # Features
//!
//! - `json` (default): JSON output and input of snapshots
//!   (`Snapshot::to_json`, `write_json`, `from_json`), through `serde_json`.
//!   Snapshots implement `serde`'s traits either way.

mod clock;
mod counter;
mod error;
mod flag;
mod gauge;
mod name;
mod output;
mod pattern;
mod profile;
mod ratio;
mod registry;
mod shard;
mod snapshot;
mod unit;

pub use counter::Counter;
pub use error::{Error, NameError};
pub use flag::Flag;
pub use gauge::{Gauge, GaugeValue};
pub use name::{MAX_NAME_LEN, validate_name};
pub use pattern::Pattern;
pub use profile::{Profile, ProfileStats, ProfileTimer};
pub use ratio::Ratio;
pub use registry::{Registry, SampleBuilder};
pub use shard::{SHARDS, set_thread_shard};
pub use snapshot::{SampleSnapshot, Snapshot, Value};
pub use unit::{Unit, Visibility};

// The README's example runs as a doctest, so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
