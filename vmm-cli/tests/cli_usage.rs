//! `vmm completions SHELL` and `vmm man`: the scripts are valid for their
//! shells (`bash -n`, `zsh -n`) and know the commands; the manual page is
//! roff that lists them.

use std::process::{Command, Stdio};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

fn stdout_of(args: &[&str]) -> String {
    let out = Command::new(VMM).args(args).output().expect("vmm starts");
    assert!(
        out.status.success(),
        "vmm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Whether `shell` is installed; a missing one fails under CI=true.
fn shell_available(shell: &str) -> bool {
    let found = Command::new(shell)
        .args(["-c", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{shell} is required under CI=true (.ci/run installs it) but is not installed"
        );
        eprintln!("!!! NOT CHECKED: {shell} is not installed (apt-get install {shell}) !!!");
    }
    found
}

/// Generates the completion script for `shell` and checks it with `shell -n`.
fn completion_script_is_valid(shell: &str) {
    let script = stdout_of(&["completions", shell]);
    for command in ["run", "balloon", "completions", "state"] {
        assert!(script.contains(command), "{shell}: no {command}");
    }
    assert!(script.contains("--api-socket"), "{shell}");
    if !shell_available(shell) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("vmm.{shell}"));
    std::fs::write(&path, &script).unwrap();
    let out = Command::new(shell).arg("-n").arg(&path).output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{shell} -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A broken script is caught: the check can fail.
    std::fs::write(&path, format!("{script}\n{{ (\n")).unwrap();
    let broken = Command::new(shell).arg("-n").arg(&path).output().unwrap();
    assert!(
        !broken.status.success(),
        "{shell} -n accepts a broken script"
    );
}

#[test]
fn bash_completion_is_valid_bash() {
    completion_script_is_valid("bash");
}

#[test]
fn zsh_completion_is_valid_zsh() {
    completion_script_is_valid("zsh");
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let out = Command::new(VMM)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_manual_page_is_roff_and_lists_the_commands() {
    let page = stdout_of(&["man"]);
    assert!(page.contains(".TH vmm"), "{page}");
    for command in ["run", "balloon", "doctor", "completions"] {
        assert!(page.contains(command), "no {command} in:\n{page}");
    }
    assert!(page.contains("Exit status"), "{page}");
}
