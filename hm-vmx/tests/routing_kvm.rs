//! MSI routes, irqfds on MSI GSIs and ioeventfds against `/dev/kvm`.

use std::time::{Duration, Instant};

use hm_vmx::{Error, FIRST_MSI_GSI, Hypervisor, LapicRegisters, Vcpu, Vm};
use vmm_sys_util::eventfd::EventFd;

/// The local APIC's spurious-interrupt vector register (bit 8: enabled).
const APIC_SVR: usize = 0xf0;
/// The interrupt request register: eight 32-bit words, 16 bytes apart.
const APIC_IRR: usize = 0x200;
/// An MSI to APIC 0, fixed delivery, edge.
const MSI_ADDRESS: u64 = 0xfee0_0000;

fn vm_with_cpu() -> (Vm, Vcpu) {
    let mut vm = Hypervisor::open().unwrap().create_vm().unwrap();
    vm.create_irqchip().unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    // A software-disabled local APIC drops fixed interrupts.
    let mut lapic = vcpu.state().lapic().unwrap();
    lapic.set_register(APIC_SVR, 0x1ff);
    vcpu.state().set_lapic(&lapic).unwrap();
    (vm, vcpu)
}

fn irr_has(vcpu: &Vcpu, vector: u32) -> bool {
    let lapic = vcpu.state().lapic().unwrap();
    let word = lapic.register(APIC_IRR + 0x10 * (vector as usize / 32));
    word & (1 << (vector % 32)) != 0
}

/// Waits up to a second for `vector` to be requested (KVM injects irqfds
/// from a work queue).
fn requested_soon(vcpu: &Vcpu, vector: u32) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        if irr_has(vcpu, vector) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[test]
fn an_irqfd_on_a_routed_msi_gsi_requests_the_vector() {
    if !hm_vmx::testing::kvm_available("an_irqfd_on_a_routed_msi_gsi_requests_the_vector") {
        return;
    }
    let (vm, vcpu) = vm_with_cpu();
    let gsi = vm.allocate_msi_gsi().unwrap();
    assert_eq!(gsi, FIRST_MSI_GSI);
    let line = vm.irqfd(gsi).unwrap();
    // No route yet: the write interrupts nothing.
    line.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(!irr_has(&vcpu, 0x41));
    vm.set_msi_route(gsi, MSI_ADDRESS, 0x41).unwrap();
    assert_eq!(vm.msi_route(gsi).unwrap().data, 0x41);
    line.write(1).unwrap();
    assert!(requested_soon(&vcpu, 0x41), "vector 0x41 never requested");
    // Re-routed to another vector: the next write requests that one.
    vm.set_msi_route(gsi, MSI_ADDRESS, 0x52).unwrap();
    line.write(1).unwrap();
    assert!(requested_soon(&vcpu, 0x52), "vector 0x52 never requested");
    // The legacy routes survive the rewritten table: GSI 4 still reaches
    // the IOAPIC and PIC through a fresh irqfd.
    vm.irqfd(4).unwrap();
}

#[test]
fn a_removed_route_interrupts_nothing() {
    if !hm_vmx::testing::kvm_available("a_removed_route_interrupts_nothing") {
        return;
    }
    let (vm, vcpu) = vm_with_cpu();
    let gsi = vm.allocate_msi_gsi().unwrap();
    let line = vm.irqfd(gsi).unwrap();
    vm.set_msi_route(gsi, MSI_ADDRESS, 0x61).unwrap();
    vm.remove_msi_route(gsi).unwrap();
    assert_eq!(vm.msi_route(gsi), None);
    line.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(!irr_has(&vcpu, 0x61));
}

#[test]
fn msi_gsis_must_be_allocated_and_are_reused_once_freed() {
    if !hm_vmx::testing::kvm_available("msi_gsis_must_be_allocated_and_are_reused_once_freed") {
        return;
    }
    let (vm, _vcpu) = vm_with_cpu();
    assert!(matches!(
        vm.irqfd(FIRST_MSI_GSI),
        Err(Error::UnroutedGsi(24))
    ));
    assert!(matches!(
        vm.set_msi_route(30, MSI_ADDRESS, 0x30),
        Err(Error::UnroutedGsi(30))
    ));
    let a = vm.allocate_msi_gsi().unwrap();
    let b = vm.allocate_msi_gsi().unwrap();
    assert_eq!((a, b), (24, 25));
    let line = vm.irqfd(a).unwrap();
    vm.set_msi_route(a, MSI_ADDRESS, 0x30).unwrap();
    vm.remove_irqfd(a, &line).unwrap();
    vm.free_msi_gsi(a).unwrap();
    assert!(matches!(vm.irqfd(a), Err(Error::UnroutedGsi(24))));
    assert!(matches!(vm.free_msi_gsi(a), Err(Error::UnroutedGsi(24))));
    assert_eq!(vm.allocate_msi_gsi().unwrap(), a);
}

#[test]
fn ioeventfds_register_once_and_unregister() {
    if !hm_vmx::testing::kvm_available("ioeventfds_register_once_and_unregister") {
        return;
    }
    let (vm, _vcpu) = vm_with_cpu();
    let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    vm.register_ioeventfd(0xc000_3000, &event).unwrap();
    // KVM refuses the same address and eventfd twice.
    let twice = vm.register_ioeventfd(0xc000_3000, &event).unwrap_err();
    assert!(
        matches!(
            twice,
            Error::Ioctl {
                op: "KVM_IOEVENTFD",
                ..
            }
        ),
        "{twice:?}"
    );
    vm.unregister_ioeventfd(0xc000_3000, &event).unwrap();
    // Gone: a second unregister finds nothing, a new register succeeds.
    assert!(vm.unregister_ioeventfd(0xc000_3000, &event).is_err());
    vm.register_ioeventfd(0xc000_3000, &event).unwrap();
}

#[test]
fn a_level_line_is_pending_in_the_ioapic_while_asserted() {
    if !hm_vmx::testing::kvm_available("a_level_line_is_pending_in_the_ioapic_while_asserted") {
        return;
    }
    let (vm, _vcpu) = vm_with_cpu();
    let irr = |vm: &Vm| {
        let state = hm_vmx::IrqchipState::read(vm).unwrap();
        // SAFETY: a KVM_IRQCHIP_IOAPIC chip holds the `ioapic` member.
        unsafe { state.ioapic.chip.ioapic.irr }
    };
    vm.set_irq_line(17, true).unwrap();
    assert_ne!(irr(&vm) & (1 << 17), 0);
    vm.set_irq_line(17, false).unwrap();
    assert_eq!(irr(&vm) & (1 << 17), 0);
    assert!(matches!(
        vm.set_irq_line(24, true),
        Err(Error::UnroutedGsi(24))
    ));
}
