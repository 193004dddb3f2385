//! Prints what a saved state holds, or checks it.
//!
//! `cargo run -p ssm --example inspect -- FILE [--json | --verify]`
//!
//! Exits non-zero (with the damaged structure and its offset) when the file
//! is damaged. This is what `vmm state inspect` / `vmm state verify` do.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first().map(PathBuf::from) else {
        eprintln!("usage: inspect FILE [--json | --verify]");
        return ExitCode::from(2);
    };
    let mode = args.get(1).map(String::as_str);
    let result = match mode {
        Some("--verify") => ssm::verify(&path).map(|s| s.to_string()),
        Some("--json") => ssm::inspect(&path)
            .and_then(|r| serde_json::to_string_pretty(&r).map_err(ssm::Error::callback)),
        _ => ssm::inspect(&path).map(|r| r.to_string()),
    };
    match result {
        Ok(text) => {
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = writeln!(std::io::stdout(), "{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
