//! Exit-qualification decoders (Intel SDM Vol. 3, "Exit Qualification for
//! VM Exits", 28.2.1 in recent editions / 27.2.1 in older ones).
//!
//! Each decoder takes the raw 64-bit exit qualification and returns a plain
//! struct. Decoders that meet an encoding the SDM leaves undefined return a
//! [`QualError`] instead of guessing.
//!
//! ```
//! use hm_vmx::vmx::{IoQualification, IoDirection};
//!
//! // `out dx, al` to port 0x3f8.
//! let q = IoQualification::decode(0x03f8_0000).unwrap();
//! assert_eq!(q.port, 0x3f8);
//! assert_eq!(q.size, 1);
//! assert_eq!(q.direction, IoDirection::Out);
//! assert!(!q.string && !q.rep && !q.immediate);
//! ```

/// Error decoding an exit qualification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QualError {
    /// The access-size field of an I/O qualification holds a value the SDM
    /// does not define (only 0, 1 and 3 are defined).
    #[error("I/O exit qualification {0:#x}: undefined access-size encoding {1}")]
    IoSize(u64, u8),
    /// An interruption-information field uses the reserved type 1.
    #[error("interruption information {0:#x}: reserved interruption type 1")]
    InterruptionType(u32),
}

/// Direction of an I/O instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDirection {
    /// OUT / OUTS (bit 3 = 0).
    Out,
    /// IN / INS (bit 3 = 1).
    In,
}

/// Exit qualification for I/O instructions (exit reason 30).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoQualification {
    /// Access size in bytes: 1, 2 or 4 (bits 2:0 hold size - 1).
    pub size: u8,
    /// Direction (bit 3).
    pub direction: IoDirection,
    /// String instruction, INS/OUTS (bit 4).
    pub string: bool,
    /// REP prefixed (bit 5).
    pub rep: bool,
    /// Port given as an immediate operand rather than in DX (bit 6).
    pub immediate: bool,
    /// Port number (bits 31:16).
    pub port: u16,
}

impl IoQualification {
    /// Decodes an I/O exit qualification.
    pub fn decode(raw: u64) -> Result<IoQualification, QualError> {
        let size = match raw & 7 {
            0 => 1,
            1 => 2,
            3 => 4,
            other => return Err(QualError::IoSize(raw, other as u8)),
        };
        Ok(IoQualification {
            size,
            direction: if raw & (1 << 3) != 0 {
                IoDirection::In
            } else {
                IoDirection::Out
            },
            string: raw & (1 << 4) != 0,
            rep: raw & (1 << 5) != 0,
            immediate: raw & (1 << 6) != 0,
            port: (raw >> 16) as u16,
        })
    }
}

/// Kind of control-register access (bits 5:4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrAccessType {
    /// MOV to CR (0).
    MovToCr,
    /// MOV from CR (1).
    MovFromCr,
    /// CLTS (2).
    Clts,
    /// LMSW (3).
    Lmsw,
}

/// Exit qualification for control-register accesses (exit reason 28).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrAccessQualification {
    /// Control register number (bits 3:0): 0 for CLTS and LMSW.
    pub cr: u8,
    /// Access type (bits 5:4).
    pub access: CrAccessType,
    /// LMSW operand is in memory (bit 6); meaningful for LMSW only.
    pub lmsw_memory_operand: bool,
    /// General-purpose register for MOV CR (bits 11:8): 0 = RAX, 1 = RCX,
    /// 2 = RDX, 3 = RBX, 4 = RSP, 5 = RBP, 6 = RSI, 7 = RDI, 8-15 = R8-R15.
    pub gpr: u8,
    /// LMSW source data (bits 31:16); meaningful for LMSW only.
    pub lmsw_source: u16,
}

impl CrAccessQualification {
    /// Decodes a control-register-access exit qualification. Every bit
    /// pattern has a defined meaning, so this cannot fail.
    pub fn decode(raw: u64) -> CrAccessQualification {
        CrAccessQualification {
            cr: (raw & 0xf) as u8,
            access: match (raw >> 4) & 3 {
                0 => CrAccessType::MovToCr,
                1 => CrAccessType::MovFromCr,
                2 => CrAccessType::Clts,
                _ => CrAccessType::Lmsw,
            },
            lmsw_memory_operand: raw & (1 << 6) != 0,
            gpr: ((raw >> 8) & 0xf) as u8,
            lmsw_source: (raw >> 16) as u16,
        }
    }
}

/// Exit qualification for EPT violations (exit reason 48).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EptViolationQualification {
    /// The access was a data read (bit 0).
    pub read: bool,
    /// The access was a data write (bit 1).
    pub write: bool,
    /// The access was an instruction fetch (bit 2).
    pub fetch: bool,
    /// The guest-physical address was readable (bit 3).
    pub readable: bool,
    /// The guest-physical address was writable (bit 4).
    pub writable: bool,
    /// The guest-physical address was executable (for supervisor-mode
    /// linear addresses when mode-based execute control is on) (bit 5).
    pub executable: bool,
    /// Executable for user-mode linear addresses (bit 6, mode-based
    /// execute control only).
    pub user_executable: bool,
    /// The guest-linear-address field is valid (bit 7).
    pub linear_address_valid: bool,
    /// With bit 7 set: the access was to the translated linear address
    /// (true) rather than to a paging-structure entry (false) (bit 8).
    pub translated_access: bool,
    /// Advanced exit information: linear address was user-mode (bit 9).
    pub user_mode_linear: bool,
    /// Advanced exit information: linear address was read/write (bit 10).
    pub linear_writable: bool,
    /// Advanced exit information: linear address was execute-disable (bit 11).
    pub linear_execute_disable: bool,
    /// NMI unblocking due to IRET (bit 12).
    pub nmi_unblocking: bool,
    /// Shadow-stack access (bit 13).
    pub shadow_stack: bool,
    /// Supervisor shadow-stack page (bit 14).
    pub supervisor_shadow_stack: bool,
    /// Caused by guest-paging verification (bit 15).
    pub guest_paging_verification: bool,
    /// Access asynchronous to instruction execution (bit 16).
    pub asynchronous: bool,
}

impl EptViolationQualification {
    /// Decodes an EPT-violation exit qualification.
    pub fn decode(raw: u64) -> EptViolationQualification {
        let b = |n: u32| raw & (1u64 << n) != 0;
        EptViolationQualification {
            read: b(0),
            write: b(1),
            fetch: b(2),
            readable: b(3),
            writable: b(4),
            executable: b(5),
            user_executable: b(6),
            linear_address_valid: b(7),
            translated_access: b(7) && b(8),
            user_mode_linear: b(9),
            linear_writable: b(10),
            linear_execute_disable: b(11),
            nmi_unblocking: b(12),
            shadow_stack: b(13),
            supervisor_shadow_stack: b(14),
            guest_paging_verification: b(15),
            asynchronous: b(16),
        }
    }
}

/// Exit qualification for debug exceptions (exit reason 0 with #DB); the
/// same layout as DR6 for the bits it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugQualification {
    /// Breakpoint conditions B0-B3 met (bits 3:0), bit n for DRn.
    pub breakpoints: u8,
    /// Debug-register access detected, BD (bit 13).
    pub debug_register_access: bool,
    /// Single step, BS (bit 14).
    pub single_step: bool,
    /// Debug exception or breakpoint inside an RTM region (bit 16).
    pub rtm: bool,
}

impl DebugQualification {
    /// Decodes a debug-exception exit qualification.
    pub fn decode(raw: u64) -> DebugQualification {
        DebugQualification {
            breakpoints: (raw & 0xf) as u8,
            debug_register_access: raw & (1 << 13) != 0,
            single_step: raw & (1 << 14) != 0,
            rtm: raw & (1 << 16) != 0,
        }
    }
}

/// Direction of a MOV DR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrDirection {
    /// MOV to DR (bit 4 = 0).
    ToDr,
    /// MOV from DR (bit 4 = 1).
    FromDr,
}

/// Exit qualification for MOV DR (exit reason 29).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MovDrQualification {
    /// Debug register number (bits 2:0).
    pub dr: u8,
    /// Direction (bit 4).
    pub direction: DrDirection,
    /// General-purpose register (bits 11:8), numbered as for CR accesses.
    pub gpr: u8,
}

impl MovDrQualification {
    /// Decodes a MOV-DR exit qualification.
    pub fn decode(raw: u64) -> MovDrQualification {
        MovDrQualification {
            dr: (raw & 7) as u8,
            direction: if raw & (1 << 4) != 0 {
                DrDirection::FromDr
            } else {
                DrDirection::ToDr
            },
            gpr: ((raw >> 8) & 0xf) as u8,
        }
    }
}

/// What started a task switch (bits 31:30).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskSwitchSource {
    /// CALL instruction (0).
    Call,
    /// IRET instruction (1).
    Iret,
    /// JMP instruction (2).
    Jmp,
    /// Task gate in the IDT (3).
    TaskGate,
}

/// Exit qualification for task switches (exit reason 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSwitchQualification {
    /// Selector of the target TSS (bits 15:0).
    pub selector: u16,
    /// Source of the task switch (bits 31:30).
    pub source: TaskSwitchSource,
}

impl TaskSwitchQualification {
    /// Decodes a task-switch exit qualification.
    pub fn decode(raw: u64) -> TaskSwitchQualification {
        TaskSwitchQualification {
            selector: raw as u16,
            source: match (raw >> 30) & 3 {
                0 => TaskSwitchSource::Call,
                1 => TaskSwitchSource::Iret,
                2 => TaskSwitchSource::Jmp,
                _ => TaskSwitchSource::TaskGate,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_qualification() {
        // `rep insw` from port 0x1f0 (DX): size 2, in, string, rep.
        let q = IoQualification::decode(0x01f0_0039).unwrap();
        assert_eq!(
            q,
            IoQualification {
                size: 2,
                direction: IoDirection::In,
                string: true,
                rep: true,
                immediate: false,
                port: 0x1f0
            }
        );
        // `out 0x80, eax`: size 4, out, immediate.
        let q = IoQualification::decode(0x0080_0043).unwrap();
        assert_eq!(
            (q.size, q.direction, q.immediate, q.port),
            (4, IoDirection::Out, true, 0x80)
        );
        assert_eq!(IoQualification::decode(2), Err(QualError::IoSize(2, 2)));
        assert_eq!(IoQualification::decode(7), Err(QualError::IoSize(7, 7)));
    }

    #[test]
    fn cr_access_qualification() {
        // mov cr3, rbx
        let q = CrAccessQualification::decode(0x0303);
        assert_eq!((q.cr, q.access, q.gpr), (3, CrAccessType::MovToCr, 3));
        // mov r12, cr8
        let q = CrAccessQualification::decode(0x0c18);
        assert_eq!((q.cr, q.access, q.gpr), (8, CrAccessType::MovFromCr, 12));
        assert_eq!(
            CrAccessQualification::decode(0x20).access,
            CrAccessType::Clts
        );
        // lmsw from memory with source 0x0011
        let q = CrAccessQualification::decode(0x0011_0070);
        assert_eq!(q.access, CrAccessType::Lmsw);
        assert!(q.lmsw_memory_operand);
        assert_eq!(q.lmsw_source, 0x11);
    }

    #[test]
    fn ept_violation_qualification() {
        // Write to a read-only page through a valid linear address.
        let q = EptViolationQualification::decode(0x18a);
        assert!(q.write && !q.read && !q.fetch);
        assert!(q.readable && !q.writable && !q.executable);
        assert!(q.linear_address_valid && q.translated_access);
        // Bit 8 is meaningless without bit 7.
        let q = EptViolationQualification::decode(0x101);
        assert!(q.read && !q.linear_address_valid && !q.translated_access);
        let q = EptViolationQualification::decode(1 << 12 | 1 << 16 | 1 << 13);
        assert!(q.nmi_unblocking && q.asynchronous && q.shadow_stack);
    }

    #[test]
    fn mov_dr_qualification() {
        // mov dr7, rax
        let q = MovDrQualification::decode(0x0007);
        assert_eq!((q.dr, q.direction, q.gpr), (7, DrDirection::ToDr, 0));
        // mov r9, dr6
        let q = MovDrQualification::decode(0x0916);
        assert_eq!((q.dr, q.direction, q.gpr), (6, DrDirection::FromDr, 9));
    }

    #[test]
    fn debug_and_task_switch_qualification() {
        let q = DebugQualification::decode(0x4005);
        assert_eq!(q.breakpoints, 0b0101);
        assert!(q.single_step && !q.debug_register_access && !q.rtm);
        assert!(DebugQualification::decode(0x1_2000).rtm);
        let q = TaskSwitchQualification::decode(0xc000_0028);
        assert_eq!((q.selector, q.source), (0x28, TaskSwitchSource::TaskGate));
        let q = TaskSwitchQualification::decode(0x4000_0030);
        assert_eq!(q.source, TaskSwitchSource::Iret);
        assert_eq!(
            TaskSwitchQualification::decode(0x8000_0000).source,
            TaskSwitchSource::Jmp
        );
        assert_eq!(
            TaskSwitchQualification::decode(0x8).source,
            TaskSwitchSource::Call
        );
    }
}
