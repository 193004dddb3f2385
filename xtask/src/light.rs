//! The crates alone: each leaf crate builds, passes clippy and its tests
//! with its optional features off (and each of pgm's on its own), pgm
//! without its defaults pulls in neither the debugger, the assembler nor
//! the saved-state compression, vmm-core names no KVM crate (only hm-vmx
//! talks to KVM), and vmm-core's exit handling is tested on a machine
//! without KVM.

use std::process::Command;

/// `(crate, features)` combinations checked besides the workspace default.
const COMBINATIONS: &[(&str, &str)] = &[
    ("pgm", ""),
    ("pgm", "stats"),
    ("pgm", "info"),
    ("pgm", "saved-state"),
    ("dbgf", ""),
    ("stam", ""),
];

/// Crates `pgm` alone must not depend on.
const NOT_IN_BARE_PGM: &[&str] = &["gdbstub", "iced-x86", "lz4_flex"];

/// Crates only `hm-vmx` may use: everything above it goes through it.
const KVM_CRATES: &[&str] = &["kvm-ioctls", "kvm-bindings"];

/// Runs the checks; `cargo` runs one cargo command and fails on failure.
pub fn check(cargo: impl Fn(&[&str]) -> anyhow::Result<()>) -> anyhow::Result<()> {
    for &(krate, features) in COMBINATIONS {
        let mut args = vec!["clippy", "-p", krate, "--no-default-features"];
        if !features.is_empty() {
            args.extend(["--features", features]);
        }
        args.extend(["--all-targets", "--", "-D", "warnings"]);
        cargo(&args)?;
        if features.is_empty() {
            cargo(&["test", "-p", krate, "--no-default-features"])?;
        }
    }
    let tree = cargo_tree(&["-p", "pgm", "--no-default-features", "-e", "normal"])?;
    let pulled = pulled_in(&tree, NOT_IN_BARE_PGM);
    anyhow::ensure!(
        pulled.is_empty(),
        "pgm without default features depends on {pulled:?}:\n{tree}"
    );
    let tree = cargo_tree(&["-p", "vmm-core", "-e", "normal", "--depth", "1"])?;
    let pulled = pulled_in(&tree, KVM_CRATES);
    anyhow::ensure!(
        pulled.is_empty(),
        "vmm-core depends on {pulled:?} itself (only hm-vmx talks to KVM):\n{tree}"
    );
    exit_tests_without_kvm()
}

/// The exit-handling tests of vmm-core, in a mount namespace where
/// `/dev/kvm` is `/dev/null`: they must need no KVM (needs root, as CI has).
const EXIT_TESTS_WITHOUT_KVM: &str =
    "mount --bind /dev/null /dev/kvm && exec \"$CARGO\" test -p vmm-core --lib emt::";

fn exit_tests_without_kvm() -> anyhow::Result<()> {
    eprintln!("xtask: vmm-core exit tests with /dev/kvm hidden");
    let out = Command::new("unshare")
        .args(["--mount", "sh", "-c", EXIT_TESTS_WITHOUT_KVM])
        .env(
            "CARGO",
            std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
        )
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let said = String::from_utf8_lossy(&out.stdout);
    print!("{said}");
    anyhow::ensure!(
        out.status.success(),
        "vmm-core's exit tests failed with /dev/kvm hidden (unshare --mount needs root)"
    );
    anyhow::ensure!(
        ran_tests(&said),
        "no vmm-core exit test ran with /dev/kvm hidden"
    );
    Ok(())
}

/// Whether libtest's output reports at least one test passed.
fn ran_tests(output: &str) -> bool {
    output.lines().any(|l| {
        l.strip_prefix("test result: ok. ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n > 0)
    })
}

/// `cargo tree ARGS`.
fn cargo_tree(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .arg("tree")
        .args(args)
        .output()?;
    anyhow::ensure!(out.status.success(), "cargo tree {} failed", args.join(" "));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Which of `crates` appear in a `cargo tree` listing.
fn pulled_in<'a>(tree: &str, crates: &[&'a str]) -> Vec<&'a str> {
    crates
        .iter()
        .copied()
        .filter(|c| {
            tree.lines().any(|l| {
                l.trim_start_matches(|ch: char| !ch.is_ascii_alphanumeric())
                    .split_whitespace()
                    .next()
                    == Some(c)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_passing_summary_with_tests_counts() {
        assert!(ran_tests(
            "running 11 tests\ntest result: ok. 11 passed; 0 failed"
        ));
        assert!(!ran_tests("test result: ok. 0 passed; 0 failed"));
        assert!(!ran_tests("test result: FAILED. 3 passed; 1 failed"));
    }

    #[test]
    fn a_crate_anywhere_in_the_tree_is_found_and_prefixes_are_not() {
        let tree = "pgm v0.1.0 (/w/pgm)\n├── thiserror v2.0.0\n│   └── iced-x86 v1.21.0\n└── gdbstub_arch v0.3.3\n";
        assert_eq!(
            pulled_in(tree, &["gdbstub", "iced-x86", "lz4_flex"]),
            ["iced-x86"]
        );
    }
}
