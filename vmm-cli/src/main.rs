//! `vmm`: run and inspect virtual machines.

mod client;
mod config;
mod console;
mod devices;
mod doctor;
mod exit;
mod gdb;
mod logging;
mod output;
mod run;
mod serial_out;
mod shutdown;
mod state;
mod usage;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vmm_cli::api;

use crate::exit::Status;

/// A VirtualBox-style virtual machine monitor on Linux KVM.
#[derive(Parser)]
#[command(name = "vmm", version, about, after_help = usage::EXIT_STATUS)]
struct Cli {
    #[command(flatten)]
    log: logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest (the embedded demo guest by default) and stream its serial output.
    Run(Box<run::RunArgs>),
    /// Check whether this host can run VMs: /dev/kvm and the KVM capabilities the VMM relies on.
    Doctor(doctor::DoctorArgs),
    /// Show a running VM's state, configuration, vCPUs and uptime (through its API socket).
    Status(client::PlainArgs),
    /// Run an info handler in a running VM (`vmm info help` lists them).
    Info(client::InfoArgs),
    /// Print a running VM's statistics.
    Stats(client::StatsArgs),
    /// Suspend a running VM.
    Pause(client::PlainArgs),
    /// Resume a suspended VM.
    Resume(client::PlainArgs),
    /// Reset a running or suspended VM.
    Reset(client::PlainArgs),
    /// Power a running VM off (its `vmm run` exits).
    Poweroff(client::PlainArgs),
    /// Save a running VM's state to FILE (`--live`: while it runs).
    Save(client::SaveArgs),
    /// Teleport the running VM to `vmm run --incoming ADDR` (live, over TCP), or `--cancel` the teleport in progress.
    Teleport(client::TeleportArgs),
    /// Show the memory balloon, or ask the guest for a balloon of SIZE.
    Balloon(client::BalloonArgs),
    /// Inspect or verify a saved-state file.
    State(state::StateArgs),
    /// Print a shell completion script (`vmm completions bash >
    /// /etc/bash_completion.d/vmm`).
    Completions(usage::CompletionsArgs),
    /// Print the manual page (roff; `vmm man | man -l -`).
    Man,
}

fn main() -> ExitCode {
    let cli = match usage::parse::<Cli>() {
        Ok(cli) => cli,
        Err(e) => return fail(&e),
    };
    if let Err(e) = logging::init(&cli.log) {
        return fail(&e);
    }
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Doctor(args) => doctor::doctor(args),
        Command::Status(args) => client::status(args),
        Command::Info(args) => client::info(args),
        Command::Stats(args) => client::stats(args),
        Command::Pause(args) => client::change_state(args, api::Action::Pause),
        Command::Resume(args) => client::change_state(args, api::Action::Resume),
        Command::Reset(args) => client::change_state(args, api::Action::Reset),
        Command::Poweroff(args) => client::change_state(args, api::Action::PowerOff),
        Command::Save(args) => client::save(args),
        Command::Teleport(args) => client::teleport(args),
        Command::Balloon(args) => client::balloon(args),
        Command::State(args) => state::state(args),
        Command::Completions(args) => usage::completions::<Cli>(args),
        Command::Man => usage::man::<Cli>(),
    };
    result.unwrap_or_else(|e| fail(&e))
}

/// Reports `e` on stderr; the exit status of a failed command
/// ([`Status::Usage`] or [`Status::Error`]).
fn fail(e: &anyhow::Error) -> ExitCode {
    // Not `eprintln!`: it panics when stderr is a closed pipe.
    let _ = writeln!(std::io::stderr(), "vmm: error: {}", exit::message(e));
    let status: Status = exit::error_status(e);
    status.into()
}
