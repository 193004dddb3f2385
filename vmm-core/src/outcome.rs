//! How a run ends.

/// How a run ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest wrote this status to the debug-exit port.
    GuestExit(u8),
    /// The guest reset the machine (for example through the keyboard
    /// controller, as Linux's `reboot=k` does) and the VM is configured to
    /// end the run then ([`OnReboot::Exit`](crate::OnReboot::Exit)).
    Reboot,
    /// The VM was powered off from outside (the control API).
    PoweredOff,
    /// The guest powered the machine off (ACPI soft-off, as Linux's
    /// `poweroff` does).
    GuestPoweredOff,
    /// The guest reset the machine with the BIOS warm-reset flag set (0x1234
    /// at 0x472), as Linux does on a panic with `reboot=panic_warm`:
    /// the run ends whatever [`OnReboot`](crate::OnReboot) says.
    WarmReset,
    /// The guest halted every vCPU with interrupts disabled (`cli; hlt`, as
    /// Linux's `poweroff` does without ACPI): nothing can wake it.
    GuestHalted,
}
