//! The vCPU and VM operations a VMM sets a machine up with, against
//! `/dev/kvm`: CPUID, TSC frequency, MSRs, MP state, local APIC and irqfds.

use std::time::{Duration, Instant};

use hm_vmx::{Error, Hypervisor, IrqchipState, LapicRegisters, MpState, MsrValue, Vm};

const IA32_SYSENTER_CS: u32 = 0x174;
const IA32_SYSENTER_ESP: u32 = 0x175;
const KERNEL_GS_BASE: u32 = 0xc000_0102;
/// An index no x86 CPU or KVM implements.
const NO_SUCH_MSR: u32 = 0x0bad_0000;
const LVT_LINT0: usize = 0x350;
const LVT_LINT1: usize = 0x360;
const DELIVERY_MODE: u32 = 0b111 << 8;
const DELIVERY_EXTINT: u32 = 0b111 << 8;
const DELIVERY_NMI: u32 = 0b100 << 8;

fn vm(irqchip: bool) -> Vm {
    let mut vm = Hypervisor::open().unwrap().create_vm().unwrap();
    if irqchip {
        vm.create_irqchip().unwrap();
    }
    vm
}

#[test]
fn a_cpuid_set_is_read_back() {
    if !hm_vmx::testing::kvm_available("a_cpuid_set_is_read_back") {
        return;
    }
    let vm = vm(false);
    let vcpu = vm.create_vcpu(0).unwrap();
    let mut cpuid = vcpu.state().cpuid().unwrap();
    let leaf1 = cpuid
        .as_mut_slice()
        .iter_mut()
        .find(|e| e.function == 1)
        .unwrap();
    let ecx = leaf1.ecx ^ (1 << 31);
    leaf1.ecx = ecx;
    vcpu.state().set_cpuid(&cpuid).unwrap();
    let back = vcpu.state().cpuid().unwrap();
    let leaf1 = back.as_slice().iter().find(|e| e.function == 1).unwrap();
    assert_eq!(leaf1.ecx, ecx, "hypervisor bit flipped");
    assert_eq!(back.as_slice().len(), cpuid.as_slice().len());
}

#[test]
fn the_tsc_frequency_is_known() {
    if !hm_vmx::testing::kvm_available("the_tsc_frequency_is_known") {
        return;
    }
    let vm = vm(false);
    let vcpu = vm.create_vcpu(0).unwrap();
    let khz = vcpu.state().tsc_khz().unwrap();
    // Any x86 host of the last decades: between 100 MHz and 10 GHz.
    assert!((100_000..10_000_000).contains(&khz), "{khz} kHz");
}

#[test]
fn msrs_set_are_read_back_and_a_refused_one_is_named() {
    if !hm_vmx::testing::kvm_available("msrs_set_are_read_back_and_a_refused_one_is_named") {
        return;
    }
    let vm = vm(false);
    let vcpu = vm.create_vcpu(0).unwrap();
    let state = vcpu.state();
    let values = [
        MsrValue {
            index: IA32_SYSENTER_CS,
            value: 0x10,
        },
        MsrValue {
            index: IA32_SYSENTER_ESP,
            value: 0xffff_8000_1234_5000,
        },
        MsrValue {
            index: KERNEL_GS_BASE,
            value: 0xffff_8880_0000_0000,
        },
    ];
    state.set_msrs(&values).unwrap();
    let indices: Vec<u32> = values.iter().map(|m| m.index).collect();
    assert_eq!(state.msrs(&indices).unwrap(), values);

    // An MSR that cannot be read is left out; the ones after it are read.
    let read = state
        .msrs(&[IA32_SYSENTER_CS, NO_SUCH_MSR, KERNEL_GS_BASE])
        .unwrap();
    assert_eq!(read, [values[0], values[2]]);

    // Writing stops at the refused MSR, which the error names; the MSRs
    // before it are written.
    let err = state
        .set_msrs(&[
            MsrValue {
                index: IA32_SYSENTER_CS,
                value: 0x20,
            },
            MsrValue {
                index: NO_SUCH_MSR,
                value: 7,
            },
        ])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::MsrRefused {
                index: NO_SUCH_MSR,
                value: 7
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("0xbad0000"), "{err}");
    assert_eq!(state.msrs(&[IA32_SYSENTER_CS]).unwrap()[0].value, 0x20);
}

#[test]
fn application_processors_wait_for_init() {
    if !hm_vmx::testing::kvm_available("application_processors_wait_for_init") {
        return;
    }
    let vm = vm(true);
    let vcpus = vm.create_vcpus(2).unwrap();
    assert_eq!(vcpus[0].state().mp_state().unwrap(), MpState::Runnable);
    assert_eq!(vcpus[1].state().mp_state().unwrap(), MpState::Uninitialized);
}

#[test]
fn lint_wiring_written_to_the_local_apic_is_read_back() {
    if !hm_vmx::testing::kvm_available("lint_wiring_written_to_the_local_apic_is_read_back") {
        return;
    }
    let vm = vm(true);
    let vcpu = vm.create_vcpu(0).unwrap();
    let state = vcpu.state();
    let mut lapic = state.lapic().unwrap();
    let lint0 = (lapic.register(LVT_LINT0) & !DELIVERY_MODE) | DELIVERY_EXTINT;
    let lint1 = (lapic.register(LVT_LINT1) & !DELIVERY_MODE) | DELIVERY_NMI;
    lapic.set_register(LVT_LINT0, lint0);
    lapic.set_register(LVT_LINT1, lint1);
    state.set_lapic(&lapic).unwrap();
    let back = state.lapic().unwrap();
    assert_eq!(back.register(LVT_LINT0) & DELIVERY_MODE, DELIVERY_EXTINT);
    assert_eq!(back.register(LVT_LINT1) & DELIVERY_MODE, DELIVERY_NMI);
    assert_eq!(back.register(LVT_LINT0), lint0);
    assert_eq!(back.register(LVT_LINT1), lint1);
}

#[test]
fn without_an_irqchip_there_is_no_local_apic() {
    if !hm_vmx::testing::kvm_available("without_an_irqchip_there_is_no_local_apic") {
        return;
    }
    let vm = vm(false);
    let vcpu = vm.create_vcpu(0).unwrap();
    let err = vcpu.state().lapic().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Ioctl {
                op: "KVM_GET_LAPIC",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn an_irqfd_raises_its_line_in_the_pic() {
    if !hm_vmx::testing::kvm_available("an_irqfd_raises_its_line_in_the_pic") {
        return;
    }
    const IRQ: u32 = 4;
    let vm = vm(true);
    let _vcpu = vm.create_vcpu(0).unwrap();
    let line = vm.irqfd(IRQ).unwrap();
    let irr = |vm: &Vm| {
        let state = IrqchipState::read(vm).unwrap();
        // SAFETY: a KVM_IRQCHIP_PIC_MASTER chip holds the `pic` member.
        unsafe { state.pic_master.chip.pic.irr }
    };
    assert_eq!(irr(&vm) & (1 << IRQ), 0);
    line.write(1).unwrap();
    // KVM injects from a work queue: wait for it.
    let start = Instant::now();
    while irr(&vm) & (1 << IRQ) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "IRQ {IRQ} never reached the PIC"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn an_irqfd_needs_the_irqchip_and_a_routed_gsi() {
    if !hm_vmx::testing::kvm_available("an_irqfd_needs_the_irqchip_and_a_routed_gsi") {
        return;
    }
    let err = vm(false).irqfd(4).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Ioctl {
                op: "KVM_IRQFD",
                ..
            }
        ),
        "{err:?}"
    );
    let vm = vm(true);
    vm.irqfd(23).unwrap();
    let err = vm.irqfd(24).unwrap_err();
    assert!(matches!(err, Error::UnroutedGsi(24)), "{err:?}");
}

/// An NMI injected through the vCPU trait is pending in the vCPU's events.
#[test]
fn an_injected_nmi_is_pending() {
    if !hm_vmx::testing::kvm_available("an_injected_nmi_is_pending") {
        return;
    }
    use hm_vmx::VirtualCpu;
    let vm = vm(true);
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let before = hm_vmx::CpuState::read(vcpu.state(), &[], false).unwrap();
    assert_eq!(before.events.nmi.pending, 0);
    vcpu.inject_nmi().unwrap();
    let after = hm_vmx::CpuState::read(vcpu.state(), &[], false).unwrap();
    assert_eq!(after.events.nmi.pending, 1);
}
