//! `vmm run`: boot a guest.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use vmm_core::config::parse_size;
use vmm_core::{RunOutcome, Vm, VmConfig, guests};

use crate::gdb::GdbServer;

#[derive(Args)]
pub struct RunArgs {
    /// Guest RAM: MiB, or a size with a unit (512M, 2G).
    #[arg(long, default_value = "64M", value_parser = parse_mem)]
    mem: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Write the guest's serial output to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    serial: Option<PathBuf>,
    /// The embedded guest to run (see --list-guests).
    #[arg(long, default_value = "demo", conflicts_with = "bios")]
    guest: String,
    /// List the embedded guests and exit.
    #[arg(long)]
    list_guests: bool,
    /// Run a flat binary as firmware instead: mapped as ROM that ends at 4 GiB
    /// (mirrored below 1 MiB); execution starts at its last 16 bytes.
    #[arg(long, value_name = "FILE")]
    bios: Option<PathBuf>,
    /// When the guest stops, print the statistics matching PATTERN
    /// (`*`, `?`, `|`; everything when omitted).
    #[arg(long, value_name = "PATTERN", num_args = 0..=1, default_missing_value = "", require_equals = true)]
    stats: Option<String>,
    /// Output format of --stats.
    #[arg(long, value_enum, default_value_t = StatsFormat::Text)]
    stats_format: StatsFormat,
    /// When the guest stops, run info handler NAME with ARGS (repeatable;
    /// `--info help` lists the handlers).
    #[arg(long, value_name = "NAME[=ARGS]")]
    info: Vec<String>,
    /// When the guest stops, write guest-physical memory to FILE as a flat
    /// image (VirtualBox's `pgmphystofile`).
    #[arg(long, value_name = "FILE")]
    dump_phys: Option<PathBuf>,
    /// With --dump-phys: leave zero pages out (holes in a sparse file).
    #[arg(long, requires = "dump_phys")]
    nozero: bool,
    /// Wait for gdb on ADDR (`PORT` or `HOST:PORT` on loopback, or
    /// `unix:PATH`) before the first guest instruction, then serve it while
    /// the guest runs.
    #[arg(long, value_name = "ADDR")]
    gdb: Option<String>,
}

/// How `--stats` prints.
#[derive(Clone, Copy, ValueEnum)]
enum StatsFormat {
    /// A table like `VBoxManage debugvm statistics`.
    Text,
    /// JSON.
    Json,
    /// The Prometheus text exposition format.
    Prometheus,
    /// VirtualBox's XML statistics snapshot.
    Xml,
}

fn parse_mem(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text).map_err(|e| e.to_string())?;
    if bytes == 0 {
        return Err("guest RAM cannot be 0".into());
    }
    Ok(bytes)
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if args.list_guests {
        for g in guests::GUESTS {
            println!("{:<10} {}", g.name, g.description);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.cpus == 0 {
        bail!("--cpus 0: a VM needs at least one vCPU");
    }
    let firmware = match &args.bios {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("cannot read firmware {}", path.display()))?,
        None => guests::find(&args.guest)?.firmware()?,
    };
    let mut config = VmConfig::new(args.mem, firmware);
    config.cpus = args.cpus;
    config.serial = match &args.serial {
        Some(path) => Box::new(
            File::create(path)
                .with_context(|| format!("cannot create serial output file {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let (mut vm, gdb) = match &args.gdb {
        Some(addr) => {
            let (vm, attach) = Vm::new_debuggable(config)?;
            let server = GdbServer::start(addr, attach, vm.handle())?;
            (vm, Some(server))
        }
        None => (Vm::new(config)?, None),
    };
    let outcome = vm.run();
    std::io::stdout().flush().ok();
    if let Some(server) = gdb {
        if let Err(e) = server.finish() {
            eprintln!("vmm: {e:#}");
        }
    }
    report(&vm, &args)?;
    match outcome? {
        RunOutcome::GuestExit(status) => Ok(ExitCode::from(status)),
        RunOutcome::PoweredOff => Ok(ExitCode::SUCCESS),
    }
}

/// Prints what `--info` and `--stats` asked for, after the guest stopped.
fn report(vm: &Vm, args: &RunArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.dump_phys {
        let mut file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let dumped = vm.memory().dump(&mut file, !args.nozero)?;
        eprintln!(
            "vmm: guest-physical memory written to {}: {} pages, {} zero pages skipped",
            path.display(),
            dumped.written,
            dumped.skipped_zero
        );
    }
    let mut out = String::new();
    for request in &args.info {
        let (name, handler_args) = request.split_once('=').unwrap_or((request, ""));
        vm.run_info(name, handler_args, &mut out)
            .with_context(|| format!("--info {request}"))?;
    }
    if let Some(pattern) = &args.stats {
        let snapshot = vm.stats().snapshot(pattern);
        match args.stats_format {
            StatsFormat::Text => snapshot.write_text(&mut out, true)?,
            StatsFormat::Json => out.push_str(&snapshot.to_json()?),
            StatsFormat::Prometheus => snapshot.write_prometheus(&mut out)?,
            StatsFormat::Xml => snapshot.write_xml(&mut out, true)?,
        }
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
