//! Real software on real KVM: Debian's cloud kernel and a busybox init under
//! `vmm`, checked by what Linux itself reports. These tests need a KVM with
//! hardware semantics and the lane's L2 guest, so they are ignored in a
//! plain `cargo test` and run inside `cargo xtask hwkvm`, which sets
//! `L2_KERNEL`, `L2_INITRD` and `L2_CMDLINE` (a missing one is a failure,
//! never a skip).

#[allow(dead_code)] // shared by the lane's test binaries
#[path = "support/lane.rs"]
mod lane;
mod support;

use std::path::Path;

use lane::{Booted, DEADLINE, Guest, Stage, vmm_run};
use support::{Vmm, incoming_address, read};
/// What the L2 init prints before handing a command's status to the host.
const STATUS_PREFIX: &str = "VMM-GUEST-LINUX: command exited with ";
/// The L2 init's command for the save/restore test: a counter every 100 ms,
/// each value with the guest's uptime.
const COUNTER: &str = "i=0; while :; do read up idle < /proc/uptime; echo tick $i $up; i=$((i+1)); usleep 100000; done";
/// The most guest time between two ticks, in seconds: the guest's clock
/// goes on where it stopped when the VM moves, never backwards. (A guest
/// whose clock started over in the new VM froze its time and sat idle
/// until the new clock caught up: the counter went on without a gap, but
/// tens of seconds later; `hm-vmx/tests/saved_state_kvm.rs` checks the
/// clock and the TSC deadline themselves.)
const MAX_TICK_GAP: f64 = 10.0;
/// Ticks the counter must make in each process before it moves on.
const TICKS_PER_STAGE: u32 = 10;
/// The statistic counting guest accesses to unassigned guest-physical space.
const UNASSIGNED: &str = "/PGM/UnassignedAccesses";
/// What the guest's init prints of its kernel log: the lines the tests
/// judge. The boot itself is `quiet`: every console byte is an exit, and
/// under nested emulation the kernel's chatter costs seconds per boot.
const KERNEL_LOG: &str = "dmesg | grep -E 'smp: |SMP|MADT|MP-table|i8042|rtc|Keylock|broken'";

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

/// What the guest's init prints before its command: the kernel's lines the
/// tests judge, the CPUs and the RAM Linux sees.
fn report_then(command: &str) -> String {
    format!(
        "{KERNEL_LOG}; echo cpus=$(grep -c ^processor /proc/cpuinfo); grep MemTotal /proc/meminfo; {command}"
    )
}

/// Boots Linux on `cpus` vCPUs with `mem` of RAM, has its init report
/// ([`report_then`]) and then run `then`, and checks what it reported
/// ([`assert_linux_saw`]) and that the kernel's scans of the legacy areas
/// below 1 MiB read memory, not unassigned space (each such access is an
/// exit to the VMM: 80,000 per boot before the BIOS and expansion ROM
/// areas were mapped).
fn linux_sees_every_cpu_and_its_ram(mem: &str, cpus: u32, min_kib: u64, then: &str) -> Booted {
    let mut args = Guest::from_lane("L2_KERNEL").run_args(mem, cpus, &report_then(then));
    args.push(format!("--stats={UNASSIGNED}"));
    let out = vmm_run(args);
    let text = &out.serial;
    let unassigned: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(UNASSIGNED))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {UNASSIGNED} in:\n{text}"));
    assert!(
        unassigned < 64,
        "{unassigned} accesses to unassigned guest-physical space:\n{text}"
    );
    assert_linux_saw(text, cpus, min_kib);
    out
}

/// Checks what the init reported ([`report_then`]): Linux found the
/// firmware's CPU list, brought all `cpus` up, sees at least `min_kib` of
/// RAM and probed the i8042 and the RTC without wasting time.
fn assert_linux_saw(text: &str, cpus: u32, min_kib: u64) {
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
fn linux_on_one_cpu_in_5_gib_hands_a_commands_output_and_status_to_the_host() {
    let out = linux_sees_every_cpu_and_its_ram(
        "5G",
        1,
        4800 << 10,
        "echo answer=$((6 * 7)); uname -sm; exit 7",
    );
    let text = out.serial;
    assert_eq!(out.status.code(), Some(7), "{text}");
    assert!(text.contains("answer=42"), "{text}");
    assert!(text.contains("Linux x86_64"), "{text}");
    assert!(text.contains(&format!("{STATUS_PREFIX}7")), "{text}");
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn linux_brings_up_four_cpus_in_512_mib_and_powers_off() {
    let out = linux_sees_every_cpu_and_its_ram("512M", 4, 400 << 10, "date; poweroff -f");
    let text = out.serial;
    // ACPI soft-off ends the run with status 0 and says so.
    assert!(out.status.success(), "{}\n{text}", out.status);
    assert!(text.contains("vmm: the guest powered off"), "{text}");
    assert!(!text.contains(STATUS_PREFIX), "poweroff returned:\n{text}");
}

/// The prompt of the shell [`a_shell_on_the_serial_console_answers_what_stdin_types`]
/// drives; the kernel hands `PS1=...` from its command line to init in the
/// environment, and the shell takes it from there.
const PROMPT: &str = "vmm-shell# ";

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn a_shell_on_the_serial_console_answers_what_stdin_types() {
    let dir = tempfile::tempdir().unwrap();
    let (serial, stderr) = (dir.path().join("serial"), dir.path().join("stderr"));
    let mut args = Guest::from_lane("L2_KERNEL").run_args("256M", 1, "sh");
    args.last_mut()
        .expect("the command line is the last argument")
        .push_str(&format!(" PS1=\"{PROMPT}\""));
    // With --serial FILE the console still reads stdin: a pipe here, fed
    // as an expect script would.
    args.extend(["--serial".to_owned(), serial.display().to_string()]);
    let mut command = std::process::Command::new(support::VMM);
    command
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::fs::File::create(&stderr).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap());
    let mut vm = Vmm::start("vmm run (a shell on ttyS0)", &mut command, DEADLINE);
    let mut stdin = vm.child.stdin.take().expect("piped stdin");
    let mut type_line = |line: &str| {
        use std::io::Write;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("vmm reads its stdin");
    };
    vm.wait_for_text(&serial, PROMPT);
    type_line("echo hello");
    // The terminal echoes the command itself (`echo hello`): wait for a
    // line that is the output alone.
    vm.wait_until(&serial, "a line `hello`", |text| {
        text.lines().any(|l| l.trim_end_matches('\r') == "hello")
    });
    type_line("poweroff -f");
    let status = vm.wait(|| read(&serial) + &read(&stderr));
    let text = read(&serial) + &read(&stderr);
    assert!(status.success(), "{status}\n{text}");
    assert!(text.contains("vmm: the guest powered off"), "{text}");
    assert!(!text.contains(STATUS_PREFIX), "the shell returned:\n{text}");
}

/// One line of the counter: its value and the guest's uptime then.
#[derive(Clone, Copy, Debug)]
struct Tick {
    count: u32,
    uptime: f64,
}

/// The counter's lines a serial log shows, in order.
fn ticks(text: &str) -> Vec<Tick> {
    text.lines()
        .filter_map(|l| {
            let (count, uptime) = l.trim().strip_prefix("tick ")?.split_once(' ')?;
            Some(Tick {
                count: count.parse().ok()?,
                uptime: uptime.trim().parse().ok()?,
            })
        })
        .collect()
}

/// The last counter value in `log`.
fn last_count(log: &str) -> u32 {
    ticks(log).last().expect("the counter counts").count
}

/// Waits until the counter has reached `tick` in `stage`.
fn wait_for_tick(stage: &mut Stage, tick: u32) {
    stage
        .vm
        .wait_for_text(&stage.serial, &format!("tick {tick} "));
}

/// The last tick `stage` printed.
fn last_tick(stage: &Stage) -> u32 {
    last_count(&read(&stage.serial))
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn linux_on_two_cpus_counts_on_through_live_save_teleport_and_save() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let guest = Guest::from_lane("L2_KERNEL");
    let booted = guest.run_args("512M", 2, &report_then(COUNTER));
    let restore = |file: &Path| {
        ["run", "--restore", file.to_str().unwrap()]
            .map(str::to_owned)
            .to_vec()
    };
    let (live, saved) = (dir.join("live.sav"), dir.join("saved.sav"));
    let mut logs = Vec::new();

    // Booted, then saved live into a file...
    let mut first = Stage::start(dir, "boot", booted.clone());
    wait_for_tick(&mut first, 20);
    logs.push(first.leave(
        &["save", live.to_str().unwrap(), "--live", "--poweroff"],
        "live passes",
    ));
    assert_linux_saw(&logs[0], 2, 400 << 10);
    // ...restored in a second process, teleported to a third...
    let mut second = Stage::start(dir, "restored", restore(&live));
    wait_for_tick(&mut second, last_count(&logs[0]) + TICKS_PER_STAGE);
    let mut target_args = booted;
    target_args.extend(["--incoming", "127.0.0.1:0"].map(str::to_owned));
    let mut third = Stage::start(dir, "teleported", target_args);
    let address = incoming_address(&mut third.vm, &dir.join("teleported.stderr"));
    logs.push(second.leave(&["teleport", &address], "VM teleported"));
    // ...saved plainly there, and restored in a fourth, where it is
    // powered off.
    wait_for_tick(&mut third, last_count(&logs[1]) + TICKS_PER_STAGE);
    logs.push(third.leave(
        &["save", saved.to_str().unwrap(), "--poweroff"],
        "VM state saved",
    ));
    let mut fourth = Stage::start(dir, "restored-again", restore(&saved));
    wait_for_tick(&mut fourth, last_tick(&third) + TICKS_PER_STAGE);
    logs.push(fourth.leave(&["poweroff"], ""));

    // A line may be cut by a move: read the logs as one stream.
    for (stage, log) in logs.iter().enumerate().skip(1) {
        assert!(
            !log.contains("Linux version") && !log.contains("reached userspace"),
            "stage {stage}: the guest booted again:\n{log}"
        );
    }
    let all = ticks(&logs.concat());
    let journey = || logs.join("\n--- next process ---\n");
    for pair in all.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        assert!(
            b.count > a.count && b.count - a.count <= 3,
            "the counter went from {} to {}:\n{}",
            a.count,
            b.count,
            journey()
        );
        assert!(
            b.uptime > a.uptime && b.uptime - a.uptime < MAX_TICK_GAP,
            "the guest's clock went from {} s to {} s between ticks {} and {}:\n{}",
            a.uptime,
            b.uptime,
            a.count,
            b.count,
            journey()
        );
    }
}

/// The guest's `ioperm` user reaches its I/O port after a restore and
/// after a teleport: `vmm-exit` (`ioperm`, then `OUT` at CPL 3) ends the
/// last run with the command's status. (KVM on AMD-V reports TR as busy;
/// written back as read, that type made QEMU's software CPU refuse the
/// guest's I/O bitmap, and `vmm-exit` died of SIGSEGV in every restored
/// or teleported VM.)
#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn the_guests_ioperm_user_reaches_its_port_after_a_restore_and_a_teleport() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let booted = Guest::from_lane("L2_KERNEL").run_args(
        "256M",
        1,
        "echo saving; sleep 10; echo teleporting; sleep 20; exit 7",
    );
    let file = dir.join("ioperm.sav");
    let mut first = Stage::start(dir, "boot", booted.clone());
    first.wait_for_line("saving");
    first.leave(
        &["save", file.to_str().unwrap(), "--poweroff"],
        "VM state saved",
    );
    let restore = ["run", "--restore", file.to_str().unwrap()].map(str::to_owned);
    let mut second = Stage::start(dir, "restored", restore.to_vec());
    let mut target_args = booted;
    target_args.extend(["--incoming", "127.0.0.1:0"].map(str::to_owned));
    let mut third = Stage::start(dir, "teleported", target_args);
    let address = incoming_address(&mut third.vm, &dir.join("teleported.stderr"));
    second.wait_for_line("teleporting");
    second.leave(&["teleport", &address], "VM teleported");
    let stderr = dir.join("teleported.stderr");
    let status = third.vm.wait(|| read(&third.serial) + &read(&stderr));
    let text = read(&third.serial) + &read(&stderr);
    assert_eq!(status.code(), Some(7), "{text}");
    assert!(text.contains(&format!("{STATUS_PREFIX}7")), "{text}");
    // A killed init reboots, and the teleported VM boots its kernel anew.
    assert!(
        !text.contains("Segmentation fault") && !text.contains("reached userspace"),
        "{text}"
    );
}

/// Firmware with its GDT in ROM and the descriptors' accessed bits clear:
/// with hardware semantics the CPU's accessed-bit writes to ROM are
/// dropped and the guest runs on (tests/rom_gdt.rs in vmm-core checks the
/// development host's KVM).
#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn rom_gdt_guests_run_on_past_their_accessed_bit_writes() {
    for guest in ["rom-gdt", "rom-gdt-data"] {
        let out = vmm_run(["run", "--guest", guest].map(str::to_owned).to_vec());
        assert!(
            out.status.success(),
            "{guest}: {}\n{}",
            out.status,
            out.serial
        );
        assert!(
            out.serial
                .contains("vmm rom-gdt: the GDT in ROM is unchanged; all checks passed"),
            "{guest}:\n{}",
            out.serial
        );
    }
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn linux_finds_three_cpus_in_the_madt_at_an_odd_ram_size_and_powers_off() {
    let out = linux_sees_every_cpu_and_its_ram("333M", 3, 256 << 10, "date; poweroff -f");
    let text = out.serial;
    assert!(
        text.contains("ACPI: Using ACPI (MADT) for SMP configuration information"),
        "{text}"
    );
    assert!(out.status.success(), "{}\n{text}", out.status);
    assert!(text.contains("vmm: the guest powered off"), "{text}");
}

/// Without ACPI, Linux can neither power off (it halts, and `vmm` waits)
/// nor, built as Debian's cloud kernel is (without `CONFIG_X86_MPPARSE`),
/// read the MP table: it finds no SMP configuration and runs on one CPU in
/// virtual wire mode, its ticks from the PIT through the 8259 and LINT0.
/// With the local APIC in use that stalls under KVM: a PIT interrupt
/// raised while Linux has the local APIC software-disabled (and so LINT0
/// masked) during its setup is never injected (KVM does not look at the
/// 8259 again when LINT0 is unmasked, and its PIT waits for that tick's
/// acknowledgement before raising another). `nolapic` keeps Linux on the
/// 8259 alone, which this test checks: the legacy interrupt path, the RTC,
/// and a reboot through the keyboard controller ending the run with
/// `--reboot exit`.
#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn without_acpi_debians_kernel_runs_on_the_8259_and_its_reboot_ends_the_run() {
    let mut args = Guest::from_lane("L2_KERNEL").run_args(
        "256M",
        1,
        &format!("{KERNEL_LOG}; date +year=%Y; reboot -f"),
    );
    args.last_mut()
        .expect("the command line is the last argument")
        .push_str(" nolapic");
    args.extend(["--no-acpi", "--reboot", "exit"].map(str::to_owned));
    let out = vmm_run(args);
    let text = out.serial;
    assert!(out.status.success(), "{}\n{text}", out.status);
    assert!(
        text.contains("vmm: the guest reset the machine (reboot); run ended"),
        "{text}"
    );
    assert!(text.contains("reboot: Restarting system"), "{text}");
    assert!(!text.contains("Kernel panic"), "{text}");
    assert!(text.contains("A valid RSDP was not found"), "{text}");
    assert!(text.contains("smp: Brought up 1 node, 1 CPU"), "{text}");
    assert!(text.contains("registered as rtc0"), "{text}");
    assert!(text.contains("serio: i8042 KBD port"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("year=20")), "{text}");
}
