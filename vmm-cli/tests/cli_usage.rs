//! `vmm completions SHELL` and `vmm man`: the scripts are valid for their
//! shells (`bash -n`, `zsh -n`) and know the commands; the manual page is
//! roff that lists them.

#[allow(dead_code)] // shared by the end-to-end tests; this one checks a tool
mod support;

use std::process::Command;

use support::VMM;

fn stdout_of(args: &[&str]) -> String {
    let out = Command::new(VMM).args(args).output().expect("vmm starts");
    assert!(
        out.status.success(),
        "vmm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Generates the completion script for `shell` and checks it with `shell -n`.
fn completion_script_is_valid(shell: &str) {
    let script = stdout_of(&["completions", shell]);
    for command in ["run", "balloon", "completions", "state"] {
        assert!(script.contains(command), "{shell}: no {command}");
    }
    assert!(script.contains("--api-socket"), "{shell}");
    if !support::tool_available(shell, &["-c", "true"], "its completion script") {
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
