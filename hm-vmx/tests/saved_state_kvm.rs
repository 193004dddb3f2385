//! A vCPU's and a VM's state written into a new VM, as a restore does,
//! against a real KVM: what the new VM reads back must be what was saved.

use hm_vmx::{ClockState, CpuState, Hypervisor, MsrValue, Vm};

/// IA32_TSC_DEADLINE.
const TSC_DEADLINE: u32 = 0x6e0;
/// The local APIC's LVT timer register (its offset in the APIC page).
const APIC_LVTT: usize = 0x320;
/// LVT timer mode bits 18:17 = 10b: TSC-deadline mode; vector 0xec.
const LVTT_TSC_DEADLINE: u32 = (0b10 << 17) | 0xec;

fn vm_with_irqchip(hv: &Hypervisor) -> Vm {
    let mut vm = hv.create_vm().unwrap();
    vm.create_irqchip().unwrap();
    vm
}

fn msr(state: &CpuState, index: u32) -> Option<u64> {
    state
        .msrs
        .iter()
        .find(|m| m.index == index)
        .map(|m| m.value)
}

/// A guest that armed its local APIC timer in TSC-deadline mode gets the
/// deadline back: KVM drops a deadline written while the APIC timer is in
/// another mode, which a fresh vCPU's is.
#[test]
fn a_tsc_deadline_survives_a_restore() {
    if !hm_vmx::testing::kvm_available("a_tsc_deadline_survives_a_restore") {
        return;
    }
    let hv = Hypervisor::open().unwrap();
    let indices = hv.saved_msr_indices().unwrap();
    assert!(indices.contains(&TSC_DEADLINE), "KVM saves no TSC deadline");
    let source = vm_with_irqchip(&hv);
    let vcpu = source.create_vcpu(0).unwrap();
    let mut state = CpuState::read(vcpu.state(), &indices, false).unwrap();
    let (_, lapic) = state.apic.as_mut().expect("an in-kernel local APIC");
    for (i, b) in LVTT_TSC_DEADLINE.to_le_bytes().into_iter().enumerate() {
        lapic.regs[APIC_LVTT + i] = b as _;
    }
    // Far in the future, so that the timer does not fire and clear it.
    let deadline = msr(&state, 0x10).unwrap() + (1 << 50);
    state.msrs.retain(|m| m.index != TSC_DEADLINE);
    state.msrs.push(MsrValue {
        index: TSC_DEADLINE,
        value: deadline,
    });

    let target = vm_with_irqchip(&hv);
    let restored = target.create_vcpu(0).unwrap();
    state.write(restored.state()).unwrap();
    let back = CpuState::read(restored.state(), &indices, false).unwrap();
    assert_eq!(msr(&back, TSC_DEADLINE), Some(deadline));
}

/// A restored VM's paravirtual clock goes on from the saved time instead
/// of starting over.
#[test]
fn the_guest_clock_goes_on_from_the_saved_time() {
    if !hm_vmx::testing::kvm_available("the_guest_clock_goes_on_from_the_saved_time") {
        return;
    }
    let hv = Hypervisor::open().unwrap();
    let source = vm_with_irqchip(&hv);
    let saved = ClockState {
        nanoseconds: ClockState::read(&source).unwrap().nanoseconds + 3_600_000_000_000,
    };
    let target = vm_with_irqchip(&hv);
    ClockState::decode(&saved.encode())
        .unwrap()
        .write(&target)
        .unwrap();
    let now = ClockState::read(&target).unwrap().nanoseconds;
    assert!(
        now >= saved.nanoseconds && now - saved.nanoseconds < 60_000_000_000,
        "set to {} ns, reads {now} ns",
        saved.nanoseconds
    );
}
