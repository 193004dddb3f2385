use super::*;

fn sample() -> CpuState {
    let mut s = CpuState {
        regs: Regs::default(),
        sregs: Sregs::default(),
        fpu: Fpu::default(),
        debug_regs: DebugRegs::default(),
        xcrs: None,
        events: kvm_vcpu_events::default(),
        msrs: vec![
            MsrValue {
                index: 0x10,
                value: 0x1234_5678_9abc,
            },
            MsrValue {
                index: 0xc000_0080,
                value: 0x500,
            },
        ],
        apic: Some((kvm_mp_state { mp_state: 3 }, kvm_lapic_state::default())),
    };
    s.regs.rip = 0xfff0;
    s.regs.rax = 0xdead_beef;
    s.sregs.cr0 = 0x11;
    s.debug_regs.dr7 = 0x400;
    s.fpu.fcw = 0x37f;
    s.fpu.mxcsr = 0x1f80;
    s.fpu.xmm[3][5] = 9;
    s.fpu.last_dp = 77;
    s.events.nmi.pending = 1;
    if let Some((_, lapic)) = &mut s.apic {
        lapic.regs[0x20] = 7;
    }
    s
}

#[test]
fn cpu_state_round_trips() {
    let s = sample();
    let d = CpuState::decode(&s.encode()).unwrap();
    assert_eq!(d.regs.rip, 0xfff0);
    assert_eq!(d.regs.rax, 0xdead_beef);
    assert_eq!(d.sregs.cr0, 0x11);
    assert_eq!(d.debug_regs.dr7, 0x400);
    assert_eq!(
        (d.fpu.fcw, d.fpu.mxcsr, d.fpu.xmm[3][5], d.fpu.last_dp),
        (0x37f, 0x1f80, 9, 77)
    );
    assert_eq!(d.events.nmi.pending, 1);
    assert_eq!(d.msrs, s.msrs);
    let (mp, lapic) = d.apic.unwrap();
    assert_eq!(mp.mp_state, 3);
    assert_eq!(lapic.regs[0x20], 7);
    assert_eq!(d.encode(), s.encode());
}

#[test]
fn damaged_cpu_state_is_refused() {
    let blob = sample().encode();
    for cut in [1, 3, 5, 100, blob.len() - 1] {
        assert!(CpuState::decode(&blob[..cut]).is_err(), "cut at {cut}");
    }
    // A section whose size does not match KVM's layout.
    let mut wrong = Vec::new();
    put_section(&mut wrong, TAG_REGS, &[0; 8]);
    let err = CpuState::decode(&wrong).unwrap_err().to_string();
    assert!(err.contains("general registers"), "{err}");
    // A missing section.
    let mut partial = Vec::new();
    put(&mut partial, TAG_REGS, &Regs::default());
    assert!(CpuState::decode(&partial).is_err());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn encoding_round_trips(
        rip: u64,
        cr3: u64,
        mxcsr: u32,
        msrs in proptest::collection::vec((proptest::prelude::any::<u32>(), proptest::prelude::any::<u64>()), 0..80),
        apic: bool,
    ) {
        let mut s = sample();
        s.regs.rip = rip;
        s.sregs.cr3 = cr3;
        s.fpu.mxcsr = mxcsr;
        s.msrs = msrs.iter().map(|&(index, value)| MsrValue { index, value }).collect();
        if !apic {
            s.apic = None;
        }
        let d = CpuState::decode(&s.encode()).unwrap();
        proptest::prop_assert_eq!(d.encode(), s.encode());
        proptest::prop_assert_eq!((d.regs.rip, d.sregs.cr3, d.fpu.mxcsr), (rip, cr3, mxcsr));
        proptest::prop_assert_eq!(d.msrs, s.msrs);
        proptest::prop_assert_eq!(d.apic.is_some(), apic);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        let _ = CpuState::decode(&bytes);
        let _ = IrqchipState::decode(&bytes);
        let _ = PitState::decode(&bytes);
    }
}
