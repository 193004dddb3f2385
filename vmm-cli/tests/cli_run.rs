//! `vmm run` and `vmm doctor` as a user runs them.

use std::process::{Command, Output};

use hm_vmx::testing::kvm_available;

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .expect("vmm starts")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn zero_cpus_is_rejected_with_a_message() {
    let out = vmm(&["run", "--cpus", "0"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(
        stderr(&out).contains("at least one vCPU"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn more_cpus_than_supported_is_rejected_with_a_message() {
    if !kvm_available("more_cpus_than_supported_is_rejected_with_a_message") {
        return;
    }
    let out = vmm(&["run", "--cpus", "100000"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("vCPU"), "{}", stderr(&out));
}

#[test]
fn zero_memory_is_rejected_with_a_message() {
    let out = vmm(&["run", "--mem", "0"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(
        stderr(&out).contains("guest RAM cannot be 0"),
        "{}",
        stderr(&out)
    );
    let out = vmm(&["run", "--mem", "lots"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a size"), "{}", stderr(&out));
}

#[test]
fn unknown_guest_is_rejected_and_guests_are_listed() {
    let out = vmm(&["run", "--guest", "nope"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(
        stderr(&out).contains("no embedded guest named \"nope\""),
        "{}",
        stderr(&out)
    );
    let out = vmm(&["run", "--list-guests"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("demo"));
}

#[test]
fn run_boots_the_demo_guest_and_exits_with_its_status() {
    if !kvm_available("run_boots_the_demo_guest_and_exits_with_its_status") {
        return;
    }
    let out = vmm(&["run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        stderr(&out)
    );
    assert!(stdout.contains("vmm demo: real mode"), "{stdout}");
    assert!(
        stdout.contains(
            "vmm demo: A20 gate: FFFF:0510 wraps to 0000:0500 when closed, not when open, check ok"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("vmm demo: all checks passed"), "{stdout}");
}

#[test]
fn serial_output_goes_to_a_file() {
    if !kvm_available("serial_output_goes_to_a_file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serial.txt");
    let out = vmm(&["run", "--serial", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("vmm demo"));
    let serial = std::fs::read_to_string(&path).unwrap();
    assert!(serial.contains("vmm demo: all checks passed"), "{serial}");
}

#[test]
fn bios_runs_a_flat_binary_from_the_reset_vector() {
    if !kvm_available("bios_runs_a_flat_binary_from_the_reset_vector") {
        return;
    }
    // 4 KiB of firmware whose last 16 bytes hold: mov al, 42; mov dx, 0x501; out dx, al.
    let mut image = vec![0xf4u8; 4096];
    image[4096 - 16..4096 - 16 + 6].copy_from_slice(&[0xb0, 42, 0xba, 0x01, 0x05, 0xee]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bios.bin");
    std::fs::write(&path, &image).unwrap();
    // The guest's status is not vmm's: a failing guest is status 3 ...
    let out = vmm(&["run", "--bios", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the guest exited with status 42"),
        "{}",
        stderr(&out)
    );
    // ... unless it is asked for.
    let out = vmm(&[
        "run",
        "--bios",
        path.to_str().unwrap(),
        "--exit-code",
        "guest",
    ]);
    assert_eq!(out.status.code(), Some(42), "{}", stderr(&out));
    let out = vmm(&[
        "run",
        "--bios",
        dir.path().join("missing.bin").to_str().unwrap(),
    ]);
    assert!(
        stderr(&out).contains("cannot read firmware"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn doctor_reports_kvm_and_capabilities() {
    if !kvm_available("doctor_reports_kvm_and_capabilities") {
        return;
    }
    let out = vmm(&["doctor"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("/dev/kvm: usable"), "{stdout}");
    assert!(stdout.contains("KVM_CAP_READONLY_MEM"), "{stdout}");
}

#[test]
fn stats_count_every_port_write_the_guest_made() {
    if !kvm_available("stats_count_every_port_write_the_guest_made") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.txt");
    let out = vmm(&[
        "run",
        "--serial",
        serial.to_str().unwrap(),
        "--stats",
        "/HM/Exit/*|/IOM/*",
        "--stats-format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let snapshot: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON statistics");
    let value = |name: &str| -> u64 {
        let samples = snapshot["samples"].as_array().expect("samples array");
        let sample = samples
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {snapshot}"));
        sample["value"]["Counter"]
            .as_u64()
            .or_else(|| sample["value"].as_u64())
            .unwrap_or_else(|| panic!("{sample}"))
    };
    // The guest writes each serial byte to the UART, two A20 commands to
    // the i8042 and two values to port 0x92 (its A20 check), then one byte
    // to the debug-exit port: nothing else exits for port I/O.
    let bytes = std::fs::read(&serial).unwrap().len() as u64;
    assert!(bytes > 100);
    assert_eq!(value("/IOM/Port/uart/Writes"), bytes);
    assert_eq!(value("/IOM/Port/i8042/Writes"), 2);
    assert_eq!(value("/IOM/Port/port92/Writes"), 2);
    assert_eq!(value("/IOM/Port/debug-exit/Writes"), 1);
    assert_eq!(value("/HM/Exit/IoInstruction"), bytes + 5);
}

#[test]
fn info_handlers_run_when_the_guest_stops() {
    if !kvm_available("info_handlers_run_when_the_guest_stops") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.txt");
    let serial = serial.to_str().unwrap();
    let out = vmm(&[
        "run",
        "--serial",
        serial,
        "--info",
        "help",
        "--info",
        "exits",
        "--info",
        "cpumguest",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout.contains("cpumguest") && stdout.contains("exits"),
        "{stdout}"
    );
    assert!(stdout.contains("  30  I/O instruction"), "{stdout}");
    // The guest stopped in long mode: EFER has LME and LMA, CS is 64-bit.
    assert!(stdout.contains("efer=0000000000000500"), "{stdout}");
    assert!(stdout.contains("cs   sel=0x0018"), "{stdout}");
    let out = vmm(&["run", "--serial", serial, "--info", "nosuchhandler"]);
    assert!(
        stderr(&out).contains("unknown info handler \"nosuchhandler\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn dump_phys_writes_guest_memory_as_the_guest_left_it() {
    if !kvm_available("dump_phys_writes_guest_memory_as_the_guest_left_it") {
        return;
    }
    use std::io::{Read, Seek, SeekFrom};
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("phys.bin");
    let out = vmm(&[
        "run",
        "--serial",
        "/dev/null",
        "--dump-phys",
        dump.to_str().unwrap(),
        "--nozero",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("zero pages skipped"),
        "{}",
        stderr(&out)
    );
    let mut file = std::fs::File::open(&dump).unwrap();
    // The demo guest's long-mode check left this pattern at 0x40000.
    let mut marker = [0u8; 8];
    file.seek(SeekFrom::Start(0x4_0000)).unwrap();
    file.read_exact(&mut marker).unwrap();
    assert_eq!(u64::from_le_bytes(marker), 0x0123_4567_89ab_cdef);
    // The firmware ROM sits just below 4 GiB; its reset vector is a near jmp.
    let mut reset = [0u8; 1];
    file.seek(SeekFrom::Start(0xffff_fff0)).unwrap();
    file.read_exact(&mut reset).unwrap();
    assert_eq!(reset[0], 0xe9);
}

#[test]
fn smp_guest_runs_on_two_and_four_vcpus() {
    if !kvm_available("smp_guest_runs_on_two_and_four_vcpus") {
        return;
    }
    for cpus in ["2", "4"] {
        let out = vmm(&["run", "--guest", "smp", "--cpus", cpus]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", stderr(&out));
        assert!(
            stdout.contains("AP with APIC id 0x01 checked in"),
            "{stdout}"
        );
        if cpus == "4" {
            assert!(
                stdout.contains("AP with APIC id 0x03 checked in"),
                "{stdout}"
            );
        }
    }
}

#[test]
fn kernel_boot_passes_the_test_kernels_checks() {
    if !kvm_available("kernel_boot_passes_the_test_kernels_checks") {
        return;
    }
    use vmm_core::guests::test_kernel;
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("bzImage");
    let initrd_path = dir.path().join("initrd");
    std::fs::write(&kernel, test_kernel::build().unwrap()).unwrap();
    let initrd: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&initrd_path, &initrd).unwrap();
    // RAM as the e820 map shows it: less the legacy hole and the ACPI and
    // MP tables.
    use vmm_core::boot::layout::{ACPI_SIZE, LEGACY_HOLE, MPTABLE_SIZE};
    let ram: u64 = 64 << 20;
    let e820_ram = ram - LEGACY_HOLE.1 - MPTABLE_SIZE - ACPI_SIZE;
    let cmdline = format!(
        "console=ttyS0 {}",
        test_kernel::expectations(e820_ram, &initrd, 2)
    );
    let out = vmm(&[
        "run",
        "--mem",
        "64M",
        "--cpus",
        "2",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd_path.to_str().unwrap(),
        "--cmdline",
        &cmdline,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", stderr(&out));
    assert!(stdout.contains("all checks passed"), "{stdout}");
    // A truncated kernel is refused before the VM starts.
    let bytes = std::fs::read(&kernel).unwrap();
    std::fs::write(&kernel, &bytes[..bytes.len() / 3]).unwrap();
    let out = vmm(&["run", "--kernel", kernel.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));
    assert!(
        out.stdout.is_empty(),
        "the guest ran: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The test kernel and an initrd in files (paths), and the kernel's checks'
/// expectations for `ram` bytes of RAM and `cpus` vCPUs.
fn test_kernel_files(dir: &std::path::Path, ram: u64, cpus: u32) -> (String, String, String) {
    use vmm_core::boot::layout::{ACPI_SIZE, LEGACY_HOLE, MPTABLE_SIZE};
    use vmm_core::guests::test_kernel;
    let (kernel, initrd_path) = (dir.join("bzImage"), dir.join("initrd"));
    std::fs::write(&kernel, test_kernel::build().unwrap()).unwrap();
    let initrd: Vec<u8> = (0..100u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&initrd_path, &initrd).unwrap();
    let e820_ram = ram - LEGACY_HOLE.1 - MPTABLE_SIZE - ACPI_SIZE;
    let expect = test_kernel::expectations(e820_ram, &initrd, cpus);
    let path = |p: std::path::PathBuf| p.to_str().unwrap().to_owned();
    (path(kernel), path(initrd_path), expect)
}

#[test]
fn without_cmdline_the_default_is_used_and_said() {
    if !kvm_available("without_cmdline_the_default_is_used_and_said") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (kernel, _, _) = test_kernel_files(dir.path(), 64 << 20, 1);
    let out = vmm(&["run", "--kernel", &kernel]);
    let said = stderr(&out);
    assert!(
        said.contains(
            "vmm: no --cmdline; using \"console=ttyS0 reboot=k,panic_warm panic=1 oops=panic\""
        ),
        "{said}"
    );
    // The test kernel ran and, missing its expectations, failed a check.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("testkernel: "), "{stdout}\n{said}");
    assert_ne!(out.status.code(), Some(0), "{stdout}\n{said}");
}

#[test]
fn reboot_exit_ends_the_run_and_restart_boots_again() {
    if !kvm_available("reboot_exit_ends_the_run_and_restart_boots_again") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (kernel, initrd, expect) = test_kernel_files(dir.path(), 64 << 20, 2);
    let cmdline = format!("console=ttyS0 {expect} testkernel.reboot=1");
    let boot = [
        "run",
        "--mem",
        "64M",
        "--cpus",
        "2",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--cmdline",
        &cmdline,
    ];
    let out = vmm(&[&boot[..], &["--reboot", "exit"]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", stderr(&out));
    assert_eq!(stdout.matches("all checks passed").count(), 1, "{stdout}");
    assert!(
        stderr(&out).contains("vmm: the guest reset the machine (reboot); run ended"),
        "{}",
        stderr(&out)
    );
    // Restarting (the default), the kernel boots again and again (and
    // passes its checks each time) until it is stopped.
    let serial = dir.path().join("serial");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(boot)
        .args(["--serial", serial.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("vmm starts");
    let boots = || {
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        (text.matches("all checks passed").count(), text)
    };
    let start = std::time::Instant::now();
    while boots().0 < 3 && start.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let (count, text) = boots();
    assert!(still_running, "{text}\n{}", stderr(&out));
    assert!(count >= 3, "{text}");
    assert!(!text.contains("FAILED"), "{text}");
}
