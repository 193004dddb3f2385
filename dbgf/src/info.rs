//! Info handlers: named, described callbacks that print a piece of VM state
//! (`info mode`, `info phys`, ...), run through an [`InfoExecutor`] that
//! decides which thread (EMT) calls them.

use std::collections::BTreeMap;
use std::fmt::{self, Write};
use std::ops::BitOr;
use std::sync::Arc;

use parking_lot::RwLock;
use thiserror::Error;

/// Where an info handler must run.
///
/// ```
/// let f = dbgf::InfoFlags::RUN_ON_EMT | dbgf::InfoFlags::ALL_EMTS;
/// assert!(f.contains(dbgf::InfoFlags::ALL_EMTS));
/// assert!(dbgf::InfoFlags::empty().is_empty());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct InfoFlags(u32);

impl InfoFlags {
    /// Must run on an EMT (it reads per-vCPU or EMT-owned state).
    pub const RUN_ON_EMT: InfoFlags = InfoFlags(1);
    /// Runs once on every EMT, with [`InfoCall::cpu`] set to each vCPU in turn.
    pub const ALL_EMTS: InfoFlags = InfoFlags(2);

    /// No flags: the handler may run on any thread.
    pub const fn empty() -> Self {
        InfoFlags(0)
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every flag in `other` is set.
    pub const fn contains(self, other: InfoFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the handler needs an EMT (either flag).
    pub const fn needs_emt(self) -> bool {
        !self.is_empty()
    }
}

impl BitOr for InfoFlags {
    type Output = InfoFlags;
    fn bitor(self, rhs: InfoFlags) -> InfoFlags {
        InfoFlags(self.0 | rhs.0)
    }
}

/// The arguments of one handler call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoCall<'a> {
    /// The argument string after the handler name (may be empty).
    pub args: &'a str,
    /// The vCPU the call runs for, when the executor runs it per vCPU.
    pub cpu: Option<u32>,
}

/// Errors from registering or running info handlers.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum InfoError {
    /// No handler is registered under this name.
    #[error("unknown info handler {name:?}{}", suggestion_text(.similar))]
    UnknownHandler {
        /// The name asked for.
        name: String,
        /// Registered names that look close (share a prefix), for a hint.
        similar: Vec<String>,
    },
    /// A handler with this name is already registered.
    #[error("info handler {0:?} is already registered")]
    Duplicate(String),
    /// The name is empty, too long, reserved or has characters other than
    /// ASCII letters, digits, `_`, `-` and `.`.
    #[error("invalid info handler name {0:?}")]
    InvalidName(String),
    /// The handler did not understand its arguments.
    #[error("bad arguments: {0}")]
    BadArgs(String),
    /// The handler failed.
    #[error("{0}")]
    Failed(String),
    /// The executor could not run the handler where it must run (no such
    /// vCPU, VM shutting down, ...).
    #[error("cannot run info handler {name:?}: {reason}")]
    Executor {
        /// The handler name.
        name: String,
        /// Why it could not run.
        reason: String,
    },
    /// Writing to the output sink failed.
    #[error("writing info output failed")]
    Output(#[from] fmt::Error),
}

fn suggestion_text(similar: &[String]) -> String {
    if similar.is_empty() {
        " (try 'help')".to_owned()
    } else {
        format!(" (did you mean: {}?)", similar.join(", "))
    }
}

type HandlerFn =
    dyn Fn(&InfoCall<'_>, &mut dyn Write) -> Result<(), InfoError> + Send + Sync + 'static;

/// A registered info handler: name, description, flags and callback.
pub struct InfoHandler {
    name: String,
    description: String,
    flags: InfoFlags,
    callback: Box<HandlerFn>,
}

impl InfoHandler {
    /// The name it was registered under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The one-line description shown by `help`.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Where it must run.
    pub fn flags(&self) -> InfoFlags {
        self.flags
    }

    /// Calls the handler on the current thread. Executors call this on the
    /// thread the flags ask for.
    pub fn call(&self, call: &InfoCall<'_>, out: &mut dyn Write) -> Result<(), InfoError> {
        (self.callback)(call, out)
    }
}

impl fmt::Debug for InfoHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InfoHandler")
            .field("name", &self.name)
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

/// Runs info handlers where their flags say they must run.
///
/// The VMM implements this to send EMT-flagged handlers to its EMT threads
/// (for [`InfoFlags::ALL_EMTS`] once per vCPU, setting [`InfoCall::cpu`]).
/// The handler is shared (`Arc`) so it can be moved to another thread; output
/// produced there is typically collected in a `String` and written to `out`
/// by the calling thread.
///
/// ```
/// use std::fmt::Write;
/// use std::sync::Arc;
/// use dbgf::{InfoCall, InfoError, InfoExecutor, InfoFlags, InfoHandler, InfoRegistry};
///
/// /// Runs EMT-flagged handlers on a separate thread standing in for EMT 0.
/// struct OneEmt;
///
/// impl InfoExecutor for OneEmt {
///     fn execute(&self, handler: Arc<InfoHandler>, args: &str, out: &mut dyn Write)
///         -> Result<(), InfoError> {
///         if !handler.flags().needs_emt() {
///             return handler.call(&InfoCall { args, cpu: None }, out);
///         }
///         let args = args.to_owned();
///         let text = std::thread::spawn(move || {
///             let mut buf = String::new();
///             handler.call(&InfoCall { args: &args, cpu: Some(0) }, &mut buf).map(|()| buf)
///         })
///         .join()
///         .map_err(|_| InfoError::Executor { name: "?".into(), reason: "EMT died".into() })??;
///         out.write_str(&text)?;
///         Ok(())
///     }
/// }
///
/// let info = InfoRegistry::new();
/// let caller = std::thread::current().id();
/// info.register("cpu", "Which vCPU runs this.", InfoFlags::RUN_ON_EMT,
///     move |call: &InfoCall<'_>, out: &mut dyn Write| -> Result<(), InfoError> {
///         let elsewhere = std::thread::current().id() != caller;
///         writeln!(out, "vCPU {:?}, off the caller's thread: {elsewhere}", call.cpu)?;
///         Ok(())
///     })?;
/// let mut out = String::new();
/// info.run("cpu", "", &mut out, &OneEmt)?;
/// assert_eq!(out, "vCPU Some(0), off the caller's thread: true\n");
/// # Ok::<(), InfoError>(())
/// ```
pub trait InfoExecutor {
    /// Runs `handler` with `args`, writing its output to `out`.
    fn execute(
        &self,
        handler: Arc<InfoHandler>,
        args: &str,
        out: &mut dyn Write,
    ) -> Result<(), InfoError>;
}

/// Runs every handler on the calling thread: for single-threaded users and tests.
///
/// EMT-flagged handlers run with `cpu = Some(0)`; [`InfoFlags::ALL_EMTS`]
/// handlers run once for each of the `cpus` vCPUs in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SameThreadExecutor {
    cpus: u32,
}

impl SameThreadExecutor {
    /// An executor pretending to have `cpus` vCPUs (at least one is assumed).
    pub fn new(cpus: u32) -> Self {
        SameThreadExecutor { cpus: cpus.max(1) }
    }
}

impl Default for SameThreadExecutor {
    fn default() -> Self {
        Self::new(1)
    }
}

impl InfoExecutor for SameThreadExecutor {
    fn execute(
        &self,
        handler: Arc<InfoHandler>,
        args: &str,
        out: &mut dyn Write,
    ) -> Result<(), InfoError> {
        let flags = handler.flags();
        if flags.contains(InfoFlags::ALL_EMTS) {
            for cpu in 0..self.cpus {
                handler.call(
                    &InfoCall {
                        args,
                        cpu: Some(cpu),
                    },
                    out,
                )?;
            }
            Ok(())
        } else if flags.contains(InfoFlags::RUN_ON_EMT) {
            handler.call(&InfoCall { args, cpu: Some(0) }, out)
        } else {
            handler.call(&InfoCall { args, cpu: None }, out)
        }
    }
}

/// Longest info handler name.
pub const MAX_INFO_NAME_LEN: usize = 64;

/// The name `help` is answered by the registry itself.
const HELP: &str = "help";

/// A thread-safe registry of info handlers; clones share the handlers.
///
/// Names are looked up ignoring ASCII case. `help` is built in: it lists the
/// handlers sorted by name with their descriptions, or only those named in
/// its arguments.
///
/// ```
/// use std::fmt::Write;
/// let info = dbgf::InfoRegistry::new();
/// info.register("phys", "Guest-physical ranges. Args: verbose", dbgf::InfoFlags::empty(),
///     |call: &dbgf::InfoCall<'_>, out: &mut dyn Write| -> Result<(), dbgf::InfoError> {
///         writeln!(out, "ranges (args={:?})", call.args)?;
///         Ok(())
///     })?;
/// let mut out = String::new();
/// info.run("phys", "verbose", &mut out, &dbgf::SameThreadExecutor::default())?;
/// assert_eq!(out, "ranges (args=\"verbose\")\n");
///
/// let mut help = String::new();
/// info.help("", &mut help)?;
/// assert!(help.contains("phys"));
/// assert!(info.run("nope", "", &mut out, &dbgf::SameThreadExecutor::default()).is_err());
/// # Ok::<(), dbgf::InfoError>(())
/// ```
#[derive(Clone, Default)]
pub struct InfoRegistry {
    /// Keyed by the lower-cased name.
    handlers: Arc<RwLock<BTreeMap<String, Arc<InfoHandler>>>>,
}

impl fmt::Debug for InfoRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InfoRegistry")
            .field("handlers", &self.names())
            .finish()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_INFO_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.eq_ignore_ascii_case(HELP)
}

impl InfoRegistry {
    /// An empty registry (with only the built-in `help`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `callback` under `name` (unique ignoring ASCII case).
    pub fn register<F>(
        &self,
        name: &str,
        description: &str,
        flags: InfoFlags,
        callback: F,
    ) -> Result<(), InfoError>
    where
        F: Fn(&InfoCall<'_>, &mut dyn Write) -> Result<(), InfoError> + Send + Sync + 'static,
    {
        if !valid_name(name) {
            return Err(InfoError::InvalidName(name.to_owned()));
        }
        let key = name.to_ascii_lowercase();
        let mut map = self.handlers.write();
        if map.contains_key(&key) {
            return Err(InfoError::Duplicate(name.to_owned()));
        }
        map.insert(
            key,
            Arc::new(InfoHandler {
                name: name.to_owned(),
                description: description.to_owned(),
                flags,
                callback: Box::new(callback),
            }),
        );
        Ok(())
    }

    /// Removes the handler called `name`; returns whether there was one.
    pub fn deregister(&self, name: &str) -> bool {
        self.handlers
            .write()
            .remove(&name.to_ascii_lowercase())
            .is_some()
    }

    /// The handler called `name`, if any.
    pub fn get(&self, name: &str) -> Option<Arc<InfoHandler>> {
        self.handlers
            .read()
            .get(&name.to_ascii_lowercase())
            .map(Arc::clone)
    }

    /// The registered names, sorted (ignoring case).
    pub fn names(&self) -> Vec<String> {
        self.handlers
            .read()
            .values()
            .map(|h| h.name.clone())
            .collect()
    }

    /// Runs handler `name` with `args` through `executor`, writing to `out`.
    /// `help` lists the handlers (see [`help`](InfoRegistry::help)).
    pub fn run(
        &self,
        name: &str,
        args: &str,
        out: &mut dyn Write,
        executor: &dyn InfoExecutor,
    ) -> Result<(), InfoError> {
        if name.eq_ignore_ascii_case(HELP) {
            return self.help(args, out);
        }
        let handler = self.get(name).ok_or_else(|| self.unknown(name))?;
        executor.execute(handler, args, out)
    }

    /// Writes the handlers and their descriptions, sorted by name. With
    /// arguments (names separated by spaces or commas), only those handlers;
    /// an unknown name there is an error.
    pub fn help(&self, args: &str, out: &mut dyn Write) -> Result<(), InfoError> {
        let wanted: Vec<&str> = args
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .collect();
        let handlers: Vec<Arc<InfoHandler>> = if wanted.is_empty() {
            self.handlers.read().values().map(Arc::clone).collect()
        } else {
            let mut found = wanted
                .iter()
                .map(|n| self.get(n).ok_or_else(|| self.unknown(n)))
                .collect::<Result<Vec<_>, _>>()?;
            found.sort_by_key(|h| h.name.to_ascii_lowercase());
            found.dedup_by(|a, b| Arc::ptr_eq(a, b));
            found
        };
        let width = handlers.iter().map(|h| h.name.len()).max().unwrap_or(0);
        if wanted.is_empty() {
            writeln!(out, "Info handlers:")?;
        }
        for h in &handlers {
            writeln!(out, "  {:<width$}  {}", h.name, h.description)?;
        }
        Ok(())
    }

    fn unknown(&self, name: &str) -> InfoError {
        let lower = name.to_ascii_lowercase();
        let stem_len = lower.len().min(3);
        let stem = lower.get(..stem_len).unwrap_or(&lower);
        let similar = self
            .handlers
            .read()
            .iter()
            .filter(|(key, _)| !stem.is_empty() && key.starts_with(stem))
            .map(|(_, h)| h.name.clone())
            .collect();
        InfoError::UnknownHandler {
            name: name.to_owned(),
            similar,
        }
    }
}

#[cfg(test)]
mod tests;
