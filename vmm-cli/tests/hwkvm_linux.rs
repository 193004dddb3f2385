//! Real software on real KVM: Debian's cloud kernel and a busybox init under
//! `vmm`, checked by what Linux itself reports. These tests need a KVM with
//! hardware semantics and the lane's L2 guest, so they are ignored in a
//! plain `cargo test` and run inside `cargo xtask hwkvm`, which sets
//! `L2_KERNEL`, `L2_INITRD` and `L2_CMDLINE` (a missing one is a failure,
//! never a skip).

mod support;

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use support::{Vmm, client_ok, incoming_address, read};

/// A Linux boot under nested KVM in QEMU's emulation takes tens of seconds.
const DEADLINE: Duration = Duration::from_secs(180);
/// What the L2 init prints before handing a command's status to the host.
const STATUS_PREFIX: &str = "VMM-GUEST-LINUX: command exited with ";
/// The L2 init's command for the save/restore tests: a counter every 100 ms
/// that ends the run once it reaches `COUNTER_END`.
const COUNTER: &str = "i=0; while [ $i -le 90 ]; do echo tick $i; i=$((i+1)); usleep 100000; done";
const COUNTER_END: u32 = 90;
/// Where the counter is saved, moved or teleported (the console's tty ends
/// lines with CR LF).
const COUNTER_SAVE_AT: &str = "tick 30\r\n";

/// The lane's L2 guest.
struct Guest {
    kernel: String,
    initrd: String,
    cmdline: String,
}

fn lane_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run these tests in the hardware-KVM lane (cargo xtask hwkvm)")
    })
}

impl Guest {
    fn from_lane() -> Guest {
        Guest {
            kernel: lane_var("L2_KERNEL"),
            initrd: lane_var("L2_INITRD"),
            cmdline: lane_var("L2_CMDLINE"),
        }
    }

    /// `vmm run` arguments that boot the guest with `mem` and `cpus` and
    /// have its init run `command`.
    fn run_args(&self, mem: &str, cpus: u32, command: &str) -> Vec<String> {
        [
            "run",
            "--mem",
            mem,
            "--cpus",
            &cpus.to_string(),
            "--kernel",
            &self.kernel,
            "--initrd",
            &self.initrd,
            "--cmdline",
            &format!("{} vmm_run=\"{command}\"", self.cmdline),
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

/// How `vmm run` ended and what the guest wrote on its serial port.
struct Booted {
    status: ExitStatus,
    serial: String,
}

/// Runs `vmm ARGS --serial FILE` and waits (with a deadline) until it ends.
fn vmm_run(mut args: Vec<String>) -> Booted {
    let dir = tempfile::tempdir().unwrap();
    let (serial, stderr) = (dir.path().join("serial"), dir.path().join("stderr"));
    args.extend(["--serial".to_owned(), serial.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut vm = Vmm::spawn(&args.join(" "), &args, &stderr, DEADLINE);
    let status = vm.wait(|| read(&serial) + &read(&stderr));
    Booted {
        status,
        serial: read(&serial) + &read(&stderr),
    }
}

/// Boots the guest to run `command`.
fn boot(mem: &str, cpus: u32, command: &str) -> Booted {
    vmm_run(Guest::from_lane().run_args(mem, cpus, command))
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn demo_guest_takes_its_pae_path() {
    let out = vmm_run(vec!["run".to_owned()]);
    let text = out.serial;
    assert!(out.status.success(), "{}\n{text}", out.status);
    assert!(
        text.contains("vmm demo: PAE paging, paged memory check ok"),
        "{text}"
    );
    assert!(!text.contains("refused"), "{text}");
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn a_command_run_by_linux_init_hands_its_output_and_status_to_the_host() {
    let out = boot("512M", 1, "echo answer=$((6 * 7)); uname -sm; exit 7");
    let text = out.serial;
    assert_eq!(out.status.code(), Some(7), "{text}");
    assert!(text.contains("answer=42"), "{text}");
    assert!(text.contains("Linux x86_64"), "{text}");
    assert!(text.contains(&format!("{STATUS_PREFIX}7")), "{text}");
}

/// Boots Linux on `cpus` vCPUs with `mem` of RAM and checks that it found
/// the firmware's CPU list, brought every CPU up and sees the RAM.
fn linux_sees_every_cpu_and_its_ram(mem: &str, cpus: u32, min_kib: u64) {
    let out = boot(
        mem,
        cpus,
        "dmesg; echo cpus=$(grep -c ^processor /proc/cpuinfo); grep MemTotal /proc/meminfo",
    );
    let text = out.serial;
    assert!(out.status.success(), "{}\n{text}", out.status);
    let noun = if cpus == 1 { "CPU" } else { "CPUs" };
    assert!(
        text.contains(&format!("smp: Brought up 1 node, {cpus} {noun}")),
        "{text}"
    );
    assert!(text.contains(&format!("cpus={cpus}")), "{text}");
    assert!(
        text.contains("Using ACPI (MADT) for SMP configuration information")
            || text.contains("found SMP MP-table"),
        "Linux found neither an ACPI MADT nor an MP table:\n{text}"
    );
    // What once cost most of the boot: i8042 and RTC probes that failed.
    for complaint in [
        "MADT or MP tables are not detected",
        "SMP disabled",
        "Keylock active",
        "broken or not accessible",
    ] {
        assert!(!text.contains(complaint), "{complaint}:\n{text}");
    }
    assert!(text.contains("registered as rtc0"), "{text}");
    assert!(text.contains("serio: i8042 KBD port"), "{text}");
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in:\n{text}"));
    assert!(kib >= min_kib, "MemTotal {kib} kB < {min_kib} kB:\n{text}");
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn linux_brings_up_one_cpu_in_512_mib() {
    linux_sees_every_cpu_and_its_ram("512M", 1, 400 << 10);
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn linux_brings_up_two_cpus_in_5_gib() {
    linux_sees_every_cpu_and_its_ram("5G", 2, 4800 << 10);
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn linux_brings_up_four_cpus_in_512_mib() {
    linux_sees_every_cpu_and_its_ram("512M", 4, 400 << 10);
}

/// The counter values a serial log shows, in order.
fn ticks(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("tick "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// Checks a counter that ran in one process (`before`) and went on in
/// another (`after`): it continued, did not start over, never repeated a
/// value and skipped at most a few.
fn assert_counter_continued(before: &str, after: &str) {
    assert!(
        !after.contains("Linux version"),
        "the guest booted again:\n{after}"
    );
    // A line may be cut by the switch: read both logs as one stream.
    let all = ticks(&format!("{before}{after}"));
    let last_before = *ticks(before).last().expect("ticks before the switch");
    assert!(last_before >= 30, "{before}");
    assert_eq!(all.last(), Some(&COUNTER_END), "{after}");
    for pair in all.windows(2) {
        assert!(
            pair[1] > pair[0] && pair[1] - pair[0] <= 3,
            "counter went from {} to {}:\n--- before\n{before}\n--- after\n{after}",
            pair[0],
            pair[1]
        );
    }
}

/// Starts the counter guest with a control socket in `dir` and waits until
/// it counts.
fn start_counter(dir: &Path, serial: &str) -> Vmm {
    let guest = Guest::from_lane();
    let mut args = guest.run_args("512M", 2, COUNTER);
    let socket = dir.join("api.sock");
    let serial = dir.join(serial);
    args.extend(
        [
            "--api-socket",
            socket.to_str().unwrap(),
            "--serial",
            serial.to_str().unwrap(),
        ]
        .map(str::to_owned),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut vm = Vmm::spawn("vmm run (counter)", &args, &dir.join("stderr"), DEADLINE);
    vm.wait_for_text(&serial, COUNTER_SAVE_AT);
    vm
}

/// Saves the counter guest (live or not) and continues it in a new process.
fn save_and_restore(live: bool) {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut vm = start_counter(dir, "serial");
    let state = dir.join("vm.sav");
    let socket = dir.join("api.sock");
    let mut save = vec![
        "save",
        state.to_str().unwrap(),
        "--poweroff",
        "--api-socket",
        socket.to_str().unwrap(),
    ];
    if live {
        save.push("--live");
    }
    let said = client_ok(&save);
    assert!(said.contains("VM state saved"), "{said}");
    let status = vm.wait(|| read(&dir.join("stderr")));
    assert!(status.success(), "{status}");

    let (serial2, stderr2) = (dir.join("serial2"), dir.join("stderr2"));
    let restore = [
        "run",
        "--restore",
        state.to_str().unwrap(),
        "--serial",
        serial2.to_str().unwrap(),
    ];
    let mut restored = Vmm::spawn("vmm run --restore", &restore, &stderr2, DEADLINE);
    let status = restored.wait(|| read(&serial2) + &read(&stderr2));
    assert!(status.success(), "{status}: {}", read(&stderr2));
    assert_counter_continued(&read(&dir.join("serial")), &read(&serial2));
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn saved_linux_counter_continues_in_a_new_process() {
    save_and_restore(false);
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn live_saved_linux_counter_continues_in_a_new_process() {
    save_and_restore(true);
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn linux_counter_teleports_to_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let guest = Guest::from_lane();
    let (target_serial, target_stderr) = (dir.join("target-serial"), dir.join("target-stderr"));
    let mut target_args = guest.run_args("512M", 2, COUNTER);
    target_args.extend(
        [
            "--incoming",
            "127.0.0.1:0",
            "--serial",
            target_serial.to_str().unwrap(),
        ]
        .map(str::to_owned),
    );
    let target_args: Vec<&str> = target_args.iter().map(String::as_str).collect();
    let mut target = Vmm::spawn("vmm run --incoming", &target_args, &target_stderr, DEADLINE);
    let address = incoming_address(&mut target, &target_stderr);

    let mut source = start_counter(dir, "serial");
    let socket = dir.join("api.sock");
    let said = client_ok(&[
        "teleport",
        &address,
        "--api-socket",
        socket.to_str().unwrap(),
    ]);
    assert!(said.contains("VM teleported"), "{said}");
    let status = source.wait(|| read(&dir.join("stderr")));
    assert!(status.success(), "source: {status}");
    let status = target.wait(|| read(&target_serial) + &read(&target_stderr));
    assert!(
        status.success(),
        "target: {status}: {}",
        read(&target_stderr)
    );
    assert_counter_continued(&read(&dir.join("serial")), &read(&target_serial));
}

/// Boots Linux on `cpus` vCPUs to run `date` and `poweroff -f`: ACPI
/// soft-off must end the run with status 0 and say so.
fn linux_powers_off(cpus: u32) {
    let out = boot("256M", cpus, "date; poweroff -f");
    let text = out.serial;
    assert!(out.status.success(), "{}\n{text}", out.status);
    assert!(text.contains("vmm: the guest powered off"), "{text}");
    assert!(text.contains("reboot: Power down"), "{text}");
    assert!(!text.contains(STATUS_PREFIX), "poweroff returned:\n{text}");
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn linux_powers_off_with_one_cpu() {
    linux_powers_off(1);
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn linux_powers_off_with_four_cpus() {
    linux_powers_off(4);
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn linux_boots_again_after_reboot_with_every_cpu() {
    const MARKER: &str = "VMM-GUEST-LINUX: reached userspace";
    const RESTART: &str = "reboot: Restarting system";
    const SMP: &str = "smp: Brought up 1 node, 2 CPUs";
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (serial, socket) = (dir.join("serial"), dir.join("api.sock"));
    let mut args = Guest::from_lane().run_args("256M", 2, "reboot -f");
    args.extend(
        [
            "--api-socket",
            socket.to_str().unwrap(),
            "--serial",
            serial.to_str().unwrap(),
        ]
        .map(str::to_owned),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut vm = Vmm::spawn("vmm run (reboot)", &args, &dir.join("stderr"), DEADLINE);
    vm.wait_for_text(&serial, RESTART);
    // The second boot, after the first reset, must reach userspace too.
    let start = std::time::Instant::now();
    let second_boot = || read(&serial).split_once(RESTART).map(|(_, b)| b.to_owned());
    while !second_boot().is_some_and(|b| b.contains(MARKER)) {
        assert!(
            start.elapsed() < DEADLINE,
            "no second boot:\n{}{}",
            read(&serial),
            read(&dir.join("stderr"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let said = client_ok(&["poweroff", "--api-socket", socket.to_str().unwrap()]);
    assert!(said.contains("powered off"), "{said}");
    let status = vm.wait(|| read(&serial));
    let text = read(&serial);
    assert!(status.success(), "{status}\n{text}");
    let (first, second) = text.split_once(RESTART).unwrap();
    assert!(first.contains(SMP) && second.contains(SMP), "{text}");
    assert!(!text.contains("Kernel panic"), "{text}");
}

/// Boots Linux with `--no-acpi` on `cpus` vCPUs until it has looked for
/// ACPI, then stops it: Linux must find no RSDP and run without ACPI.
///
/// Only that much is checked. Debian's kernel is built without
/// `CONFIG_X86_MPPARSE`, so it ignores the MP table and finds one CPU;
/// with neither MADT nor MP table its interrupt delivery (virtual wire)
/// stalls in this lane before userspace (the printk clock stops, the
/// i8042 probe never ends), so the boot is not awaited.
fn linux_runs_without_acpi_tables(cpus: u32) {
    const NO_INTERPRETER: &str = "ACPI: Interpreter disabled.";
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial");
    let mut args = Guest::from_lane().run_args("256M", cpus, "poweroff -f");
    args.extend(["--no-acpi", "--serial", serial.to_str().unwrap()].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut vm = Vmm::spawn(
        "vmm run --no-acpi",
        &args,
        &dir.path().join("stderr"),
        DEADLINE,
    );
    vm.wait_for_text(&serial, NO_INTERPRETER);
    drop(vm);
    let text = read(&serial);
    assert!(text.contains("A valid RSDP was not found"), "{text}");
    assert!(!text.contains("ACPI: RSDP"), "{text}");
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn linux_finds_no_acpi_tables_with_no_acpi_and_one_cpu() {
    linux_runs_without_acpi_tables(1);
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn linux_finds_no_acpi_tables_with_no_acpi_and_four_cpus() {
    linux_runs_without_acpi_tables(4);
}
