//! Linux without ACPI on real KVM: Debian's generic kernel (built with
//! `CONFIG_X86_MPPARSE`, unlike the cloud kernel) finds its CPUs and its
//! I/O APIC in `vmm`'s MP table, takes its timer ticks through that I/O
//! APIC, reaches userspace and halts (`poweroff -f`). These tests need the lane's KVM and
//! L2 guest, so they are ignored in a plain `cargo test` and run inside
//! `cargo xtask hwkvm`, which sets `L2_KERNEL_MP`, `L2_INITRD` and
//! `L2_CMDLINE` (a missing one is a failure, never a skip).

#[allow(dead_code)] // shared by the lane's test binaries
#[path = "support/lane.rs"]
mod lane;
#[allow(dead_code)] // shared by the end-to-end tests; the lane's part needs only the child
mod support;

use lane::{Guest, vmm_run};

/// The line the guest's init prints once it reached userspace.
const MARKER: &str = "VMM-GUEST-LINUX: reached userspace";
/// The init's command: the kernel's lines about the MP table, the CPUs,
/// the interrupt routing and the RTC, then the date (read from the RTC)
/// and a power-off. The boot itself is `quiet`: every console byte is an
/// exit to the VMM, and the log is what the tests judge.
///
/// Without ACPI Linux has no way to power the machine off: `poweroff -f`
/// halts every CPU with interrupts disabled, and `vmm` ends the run then.
const COMMAND: &str = "dmesg | grep -E 'MP-table|MultiProcessor|MPTABLE|Processor|IOAPIC|IO-APIC|MP-BIOS|smpboot|smp: |RSDP|MADT|rtc0|timer'; date +year=%Y; poweroff -f";

/// Boots the generic kernel with `--no-acpi` on `cpus` vCPUs and checks
/// that Linux took its SMP configuration and interrupt routing from the MP
/// table, brought every CPU up, ran the init's `date` and that its
/// power-off (every CPU halted with interrupts off) ended the run with
/// status 0. (A reboot would end it too, under `--reboot exit`, but with
/// another message.)
fn linux_reads_the_mp_table_and_halts(cpus: u32) {
    let mut args = Guest::from_lane("L2_KERNEL_MP").run_args("256M", cpus, COMMAND);
    args.extend(["--no-acpi", "--reboot", "exit"].map(str::to_owned));
    let out = vmm_run(args);
    let text = out.serial;
    assert!(out.status.success(), "{}\n{text}", out.status);
    assert!(
        text.contains(
            "vmm: the guest halted every CPU with interrupts off (nothing can wake it): the run ends"
        ),
        "{text}"
    );
    assert!(text.contains("reboot: System halted"), "{text}");
    // The timer ticked: the boot got past its delay calibration and
    // scheduler setup to the init.
    assert!(text.contains(MARKER), "{text}");
    assert!(text.lines().any(|l| l.starts_with("year=20")), "{text}");
    // No ACPI tables, so the MP table is Linux's only source.
    assert!(text.contains("A valid RSDP was not found"), "{text}");
    assert!(!text.contains("Using ACPI (MADT)"), "{text}");
    for line in [
        "found SMP MP-table at".to_owned(),
        "Intel MultiProcessor Specification v1.4".to_owned(),
        "MPTABLE: OEM ID: VMMCORE".to_owned(),
        "Processor #0 (Bootup-CPU)".to_owned(),
        format!("Processors: {cpus}"),
        // The I/O APIC, registered from its MP table entry.
        "IOAPIC[0]: apic_id".to_owned(),
        format!("smpboot: Allowing {cpus} CPUs"),
        format!(
            "smp: Brought up 1 node, {cpus} {}",
            if cpus == 1 { "CPU" } else { "CPUs" }
        ),
        "registered as rtc0".to_owned(),
    ] {
        assert!(text.contains(&line), "no {line:?} in:\n{text}");
    }
    for cpu in 1..cpus {
        let entry = format!("Processor #{cpu}");
        assert!(
            text.lines().any(|l| l.trim_end().ends_with(&entry)),
            "no {entry:?} in:\n{text}"
        );
    }
    // Linux checks that the PIT's interrupt reaches the I/O APIC pin the
    // MP table names for ISA IRQ 0, and complains (or panics) if not.
    for complaint in [
        "MADT or MP tables are not detected",
        "MP-BIOS bug",
        "timer doesn't work",
        "Kernel panic",
    ] {
        assert!(!text.contains(complaint), "{complaint}:\n{text}");
    }
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn without_acpi_the_generic_kernel_reads_the_mp_table_on_one_cpu_and_halts() {
    linux_reads_the_mp_table_and_halts(1);
}

#[test]
#[ignore = "hardware-KVM lane: cargo xtask hwkvm"]
fn without_acpi_the_generic_kernel_brings_up_four_cpus_from_the_mp_table_and_halts() {
    linux_reads_the_mp_table_and_halts(4);
}
