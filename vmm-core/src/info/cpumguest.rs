//! `cpumguest`: a vCPU's guest register state, in the spirit of VirtualBox's
//! `info cpumguest`.

use std::fmt::{self, Write};

use hm_vmx::{DebugRegs, DescriptorTable, Regs, SegmentLine, Sregs};

/// Writes general, control, segment, descriptor-table and debug registers
/// and EFER of one vCPU.
pub(crate) fn write_cpumguest(
    cpu: u32,
    regs: &Regs,
    sregs: &Sregs,
    debug: &DebugRegs,
    out: &mut dyn Write,
) -> fmt::Result {
    writeln!(out, "Guest CPUM (VCPU {cpu}) state:")?;
    let gprs = [
        ("rax", regs.rax),
        ("rbx", regs.rbx),
        ("rcx", regs.rcx),
        ("rdx", regs.rdx),
        ("rsi", regs.rsi),
        ("rdi", regs.rdi),
        ("r8", regs.r8),
        ("r9", regs.r9),
        ("r10", regs.r10),
        ("r11", regs.r11),
        ("r12", regs.r12),
        ("r13", regs.r13),
        ("r14", regs.r14),
        ("r15", regs.r15),
        ("rip", regs.rip),
        ("rsp", regs.rsp),
        ("rbp", regs.rbp),
        ("rflags", regs.rflags),
    ];
    for row in gprs.chunks(3) {
        let line: Vec<String> = row
            .iter()
            .map(|(n, v)| format!("{n:>6}={v:016x}"))
            .collect();
        writeln!(out, "{}", line.join(" "))?;
    }
    let segments = [
        ("cs", &sregs.cs),
        ("ds", &sregs.ds),
        ("es", &sregs.es),
        ("fs", &sregs.fs),
        ("gs", &sregs.gs),
        ("ss", &sregs.ss),
        ("tr", &sregs.tr),
        ("ldtr", &sregs.ldt),
    ];
    for (name, seg) in segments {
        writeln!(out, "  {}", SegmentLine(name, seg))?;
    }
    write_table(out, "gdtr", &sregs.gdt)?;
    write_table(out, "idtr", &sregs.idt)?;
    writeln!(
        out,
        "   cr0={:016x}    cr2={:016x}    cr3={:016x}",
        sregs.cr0, sregs.cr2, sregs.cr3
    )?;
    writeln!(
        out,
        "   cr4={:016x}    cr8={:016x}   efer={:016x}",
        sregs.cr4, sregs.cr8, sregs.efer
    )?;
    writeln!(
        out,
        "   dr0={:016x}    dr1={:016x}    dr2={:016x}",
        debug.db[0], debug.db[1], debug.db[2]
    )?;
    writeln!(
        out,
        "   dr3={:016x}    dr6={:016x}    dr7={:016x}",
        debug.db[3], debug.dr6, debug.dr7
    )?;
    writeln!(out, "  apic_base={:016x}", sregs.apic_base)
}

fn write_table(out: &mut dyn Write, name: &str, t: &DescriptorTable) -> fmt::Result {
    writeln!(out, "{name:>6}: base={:016x} limit={:04x}", t.base, t.limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_every_register_group() {
        let regs = Regs {
            rip: 0xfff0,
            rflags: 2,
            ..Default::default()
        };
        let mut sregs = Sregs {
            cr0: 0x6000_0010,
            efer: 0x500,
            ..Default::default()
        };
        sregs.cs.selector = 0xf000;
        sregs.cs.base = 0xffff_0000;
        let debug = DebugRegs {
            dr7: 0x400,
            ..Default::default()
        };
        let mut out = String::new();
        write_cpumguest(1, &regs, &sregs, &debug, &mut out).unwrap();
        assert!(out.starts_with("Guest CPUM (VCPU 1) state:"));
        assert!(out.contains("rip=000000000000fff0"), "{out}");
        assert!(
            out.contains("cs   sel=0xf000 base=0x00000000ffff0000"),
            "{out}"
        );
        assert!(out.contains("cr0=0000000060000010"), "{out}");
        assert!(out.contains("efer=0000000000000500"), "{out}");
        assert!(out.contains("dr7=0000000000000400"), "{out}");
        assert!(out.contains("gdtr: base="), "{out}");
    }
}
