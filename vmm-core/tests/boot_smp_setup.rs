//! The boot machine for several vCPUs: the bootstrap processor is put at
//! the kernel's entry, the others stay in reset waiting for INIT/SIPI, every
//! vCPU gets the boot CPUID, and the MP table lists them all.

use hm_vmx::{LapicRegisters, MpState};
use vm_memory::{Bytes, GuestAddress};
use vmm_core::boot::layout::{MP_CONFIG_ADDR, ZERO_PAGE_ADDR};
use vmm_core::boot::{Entry, KernelBoot, direct};
use vmm_core::guests::test_kernel;
use vmm_core::memory::GuestMemoryMap;

#[test]
fn two_vcpus_get_the_boot_machine() {
    if !hm_vmx::testing::kvm_available(module_path!()) {
        return;
    }
    let ram = 64 << 20;
    let hv = hm_vmx::Hypervisor::open().unwrap();
    let mut vm = hv.create_vm().unwrap();
    let memory = GuestMemoryMap::new(
        ram,
        &[0xf4; 4096],
        2,
        &stam::Registry::new(),
        &dbgf::InfoRegistry::new(),
    )
    .unwrap();
    memory.map_into(&vm).unwrap();
    vm.create_irqchip().unwrap();
    let vcpus = vm.create_vcpus(2).unwrap();
    let boot = KernelBoot {
        kernel: test_kernel::build().unwrap(),
        initrd: Some(vec![9; 300]),
        cmdline: "console=ttyS0".into(),
    };
    let plan = direct::plan(&boot, &direct::ram_ranges(memory.ram()), true).unwrap();
    let loaded = direct::after_vcpus(&boot, &plan, memory.ram(), &vcpus).unwrap();

    let Entry::Long64 { rip, boot_params } = loaded.entry else {
        panic!("a bzImage is entered in long mode");
    };
    let bsp = vcpus[0].state().regs().unwrap();
    assert_eq!((bsp.rip, bsp.rsi), (rip, boot_params));
    assert_eq!(boot_params, ZERO_PAGE_ADDR);
    let sregs = vcpus[0].state().sregs().unwrap();
    assert_eq!(sregs.efer & 0x500, 0x500, "LME and LMA");
    assert!(sregs.cs.l == 1 && sregs.cs.selector == 0x10);

    // The application processor is still at the reset vector, waiting for
    // INIT/SIPI from the in-kernel local APIC.
    let ap = vcpus[1].state().regs().unwrap();
    assert_eq!(ap.rip, 0xfff0);
    let mp = |i: usize| vcpus[i].state().mp_state().unwrap();
    assert_eq!(mp(0), MpState::Runnable);
    assert_eq!(mp(1), MpState::Uninitialized);

    for (id, vcpu) in vcpus.iter().enumerate() {
        let cpuid = vcpu.state().cpuid().unwrap();
        let leaf = |f: u32| cpuid.as_slice().iter().find(|e| e.function == f).copied();
        let basic = leaf(1).unwrap();
        assert_ne!(basic.ecx & (1 << 31), 0, "hypervisor bit on vCPU {id}");
        assert_eq!(basic.ebx >> 24, id as u32, "APIC id kept");
        assert_eq!(leaf(0x4000_0000).unwrap().ebx, u32::from_le_bytes(*b"KVMK"));
        assert!(leaf(0x4000_0010).unwrap().eax > 0, "TSC frequency");
        // The boot MSRs (MTRRdefType: MTRRs on, write-back) and the LINT
        // wiring (LINT0 ExtINT, LINT1 NMI).
        let mtrr = vcpu.state().msrs(&[0x2ff]).unwrap();
        assert_eq!(mtrr[0].value, (1 << 11) | 6, "MTRRdefType on vCPU {id}");
        let lapic = vcpu.state().lapic().unwrap();
        assert_eq!(lapic.register(0x350) & 0x700, 0x700, "LINT0 ExtINT");
        assert_eq!(lapic.register(0x360) & 0x700, 0x400, "LINT1 NMI");
    }

    let count: u16 = memory
        .ram()
        .read_obj(GuestAddress(MP_CONFIG_ADDR + 34))
        .unwrap();
    let mut processors = 0;
    let mut at = MP_CONFIG_ADDR + 44;
    for _ in 0..count {
        let kind: u8 = memory.ram().read_obj(GuestAddress(at)).unwrap();
        at += if kind == 0 { 20 } else { 8 };
        processors += u32::from(kind == 0);
    }
    assert_eq!(processors, 2);
}
