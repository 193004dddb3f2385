//! Developer tasks: `cargo xtask ci` (the whole test suite, the
//! hardware-KVM lane included), `cargo xtask hwkvm` (that lane alone),
//! `cargo xtask bench` (the benchmarks, kept out of the test run),
//! `cargo xtask soak` (the control API under a long mixed load, also kept
//! out of it) and `cargo xtask guest-linux` (Linux guest images).

use std::process::Command;

mod apt;
mod bench;
mod cpio;
mod elf;
mod ext4;
mod guest_exit;
mod guest_linux;
mod guest_vsock;
mod hwkvm;
mod kmod;
mod light;
mod package;
mod soak;
mod tool;

use anyhow::{Context, bail};

const USAGE: &str =
    "usage: cargo xtask <ci | hwkvm [...] | bench [--summary] [CRATE...] [-- OPTS] | soak [--ops N] | guest-linux [--test-kernel]>

  ci      format check, clippy with -D warnings, every test, rustdoc with -D warnings,
          cargo package (verified) of every published crate, and the hardware-KVM lane
  hwkvm   the hardware-KVM lane alone (cargo xtask hwkvm --help)
  bench   run the criterion benchmarks (all crates, or the ones named; criterion options after --);
          --summary: only the benches behind the headline metrics, ending with one JSON object
          a line: {\"metric\": NAME, \"value\": V, \"unit\": U, \"baseline\": B}
  soak    the release vmm under a mixed control-API load (default 100000 operations):
          no errors, bounded latency, no growth of descriptors or memory
  guest-linux  Debian kernel + busybox initramfs (or --test-kernel) for vmm run --kernel";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => bench::run(&args[1..], cargo),
        Some("guest-linux") => guest_linux::run(&args[1..]),
        Some("hwkvm") => hwkvm::run(&args[1..]),
        Some("soak") => soak::run(&args[1..], cargo),
        _ => bail!("{USAGE}"),
    }
}

/// Runs `cargo` with `args` from the workspace root, failing on a non-zero exit.
fn cargo(args: &[&str]) -> anyhow::Result<()> {
    cargo_with_env(&[], args)
}

/// [`cargo`] with environment variables `env` set for it.
fn cargo_with_env(env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Into::into)
        .unwrap_or_default()
}

fn ci() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["test", "--workspace", "--no-fail-fast"])?;
    light::check(cargo)?;
    cargo_with_env(
        &[("RUSTDOCFLAGS", "-D warnings")],
        &["doc", "--workspace", "--exclude", "xtask", "--no-deps"],
    )?;
    package::run(cargo)?;
    hwkvm::run(&[])?;
    eprintln!("xtask: ci passed");
    Ok(())
}
