//! The command line itself: parsing it (with `vmm run --config FILE`),
//! `vmm completions SHELL` and `vmm man`.
//!
//! The manual page is printed by the binary (`vmm man`), not generated at
//! build time: it always describes the `vmm` that prints it, and a build
//! needs no script or output directory (`vmm man > vmm.1` installs it).

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches};
use clap_complete::Shell;

use crate::{config, output};

/// What `vmm --help` says about exit statuses (the README has the table).
pub const EXIT_STATUS: &str = "\
Exit status: 0 success; 1 VMM error; 2 usage error (options, a --config
file, RUST_LOG); 3 the guest failed (vmm run: a non-zero guest status, or
a kernel panic; --exit-code guest passes the guest's status on instead);
4 a check failed (vmm doctor, vmm state verify); 128 + N: vmm run was
powered off on signal N.";

/// Parses the command line: clap's usage errors end `vmm` with status 2.
/// For `vmm run --config FILE`, the file's options are added to the
/// command line's (which win) and everything is parsed again.
pub fn parse<T: CommandFactory + FromArgMatches>() -> anyhow::Result<T> {
    let command = T::command();
    let matches = command.clone().get_matches();
    let from_file = match matches.subcommand() {
        Some(("run", run)) => match (
            run.get_one::<std::path::PathBuf>("config"),
            command.find_subcommand("run"),
        ) {
            (Some(path), Some(run_command)) => {
                Some((path.clone(), config::args(path, run, run_command)?))
            }
            _ => None,
        },
        _ => None,
    };
    let matches = match from_file {
        Some((path, extra)) => {
            // `vmm run` has no positional arguments: options appended at
            // the end are its own.
            let argv: Vec<OsString> = std::env::args_os()
                .chain(extra.into_iter().map(OsString::from))
                .collect();
            command.try_get_matches_from(argv).unwrap_or_else(|e| {
                eprintln!(
                    "vmm: with the options of the config file {}:",
                    path.display()
                );
                e.exit()
            })
        }
        None => matches,
    };
    Ok(T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

/// `vmm completions SHELL`.
#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

/// Prints the completion script for `args.shell`.
pub fn completions<T: CommandFactory>(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut T::command(), "vmm", &mut script);
    output::print(&String::from_utf8(script).context("the completion script is not UTF-8")?)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints the manual page (roff).
pub fn man<T: CommandFactory>() -> anyhow::Result<ExitCode> {
    let mut page = Vec::new();
    clap_mangen::Man::new(T::command())
        .render(&mut page)
        .context("cannot render the manual page")?;
    output::print(&String::from_utf8(page).context("the manual page is not UTF-8")?)?;
    Ok(ExitCode::SUCCESS)
}
