//! `vmm`'s exit statuses: a fixed value for each kind of end, so that a
//! script can tell a VMM error from a usage error from a failing guest
//! (the README's table lists them).
//!
//! The guest's own exit byte (what it writes to the debug-exit port) is
//! not passed on by default: a guest returning 1 or 2 would look like a
//! VMM error or a usage error. A non-zero byte ends the run with
//! [`Status::GuestFailed`] and is named on stderr; `vmm run --exit-code
//! guest` passes the byte on as it is, for scripts that run a command in
//! the guest and want its status (they then read stderr to tell the VMM's
//! own statuses apart). No range of statuses is free for the byte: 0-255
//! are all a guest can write, and 129-159 are taken by signals.

use std::process::ExitCode;

use vmm_core::RunOutcome;

use crate::shutdown::Signal;

/// The statuses `vmm` exits with (besides 128 + a signal's number, and the
/// guest's byte under `--exit-code guest`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// The command did what it was asked; `vmm run`: the guest ended the
    /// run normally (powered off, halted, exited with 0, rebooted under
    /// `--reboot exit`).
    Success = 0,
    /// The VMM failed: a file, device, socket or KVM could not be used,
    /// the VM failed, the control API refused the request.
    Error = 1,
    /// The command line, a config file or `RUST_LOG` is invalid.
    Usage = 2,
    /// The guest failed: it exited with a non-zero status, or (with the
    /// default kernel command line) panicked.
    GuestFailed = 3,
    /// A check found a problem: `vmm doctor` (the host cannot run VMs),
    /// `vmm state verify` (the saved state is damaged).
    CheckFailed = 4,
}

impl From<Status> for ExitCode {
    fn from(status: Status) -> Self {
        ExitCode::from(status as u8)
    }
}

/// A usage error found after the command line was parsed (a config file,
/// `RUST_LOG`): `vmm` exits with [`Status::Usage`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `vmm run --exit-code`: what the guest's exit byte becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExitCodeArg {
    /// The statuses of the table: a non-zero byte is status 3.
    Vmm,
    /// The guest's byte as it is (it may clash with the VMM's statuses).
    Guest,
}

/// The status of a finished run, with what stderr says about it.
pub fn run_status(outcome: RunOutcome, signalled: Option<Signal>, mode: ExitCodeArg) -> ExitCode {
    match outcome {
        RunOutcome::GuestExit(0) => Status::Success.into(),
        RunOutcome::GuestExit(byte) => match mode {
            ExitCodeArg::Guest => ExitCode::from(byte),
            ExitCodeArg::Vmm => {
                eprintln!(
                    "vmm: the guest exited with status {byte} (--exit-code guest passes it on)"
                );
                Status::GuestFailed.into()
            }
        },
        RunOutcome::Reboot => {
            eprintln!("vmm: the guest reset the machine (reboot); run ended");
            Status::Success.into()
        }
        RunOutcome::PoweredOff => match signalled {
            Some(signal) => {
                eprintln!("vmm: powered off on {}", signal.name());
                ExitCode::from(signal.exit_status())
            }
            None => Status::Success.into(),
        },
        RunOutcome::WarmReset => {
            eprintln!(
                "vmm: the guest reset the machine warm (with the default command line: a kernel panic); run ended"
            );
            Status::GuestFailed.into()
        }
        RunOutcome::GuestPoweredOff => {
            eprintln!("vmm: the guest powered off");
            Status::Success.into()
        }
        RunOutcome::GuestHalted => {
            eprintln!(
                "vmm: the guest halted every CPU with interrupts off (nothing can wake it): the run ends"
            );
            Status::Success.into()
        }
    }
}

/// The status a failed command exits with: [`Status::Usage`] for a
/// [`UsageError`] anywhere in the chain, [`Status::Error`] otherwise.
pub fn error_status(e: &anyhow::Error) -> Status {
    if e.chain().any(|cause| cause.is::<UsageError>()) {
        Status::Usage
    } else {
        Status::Error
    }
}

/// `e` and its causes as one line, each cause said once: an error whose
/// text already includes its cause's (`I/O error: No such file` caused
/// by `No such file`) is not followed by that cause again.
pub fn message(e: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut previous = String::new();
    for cause in e.chain() {
        let said = cause.to_string();
        if !previous.is_empty() && previous.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
        previous = said;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("I/O error: {0}")]
    struct Wrapped(#[source] std::io::Error);

    #[test]
    fn a_cause_already_in_the_text_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(Wrapped(io)).context("cannot read x");
        assert_eq!(message(&e), "cannot read x: I/O error: No such file");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(message(&e), "outer: inner");
    }

    #[test]
    fn usage_errors_are_found_under_context() {
        let e = anyhow::Error::new(UsageError("bad key".into())).context("config x");
        assert_eq!(error_status(&e), Status::Usage);
        assert_eq!(error_status(&anyhow::anyhow!("io")), Status::Error);
    }

    #[test]
    fn statuses_are_distinct_and_below_the_signal_range() {
        let all = [
            Status::Success,
            Status::Error,
            Status::Usage,
            Status::GuestFailed,
            Status::CheckFailed,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!((*a as u8) < 128);
            assert!(all[i + 1..].iter().all(|b| *a as u8 != *b as u8));
        }
    }
}
