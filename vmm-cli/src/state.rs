//! `vmm state`: look inside saved-state files without running a VM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::exit::{self, Status};
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
        /// Print JSON instead of a table (a final pass has `"pass": null`
        /// and `"is_final": true`; the table says `final`).
        #[arg(long)]
        json: bool,
    },
    /// Check every CRC and structure of a saved state; exits with status 4
    /// on damage.
    Verify {
        /// The saved-state file.
        file: PathBuf,
        /// Print JSON (`ok`, `units`, `bytes`, or `error`) instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn state(args: StateArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        StateCommand::Inspect { file, json } => inspect(&file, json),
        StateCommand::Verify { file, json } => verify(&file, json),
    }
}

fn inspect(file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let report = ssm::inspect(file)
        .with_context(|| format!("{} is not a valid saved state", file.display()))?;
    let text = if json {
        let mut value = serde_json::to_value(&report)?;
        final_pass_as_null(&mut value);
        output::json_line(&value)?
    } else {
        report.to_string()
    };
    output::print(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// The final pass is `u32::MAX` in the report; JSON says `null` (with
/// `is_final`), not 4294967295.
fn final_pass_as_null(report: &mut Value) {
    for unit in report["units"].as_array_mut().into_iter().flatten() {
        if unit["is_final"] == json!(true) {
            unit["pass"] = Value::Null;
        }
    }
}

/// Verifies `file`: a file that cannot be opened is an error (status 1),
/// one that opens but fails a check is damaged (status 4).
fn verify(file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let name = file.display().to_string();
    let (value, text, status) = match vmm_core::saved_state::verify(file) {
        Ok(summary) => (
            json!({ "file": name, "ok": true, "units": summary.units, "bytes": summary.bytes }),
            format!(
                "{name}: ok ({} units, {} bytes checked)\n",
                summary.units, summary.bytes
            ),
            Status::Success,
        ),
        Err(e) => {
            let error = exit::message(&anyhow::Error::new(e));
            (
                json!({ "file": name, "ok": false, "error": error }),
                format!("{name}: DAMAGED: {error}\n"),
                Status::CheckFailed,
            )
        }
    };
    output::print(&if json {
        output::json_line(&value)?
    } else {
        text
    })?;
    Ok(status.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_final_pass_becomes_null() {
        let mut report = json!({ "units": [
            { "pass": 4294967295u32, "is_final": true },
            { "pass": 2, "is_final": false },
        ]});
        final_pass_as_null(&mut report);
        assert_eq!(report["units"][0]["pass"], Value::Null);
        assert_eq!(report["units"][1]["pass"], json!(2));
    }
}
