//! Diagnostic logging: `tracing` events of the VMM's crates go to stderr (or
//! `--log-file`), never to stdout, where command output and the guest's
//! serial console go.
//!
//! The level comes from `-q` (errors only), nothing (warnings), `-v` (info),
//! `-vv` (debug) or `-vvv` (trace); `RUST_LOG`, when set, overrides it with
//! `tracing-subscriber`'s `EnvFilter` directives (`RUST_LOG=vmm_core=debug`).

use std::fs::File;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;
use clap::Args;
use tracing_subscriber::EnvFilter;

use crate::exit::UsageError;

/// The logging options every command takes.
#[derive(Args, Debug)]
pub struct LogArgs {
    /// More diagnostics on stderr: -v info, -vv debug, -vvv trace (RUST_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Write the diagnostics to PATH (appended) instead of stderr.
    #[arg(long, global = true, value_name = "PATH")]
    log_file: Option<PathBuf>,
}

impl LogArgs {
    /// The level the flags ask for.
    fn level(&self) -> &'static str {
        match (self.quiet, self.verbose) {
            (true, _) => "error",
            (false, 0) => "warn",
            (false, 1) => "info",
            (false, 2) => "debug",
            (false, _) => "trace",
        }
    }
}

/// Installs the global subscriber.
pub fn init(args: &LogArgs) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => {
            EnvFilter::try_new(&directives).map_err(|e| {
                UsageError(format!(
                    "RUST_LOG={directives:?} is not a valid filter: {e}"
                ))
            })?
        }
        _ => EnvFilter::new(args.level()),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let installed = match &args.log_file {
        Some(path) => {
            let file = File::options()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open the log file {}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(Mutex::new(file))
                .try_init()
        }
        None => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}
