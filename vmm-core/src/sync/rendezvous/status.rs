//! EM scheduling statuses and how rendezvous results are merged.

use std::fmt;

/// VirtualBox's EM scheduling statuses (`VINF_EM_FIRST..=VINF_EM_LAST`),
/// most important first: when several are reported the lowest one wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EmStatus {
    /// The VM is terminating; stop executing.
    Terminate,
    /// Hypervisor code was single-stepped.
    DbgHyperStepped,
    /// A hypervisor breakpoint was hit.
    DbgHyperBreakpoint,
    /// A hypervisor assertion fired.
    DbgHyperAssertion,
    /// A generic debug event: suspend for the debugger.
    DbgEvent,
    /// Stop for the debugger.
    DbgStop,
    /// A guest single step completed.
    DbgStepped,
    /// A guest breakpoint was hit.
    DbgBreakpoint,
    /// Single-step one instruction.
    DbgStep,
    /// The VM is being powered off.
    Off,
    /// The VM was suspended; wait for requests.
    Suspend,
    /// The VM was reset.
    Reset,
    /// The vCPU halted; wait for an interrupt.
    Halt,
    /// The VM was resumed.
    Resume,
    /// Out of memory (recoverable).
    NoMemory,
    /// Reschedule to the recompiler.
    RescheduleRem,
    /// Reschedule to hardware-assisted execution.
    RescheduleHm,
    /// Reschedule to raw mode.
    RescheduleRaw,
    /// Reschedule.
    Reschedule,
    /// Reschedule for a paravirtualised call.
    RescheduleParav,
    /// Go back to waiting for a startup IPI.
    WaitSipi,
}

impl EmStatus {
    /// VirtualBox's numeric code (`VINF_EM_TERMINATE` = 1100 ... `VINF_EM_WAIT_SIPI` = 1120).
    pub fn vbox_code(self) -> i32 {
        1100 + self as i32
    }

    /// Merges two optional statuses (`None` is `VINF_SUCCESS`): the more
    /// important (lower) one wins, success loses to any status.
    pub fn merge(a: Option<EmStatus>, b: Option<EmStatus>) -> Option<EmStatus> {
        match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, None) => x,
            (None, y) => y,
        }
    }
}

impl fmt::Display for EmStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?} ({})", self.vbox_code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn status() -> impl Strategy<Value = Option<EmStatus>> {
        prop_oneof![
            Just(None),
            (0u8..21).prop_map(|i| Some(match i {
                0 => EmStatus::Terminate,
                10 => EmStatus::Suspend,
                11 => EmStatus::Reset,
                12 => EmStatus::Halt,
                18 => EmStatus::Reschedule,
                20 => EmStatus::WaitSipi,
                _ => EmStatus::Off,
            })),
        ]
    }

    #[test]
    fn codes_follow_virtualbox() {
        assert_eq!(EmStatus::Terminate.vbox_code(), 1100);
        assert_eq!(EmStatus::Off.vbox_code(), 1109);
        assert_eq!(EmStatus::Suspend.vbox_code(), 1110);
        assert_eq!(EmStatus::Reset.vbox_code(), 1111);
        assert_eq!(EmStatus::WaitSipi.vbox_code(), 1120);
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_and_picks_the_lowest(
            a in status(), b in status(), c in status()
        ) {
            prop_assert_eq!(EmStatus::merge(a, b), EmStatus::merge(b, a));
            prop_assert_eq!(
                EmStatus::merge(EmStatus::merge(a, b), c),
                EmStatus::merge(a, EmStatus::merge(b, c))
            );
            let m = EmStatus::merge(a, b);
            for x in [a, b].into_iter().flatten() {
                prop_assert!(m.is_some_and(|m| m <= x));
            }
        }
    }
}
