//! Between KVM's register layouts and the debugger's.

use dbgf::debugger::{FpuRegs, Registers, Segment};
use hm_vmx::{Fpu, Regs, Segment as KvmSegment, Sregs};

pub(super) fn to_segment(s: &KvmSegment) -> Segment {
    Segment {
        selector: s.selector,
        base: s.base,
        limit: s.limit,
        long: s.l != 0,
        default_big: s.db != 0,
    }
}

pub(super) fn from_segment(s: &Segment, k: &mut KvmSegment) {
    k.selector = s.selector;
    k.base = s.base;
    k.limit = s.limit;
    k.l = u8::from(s.long);
    k.db = u8::from(s.default_big);
}

/// KVM's register layouts to the debugger's register file.
pub(super) fn to_registers(regs: &Regs, sregs: &Sregs, fpu: &Fpu) -> Registers {
    Registers {
        rax: regs.rax,
        rbx: regs.rbx,
        rcx: regs.rcx,
        rdx: regs.rdx,
        rsi: regs.rsi,
        rdi: regs.rdi,
        rsp: regs.rsp,
        rbp: regs.rbp,
        r8: regs.r8,
        r9: regs.r9,
        r10: regs.r10,
        r11: regs.r11,
        r12: regs.r12,
        r13: regs.r13,
        r14: regs.r14,
        r15: regs.r15,
        rip: regs.rip,
        rflags: regs.rflags,
        cs: to_segment(&sregs.cs),
        ss: to_segment(&sregs.ss),
        ds: to_segment(&sregs.ds),
        es: to_segment(&sregs.es),
        fs: to_segment(&sregs.fs),
        gs: to_segment(&sregs.gs),
        cr0: sregs.cr0,
        cr2: sregs.cr2,
        cr3: sregs.cr3,
        cr4: sregs.cr4,
        efer: sregs.efer,
        fpu: to_fpu_regs(fpu),
    }
}

/// The debugger's register file back into KVM's layouts (segment attributes
/// the register file does not carry are kept).
pub(super) fn from_registers(r: &Registers, regs: &mut Regs, sregs: &mut Sregs, fpu: &mut Fpu) {
    *regs = Regs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    };
    for (s, k) in [
        (&r.cs, &mut sregs.cs),
        (&r.ss, &mut sregs.ss),
        (&r.ds, &mut sregs.ds),
        (&r.es, &mut sregs.es),
        (&r.fs, &mut sregs.fs),
        (&r.gs, &mut sregs.gs),
    ] {
        from_segment(s, k);
    }
    sregs.cr0 = r.cr0;
    sregs.cr2 = r.cr2;
    sregs.cr3 = r.cr3;
    sregs.cr4 = r.cr4;
    sregs.efer = r.efer;
    from_fpu_regs(&r.fpu, fpu);
}

/// Tag of one x87 register in the full tag word: 0 valid, 1 zero, 2 special.
pub(super) fn x87_tag(value: &[u8]) -> u16 {
    let mantissa = u64::from_le_bytes(value[..8].try_into().unwrap_or([0; 8]));
    let exponent = u16::from_le_bytes([value[8], value[9]]) & 0x7fff;
    match exponent {
        0 if mantissa == 0 => 1,
        0 | 0x7fff => 2,
        _ if mantissa >> 63 == 0 => 2,
        _ => 0,
    }
}

/// `kvm_fpu` (stack-ordered ST registers, abridged tag byte) to [`FpuRegs`].
pub(super) fn to_fpu_regs(fpu: &Fpu) -> FpuRegs {
    let top = usize::from((fpu.fsw >> 11) & 7);
    let mut st = [[0u8; 10]; 8];
    for (out, reg) in st.iter_mut().zip(&fpu.fpr) {
        out.copy_from_slice(&reg[..10]);
    }
    let mut ftw = 0u16;
    for phys in 0..8 {
        let tag = if fpu.ftwx & (1 << phys) == 0 {
            3
        } else {
            x87_tag(&st[(phys + 8 - top) % 8])
        };
        ftw |= tag << (2 * phys);
    }
    let mut xmm = [0u128; 16];
    for (out, reg) in xmm.iter_mut().zip(&fpu.xmm) {
        *out = u128::from_le_bytes(*reg);
    }
    FpuRegs {
        st,
        fcw: fpu.fcw,
        fsw: fpu.fsw,
        ftw,
        fop: fpu.last_opcode,
        fip: fpu.last_ip,
        fdp: fpu.last_dp,
        xmm,
        mxcsr: fpu.mxcsr,
    }
}

pub(super) fn from_fpu_regs(r: &FpuRegs, fpu: &mut Fpu) {
    for (reg, st) in fpu.fpr.iter_mut().zip(&r.st) {
        reg[..10].copy_from_slice(st);
    }
    fpu.fcw = r.fcw;
    fpu.fsw = r.fsw;
    fpu.ftwx = (0..8).fold(0u8, |acc, phys| {
        let empty = (r.ftw >> (2 * phys)) & 3 == 3;
        acc | (u8::from(!empty) << phys)
    });
    fpu.last_opcode = r.fop;
    fpu.last_ip = r.fip;
    fpu.last_dp = r.fdp;
    for (reg, x) in fpu.xmm.iter_mut().zip(&r.xmm) {
        *reg = x.to_le_bytes();
    }
    fpu.mxcsr = r.mxcsr;
}

pub(super) fn fpu_eq(a: &Fpu, b: &Fpu) -> bool {
    a.fpr == b.fpr
        && a.fcw == b.fcw
        && a.fsw == b.fsw
        && a.ftwx == b.ftwx
        && a.last_opcode == b.last_opcode
        && a.last_ip == b.last_ip
        && a.last_dp == b.last_dp
        && a.xmm == b.xmm
        && a.mxcsr == b.mxcsr
}

#[cfg(test)]
mod tests;
