//! `vmm run --gdb` with the real gdb: registers, single steps, a breakpoint,
//! memory at a virtual address, write and read watchpoints (debug registers
//! where the host delivers data breakpoints, page traps elsewhere),
//! `monitor info`, detach, and the demo guest finishing with success.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hm_vmx::testing::kvm_available;

const GDB_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether the tests run in the hardware-KVM lane (`cargo xtask hwkvm`).
/// There every breakpoint and watchpoint is a debug register: QEMU's
/// emulation hands an `int3` in L2 to L2 itself, not to L1's KVM, so
/// software breakpoints cannot be checked in the lane.
fn in_hardware_lane() -> bool {
    std::env::var("VMM_HWKVM").as_deref() == Ok("1")
}

/// The gdb binary, or `None` (after saying so loudly) when the test must be
/// skipped; under CI=true a missing gdb is a failure.
fn gdb_or_skip(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("gdb"))
            .find(|g| g.is_file())
    });
    match found {
        Some(g) => Some(g),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: gdb not found in PATH and CI=true")
        }
        None => {
            eprintln!("!!! SKIPPED {test}: gdb not found in PATH !!!");
            None
        }
    }
}

/// Starts `vmm run --gdb ADDR` and returns it with what gdb's `target remote` takes.
fn start_vmm(gdb_addr: &str, serial: &std::path::Path) -> (Child, String) {
    let watch = if in_hardware_lane() { "dr" } else { "auto" };
    let mut vmm = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["run", "--guest", "demo", "--gdb", gdb_addr, "--serial"])
        .arg(serial)
        .args(["--gdb-watch", watch])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmm starts");
    let stderr = vmm.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("vmm says where it waits for gdb")
            .expect("vmm stderr");
        if let Some((_, remote)) = line.split_once("(target remote ") {
            break remote.trim_end_matches(')').to_owned();
        }
    };
    // Keep draining vmm's messages so that it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("[vmm] {line}");
        }
    });
    (vmm, addr)
}

fn run_gdb(gdb: &std::path::Path, remote: &str, cmds: &[&str], log: &std::path::Path) -> String {
    let mut cmd = Command::new(gdb);
    cmd.args([
        "-nx",
        "-batch",
        "-ex",
        "set pagination off",
        "-ex",
        "set confirm off",
    ]);
    cmd.args(["-ex", &format!("target remote {remote}")]);
    for c in cmds {
        cmd.args(["-ex", c]);
    }
    let file = std::fs::File::create(log).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("gdb starts");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > GDB_TIMEOUT {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "gdb did not finish in {GDB_TIMEOUT:?}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(log).unwrap();
    println!("---- gdb output ----\n{text}--------------------");
    text
}

fn assert_in_order(text: &str, needles: &[&str]) {
    let mut rest = text;
    for n in needles {
        match rest.find(n) {
            Some(i) => rest = &rest[i + n.len()..],
            None => panic!("expected {n:?} (in this order) in gdb output:\n{text}"),
        }
    }
}

#[test]
fn gdb_steps_breaks_reads_watches_and_detaches_from_the_demo_guest() {
    let test = "gdb_steps_breaks_reads_watches_and_detaches_from_the_demo_guest";
    if !kvm_available(test) {
        return;
    }
    let Some(gdb) = gdb_or_skip(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.txt");
    let (mut vmm, remote) = start_vmm("127.0.0.1:0", &serial);
    let lane = in_hardware_lane();
    if lane {
        eprintln!(
            "!!! NOT CHECKED in the hardware-KVM lane: software (int3) breakpoints; \
             hbreak and --gdb-watch dr instead !!!"
        );
    }
    let brk = |addr: &str| format!("{} *{addr}", if lane { "hbreak" } else { "break" });
    let (first, after_write) = (brk("0xf3000"), brk("0xf303d"));
    let out = run_gdb(
        &gdb,
        &remote,
        &[
            // At the reset vector, before the first instruction.
            "info registers rip cs",
            "stepi",
            "info registers rip",
            "stepi",
            "info registers rip",
            "stepi",
            "info registers rip",
            // The first 64-bit instruction.
            &first,
            "continue",
            "info registers rip",
            // The same code through the higher-half mapping: mov ax, 0x10.
            "x/4xb 0xffff8000000f3000",
            "delete",
            // The guest writes its long-mode pattern through the higher half
            // at 0xf303a; the next instruction is at 0xf303d.
            // Inserted at once, so that `monitor bl` shows how.
            "set breakpoint always-inserted on",
            "watch *(long *)0xffff800000040000",
            &after_write,
            "monitor bl",
            "continue",
            "info registers rip",
            "x/1xg 0x40000",
            // The next instruction reads the pattern back through the
            // identity map.
            "delete 2",
            "rwatch *(long *)0x40000",
            "continue",
            "info registers rip",
            "monitor info cpuid",
            "detach",
        ],
        &dir.path().join("gdb.log"),
    );
    assert_in_order(
        &out,
        &[
            "rip            0xfff0",
            "cs             0xf000",
            "rip            0x1000",
            "rip            0x1001",
            "rip            0x1003",
            "Breakpoint 1, 0x00000000000f3000",
            "rip            0xf3000",
            "0xffff8000000f3000:\t0x66\t0xb8\t0x10\t0x00",
        ],
    );
    // Where the host delivers no data breakpoints the watchpoints are page
    // traps; either way they fire after the access.
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert_in_order(
            &out,
            &["page-trap Write 0xffff800000040000 len 8 (phys 0x40000)"],
        );
    }
    assert_in_order(
        &out,
        &[
            "Hardware watchpoint 2: *(long *)0xffff800000040000\n\nOld value = 0",
            "New value = 81985529216486895",
            "Breakpoint 3, 0x00000000000f303d",
            "rip            0xf303d",
            "0x40000:\t0x0123456789abcdef",
            "Hardware read watchpoint 4: *(long *)0x40000\n\nValue = 81985529216486895",
            "rip            0xf3045",
            "CPUID leaves common to every vCPU",
            "[Inferior 1 (process 1) detached]",
        ],
    );
    let status = wait_vmm(&mut vmm);
    let text = std::fs::read_to_string(&serial).unwrap();
    assert!(status.success(), "vmm: {status:?}\n{text}");
    assert!(text.ends_with("vmm demo: all checks passed\n"), "{text}");
}

fn wait_vmm(vmm: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = vmm.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > GDB_TIMEOUT {
            vmm.kill().unwrap();
            panic!("vmm did not finish after the gdb session");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn gdb_kill_powers_the_vm_off_before_the_guest_ran() {
    let test = "gdb_kill_powers_the_vm_off_before_the_guest_ran";
    if !kvm_available(test) {
        return;
    }
    let Some(gdb) = gdb_or_skip(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.txt");
    let (mut vmm, remote) = start_vmm("127.0.0.1:0", &serial);
    let out = run_gdb(
        &gdb,
        &remote,
        &["break *0xf3000", "kill"],
        &dir.path().join("gdb.log"),
    );
    // gdb sends vKill and the stub closes the connection.
    assert!(
        out.contains("killed]") || out.contains("Remote connection closed"),
        "{out}"
    );
    let status = wait_vmm(&mut vmm);
    assert!(status.success(), "vmm: {status:?}");
    // Not a single guest instruction ran: the banner never came.
    assert_eq!(std::fs::read_to_string(&serial).unwrap(), "");
}

#[test]
fn gdb_over_a_unix_socket_reads_registers_and_runs_info_handlers() {
    let test = "gdb_over_a_unix_socket_reads_registers_and_runs_info_handlers";
    if !kvm_available(test) {
        return;
    }
    let Some(gdb) = gdb_or_skip(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.txt");
    let socket = dir.path().join("vm.gdb");
    let (mut vmm, remote) = start_vmm(&format!("unix:{}", socket.display()), &serial);
    assert_eq!(remote, socket.display().to_string());
    let out = run_gdb(
        &gdb,
        &remote,
        &["info registers rip", "monitor info fflags", "detach"],
        &dir.path().join("gdb.log"),
    );
    assert_in_order(
        &out,
        &[
            "rip            0xfff0",
            "Global FFs",
            "CPU 0 (halted)",
            "[Inferior 1 (process 1) detached]",
        ],
    );
    let status = wait_vmm(&mut vmm);
    assert!(status.success(), "vmm: {status:?}");
    let text = std::fs::read_to_string(&serial).unwrap();
    assert!(text.ends_with("vmm demo: all checks passed\n"), "{text}");
}

#[test]
fn the_watch_mode_needs_gdb_and_a_known_name() {
    for (args, expect) in [
        (&["run", "--gdb-watch", "page"][..], "--gdb"),
        (
            &["run", "--gdb", "1234", "--gdb-watch", "hw"][..],
            "invalid value 'hw'",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
            .args(args)
            .output()
            .expect("vmm starts");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
    }
}

#[test]
fn a_bad_gdb_address_is_rejected_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["run", "--gdb", "10.0.0.1:1234"])
        .output()
        .expect("vmm starts");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid gdb address"), "{err}");
}
