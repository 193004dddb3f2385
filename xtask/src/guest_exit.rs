//! `vmm-exit N`: a tiny static x86-64 Linux program for guest images that
//! ends the VM with status N through the debug-exit port (`0x501`), so that
//! a command's status inside a Linux guest becomes `vmm run`'s exit status.
//!
//! Debian's cloud kernels have no `/dev/port`, and busybox cannot do port
//! I/O, hence this program: `tcdrain` on standard output and error (so
//! that what the command wrote leaves the serial port before the VM ends),
//! `ioperm(0x501, 1, 1)`, then `out 0x501, N`.
//! Where the port cannot be had (no rights, or not under `vmm`) it exits
//! with status N instead. Assembled with `iced-x86` and wrapped in a
//! one-segment ELF file (see `elf`).

use anyhow::Context;
use iced_x86::code_asm::*;

const DEBUG_EXIT_PORT: u32 = 0x501;
const SYS_IOPERM: u32 = 173;
const SYS_EXIT: u32 = 60;
const SYS_IOCTL: u32 = 16;
/// `ioctl(fd, TCSBRK, 1)` is `tcdrain(fd)`: it returns once the tty and
/// the UART have sent everything (and fails harmlessly on a non-tty).
const TCSBRK: u32 = 0x5409;

/// The program's machine code, to run at `entry`.
fn code(entry: u64) -> anyhow::Result<Vec<u8>> {
    let mut a = CodeAssembler::new(64)?;
    let mut digit = a.create_label();
    let mut parsed = a.create_label();
    let mut no_port = a.create_label();
    // ebx = argv[1] as a decimal number (0 without an argument); the
    // parse stops at the first byte that is not a digit.
    a.xor(ebx, ebx)?;
    a.mov(rsi, qword_ptr(rsp + 16))?;
    a.test(rsi, rsi)?;
    a.jz(parsed)?;
    a.set_label(&mut digit)?;
    a.movzx(eax, byte_ptr(rsi))?;
    a.sub(eax, i32::from(b'0'))?;
    a.cmp(eax, 9)?;
    a.ja(parsed)?;
    a.imul_3(ebx, ebx, 10)?;
    a.add(ebx, eax)?;
    a.inc(rsi)?;
    a.jmp(digit)?;
    a.set_label(&mut parsed)?;
    for fd in [1, 2] {
        a.mov(eax, SYS_IOCTL)?;
        a.mov(edi, fd)?;
        a.mov(esi, TCSBRK)?;
        a.mov(edx, 1)?;
        a.syscall()?;
    }
    a.mov(eax, SYS_IOPERM)?;
    a.mov(edi, DEBUG_EXIT_PORT)?;
    a.mov(esi, 1)?;
    a.mov(edx, 1)?;
    a.syscall()?;
    a.test(eax, eax)?;
    a.jnz(no_port)?;
    a.mov(eax, ebx)?;
    a.mov(edx, DEBUG_EXIT_PORT)?;
    a.out(dx, al)?;
    a.set_label(&mut no_port)?;
    a.mov(edi, ebx)?;
    a.mov(eax, SYS_EXIT)?;
    a.syscall()?;
    a.assemble(entry).context("cannot assemble vmm-exit")
}

/// The whole ELF executable.
pub fn program() -> anyhow::Result<Vec<u8>> {
    crate::elf::executable(code, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    /// Runs the program without the rights `ioperm` needs (as `nobody`
    /// when we are root), so that it cannot touch a host port and exits
    /// with the status it was given.
    fn run_unprivileged(arg: Option<&str>) -> i32 {
        let dir = std::env::temp_dir().join(format!("vmm-exit-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join(format!("vmm-exit-{}", arg.unwrap_or("none")));
        std::fs::write(&path, program().unwrap()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let mut cmd = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
            c.arg(&path);
            c
        } else {
            Command::new(&path)
        };
        cmd.args(arg);
        let status = cmd.status().expect("the program runs");
        std::fs::remove_file(&path).unwrap();
        status.code().expect("exits with a status, not a signal")
    }

    #[test]
    fn the_status_is_parsed_from_the_argument() {
        assert_eq!(run_unprivileged(Some("7")), 7);
        assert_eq!(run_unprivileged(Some("213")), 213);
        assert_eq!(run_unprivileged(Some("0")), 0);
        assert_eq!(run_unprivileged(None), 0);
    }

    #[test]
    fn the_code_writes_the_status_to_the_debug_exit_port() {
        let elf = program().unwrap();
        let code = crate::elf::code(&elf);
        let mut decoder = iced_x86::Decoder::with_ip(64, code, 0, 0);
        let outs: Vec<_> = decoder
            .iter()
            .filter(|i| i.mnemonic() == iced_x86::Mnemonic::Out)
            .collect();
        assert_eq!(outs.len(), 1);
        assert!(elf.windows(4).any(|w| w == DEBUG_EXIT_PORT.to_le_bytes()));
    }
}
