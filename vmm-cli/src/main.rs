//! `vmm`: run and inspect virtual machines.

mod doctor;
mod gdb;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A VirtualBox-style virtual machine monitor on Linux KVM.
#[derive(Parser)]
#[command(name = "vmm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest (the embedded demo guest by default) and stream its serial output.
    Run(run::RunArgs),
    /// Check whether this host can run VMs: /dev/kvm and the KVM capabilities the VMM relies on.
    Doctor,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Doctor => doctor::doctor(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmm: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
