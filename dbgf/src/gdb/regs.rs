//! Register-file conversion between [`Registers`] and gdb's x86-64 core + SSE layout.

use gdbstub_arch::x86::reg::{X86_64CoreRegs, X86SegmentRegs, X87FpuInternalRegs};

use crate::debugger::Registers;

/// gdb's view of a vCPU.
pub fn to_gdb(r: &Registers) -> X86_64CoreRegs {
    X86_64CoreRegs {
        regs: [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ],
        eflags: r.rflags as u32,
        rip: r.rip,
        segments: X86SegmentRegs {
            cs: r.cs.selector.into(),
            ss: r.ss.selector.into(),
            ds: r.ds.selector.into(),
            es: r.es.selector.into(),
            fs: r.fs.selector.into(),
            gs: r.gs.selector.into(),
        },
        st: r.fpu.st,
        fpu: X87FpuInternalRegs {
            fctrl: r.fpu.fcw.into(),
            fstat: r.fpu.fsw.into(),
            ftag: r.fpu.ftw.into(),
            fiseg: 0,
            fioff: r.fpu.fip as u32,
            foseg: 0,
            fooff: r.fpu.fdp as u32,
            fop: r.fpu.fop.into(),
        },
        xmm: r.fpu.xmm,
        mxcsr: r.fpu.mxcsr,
    }
}

/// Applies gdb's register values onto `base` (the current state). Segment writes change
/// only the selectors; hidden parts (base, limit, attributes) and control registers keep
/// their values, since gdb's x86-64 core layout does not carry them.
pub fn from_gdb(g: &X86_64CoreRegs, base: &Registers) -> Registers {
    let mut r = *base;
    let [
        rax,
        rbx,
        rcx,
        rdx,
        rsi,
        rdi,
        rbp,
        rsp,
        r8,
        r9,
        r10,
        r11,
        r12,
        r13,
        r14,
        r15,
    ] = g.regs;
    (r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp) =
        (rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp);
    (r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15) = (r8, r9, r10, r11, r12, r13, r14, r15);
    r.rip = g.rip;
    r.rflags = (base.rflags & !0xffff_ffff) | u64::from(g.eflags);
    r.cs.selector = g.segments.cs as u16;
    r.ss.selector = g.segments.ss as u16;
    r.ds.selector = g.segments.ds as u16;
    r.es.selector = g.segments.es as u16;
    r.fs.selector = g.segments.fs as u16;
    r.gs.selector = g.segments.gs as u16;
    r.fpu.st = g.st;
    r.fpu.fcw = g.fpu.fctrl as u16;
    r.fpu.fsw = g.fpu.fstat as u16;
    r.fpu.ftw = g.fpu.ftag as u16;
    r.fpu.fip = (base.fpu.fip & !0xffff_ffff) | u64::from(g.fpu.fioff);
    r.fpu.fdp = (base.fpu.fdp & !0xffff_ffff) | u64::from(g.fpu.fooff);
    r.fpu.fop = g.fpu.fop as u16;
    r.fpu.xmm = g.xmm;
    r.fpu.mxcsr = g.mxcsr;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_trip_keeps_every_gdb_visible_field(
            gprs in proptest::array::uniform16(any::<u64>()),
            rip in any::<u64>(), rflags in any::<u32>(), sel in any::<u16>(),
            xmm0 in any::<u128>(), mxcsr in any::<u32>(), fcw in any::<u16>(),
        ) {
            let mut r = Registers { rip, rflags: rflags.into(), cr3: 0x1234, ..Default::default() };
            [r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp,
             r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15] = gprs;
            r.ss.selector = sel;
            r.cs.base = 0xabc;
            r.fpu.xmm[0] = xmm0;
            r.fpu.mxcsr = mxcsr;
            r.fpu.fcw = fcw;
            let g = to_gdb(&r);
            prop_assert_eq!(g.regs[1], r.rbx);
            prop_assert_eq!(g.regs[7], r.rsp);
            prop_assert_eq!(from_gdb(&g, &r), r);
            let mut g2 = g.clone();
            g2.regs[0] = !r.rax;
            g2.segments.cs = 0x10;
            let w = from_gdb(&g2, &r);
            prop_assert_eq!(w.rax, !r.rax);
            prop_assert_eq!(w.cs.selector, 0x10);
            prop_assert_eq!(w.cs.base, 0xabc);
            prop_assert_eq!(w.cr3, 0x1234);
        }
    }
}
