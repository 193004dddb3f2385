//! `vmm`: run and inspect virtual machines.

mod client;
mod console;
mod devices;
mod doctor;
mod gdb;
mod logging;
mod output;
mod run;
mod serial_out;
mod shutdown;
mod state;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vmm_cli::api;

/// A VirtualBox-style virtual machine monitor on Linux KVM.
#[derive(Parser)]
#[command(name = "vmm", version, about)]
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
    Doctor,
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
    /// Inspect or verify a saved-state file.
    State(state::StateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(&cli.log) {
        return fail(&e);
    }
    let result = match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Doctor => doctor::doctor(),
        Command::Status(args) => client::status(args),
        Command::Info(args) => client::info(args),
        Command::Stats(args) => client::stats(args),
        Command::Pause(args) => client::change_state(args, api::Action::Pause),
        Command::Resume(args) => client::change_state(args, api::Action::Resume),
        Command::Reset(args) => client::change_state(args, api::Action::Reset),
        Command::Poweroff(args) => client::change_state(args, api::Action::PowerOff),
        Command::Save(args) => client::save(args),
        Command::Teleport(args) => client::teleport(args),
        Command::State(args) => state::state(args),
    };
    result.unwrap_or_else(|e| fail(&e))
}

/// Reports `e` on stderr; the exit code of a failed command.
fn fail(e: &anyhow::Error) -> ExitCode {
    // Not `eprintln!`: it panics when stderr is a closed pipe.
    let _ = writeln!(std::io::stderr(), "vmm: error: {e:#}");
    ExitCode::from(1)
}
