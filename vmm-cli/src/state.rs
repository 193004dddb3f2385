//! `vmm state`: look inside saved-state files without running a VM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::output;

/// `vmm state inspect|verify FILE`.
#[derive(Args)]
pub struct StateArgs {
    #[command(subcommand)]
    command: StateCommand,
}

#[derive(Subcommand)]
enum StateCommand {
    /// List the units of a saved state: names, instances, versions, passes,
    /// sizes and compression.
    Inspect {
        /// The saved-state file.
        file: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check every CRC and structure of a saved state; exits non-zero on damage.
    Verify {
        /// The saved-state file.
        file: PathBuf,
    },
}

pub fn state(args: StateArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        StateCommand::Inspect { file, json } => {
            let report = ssm::inspect(&file)
                .with_context(|| format!("{} is not a valid saved state", file.display()))?;
            let text = if json {
                format!("{}\n", serde_json::to_string_pretty(&report)?)
            } else {
                report.to_string()
            };
            output::print(&text)?;
        }
        StateCommand::Verify { file } => {
            let summary = vmm_core::saved_state::verify(&file)
                .with_context(|| format!("{} is damaged", file.display()))?;
            output::print(&format!(
                "{}: ok ({} units, {} bytes checked)\n",
                file.display(),
                summary.units,
                summary.bytes
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
