//! Debian packages for the guest images and the hardware-KVM lane: names
//! resolved with `apt-cache`, `.deb`s fetched with `apt-get download` and
//! unpacked with `dpkg-deb` into a cache that outlives the checkout.
//!
//! [`Apt::backports`] uses a private apt configuration (its own sources
//! list, package lists and cache under the given directory), so that
//! fetching from `<codename>-backports` never changes the machine's apt
//! state.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::tool;

/// How long one apt call may take before it is killed.
const APT_LIMIT: Duration = Duration::from_secs(600);

/// Options for every apt call: bounded network waits, and downloads as root
/// into our own directories (no `_apt` sandbox warnings).
const COMMON: [&str; 6] = [
    "-o",
    "Acquire::http::Timeout=30",
    "-o",
    "Acquire::Retries=2",
    "-o",
    "APT::Sandbox::User=root",
];

/// An apt configuration: the machine's, or a private one.
pub struct Apt {
    opts: Vec<String>,
    what: String,
}

impl Apt {
    /// The machine's own apt sources and state.
    pub fn system() -> Apt {
        Apt {
            opts: COMMON.iter().map(|s| s.to_string()).collect(),
            what: "Debian's archive".into(),
        }
    }

    /// A private configuration under `dir` whose only source is the
    /// machine's Debian mirror with the `<codename>-backports` suite.
    pub fn backports(dir: &Path) -> anyhow::Result<Apt> {
        let release = std::fs::read_to_string("/etc/os-release")
            .context("cannot read /etc/os-release (is this Debian?)")?;
        let codename = release
            .lines()
            .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
            .map(|c| c.trim_matches('"').to_owned())
            .context("/etc/os-release names no VERSION_CODENAME")?;
        let mirror = debian_mirror()?;
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let sources = dir.join("sources.list");
        std::fs::write(
            &sources,
            format!("deb {mirror} {codename}-backports main\n"),
        )?;
        let mut opts: Vec<String> = COMMON.iter().map(|s| s.to_string()).collect();
        for (key, value) in [
            ("Dir::Etc::sourcelist", sources.display().to_string()),
            ("Dir::Etc::sourceparts", "/nonexistent".into()),
            ("Dir::State::Lists", dir.join("lists").display().to_string()),
            ("Dir::Cache", dir.join("cache").display().to_string()),
        ] {
            opts.push("-o".into());
            opts.push(format!("{key}={value}"));
        }
        Ok(Apt {
            opts,
            what: format!("{codename}-backports ({mirror})"),
        })
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        cmd.args(&self.opts);
        cmd
    }

    /// Refreshes the package lists.
    pub fn update(&self) -> anyhow::Result<()> {
        tool::run(self.command("apt-get").arg("update"), APT_LIMIT)
            .with_context(|| format!("cannot fetch the package lists of {}", self.what))
    }

    /// Resolves a package name with `find`, refreshing the package lists
    /// once if apt does not know it yet.
    pub fn resolve(
        &self,
        what: &str,
        find: impl Fn(&Apt) -> anyhow::Result<Option<String>>,
    ) -> anyhow::Result<String> {
        if let Some(name) = find(self)? {
            return Ok(name);
        }
        self.update()?;
        find(self)?.with_context(|| format!("{} has no {what}", self.what))
    }

    /// The package `pkg` depends on whose name satisfies `pick`.
    pub fn dependency(
        &self,
        pkg: &str,
        pick: impl Fn(&str) -> bool,
    ) -> anyhow::Result<Option<String>> {
        let text = tool::output(self.command("apt-cache").args(["depends", pkg]), APT_LIMIT)
            .unwrap_or_default();
        Ok(text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| pick(p))
            .map(str::to_owned))
    }

    /// The newest package whose name matches the apt-cache `pattern` and
    /// satisfies `pick` (versions compared as `sort -V` does).
    pub fn newest(
        &self,
        pattern: &str,
        pick: impl Fn(&str) -> bool,
    ) -> anyhow::Result<Option<String>> {
        let text = tool::output(
            self.command("apt-cache")
                .args(["search", "--names-only", pattern]),
            APT_LIMIT,
        )?;
        let mut names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| pick(n))
            .collect();
        names.sort_by(|a, b| version_order(a, b));
        Ok(names.last().map(|s| s.to_string()))
    }

    /// Downloads `pkg` and unpacks it under `cache/unpacked/PKG` (once:
    /// later calls return the unpacked tree at once).
    pub fn unpack(&self, pkg: &str, cache: &Path) -> anyhow::Result<PathBuf> {
        let dir = cache.join("unpacked").join(pkg);
        if dir.join(".done").exists() {
            return Ok(dir);
        }
        let debs = cache.join("debs").join(pkg);
        for d in [&dir, &debs] {
            if d.exists() {
                std::fs::remove_dir_all(d)?;
            }
            std::fs::create_dir_all(d)?;
        }
        eprintln!("xtask: fetching {pkg} from {}", self.what);
        let mut download = self.command("apt-get");
        download.args(["download", pkg]).current_dir(&debs);
        if let Err(e) = tool::run(&mut download, APT_LIMIT) {
            self.update()
                .and_then(|()| tool::run(&mut download, APT_LIMIT))
                .map_err(|again| {
                    anyhow::anyhow!("could not fetch {pkg} from {}: {e}; {again}", self.what)
                })?;
        }
        for entry in std::fs::read_dir(&debs)? {
            let deb = entry?.path();
            if deb.extension().is_some_and(|e| e == "deb") {
                tool::run(
                    Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir),
                    APT_LIMIT,
                )?;
            }
        }
        std::fs::write(dir.join(".done"), pkg)?;
        Ok(dir)
    }
}

/// The Debian mirror the machine's apt sources use.
fn debian_mirror() -> anyhow::Result<String> {
    let mut texts = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            texts.push(std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    texts.push(std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    for text in &texts {
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let uri = match words.as_slice() {
                ["URIs:", uri, ..] => *uri,
                ["deb", uri, ..] => *uri,
                _ => continue,
            };
            if uri.trim_end_matches('/').ends_with("/debian") {
                return Ok(uri.trim_end_matches('/').to_owned());
            }
        }
    }
    bail!("cannot find a Debian mirror in the apt sources")
}

/// Compares names by their runs of digits as numbers, like `sort -V`.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<(bool, String)> {
        let mut out: Vec<(bool, String)> = Vec::new();
        for c in s.chars() {
            let digit = c.is_ascii_digit();
            match out.last_mut() {
                Some((d, run)) if *d == digit => run.push(c),
                _ => out.push((digit, c.to_string())),
            }
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        let ord = match (x.0 && y.0, x.1.parse::<u64>(), y.1.parse::<u64>()) {
            (true, Ok(m), Ok(n)) => m.cmp(&n),
            _ => x.1.cmp(&y.1),
        };
        if ord.is_ne() {
            return ord;
        }
    }
    pa.len().cmp(&pb.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically() {
        let mut v = vec![
            "linux-image-6.12.9+deb12-cloud-amd64",
            "linux-image-6.12.117+deb12-cloud-amd64",
            "linux-image-6.1.0-57-cloud-amd64",
            "linux-image-6.12.113+deb12-cloud-amd64",
        ];
        v.sort_by(|a, b| version_order(a, b));
        assert_eq!(
            v,
            [
                "linux-image-6.1.0-57-cloud-amd64",
                "linux-image-6.12.9+deb12-cloud-amd64",
                "linux-image-6.12.113+deb12-cloud-amd64",
                "linux-image-6.12.117+deb12-cloud-amd64",
            ]
        );
    }
}
