//! The serial console of `vmm run`: stdin reaches the guest's COM1 (the
//! `echo` guest reads it by interrupt and writes it back uppercased, and
//! ends the run on `q`). From a pipe every byte arrives in order, however
//! many more than the UART's FIFO holds, and the end of the pipe leaves
//! the VM running; on a terminal (a pseudo-terminal here) keys go to the
//! guest raw, Ctrl-C included, Ctrl-A x quits and the terminal gets its
//! settings back.

#[allow(
    dead_code,
    reason = "shared with the other end-to-end tests; the client calls are not used here"
)]
#[path = "../support/mod.rs"]
mod support;

mod pty;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hm_vmx::testing::kvm_available;
use support::{VMM, Vmm, read};

/// Generous: the test host is shared and slow; polls end as soon as they succeed.
const DEADLINE: Duration = Duration::from_secs(40);
/// What the echo guest prints before it reads, and when it ends.
const READY: &str = "vmm echo: ready\n";
const BYE: &str = "\nvmm echo: bye\n";

/// `vmm run --guest echo ARGS` with stdin a pipe, stdout in `dir/stdout`
/// and stderr in `dir/stderr`.
fn echo_guest(dir: &Path, args: &[&str]) -> Vmm {
    let mut command = Command::new(VMM);
    command
        .args(["run", "--guest", "echo"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap());
    Vmm::start("vmm run --guest echo", &mut command, DEADLINE)
}

fn output(dir: &Path) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        read(&dir.join("stdout")),
        read(&dir.join("stderr"))
    )
}

/// Sends `signal` to the `vmm` child.
fn send_signal(vm: &Vmm, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(vm.child.id()).expect("a pid fits pid_t");
    // SAFETY: kill has no memory-safety preconditions; the child is not
    // reaped yet, so the pid is still its own.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid}");
}

/// Checks for a while that the child still runs.
fn assert_still_running(vm: &mut Vmm, dir: &Path) {
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        vm.child.try_wait().unwrap().is_none(),
        "vmm ended:\n{}",
        output(dir)
    );
}

#[test]
fn piped_input_reaches_the_guest_whole_and_in_order_past_the_fifo() {
    const TEST: &str = "piped_input_reaches_the_guest_whole_and_in_order_past_the_fifo";
    if !kvm_available(TEST) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut vm = echo_guest(dir.path(), &[]);
    // 1000 bytes: the FIFO holds 64, so the console waits for the guest
    // again and again.
    let alphabet = b"abcdefghijklmnoprstuvwxyz0123456789 .,-\n";
    let sent: Vec<u8> = (0..1000)
        .map(|i| alphabet[i * 7 % alphabet.len()])
        .collect();
    let mut stdin = vm.child.stdin.take().unwrap();
    stdin.write_all(&sent).unwrap();
    stdin.write_all(b"q").unwrap();
    drop(stdin);
    let status = vm.wait(|| output(dir.path()));
    assert_eq!(status.code(), Some(0), "{}", output(dir.path()));
    let expected = format!(
        "{READY}{}{BYE}",
        String::from_utf8(sent).unwrap().to_uppercase()
    );
    assert_eq!(read(&dir.path().join("stdout")), expected);
}

#[test]
fn the_end_of_piped_input_leaves_the_vm_running() {
    const TEST: &str = "the_end_of_piped_input_leaves_the_vm_running";
    if !kvm_available(TEST) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stdout = dir.path().join("stdout");
    let mut vm = echo_guest(dir.path(), &[]);
    let mut stdin = vm.child.stdin.take().unwrap();
    stdin.write_all(b"abc").unwrap();
    drop(stdin);
    vm.wait_for_text(&stdout, "ABC");
    assert_still_running(&mut vm, dir.path());
    send_signal(&vm, libc::SIGTERM);
    let status = vm.wait(|| output(dir.path()));
    assert_eq!(status.code(), Some(143), "{}", output(dir.path()));
}

#[test]
fn with_console_none_stdin_is_not_read() {
    const TEST: &str = "with_console_none_stdin_is_not_read";
    if !kvm_available(TEST) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stdout = dir.path().join("stdout");
    let mut vm = echo_guest(dir.path(), &["--console", "none"]);
    // Kept open: the guest would end on this `q` if it got it.
    let mut stdin = vm.child.stdin.take().unwrap();
    stdin.write_all(b"xq").unwrap();
    vm.wait_for_text(&stdout, READY);
    assert_still_running(&mut vm, dir.path());
    assert_eq!(read(&stdout), READY);
    send_signal(&vm, libc::SIGTERM);
    let status = vm.wait(|| output(dir.path()));
    assert_eq!(status.code(), Some(143), "{}", output(dir.path()));
}

#[test]
fn on_a_terminal_keys_go_to_the_guest_raw_and_ctrl_a_x_quits() {
    const TEST: &str = "on_a_terminal_keys_go_to_the_guest_raw_and_ctrl_a_x_quits";
    if !kvm_available(TEST) {
        return;
    }
    let pty = pty::Pty::open();
    let before = pty.settings();
    assert_ne!(before.c_lflag & libc::ICANON, 0, "a new pty is cooked");
    let mut command = Command::new(VMM);
    command.args(["run", "--guest", "echo"]);
    pty.controlling_terminal_of(&mut command);
    let mut vm = Vmm::start("vmm run --guest echo on a pty", &mut command, DEADLINE);
    let screen = pty.screen();
    screen.wait_for(&mut vm, READY.replace('\n', "\r\n").as_str());
    screen.wait_for(&mut vm, "Ctrl-A x quits");
    let raw = pty.settings();
    assert_eq!(raw.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG), 0);

    // Ctrl-C is a byte for the guest (with the terminal's signals on, it
    // would have sent vmm SIGINT).
    pty.type_keys(b"ab\x03cd");
    screen.wait_for(&mut vm, "AB\x03CD");
    // Ctrl-A Ctrl-A sends one Ctrl-A; Ctrl-A h prints the keys.
    pty.type_keys(b"\x01\x01e");
    screen.wait_for(&mut vm, "AB\x03CD\x01E");
    pty.type_keys(b"\x01h");
    screen.wait_for(&mut vm, "Ctrl-A Ctrl-A  send Ctrl-A");
    assert!(vm.child.try_wait().unwrap().is_none(), "{}", screen.text());

    pty.type_keys(b"\x01x");
    let status = vm.wait(|| screen.text());
    assert_eq!(status.code(), Some(0), "{}", screen.text());
    assert!(
        screen.text().contains("Ctrl-A x: powering the VM off"),
        "{}",
        screen.text()
    );
    let after = pty.settings();
    assert_eq!(
        (after.c_iflag, after.c_oflag, after.c_lflag),
        (before.c_iflag, before.c_oflag, before.c_lflag),
        "the terminal's settings are back"
    );
}

#[test]
fn run_help_documents_the_console_and_its_keys() {
    let out = Command::new(VMM).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    for needle in [
        "--console",
        "raw mode",
        "Ctrl-A x",
        "Ctrl-A h",
        "Ctrl-A Ctrl-A",
    ] {
        assert!(help.contains(needle), "no {needle:?} in:\n{help}");
    }
}
