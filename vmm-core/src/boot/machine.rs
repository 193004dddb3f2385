//! What a Linux guest expects from a minimal VMM beyond the in-kernel
//! interrupt controllers and PIT (which `hm-vmx` creates): COM1 on IRQ 4, a
//! guest CPUID that says "KVM", the MSRs Linux reads at boot, and the local
//! APIC's LINT pins wired as on a PC.

use hm_vmx::{Cpuid, CpuidEntry, LapicRegisters, MAX_CPUID_ENTRIES, MsrValue, VcpuState, Vm};

use super::error::{Error, Result};
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
pub const BOOT_MSRS: &[MsrValue] = &[
    msr(0x174, 0),             // IA32_SYSENTER_CS
    msr(0x175, 0),             // IA32_SYSENTER_ESP
    msr(0x176, 0),             // IA32_SYSENTER_EIP
    msr(0xc000_0081, 0),       // STAR
    msr(0xc000_0082, 0),       // LSTAR
    msr(0xc000_0083, 0),       // CSTAR
    msr(0xc000_0084, 0),       // SFMASK
    msr(0xc000_0102, 0),       // KERNEL_GS_BASE
    msr(0x10, 0),              // IA32_TSC
    msr(0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
    msr(0x2ff, (1 << 11) | 6), // MTRRdefType: MTRRs on, default write-back
];

const fn msr(index: u32, value: u64) -> MsrValue {
    MsrValue { index, value }
}

/// The ISA IRQ of COM1.
pub const COM1_IRQ: u32 = 4;

/// An interrupt line for COM1: an eventfd KVM turns into IRQ 4 of the
/// in-kernel PIC and I/O APIC (the VM must have its irqchip).
pub fn uart_irq(vm: &Vm) -> Result<IrqLine> {
    IrqLine::irqfd(vm, COM1_IRQ)
        .map_err(|e| Error::Machine(format!("cannot wire IRQ {COM1_IRQ} to KVM: {e}")))
}

/// The header leaf of the CPUID range `function` belongs to, grouped as
/// KVM groups them: basic (0), hypervisor (0x4000_0000, 0x4000_0100, ...),
/// extended (0x8000_0000) and Centaur (0xc000_0000). A header's EAX is the
/// highest leaf of its range.
fn range_header(function: u32) -> u32 {
    match function {
        0x4000_0000..=0x4fff_ffff => function & 0xffff_ff00,
        0xc000_0000.. => 0xc000_0000,
        _ => function & 0x8000_0000,
    }
}

/// Whether the guest can tell `entry` from a missing one. A leaf or subleaf
/// the list lacks reads as all zeros when it lies within its range, so an
/// all-zero entry says nothing; a leaf past its range's highest leaf
/// (header EAX) is never read as itself on hardware (Intel answers with
/// the highest basic leaf, AMD with zeros). Range headers always stay.
fn says_something(supported: &[CpuidEntry], entry: &CpuidEntry) -> bool {
    let header = range_header(entry.function);
    if entry.function == header {
        return true;
    }
    if [entry.eax, entry.ebx, entry.ecx, entry.edx] == [0; 4] {
        return false;
    }
    supported
        .iter()
        .find(|e| e.function == header)
        .is_none_or(|h| entry.function <= h.eax)
}

/// Builds a vCPU's boot CPUID from the leaves it was given (what
/// `KVM_GET_SUPPORTED_CPUID` offered, with its APIC id): keeps every leaf
/// and subleaf that says something (see below), sets the hypervisor bit,
/// makes sure the KVM signature leaf exists and adds the timing leaf with
/// `tsc_khz`.
///
/// KVM may offer as many leaves as a `kvm_cpuid2` can hold, most of them
/// all zeros (Debian 12's 6.1 kernel does), which leaves no room to add
/// anything. All-zero leaves read the same when absent, and leaves past
/// their range's highest leaf are never read as themselves, so both are
/// dropped; subleaves of the indexed leaves (4, 7, 0xb, 0xd, ...) keep
/// their index and flags. The result is sized for what it holds; more
/// than [`MAX_CPUID_ENTRIES`] meaningful leaves is an error.
///
/// ```
/// use hm_vmx::CpuidEntry;
/// let given = [CpuidEntry { function: 1, eax: 0x806f8, ..Default::default() }];
/// let cpuid = vmm_core::boot::machine::guest_cpuid(&given, 2_000_000)?;
/// assert!(cpuid.as_slice().iter().any(|e| e.function == 0x4000_0000 && e.ebx == 0x4b4d_564b));
/// # Ok::<(), vmm_core::boot::Error>(())
/// ```
pub fn guest_cpuid(given: &[CpuidEntry], tsc_khz: u32) -> Result<Cpuid> {
    let mut entries: Vec<CpuidEntry> = given
        .iter()
        .filter(|e| says_something(given, e) && e.function != TIMING_LEAF)
        .copied()
        .collect();
    let max_hv_leaf = entries
        .iter()
        .find(|e| e.function == KVM_SIGNATURE_LEAF)
        .map_or(TIMING_LEAF, |e| e.eax.max(TIMING_LEAF));
    for e in &mut entries {
        match e.function {
            1 => e.ecx |= CPUID_1_ECX_HYPERVISOR,
            KVM_SIGNATURE_LEAF => e.eax = max_hv_leaf,
            _ => {}
        }
    }
    if !entries.iter().any(|e| e.function == KVM_SIGNATURE_LEAF) {
        entries.push(CpuidEntry {
            function: KVM_SIGNATURE_LEAF,
            eax: max_hv_leaf,
            ebx: u32::from_le_bytes(*b"KVMK"),
            ecx: u32::from_le_bytes(*b"VMKV"),
            edx: u32::from_le_bytes(*b"M\0\0\0"),
            ..Default::default()
        });
    }
    entries.push(CpuidEntry {
        function: TIMING_LEAF,
        eax: tsc_khz,
        ebx: LAPIC_BUS_KHZ,
        ..Default::default()
    });
    Cpuid::from_entries(&entries).map_err(|e| {
        Error::Machine(format!(
            "the guest CPUID needs {} leaves, KVM takes at most {MAX_CPUID_ENTRIES}: {e:?}",
            entries.len()
        ))
    })
}

/// Gives a vCPU the boot CPUID (its current CPUID edited by
/// [`guest_cpuid`] with its TSC frequency) and the [`BOOT_MSRS`].
pub fn configure_vcpu(vcpu: &VcpuState) -> Result<()> {
    let cpuid = guest_cpuid(vcpu.cpuid()?.as_slice(), vcpu.tsc_khz()?)?;
    vcpu.set_cpuid(&cpuid)?;
    vcpu.set_msrs(BOOT_MSRS)?;
    Ok(())
}

/// Wires a vCPU's local APIC as a PC does: LINT0 takes the PIC's ExtINT,
/// LINT1 takes NMI. Needs the in-kernel irqchip.
pub fn setup_lint(vcpu: &VcpuState) -> Result<()> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const DELIVERY_MODE: u32 = 0b111 << 8;
    const DELIVERY_EXTINT: u32 = 0b111 << 8;
    const DELIVERY_NMI: u32 = 0b100 << 8;
    let mut lapic = vcpu.lapic()?;
    for (offset, mode) in [(LVT_LINT0, DELIVERY_EXTINT), (LVT_LINT1, DELIVERY_NMI)] {
        let value = (lapic.register(offset) & !DELIVERY_MODE) | mode;
        lapic.set_register(offset, value);
    }
    vcpu.set_lapic(&lapic)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(cpuid: &Cpuid, function: u32) -> Option<CpuidEntry> {
        cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function)
            .copied()
    }

    #[test]
    fn cpuid_gains_hypervisor_bit_and_leaves() {
        let given = [CpuidEntry {
            function: 1,
            ecx: 1,
            ..Default::default()
        }];
        let cpuid = guest_cpuid(&given, 1_234_567).unwrap();
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
        let given = [CpuidEntry {
            function: KVM_SIGNATURE_LEAF,
            eax: 0x4000_0001,
            ebx: 7,
            ..Default::default()
        }];
        let cpuid = guest_cpuid(&given, 1000).unwrap();
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

    /// A KVM_GET_SUPPORTED_CPUID answer shaped like a Debian 12 (6.1) host's:
    /// the leaves a guest needs among hundreds of all-zero entries (zero
    /// subleaves, zero leaves in and beyond the reported ranges), as many as
    /// KVM hands out.
    /// Leaves whose ECX input selects a subleaf (KVM flags them with
    /// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`).
    const SUBLEAF_LEAVES: &[u32] = &[
        4,
        7,
        0xb,
        0xd,
        0xf,
        0x10,
        0x12,
        0x14,
        0x17,
        0x18,
        0x1d,
        0x1e,
        0x1f,
        0x20,
        0x23,
        0x24,
        0x8000_001d,
        0x8000_0020,
        0x8000_0026,
    ];

    fn debian_6_1_table() -> Vec<CpuidEntry> {
        let entry = |function, index, regs: [u32; 4]| CpuidEntry {
            function,
            index,
            flags: if SUBLEAF_LEAVES.contains(&function) {
                1
            } else {
                0
            },
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        };
        let mut table = vec![
            entry(0, 0, [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            entry(1, 0, [0x806f8, 0x0080_0800, 0x7ffa_3223, 0x0f8b_fbff]),
            entry(4, 0, [0x121, 0x01c0_003f, 0x3f, 0]),
            entry(4, 1, [0x122, 0x01c0_003f, 0x3f, 0]),
            entry(4, 2, [0x143, 0x03c0_003f, 0x7ff, 0]),
            entry(4, 3, [0x163, 0x0380_003f, 0xffff, 4]),
            entry(7, 0, [1, 0xf1bf_07ab, 0x1b40_5f4e, 0xbc01_4410]),
            entry(0xb, 0, [0, 1, 0x100, 0]),
            entry(0xb, 1, [0, 1, 0x201, 0]),
            entry(0xd, 0, [0x2e7, 0x2a88, 0x2a88, 0]),
            entry(0xd, 1, [0x1f, 0, 0, 0]),
            entry(0xd, 2, [0x100, 0x240, 0, 0]),
            entry(
                KVM_SIGNATURE_LEAF,
                0,
                [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            ),
            entry(0x4000_0001, 0, [0x0100_7afb, 0, 0, 0]),
            entry(0x8000_0000, 0, [0x8000_0021, 0, 0, 0]),
            entry(0x8000_0001, 0, [0, 0, 0x121, 0x2c10_0800]),
            entry(0x8000_0008, 0, [0x3030, 0, 0, 0]),
        ];
        // All-zero basic and extended leaves inside the reported ranges,
        // zero subleaves of the indexed leaves, and zero leaves past the
        // maximum, until the list is as long as KVM allows.
        let fillers = (2..=0x1f)
            .map(|f| (f, 0))
            .chain((0x8000_0002..=0x8000_0021).map(|f| (f, 0)))
            .chain((3..64).map(|i| (0xd, i)))
            .chain((4..64).map(|i| (0x4, i)))
            .chain((0x20..0x40).map(|f| (f, 0)))
            .chain((0x8000_0022..0x8000_0040).map(|f| (f, 0)));
        for (function, index) in fillers {
            if table.len() == MAX_CPUID_ENTRIES {
                break;
            }
            if !table
                .iter()
                .any(|e| (e.function, e.index) == (function, index))
            {
                table.push(entry(function, index, [0; 4]));
            }
        }
        assert_eq!(table.len(), MAX_CPUID_ENTRIES);
        table
    }

    #[test]
    fn a_full_6_1_table_leaves_room_for_the_hypervisor_leaves() {
        let table = debian_6_1_table();
        let cpuid = guest_cpuid(&table, 2_000_000).unwrap();
        let timing = leaf(&cpuid, TIMING_LEAF).unwrap();
        assert_eq!((timing.eax, timing.ebx), (2_000_000, LAPIC_BUS_KHZ));
        assert_eq!(leaf(&cpuid, KVM_SIGNATURE_LEAF).unwrap().eax, TIMING_LEAF);
        // Every entry that says something is still there, subleaves too.
        for e in table
            .iter()
            .filter(|e| [e.eax, e.ebx, e.ecx, e.edx] != [0; 4])
        {
            let kept = cpuid
                .as_slice()
                .iter()
                .find(|g| (g.function, g.index) == (e.function, e.index))
                .unwrap_or_else(|| panic!("leaf {:#x}.{} lost", e.function, e.index));
            assert_eq!(kept.flags, e.flags);
            if e.function != 1 && e.function != KVM_SIGNATURE_LEAF {
                assert_eq!(
                    [kept.eax, kept.ebx, kept.ecx, kept.edx],
                    [e.eax, e.ebx, e.ecx, e.edx]
                );
            }
        }
        assert!(
            cpuid.as_slice().len() < 40,
            "{} entries",
            cpuid.as_slice().len()
        );
    }

    #[test]
    fn zero_leaves_and_leaves_past_the_range_go() {
        let entry = |function, index, eax| CpuidEntry {
            function,
            index,
            eax,
            ..Default::default()
        };
        let given = [
            entry(0, 0, 7),
            entry(5, 0, 0), // all zeros
            entry(7, 1, 3), // a subleaf
            entry(8, 0, 1), // past the basic range
            entry(0x8000_0000, 0, 0x8000_0001),
            entry(0x8000_0001, 0, 2),
            entry(0x8000_0002, 0, 5), // past the extended range
            entry(0xc000_0001, 0, 4), // a range without header: kept
        ];
        let cpuid = guest_cpuid(&given, 1).unwrap();
        let kept: Vec<(u32, u32)> = cpuid
            .as_slice()
            .iter()
            .map(|e| (e.function, e.index))
            .collect();
        assert_eq!(
            kept,
            [
                (0, 0),
                (7, 1),
                (0x8000_0000, 0),
                (0x8000_0001, 0),
                (0xc000_0001, 0),
                (KVM_SIGNATURE_LEAF, 0),
                (TIMING_LEAF, 0)
            ]
        );
    }

    #[test]
    fn too_many_meaningful_leaves_is_an_error() {
        let given: Vec<CpuidEntry> = (0..MAX_CPUID_ENTRIES as u32)
            .map(|index| CpuidEntry {
                function: 0xd,
                index,
                eax: 1,
                ..Default::default()
            })
            .collect();
        let err = guest_cpuid(&given, 1).unwrap_err().to_string();
        assert!(err.contains("258 leaves"), "{err}");
    }
}
