//! What a Linux guest expects from a minimal VMM beyond the in-kernel
//! interrupt controllers and PIT (which `hm-vmx` creates): COM1 on IRQ 4, a
//! guest CPUID that says "KVM", the MSRs Linux reads at boot, and the local
//! APIC's LINT pins wired as on a PC.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_cpuid_entry2, kvm_msr_entry};
use kvm_ioctls::{VcpuFd, VmFd};

use vmm_sys_util::eventfd::EventFd;

use super::error::{Error, Result, kvm};
use crate::devices::IrqLine;

/// CPUID.1:ECX bit 31: running under a hypervisor.
const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
/// The KVM signature leaf.
const KVM_SIGNATURE_LEAF: u32 = 0x4000_0000;
/// The hypervisor timing leaf (TSC and local APIC bus frequency in kHz).
const TIMING_LEAF: u32 = 0x4000_0010;
/// KVM's local APIC timer runs at 1 GHz.
const LAPIC_BUS_KHZ: u32 = 1_000_000;

/// MSRs Linux reads or expects in a defined state at boot, with the values
/// a freshly reset PC gives them.
pub const BOOT_MSRS: &[(u32, u64)] = &[
    (0x174, 0),             // IA32_SYSENTER_CS
    (0x175, 0),             // IA32_SYSENTER_ESP
    (0x176, 0),             // IA32_SYSENTER_EIP
    (0xc000_0081, 0),       // STAR
    (0xc000_0082, 0),       // LSTAR
    (0xc000_0083, 0),       // CSTAR
    (0xc000_0084, 0),       // SFMASK
    (0xc000_0102, 0),       // KERNEL_GS_BASE
    (0x10, 0),              // IA32_TSC
    (0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
    (0x2ff, (1 << 11) | 6), // MTRRdefType: MTRRs on, default write-back
];

/// The ISA IRQ of COM1.
pub const COM1_IRQ: u32 = 4;

/// An interrupt line for COM1: an eventfd KVM turns into IRQ 4 of the
/// in-kernel PIC and I/O APIC (the VM must have its irqchip).
pub fn uart_irq(vm: &VmFd) -> Result<IrqLine> {
    let event = EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|e| Error::Machine(format!("cannot create an eventfd: {e}")))?;
    vm.register_irqfd(&event, COM1_IRQ)
        .map_err(kvm("KVM_IRQFD"))?;
    Ok(IrqLine::Irqfd(std::sync::Arc::new(event)))
}

/// Edits a vCPU's CPUID in place: sets the hypervisor bit, makes sure the
/// KVM signature leaf exists and adds the timing leaf with `tsc_khz`.
///
/// ```
/// use kvm_bindings::{CpuId, kvm_cpuid_entry2};
/// let mut cpuid = CpuId::from_entries(&[kvm_cpuid_entry2 { function: 1, ..Default::default() }]).unwrap();
/// vmm_core::boot::machine::edit_cpuid(&mut cpuid, 2_000_000)?;
/// assert!(cpuid.as_slice().iter().any(|e| e.function == 0x4000_0000 && e.ebx == 0x4b4d_564b));
/// # Ok::<(), vmm_core::boot::Error>(())
/// ```
pub fn edit_cpuid(cpuid: &mut CpuId, tsc_khz: u32) -> Result<()> {
    let mut max_hv_leaf = TIMING_LEAF;
    let mut has_signature = false;
    let mut has_timing = false;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => e.ecx |= CPUID_1_ECX_HYPERVISOR,
            KVM_SIGNATURE_LEAF => {
                has_signature = true;
                max_hv_leaf = max_hv_leaf.max(e.eax);
            }
            TIMING_LEAF => {
                has_timing = true;
                e.eax = tsc_khz;
                e.ebx = LAPIC_BUS_KHZ;
            }
            _ => {}
        }
    }
    let push = |cpuid: &mut CpuId, entry: kvm_cpuid_entry2| {
        cpuid
            .push(entry)
            .map_err(|e| Error::Machine(format!("guest CPUID is full: {e:?}")))
    };
    if !has_signature {
        push(
            cpuid,
            kvm_cpuid_entry2 {
                function: KVM_SIGNATURE_LEAF,
                eax: max_hv_leaf,
                ebx: u32::from_le_bytes(*b"KVMK"),
                ecx: u32::from_le_bytes(*b"VMKV"),
                edx: u32::from_le_bytes(*b"M\0\0\0"),
                ..Default::default()
            },
        )?;
    }
    for e in cpuid.as_mut_slice() {
        if e.function == KVM_SIGNATURE_LEAF {
            e.eax = max_hv_leaf;
        }
    }
    if !has_timing {
        push(
            cpuid,
            kvm_cpuid_entry2 {
                function: TIMING_LEAF,
                eax: tsc_khz,
                ebx: LAPIC_BUS_KHZ,
                ..Default::default()
            },
        )?;
    }
    Ok(())
}

/// Gives a vCPU the boot CPUID (its current CPUID edited by
/// [`edit_cpuid`] with its TSC frequency) and the [`BOOT_MSRS`].
pub fn configure_vcpu(vcpu: &VcpuFd) -> Result<()> {
    let tsc_khz = vcpu.get_tsc_khz().map_err(kvm("KVM_GET_TSC_KHZ"))?;
    let mut cpuid = vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("KVM_GET_CPUID2"))?;
    edit_cpuid(&mut cpuid, tsc_khz)?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
    let entries: Vec<kvm_msr_entry> = BOOT_MSRS
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries)
        .map_err(|e| Error::Machine(format!("boot MSR list: {e:?}")))?;
    let written = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if let Some(&(index, _)) = BOOT_MSRS.get(written) {
        return Err(Error::Machine(format!(
            "KVM refused boot MSR {index:#x} ({written} of {} set)",
            BOOT_MSRS.len()
        )));
    }
    Ok(())
}

/// Wires a vCPU's local APIC as a PC does: LINT0 takes the PIC's ExtINT,
/// LINT1 takes NMI. Needs the in-kernel irqchip.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<()> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const DELIVERY_EXTINT: u32 = 0b111 << 8;
    const DELIVERY_NMI: u32 = 0b100 << 8;
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    for (offset, mode) in [(LVT_LINT0, DELIVERY_EXTINT), (LVT_LINT1, DELIVERY_NMI)] {
        let reg = &mut lapic.regs[offset..offset + 4];
        let bytes: [u8; 4] = [reg[0] as u8, reg[1] as u8, reg[2] as u8, reg[3] as u8];
        let value = (u32::from_le_bytes(bytes) & !0x700) | mode;
        for (dst, src) in reg.iter_mut().zip(value.to_le_bytes()) {
            *dst = src as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(cpuid: &CpuId, function: u32) -> Option<kvm_cpuid_entry2> {
        cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function)
            .copied()
    }

    #[test]
    fn cpuid_gains_hypervisor_bit_and_leaves() {
        let mut cpuid = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: 1,
            ecx: 1,
            ..Default::default()
        }])
        .unwrap();
        edit_cpuid(&mut cpuid, 1_234_567).unwrap();
        assert_eq!(leaf(&cpuid, 1).unwrap().ecx, 1 | CPUID_1_ECX_HYPERVISOR);
        let sig = leaf(&cpuid, KVM_SIGNATURE_LEAF).unwrap();
        assert_eq!(sig.eax, TIMING_LEAF);
        let name: Vec<u8> = [sig.ebx, sig.ecx, sig.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        assert_eq!(&name[..9], b"KVMKVMKVM");
        let timing = leaf(&cpuid, TIMING_LEAF).unwrap();
        assert_eq!((timing.eax, timing.ebx), (1_234_567, LAPIC_BUS_KHZ));
    }

    #[test]
    fn existing_kvm_leaves_are_kept() {
        let mut cpuid = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: KVM_SIGNATURE_LEAF,
            eax: 0x4000_0001,
            ebx: 7,
            ..Default::default()
        }])
        .unwrap();
        edit_cpuid(&mut cpuid, 1000).unwrap();
        let sig = leaf(&cpuid, KVM_SIGNATURE_LEAF).unwrap();
        assert_eq!((sig.eax, sig.ebx), (TIMING_LEAF, 7));
        assert_eq!(
            cpuid
                .as_slice()
                .iter()
                .filter(|e| e.function == KVM_SIGNATURE_LEAF)
                .count(),
            1
        );
    }
}
