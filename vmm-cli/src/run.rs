//! `vmm run`: boot a guest.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use dbgf::debugger::WatchMode;
use vmm_core::boot::KernelBoot;
use vmm_core::config::parse_size;
use vmm_core::debug::DebugAttachment;
use vmm_core::saved_state::{RamLoad, RestoreOptions};
use vmm_core::sync::vmstate::VmState;
use vmm_core::{OnReboot, Vm, VmConfig, VmHandle, guests};

use crate::api::{ApiSocket, DeviceInfo, StatsFormat, VmConfigInfo, VmControl};
use crate::console::{Console, ConsoleArg};
use crate::devices::DeviceArgs;
use crate::exit::ExitCodeArg;
use crate::gdb::GdbServer;
use crate::serial_out::SerialOutput;
use crate::shutdown::ShutdownSignals;

#[derive(Args)]
#[command(after_help = after_help())]
pub struct RunArgs {
    /// Guest RAM: MiB, or a size with a unit (512M, 2G); at most the host's
    /// RAM plus swap (see the README).
    #[arg(long, default_value = "64M", value_parser = parse_mem)]
    mem: u64,
    /// Number of vCPUs (at least 1).
    #[arg(long, default_value_t = 1, value_parser = parse_cpus)]
    cpus: u32,
    /// Write the guest's serial output to FILE instead of stdout. If writing
    /// fails (full disk, closed pipe) it is said once on stderr, the rest is
    /// dropped and the guest runs on.
    #[arg(long, value_name = "FILE")]
    serial: Option<PathBuf>,
    /// Where the guest's serial input (COM1's receiver) comes from:
    /// `stdio` reads stdin (a terminal in raw mode, see below; a pipe or
    /// file as it is, the VM running on at its end), also with --serial
    /// FILE; `none` leaves stdin alone.
    #[arg(long, value_enum, default_value_t = ConsoleArg::Stdio)]
    console: ConsoleArg,
    /// The embedded guest to run (see --list-guests).
    #[arg(long, default_value = "demo", conflicts_with = "bios", value_parser = parse_guest)]
    guest: String,
    /// List the embedded guests and exit.
    #[arg(long)]
    list_guests: bool,
    /// With --list-guests: print JSON (`vmm run` prints nothing else of
    /// its own on stdout; --stats-format json formats --stats).
    #[arg(long, requires = "list_guests")]
    json: bool,
    /// Read the options from a TOML file: `key = value` for each long
    /// option (`mem = "512M"`, `cpus = 2`, `rng = true`, `disk = ["a.img",
    /// "b.img,ro"]`). Options given on the command line override the
    /// file's (a repeatable one as a whole).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// What the guest's exit status (its byte to the debug-exit port)
    /// becomes: `vmm`: 0 stays 0, anything else is status 3 (named on
    /// stderr), so it cannot be mistaken for the VMM's own statuses;
    /// `guest`: the byte as it is.
    #[arg(long, value_enum, default_value_t = ExitCodeArg::Vmm)]
    exit_code: ExitCodeArg,
    /// Run a flat binary as firmware instead: mapped as ROM that ends at 4 GiB
    /// (mirrored below 1 MiB); execution starts at its last 16 bytes.
    #[arg(long, value_name = "FILE")]
    bios: Option<PathBuf>,
    /// Boot a Linux kernel (bzImage or ELF vmlinux) directly instead.
    #[arg(long, value_name = "FILE", conflicts_with = "bios")]
    kernel: Option<PathBuf>,
    /// The initrd for --kernel.
    #[arg(long, value_name = "FILE", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// The kernel command line for --kernel (without it: a serial console
    /// on COM1, and a panic ends the run; printed on stderr).
    #[arg(long, requires = "kernel")]
    cmdline: Option<String>,
    /// With --kernel: leave the ACPI tables out (the guest finds its CPUs
    /// and interrupt routing in the MP table alone).
    #[arg(long, requires = "kernel")]
    no_acpi: bool,
    /// What a reboot from inside the guest does: `restart` the VM (as QEMU
    /// does) or `exit` (end the run, as Firecracker does).
    #[arg(long, value_enum, default_value_t = RebootArg::Restart)]
    reboot: RebootArg,
    /// When the guest stops, print the statistics matching PATTERN
    /// (`*`, `?`, `|`; everything when omitted).
    #[arg(long, value_name = "PATTERN", num_args = 0..=1, default_missing_value = "")]
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
    /// Check each vCPU's state against the Intel SDM's VM-entry rules before
    /// it enters the guest and report broken rules by name (always on in
    /// debug builds).
    #[arg(long)]
    check_entry: bool,
    /// Continue a VM saved with `vmm save`: RAM size, vCPU count and
    /// firmware come from FILE (every CRC is checked before it is loaded).
    /// The saved RAM is mapped from FILE copy-on-write, so FILE must not be
    /// changed while the VM runs (saving to it again is fine).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["bios", "kernel", "guest", "mem", "cpus"])]
    restore: Option<PathBuf>,
    /// With --restore: copy the saved RAM into the VM instead of mapping it
    /// (slower; the VM then no longer needs FILE).
    #[arg(long, requires = "restore")]
    restore_copy: bool,
    /// Wait for a teleport on ADDR (host:port; port 0 picks one, printed on
    /// stderr) and continue the VM it brings. The VM is configured from the
    /// other options and must match the source's.
    #[arg(long, value_name = "ADDR", conflicts_with = "restore")]
    incoming: Option<String>,
    /// Serve the control API (HTTP/1.1, JSON) on a Unix socket at PATH, for
    /// `vmm status`, `vmm pause`, `curl --unix-socket`, ...
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Wait for gdb on ADDR (`PORT` or `HOST:PORT` on loopback, or
    /// `unix:PATH`) before the first guest instruction, then serve it while
    /// the guest runs.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["restore", "incoming"])]
    gdb: Option<String>,
    /// With --gdb: how gdb's watchpoints (`watch`, `rwatch`, `awatch`) are
    /// armed. `auto`: the debug registers DR0-DR3 when the host's KVM
    /// delivers data breakpoints and the range fits in the free slots, page
    /// traps otherwise; `dr`: debug registers only (at most 4 slots of 1, 2,
    /// 4 or 8 aligned bytes); `page`: page traps only (any length and count,
    /// reads alone can be watched; every access to a watched page exits).
    #[arg(long, value_enum, default_value_t = WatchArg::Auto, requires = "gdb")]
    gdb_watch: WatchArg,
    /// Ask the guest for a memory balloon of SIZE (MiB, or with a unit) from
    /// power-on; a guest with a balloon driver (the `idle` guest) gives that
    /// much RAM back to the host. Change it later through the control API.
    #[arg(long, value_name = "SIZE", value_parser = parse_balloon)]
    balloon: Option<u64>,
    /// Every SECS seconds, share identical guest pages (GMM page sharing:
    /// one host copy, copy on write; all-zero pages cost nothing).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    page_sharing: Option<u64>,
    #[command(flatten)]
    devices: DeviceArgs,
}

/// What `vmm run --help` says about the console and signals (see
/// [`crate::console`] and [`crate::shutdown`]).
fn after_help() -> String {
    format!(
        "\
Console: with --console stdio (the default) and stdin a terminal, the
terminal is in raw mode while the VM runs, its settings put back however
vmm ends (but by SIGKILL: then run `reset`).
{}

Signals: SIGINT (Ctrl-C without a console), SIGTERM and SIGHUP power the VM
off in order: the exit-time reports (--stats, --info, --dump-phys) are
written, the API socket is removed, and vmm exits with 128 + the signal's
number (130, 143, 129). A second signal ends vmm at once.

The guest ends the run itself: with status 0 when it powers off (ACPI
soft-off) or halts every CPU with interrupts off (`cli; hlt`, Linux's
poweroff without ACPI; not while gdb is attached); with the status it
writes to the debug-exit port (as --exit-code says); on a reboot as
--reboot says.

Exit status: 0 success, 1 VMM error, 2 usage error (options, --config
file), 3 the guest failed (a non-zero status, a kernel panic), 128 + N
on signal N; the README lists them.",
        crate::console::escape::HELP
    )
}

/// `--reboot`: what a reboot from inside the guest does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RebootArg {
    /// Reset the VM and boot again.
    Restart,
    /// End the run.
    Exit,
}

impl From<RebootArg> for OnReboot {
    fn from(arg: RebootArg) -> Self {
        match arg {
            RebootArg::Restart => OnReboot::Restart,
            RebootArg::Exit => OnReboot::Exit,
        }
    }
}

/// The kernel command line without --cmdline: the console on COM1, resets
/// through the keyboard controller, and a panic (an oops too) resets a
/// second later with the BIOS warm-reset flag set (`panic_warm`), which
/// `vmm` takes as the end of the run ([`vmm_core::RunOutcome::WarmReset`]).
const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k,panic_warm panic=1 oops=panic";

/// `--gdb-watch`: the debugger's watchpoint mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum WatchArg {
    /// Debug registers where the host delivers them and they fit, else page traps.
    Auto,
    /// Debug registers only.
    Dr,
    /// Page traps through the guest-physical map only.
    Page,
}

impl From<WatchArg> for WatchMode {
    fn from(arg: WatchArg) -> Self {
        match arg {
            WatchArg::Auto => WatchMode::Auto,
            WatchArg::Dr => WatchMode::DebugRegisters,
            WatchArg::Page => WatchMode::PageTraps,
        }
    }
}

fn parse_balloon(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

fn parse_cpus(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err("a VM needs at least one vCPU".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{text:?} is not a vCPU count: {e}")),
    }
}

fn parse_guest(name: &str) -> Result<String, String> {
    guests::find(name)
        .map(|g| g.name.to_owned())
        .map_err(|e| match e {
            vmm_core::Error::Config(message) => message,
            other => other.to_string(),
        })
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
        let list = if args.json {
            let guests: Vec<_> = guests::GUESTS
                .iter()
                .map(|g| serde_json::json!({ "name": g.name, "description": g.description }))
                .collect();
            crate::output::json_line(&serde_json::json!({ "guests": guests }))?
        } else {
            guests::GUESTS
                .iter()
                .map(|g| format!("{:<10} {}\n", g.name, g.description))
                .collect()
        };
        print_stdout(&list, "the guest list");
        return Ok(ExitCode::SUCCESS);
    }
    // Before any other thread starts: they all inherit the blocked signals.
    let signals = ShutdownSignals::watch()?;
    // Bind first: a socket in use is reported before the VM is built.
    let api_socket = args
        .api_socket
        .as_deref()
        .map(ApiSocket::bind)
        .transpose()?;
    let serial: vmm_core::config::SerialSink = Box::new(match &args.serial {
        Some(path) => SerialOutput::create(path)?,
        None => SerialOutput::stdout(),
    });
    if let Some(path) = &args.restore {
        let options = RestoreOptions {
            ram: if args.restore_copy {
                RamLoad::Copy
            } else {
                RamLoad::Map
            },
            check_entry: args.check_entry,
            on_reboot: args.reboot.into(),
        };
        let stats = stam::Registry::new();
        let opened = args.devices.open(&stats)?;
        let vm = Vm::restore_with_devices(path, serial, options, opened.devices, stats)
            .with_context(|| format!("cannot restore {}", path.display()))?;
        if let Some(r) = vm.restore_report() {
            eprintln!(
                "vmm: restored {} in {:.1} ms (RAM pages mapped from the file: {}; load {:.1} ms)",
                path.display(),
                (r.build + r.verify_wait + r.load).as_secs_f64() * 1e3,
                r.pages_mapped,
                r.load.as_secs_f64() * 1e3,
            );
        }
        let config = vm_core_config(&vm, path, opened.info);
        return run_vm(vm, None, config, api_socket, &signals, &args);
    }
    let mut config = match &args.kernel {
        Some(kernel) => VmConfig::with_kernel(
            args.mem,
            KernelBoot::from_files(kernel, args.initrd.as_deref(), &kernel_cmdline(&args))
                .context("cannot read the kernel or initrd")?,
        ),
        None => VmConfig::new(
            args.mem,
            match &args.bios {
                Some(path) => vmm_core::firmware::read(path)
                    .with_context(|| format!("cannot read firmware {}", path.display()))?,
                None => guests::find(&args.guest)?.firmware()?,
            },
        ),
    };
    config.cpus = args.cpus;
    config.acpi = !args.no_acpi;
    config.on_reboot = args.reboot.into();
    config.check_entry = args.check_entry;
    config.balloon_bytes = args.balloon.unwrap_or(0);
    let opened = args.devices.open(&config.stats)?;
    config.virtio = opened.devices;
    config.serial = serial;
    if let Some(address) = &args.incoming {
        let listener = std::net::TcpListener::bind(address)
            .with_context(|| format!("cannot listen on {address}"))?;
        let bound = listener.local_addr()?;
        eprintln!("vmm: waiting for a teleport on {bound}");
        let api_config = api_config(&config, &args, opened.info);
        let vm = Vm::incoming(config, &listener)
            .with_context(|| format!("teleport to {bound} failed"))?;
        eprintln!("vmm: teleport received; resuming the VM");
        return run_vm(vm, None, api_config, api_socket, &signals, &args);
    }
    let api_config = api_config(&config, &args, opened.info);
    let (vm, attach) = match &args.gdb {
        Some(_) => {
            let (vm, mut attach) = Vm::new_debuggable(config)?;
            attach.debugger.set_watch_mode(args.gdb_watch.into());
            (vm, Some(attach))
        }
        None => (Vm::new(config)?, None),
    };
    run_vm(vm, attach, api_config, api_socket, &signals, &args)
}

/// The kernel command line: --cmdline, or the default (said on stderr).
fn kernel_cmdline(args: &RunArgs) -> String {
    args.cmdline.clone().unwrap_or_else(|| {
        eprintln!("vmm: no --cmdline; using \"{DEFAULT_CMDLINE}\"");
        DEFAULT_CMDLINE.to_string()
    })
}

/// What `GET /v1/vm` reports for a VM built from the command line.
fn api_config(config: &VmConfig, args: &RunArgs, devices: Vec<DeviceInfo>) -> VmConfigInfo {
    VmConfigInfo {
        ram_bytes: config.ram_bytes,
        cpus: config.cpus,
        boot: match (&args.kernel, &args.bios) {
            (Some(path), _) => format!("kernel {}", path.display()),
            (None, Some(path)) => format!("firmware {}", path.display()),
            (None, None) => format!("guest {}", args.guest),
        },
        devices,
    }
}

/// What `GET /v1/vm` reports for a restored VM.
fn vm_core_config(vm: &Vm, path: &std::path::Path, devices: Vec<DeviceInfo>) -> VmConfigInfo {
    let saved = vm.saved_config();
    VmConfigInfo {
        ram_bytes: saved.ram_bytes,
        cpus: saved.cpus,
        boot: format!("restored {}", path.display()),
        devices,
    }
}

/// Runs a built VM (with the control API and the gdb stub if asked) and
/// reports the end; while it runs, a shutdown signal powers it off.
fn run_vm(
    mut vm: Vm,
    attach: Option<DebugAttachment>,
    api_config: VmConfigInfo,
    api_socket: Option<ApiSocket>,
    signals: &ShutdownSignals,
    args: &RunArgs,
) -> anyhow::Result<ExitCode> {
    let api = match api_socket {
        Some(socket) => {
            let server = socket.serve(Arc::new(VmControl::new(vm.handle(), api_config)))?;
            eprintln!("vmm: control API on {}", server.path().display());
            Some(server)
        }
        None => None,
    };
    let gdb = match (&args.gdb, attach) {
        (Some(addr), Some(attach)) => Some(GdbServer::start(addr, attach, vm.handle())?),
        _ => None,
    };
    let sharing = args
        .page_sharing
        .map(|secs| PageSharing::start(vm.handle(), Duration::from_secs(secs)));
    let console = Console::start(args.console, vm.handle(), vm.serial_input())?;
    signals.arm(vm.handle());
    let outcome = vm.run();
    let signalled = signals.disarm();
    // Stopped before anything else is said: the terminal is itself again.
    drop(console);
    drop(sharing);
    drop(api);
    std::io::stdout().flush().ok();
    if let Some(server) = gdb
        && let Err(e) = server.finish()
    {
        eprintln!("vmm: {e:#}");
    }
    report(&vm, args)?;
    Ok(crate::exit::run_status(outcome?, signalled, args.exit_code))
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
        out.push_str(&args.stats_format.render(&snapshot)?);
    }
    if !out.is_empty() {
        print_stdout(&out, "the exit-time report");
    }
    Ok(())
}

/// Writes `text` (`what`, for the message) to stdout; a stdout that fails
/// (a closed pipe, a full disk) is reported on stderr and the run goes on.
fn print_stdout(text: &str, what: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        eprintln!("vmm: cannot write {what} to stdout: {e}");
    }
}

/// `--page-sharing`: a thread that runs GMM's sharing scan periodically
/// while the VM runs; stopped (and joined) when dropped.
struct PageSharing {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PageSharing {
    fn start(vm: VmHandle, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let tick = Duration::from_millis(50);
            let mut waited = Duration::ZERO;
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                waited += tick;
                if waited < every || vm.state() != VmState::Running {
                    continue;
                }
                waited = Duration::ZERO;
                if let Err(e) = vm.share_pages() {
                    eprintln!("vmm: page sharing: {e}");
                }
            }
        });
        PageSharing {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PageSharing {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
