//! `cargo package` of every publishable crate, verified: each `.crate` is
//! unpacked and built on its own.
//!
//! Cargo packages the crates in dependency order and resolves the
//! workspace crates a crate depends on from a temporary local registry of
//! the ones packaged before it (not from crates.io, where these versions
//! are not published), so the check needs no upload and proves that the
//! packages build from their published files alone (a missing `include`,
//! a path outside the crate) before a release.
//!
//! Cargo unpacks that registry's crates under
//! `$CARGO_HOME/registry/src/-<hash of the registry's path>/NAME-VERSION`
//! and, like any registry crate, does not unpack a name and version it
//! finds there again: a second run from the same checkout path would
//! verify each crate against the first run's sources of its workspace
//! dependencies. Those unpacked copies are removed first.

use std::path::PathBuf;

use anyhow::Context;

/// Packages and verifies every crate but `xtask`, `cargo` running cargo.
pub fn run(cargo: fn(&[&str]) -> anyhow::Result<()>) -> anyhow::Result<()> {
    forget_unpacked_packages()?;
    cargo(&[
        "package",
        "--workspace",
        "--exclude",
        "xtask",
        "--allow-dirty",
    ])
}

fn cargo_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(home.into());
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// `NAME-VERSION` of every workspace package.
fn workspace_packages() -> anyhow::Result<Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(&cargo)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(crate::workspace_root())
        .output()
        .with_context(|| format!("cannot run {cargo} metadata"))?;
    anyhow::ensure!(
        out.status.success(),
        "cargo metadata failed ({})",
        out.status
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let packages = meta["packages"]
        .as_array()
        .context("cargo metadata: no packages")?;
    Ok(packages
        .iter()
        .filter_map(|p| {
            Some(format!(
                "{}-{}",
                p["name"].as_str()?,
                p["version"].as_str()?
            ))
        })
        .collect())
}

/// Removes the workspace's crates unpacked from local registries (the
/// directories of `registry/src` whose name has no host part: `-<hash>`).
fn forget_unpacked_packages() -> anyhow::Result<()> {
    let src = cargo_home()?.join("registry").join("src");
    let Ok(registries) = std::fs::read_dir(&src) else {
        return Ok(()); // nothing unpacked yet
    };
    let packages = workspace_packages()?;
    for registry in registries {
        let registry = registry?.path();
        let local = registry
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('-'));
        if !local {
            continue;
        }
        for package in &packages {
            let unpacked = registry.join(package);
            if unpacked.is_dir() {
                std::fs::remove_dir_all(&unpacked)
                    .with_context(|| format!("cannot remove {}", unpacked.display()))?;
            }
        }
    }
    Ok(())
}
