use super::*;
use proptest::prelude::*;

#[test]
fn x87_tags_classify_values() {
    let mut v = [0u8; 10];
    assert_eq!(x87_tag(&v), 1); // +0
    v[7] = 0x80;
    v[8] = 0xff;
    v[9] = 0x3f; // 1.0
    assert_eq!(x87_tag(&v), 0);
    v[7] = 0; // unnormal
    assert_eq!(x87_tag(&v), 2);
    v[8] = 0xff;
    v[9] = 0x7f; // infinity / NaN exponent
    assert_eq!(x87_tag(&v), 2);
}

proptest! {
    #[test]
    fn register_file_round_trips(
        gprs in proptest::array::uniform16(any::<u64>()),
        rip in any::<u64>(),
        rflags in any::<u64>(),
        sel in any::<u16>(),
        base in any::<u64>(),
        cr in proptest::array::uniform4(any::<u64>()),
        ftwx in any::<u8>(),
        top in 0u16..8,
        xmm0 in any::<u128>(),
    ) {
        let mut regs = Regs::default();
        let mut sregs = Sregs::default();
        let mut fpu = Fpu::default();
        [regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rsp, regs.rbp,
         regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15] = gprs;
        regs.rip = rip;
        regs.rflags = rflags;
        sregs.cs.selector = sel;
        sregs.cs.base = base;
        sregs.cs.type_ = 0xb;
        sregs.cs.present = 1;
        [sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer] = cr;
        fpu.ftwx = ftwx;
        fpu.fsw = top << 11;
        fpu.xmm[0] = xmm0.to_le_bytes();
        fpu.fpr[3][..10].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 0x80, 0xff, 0x3f]);
        let r = to_registers(&regs, &sregs, &fpu);
        prop_assert_eq!(r.cs.selector, sel);
        let (mut regs2, mut sregs2, mut fpu2) = (Regs::default(), sregs, Fpu::default());
        from_registers(&r, &mut regs2, &mut sregs2, &mut fpu2);
        prop_assert_eq!(regs2, regs);
        prop_assert_eq!(sregs2, sregs);
        prop_assert!(fpu_eq(&fpu2, &fpu));
    }
}
