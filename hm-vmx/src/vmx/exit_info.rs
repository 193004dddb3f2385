//! The exit-reason field and the interruption-information fields (VM-exit
//! interruption information, IDT-vectoring information, VM-entry
//! interruption information), Intel SDM Vol. 3 "VM-Exit Information Fields"
//! and "VM-Entry Controls for Event Injection".
//!
//! ```
//! use hm_vmx::vmx::{EventKind, ExitReason, ExitReasonField, InterruptionInfo};
//!
//! // VM-entry failure due to invalid guest state.
//! let f = ExitReasonField::decode(0x8000_0021);
//! assert!(f.entry_failure);
//! assert_eq!(f.reason(), Some(ExitReason::EntryFailureGuestState));
//!
//! // A #GP with error code, as VM-exit interruption information.
//! let info = InterruptionInfo::decode(0x8000_0b0d).unwrap().unwrap();
//! assert_eq!((info.kind, info.vector, info.error_code_valid), (EventKind::HardwareException, 13, true));
//! assert_eq!(info.encode(), 0x8000_0b0d);
//! ```

use super::exit_qual::QualError;
use super::exit_reason::ExitReason;
use super::guest_state::{EventKind, InjectedEvent};

/// The 32-bit exit-reason field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitReasonField {
    /// Basic exit reason (bits 15:0).
    pub basic: u16,
    /// The exit happened in enclave mode (bit 27).
    pub enclave: bool,
    /// A pending MTF VM exit (bit 28).
    pub pending_mtf: bool,
    /// The exit came from VMX root operation (bit 29).
    pub from_vmx_root: bool,
    /// VM-entry failure (bit 31).
    pub entry_failure: bool,
}

impl ExitReasonField {
    /// Decodes the raw field.
    pub fn decode(raw: u32) -> ExitReasonField {
        ExitReasonField {
            basic: raw as u16,
            enclave: raw & (1 << 27) != 0,
            pending_mtf: raw & (1 << 28) != 0,
            from_vmx_root: raw & (1 << 29) != 0,
            entry_failure: raw & (1 << 31) != 0,
        }
    }

    /// The basic exit reason, if the SDM assigns its number.
    pub fn reason(&self) -> Option<ExitReason> {
        ExitReason::from_raw(self.basic)
    }
}

impl EventKind {
    /// Decodes an interruption type (bits 10:8); `None` for the reserved 1.
    pub const fn from_raw(raw: u8) -> Option<EventKind> {
        Some(match raw & 7 {
            0 => EventKind::ExternalInterrupt,
            2 => EventKind::Nmi,
            3 => EventKind::HardwareException,
            4 => EventKind::SoftwareInterrupt,
            5 => EventKind::PrivilegedSoftwareException,
            6 => EventKind::SoftwareException,
            7 => EventKind::Other,
            _ => return None,
        })
    }

    /// The interruption-type number.
    pub const fn raw(self) -> u8 {
        match self {
            EventKind::ExternalInterrupt => 0,
            EventKind::Nmi => 2,
            EventKind::HardwareException => 3,
            EventKind::SoftwareInterrupt => 4,
            EventKind::PrivilegedSoftwareException => 5,
            EventKind::SoftwareException => 6,
            EventKind::Other => 7,
        }
    }
}

/// A valid interruption-information field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptionInfo {
    /// Interruption type (bits 10:8).
    pub kind: EventKind,
    /// Vector (bits 7:0).
    pub vector: u8,
    /// An error code is delivered / was pushed (bit 11).
    pub error_code_valid: bool,
    /// NMI unblocking due to IRET (bit 12; VM-exit interruption
    /// information only).
    pub nmi_unblocking: bool,
}

impl InterruptionInfo {
    /// Decodes a raw field: `Ok(None)` when the valid bit (31) is clear.
    pub fn decode(raw: u32) -> Result<Option<InterruptionInfo>, QualError> {
        if raw & (1 << 31) == 0 {
            return Ok(None);
        }
        let kind =
            EventKind::from_raw(((raw >> 8) & 7) as u8).ok_or(QualError::InterruptionType(raw))?;
        Ok(Some(InterruptionInfo {
            kind,
            vector: raw as u8,
            error_code_valid: raw & (1 << 11) != 0,
            nmi_unblocking: raw & (1 << 12) != 0,
        }))
    }

    /// Encodes the field with its valid bit set.
    pub const fn encode(&self) -> u32 {
        (1 << 31)
            | ((self.nmi_unblocking as u32) << 12)
            | ((self.error_code_valid as u32) << 11)
            | ((self.kind.raw() as u32) << 8)
            | self.vector as u32
    }

    /// The event as the guest-state checks see an injection.
    pub const fn injected_event(&self) -> InjectedEvent {
        InjectedEvent {
            kind: self.kind,
            vector: self.vector,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reason_field() {
        let f = ExitReasonField::decode(30);
        assert_eq!(f.reason(), Some(ExitReason::IoInstruction));
        assert!(!f.entry_failure && !f.enclave && !f.pending_mtf && !f.from_vmx_root);
        let f = ExitReasonField::decode(1 << 27 | 1 << 28 | 1 << 29 | 35);
        assert!(f.enclave && f.pending_mtf && f.from_vmx_root);
        assert_eq!((f.basic, f.reason()), (35, None));
    }

    #[test]
    fn interruption_info_round_trip() {
        assert_eq!(InterruptionInfo::decode(0x0000_0b0d), Ok(None));
        assert_eq!(
            InterruptionInfo::decode(0x8000_0120),
            Err(QualError::InterruptionType(0x8000_0120))
        );
        for raw in 0..8u8 {
            match EventKind::from_raw(raw) {
                Some(k) => assert_eq!(k.raw(), raw),
                None => assert_eq!(raw, 1),
            }
        }
        // NMI with IRET unblocking; external interrupt 0x20.
        for raw in [0x8000_1202u32, 0x8000_0020, 0x8000_0703, 0x8000_0680] {
            let info = InterruptionInfo::decode(raw).unwrap().unwrap();
            assert_eq!(info.encode(), raw);
        }
        let info = InterruptionInfo::decode(0x8000_1202).unwrap().unwrap();
        assert_eq!((info.kind, info.nmi_unblocking), (EventKind::Nmi, true));
        assert_eq!(
            info.injected_event(),
            InjectedEvent {
                kind: EventKind::Nmi,
                vector: 2
            }
        );
    }
}
