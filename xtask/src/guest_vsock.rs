//! `vmm-vsock`: a tiny static x86-64 Linux program for guest images that
//! moves bytes over an `AF_VSOCK` stream (busybox has no vsock support).
//!
//! - `vmm-vsock listen PORT`: binds a stream socket to (any CID, `PORT`),
//!   accepts one connection and echoes every byte it reads from it back
//!   until the peer stops sending; then exits 0.
//! - `vmm-vsock connect PORT`: connects to the host (CID 2) at `PORT`,
//!   copies standard input to the connection until its end, shuts the
//!   connection down for writing, copies the connection to standard output
//!   until the peer stops sending; then exits 0.
//!
//! `PORT` is a decimal number below 2^32. A failing system call ends the
//! program with `vmm-vsock: failed, errno N` on standard error and the
//! exit status of its step (see [`Failure`]); bad arguments with a usage
//! line and [`Failure::Usage`]. Assembled with `iced-x86` (see `elf`).

use anyhow::Context;
use iced_x86::code_asm::*;

use crate::elf::BSS;

/// Why the program failed: its exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Not `listen PORT` or `connect PORT`.
    Usage = 1,
    /// `socket(AF_VSOCK, SOCK_STREAM)` (no vsock in the kernel).
    Socket = 2,
    /// `bind` (the port is taken).
    Bind = 3,
    /// `listen`.
    Listen = 4,
    /// `accept`.
    Accept = 5,
    /// `connect` (nobody listens on the host's port).
    Connect = 6,
    /// `read` from standard input or the connection.
    Read = 7,
    /// `write` to the connection or standard output.
    Write = 8,
    /// `shutdown(SHUT_WR)`.
    Shutdown = 9,
}

const FAILURES: [Failure; 8] = [
    Failure::Socket,
    Failure::Bind,
    Failure::Listen,
    Failure::Accept,
    Failure::Connect,
    Failure::Read,
    Failure::Write,
    Failure::Shutdown,
];

/// What a failing system call prints before its errno.
pub const FAILED: &str = "vmm-vsock: failed, errno ";
/// What bad arguments print.
pub const USAGE: &str = "usage: vmm-vsock listen|connect PORT\n";

const AF_VSOCK: u32 = 40;
const SOCK_STREAM: u32 = 1;
const SHUT_WR: u32 = 1;
const HOST_CID: u32 = 2;
const VMADDR_CID_ANY: u32 = u32::MAX;
const SYS_READ: u32 = 0;
const SYS_WRITE: u32 = 1;
const SYS_SOCKET: u32 = 41;
const SYS_CONNECT: u32 = 42;
const SYS_ACCEPT: u32 = 43;
const SYS_SHUTDOWN: u32 = 48;
const SYS_BIND: u32 = 49;
const SYS_LISTEN: u32 = 50;
const SYS_EXIT: u32 = 60;

/// The BSS: the `sockaddr_vm` at its start, the errno's digits ending
/// with a newline at [`NUMBER_END`], the copy buffer at [`BUFFER`].
const SOCKADDR: u32 = BSS as u32;
const NUMBER_END: u32 = SOCKADDR + 63;
const BUFFER: u32 = SOCKADDR + 0x1000;
const BUFFER_SIZE: u32 = 0x1_0000;

/// The whole ELF executable.
pub fn program() -> anyhow::Result<Vec<u8>> {
    crate::elf::executable(code, u64::from(BUFFER - SOCKADDR + BUFFER_SIZE))
}

/// Emits a system call with up to three arguments (already in `rdi`,
/// `rsi`, `rdx` where not given) whose negative result jumps to `failed`.
fn syscall(
    a: &mut CodeAssembler,
    number: u32,
    args: &[(AsmRegister32, u32)],
    failed: CodeLabel,
) -> anyhow::Result<()> {
    for &(reg, value) in args {
        a.mov(reg, value)?;
    }
    a.mov(eax, number)?;
    a.syscall()?;
    a.test(rax, rax)?;
    a.js(failed)?;
    Ok(())
}

/// Emits a jump to `matched` if the NUL-terminated string at `r12`
/// equals the one at `expected`.
fn if_argument_is(
    a: &mut CodeAssembler,
    expected: CodeLabel,
    matched: CodeLabel,
) -> anyhow::Result<()> {
    let mut next = a.create_label();
    let mut other = a.create_label();
    a.mov(rsi, r12)?;
    a.lea(rdi, ptr(expected))?;
    a.set_label(&mut next)?;
    a.mov(al, byte_ptr(rsi))?;
    a.cmp(al, byte_ptr(rdi))?;
    a.jne(other)?;
    a.inc(rsi)?;
    a.inc(rdi)?;
    a.test(al, al)?;
    a.jnz(next)?;
    a.jmp(matched)?;
    a.set_label(&mut other)?;
    Ok(())
}

/// Emits the writes of the `sockaddr_vm` for port `ebx` and `cid`, then a
/// stream socket whose descriptor ends in `r13` and `edi` (jumping to
/// `failed` when the socket call fails).
fn vsock_socket(a: &mut CodeAssembler, cid: u32, failed: CodeLabel) -> anyhow::Result<()> {
    a.mov(edi, SOCKADDR)?;
    a.mov(dword_ptr(rdi), AF_VSOCK)?;
    a.mov(dword_ptr(rdi + 4), ebx)?;
    a.mov(dword_ptr(rdi + 8), cid)?;
    syscall(
        a,
        SYS_SOCKET,
        &[(edi, AF_VSOCK), (esi, SOCK_STREAM), (edx, 0)],
        failed,
    )?;
    a.mov(r13, rax)?;
    a.mov(edi, r13d)?;
    Ok(())
}

/// The program's machine code, to run at `entry`.
fn code(entry: u64) -> anyhow::Result<Vec<u8>> {
    let mut a = CodeAssembler::new(64)?;
    let mut usage = a.create_label();
    let mut failed: Vec<CodeLabel> = FAILURES.iter().map(|_| a.create_label()).collect();
    let fail = |f: Failure| failed[FAILURES.iter().position(|&x| x == f).unwrap_or(0)];
    let (socket, bind, listen, accept, connect, read, write, shutdown) = (
        fail(Failure::Socket),
        fail(Failure::Bind),
        fail(Failure::Listen),
        fail(Failure::Accept),
        fail(Failure::Connect),
        fail(Failure::Read),
        fail(Failure::Write),
        fail(Failure::Shutdown),
    );
    let mut digit = a.create_label();
    let mut parsed = a.create_label();
    let mut listen_mode = a.create_label();
    let mut connect_mode = a.create_label();
    let mut listen_text = a.create_label();
    let mut connect_text = a.create_label();
    let mut copy = a.create_label();
    let mut copy_done = a.create_label();
    let mut write_more = a.create_label();
    let mut exit = a.create_label();
    let mut errno_exit = a.create_label();
    let mut next_digit = a.create_label();
    let mut failed_text = a.create_label();
    let mut usage_text = a.create_label();

    // argc must be 3: r12 = argv[1] (the mode), rsi = argv[2] (the port).
    a.cmp(qword_ptr(rsp), 3)?;
    a.jne(usage)?;
    a.mov(r12, qword_ptr(rsp + 16))?;
    a.mov(rsi, qword_ptr(rsp + 24))?;
    // rbx = the port: at least one decimal digit, nothing else, < 2^32.
    a.xor(ebx, ebx)?;
    a.cmp(byte_ptr(rsi), 0)?;
    a.je(usage)?;
    a.set_label(&mut digit)?;
    a.movzx(eax, byte_ptr(rsi))?;
    a.test(eax, eax)?;
    a.jz(parsed)?;
    a.sub(eax, i32::from(b'0'))?;
    a.cmp(eax, 9)?;
    a.ja(usage)?;
    a.imul_3(rbx, rbx, 10)?;
    a.add(rbx, rax)?;
    a.mov(ecx, ebx)?;
    a.cmp(rcx, rbx)?;
    a.jne(usage)?;
    a.inc(rsi)?;
    a.jmp(digit)?;
    a.set_label(&mut parsed)?;
    if_argument_is(&mut a, listen_text, listen_mode)?;
    if_argument_is(&mut a, connect_text, connect_mode)?;
    a.jmp(usage)?;

    // listen: socket, bind to (any, port), listen, accept, echo.
    a.set_label(&mut listen_mode)?;
    vsock_socket(&mut a, VMADDR_CID_ANY, socket)?;
    syscall(&mut a, SYS_BIND, &[(esi, SOCKADDR), (edx, 16)], bind)?;
    a.mov(edi, r13d)?;
    syscall(&mut a, SYS_LISTEN, &[(esi, 1)], listen)?;
    a.mov(edi, r13d)?;
    syscall(&mut a, SYS_ACCEPT, &[(esi, 0), (edx, 0)], accept)?;
    a.mov(r14, rax)?;
    a.mov(r15, rax)?;
    a.call(copy)?;
    a.jmp(exit)?;

    // connect: socket, connect to (host, port), stdin to the socket,
    // shutdown for writing, the socket to stdout.
    a.set_label(&mut connect_mode)?;
    vsock_socket(&mut a, HOST_CID, socket)?;
    syscall(&mut a, SYS_CONNECT, &[(esi, SOCKADDR), (edx, 16)], connect)?;
    a.xor(r14d, r14d)?;
    a.mov(r15, r13)?;
    a.call(copy)?;
    a.mov(edi, r13d)?;
    syscall(&mut a, SYS_SHUTDOWN, &[(esi, SHUT_WR)], shutdown)?;
    a.mov(r14, r13)?;
    a.mov(r15d, 1)?;
    a.call(copy)?;
    a.set_label(&mut exit)?;
    a.xor(edi, edi)?;
    a.mov(eax, SYS_EXIT)?;
    a.syscall()?;

    // copy: from fd r14 to fd r15 until the end of r14's input.
    a.set_label(&mut copy)?;
    a.mov(edi, r14d)?;
    syscall(&mut a, SYS_READ, &[(esi, BUFFER), (edx, BUFFER_SIZE)], read)?;
    a.jz(copy_done)?;
    a.mov(r12, rax)?;
    a.mov(ebp, BUFFER)?;
    a.set_label(&mut write_more)?;
    a.mov(edi, r15d)?;
    a.mov(rsi, rbp)?;
    a.mov(rdx, r12)?;
    a.mov(eax, SYS_WRITE)?;
    a.syscall()?;
    a.test(rax, rax)?;
    a.jle(write)?;
    a.add(rbp, rax)?;
    a.sub(r12, rax)?;
    a.jnz(write_more)?;
    a.jmp(copy)?;
    a.set_label(&mut copy_done)?;
    a.ret()?;

    // A failed step: ebp = its status, rax = -errno.
    for (label, f) in failed.iter_mut().zip(FAILURES) {
        a.set_label(label)?;
        a.mov(ebp, f as u32)?;
        a.jmp(errno_exit)?;
    }
    a.set_label(&mut errno_exit)?;
    a.neg(rax)?;
    a.mov(r12d, NUMBER_END)?;
    a.mov(byte_ptr(r12), u32::from(b'\n'))?;
    a.mov(ecx, 10)?;
    a.set_label(&mut next_digit)?;
    a.xor(edx, edx)?;
    a.div(ecx)?;
    a.add(dl, i32::from(b'0'))?;
    a.dec(r12)?;
    a.mov(byte_ptr(r12), dl)?;
    a.test(eax, eax)?;
    a.jnz(next_digit)?;
    a.lea(rsi, ptr(failed_text))?;
    a.mov(edx, FAILED.len() as u32)?;
    a.mov(edi, 2)?;
    a.mov(eax, SYS_WRITE)?;
    a.syscall()?;
    a.mov(rsi, r12)?;
    a.mov(edx, NUMBER_END + 1)?;
    a.sub(rdx, r12)?;
    a.mov(edi, 2)?;
    a.mov(eax, SYS_WRITE)?;
    a.syscall()?;
    a.mov(edi, ebp)?;
    a.mov(eax, SYS_EXIT)?;
    a.syscall()?;

    a.set_label(&mut usage)?;
    a.lea(rsi, ptr(usage_text))?;
    a.mov(edx, USAGE.len() as u32)?;
    a.mov(edi, 2)?;
    a.mov(eax, SYS_WRITE)?;
    a.syscall()?;
    a.mov(edi, Failure::Usage as u32)?;
    a.mov(eax, SYS_EXIT)?;
    a.syscall()?;

    for (label, text) in [
        (&mut listen_text, &b"listen\0"[..]),
        (&mut connect_text, b"connect\0"),
        (&mut failed_text, FAILED.as_bytes()),
        (&mut usage_text, USAGE.as_bytes()),
    ] {
        a.set_label(label)?;
        a.db(text)?;
    }
    a.assemble(entry).context("cannot assemble vmm-vsock")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::process::{Child, Command, Output, Stdio};
    use std::time::{Duration, Instant};

    /// The program written to a file of its own (tests run in parallel).
    fn installed(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-vsock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, program().unwrap()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn run(name: &str, args: &[&str]) -> Output {
        let path = installed(name);
        let child = spawn(
            Command::new(&path)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let out = child.wait_with_output().unwrap();
        std::fs::remove_file(path).unwrap();
        out
    }

    /// Starts `command`, again while its file is busy: a test thread that
    /// forks while another has the file open for writing keeps it open
    /// until its child execs (`ETXTBSY`).
    fn spawn(command: &mut Command) -> Child {
        let start = Instant::now();
        loop {
            match command.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    assert!(start.elapsed() < Duration::from_secs(10), "{e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                started => return started.unwrap(),
            }
        }
    }

    /// A vsock stream socket of the test's own, or the errno of
    /// `socket(AF_VSOCK)` where the host has no vsock.
    fn vsock_socket() -> Result<OwnedFd, i32> {
        // SAFETY: plain socket creation; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Binds `fd` to (any CID, `port`); returns the port it got or errno.
    fn bind(fd: &OwnedFd, port: u32) -> Result<u32, i32> {
        // SAFETY: sockaddr_vm is plain data; zero is a valid value.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes for both
        // calls; `fd` is an open socket.
        let rc = unsafe {
            let sa = (&raw mut addr).cast::<libc::sockaddr>();
            match libc::bind(fd.as_raw_fd(), sa, len) {
                0 => libc::getsockname(fd.as_raw_fd(), sa, &mut len),
                rc => rc,
            }
        };
        match rc {
            0 => Ok(addr.svm_port),
            _ => Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)),
        }
    }

    fn failed_with(out: &Output, failure: Failure, errno: i32) {
        assert_eq!(out.status.code(), Some(failure as i32), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("{FAILED}{errno}\n")
        );
    }

    #[test]
    fn bad_arguments_get_the_usage_line() {
        for args in [
            &[][..],
            &["listen"],
            &["listen", ""],
            &["listen", "12x"],
            &["listen", "-1"],
            &["listen", "4294967296"],
            &["listen", "99999999999999999999"],
            &["listens", "5"],
            &["connec", "5"],
            &["connect", "5", "6"],
        ] {
            let out = run("usage", args);
            assert_eq!(out.status.code(), Some(Failure::Usage as i32), "{args:?}");
            assert_eq!(out.stderr, USAGE.as_bytes(), "{args:?}");
        }
    }

    /// Waits (with a deadline) until `done`, panicking if `child` ends.
    fn wait_while_running(child: &mut Child, done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() {
            if let Some(status) = child.try_wait().unwrap() {
                let mut said = String::new();
                if let Some(mut e) = child.stderr.take() {
                    std::io::Read::read_to_string(&mut e, &mut said).unwrap();
                }
                panic!("the listener ended: {status}: {said}");
            }
            assert!(start.elapsed() < Duration::from_secs(10), "timed out");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// On a host with vsock: `listen` binds the port it is given (a taken
    /// one is a bind failure) and waits for a connection. Without vsock,
    /// it fails in `socket` with the host's errno. (`connect` always goes
    /// to the host's CID, which a test must not reach.)
    #[test]
    fn listen_binds_its_port_or_fails_with_the_documented_status() {
        let ours = match vsock_socket() {
            Err(errno) => {
                let out = run("no-vsock", &["listen", "5000"]);
                return failed_with(&out, Failure::Socket, errno);
            }
            Ok(fd) => fd,
        };
        let port = bind(&ours, libc::VMADDR_PORT_ANY).unwrap();
        let out = run("taken", &["listen", &port.to_string()]);
        failed_with(&out, Failure::Bind, libc::EADDRINUSE);
        drop(ours);
        let path = installed("listener");
        let mut child = spawn(
            Command::new(&path)
                .args(["listen", &port.to_string()])
                .stdin(Stdio::null())
                .stderr(Stdio::piped()),
        );
        // Blocked in accept (so past socket, bind and listen), with the
        // port taken.
        let syscall = format!("/proc/{}/syscall", child.id());
        wait_while_running(&mut child, || {
            std::fs::read_to_string(&syscall)
                .is_ok_and(|s| s.starts_with(&format!("{SYS_ACCEPT} ")))
        });
        assert_eq!(bind(&vsock_socket().unwrap(), port), Err(libc::EADDRINUSE));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(child.try_wait().unwrap(), None);
        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn every_failing_step_has_its_own_status() {
        let mut statuses: Vec<i32> = FAILURES.iter().map(|&f| f as i32).collect();
        statuses.push(Failure::Usage as i32);
        statuses.sort();
        statuses.dedup();
        assert_eq!(statuses.len(), FAILURES.len() + 1);
        assert!(!statuses.contains(&0));
        // Each appears in the code as `mov ebp, status`.
        let elf = program().unwrap();
        let decoded: Vec<_> = iced_x86::Decoder::with_ip(64, crate::elf::code(&elf), 0, 0)
            .iter()
            .filter(|i| i.op0_register() == iced_x86::Register::EBP)
            .filter_map(|i| i.try_immediate(1).ok())
            .collect();
        for f in FAILURES {
            assert!(decoded.contains(&(f as u64)), "{f:?}");
        }
    }
}
