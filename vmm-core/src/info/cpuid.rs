//! `cpuid`: the CPUID leaves the guest sees, as each vCPU was given them.

use std::fmt::Write;

use dbgf::{InfoCall, InfoError, InfoFlags, InfoRegistry};
use hm_vmx::{Cpuid, CpuidEntry, VcpuState};

/// One leaf: function, sub-leaf index and the four output registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Leaf {
    function: u32,
    index: u32,
    regs: [u32; 4],
}

impl From<&CpuidEntry> for Leaf {
    fn from(e: &CpuidEntry) -> Self {
        Leaf {
            function: e.function,
            index: e.index,
            regs: [e.eax, e.ebx, e.ecx, e.edx],
        }
    }
}

fn leaves(cpuid: &Cpuid) -> Vec<Leaf> {
    let mut v: Vec<Leaf> = cpuid.as_slice().iter().map(Leaf::from).collect();
    v.sort_by_key(|l| (l.function, l.index));
    v
}

fn write_header(out: &mut dyn Write) -> std::fmt::Result {
    writeln!(out, "  Function/Index     EAX      EBX      ECX      EDX")
}

fn write_leaf(out: &mut dyn Write, l: &Leaf) -> std::fmt::Result {
    let [a, b, c, d] = l.regs;
    writeln!(
        out,
        "  {:08x}/{:<4x}  {a:08x} {b:08x} {c:08x} {d:08x}",
        l.function, l.index
    )
}

/// The initial APIC id a vCPU's leaves report (leaf 1 `EBX[31:24]`).
fn apic_id(own: &[Leaf]) -> Option<u32> {
    own.iter()
        .find(|l| l.function == 1 && l.index == 0)
        .map(|l| l.regs[1] >> 24)
}

/// Writes one vCPU's part: with `all`, its whole table; otherwise the leaves
/// that differ from the common table (vCPU 0 prints the common table first).
fn write_cpuid(
    out: &mut dyn Write,
    cpu: u32,
    common: &[Leaf],
    own: &[Leaf],
    all: bool,
) -> std::fmt::Result {
    if all {
        writeln!(out, "vCPU {cpu}: {} leaves", own.len())?;
        write_header(out)?;
        return own.iter().try_for_each(|l| write_leaf(out, l));
    }
    if cpu == 0 {
        writeln!(out, "CPUID leaves common to every vCPU: {}", common.len())?;
        write_header(out)?;
        common.iter().try_for_each(|l| write_leaf(out, l))?;
    }
    let differing: Vec<&Leaf> = own.iter().filter(|l| !common.contains(l)).collect();
    match apic_id(own) {
        Some(id) => writeln!(
            out,
            "vCPU {cpu}: APIC id {id}, {} leaves of its own",
            differing.len()
        )?,
        None => writeln!(out, "vCPU {cpu}: {} leaves of its own", differing.len())?,
    }
    differing.into_iter().try_for_each(|l| write_leaf(out, l))
}

/// Registers `cpuid`: runs on every EMT, each reading back the table KVM
/// holds for its vCPU. `common` is the table before per-vCPU ids.
pub(crate) fn register_cpuid_handler(
    info: &InfoRegistry,
    states: &[VcpuState],
    common: &Cpuid,
) -> Result<(), InfoError> {
    let vcpus = states.to_vec();
    let common = leaves(common);
    info.register(
        "cpuid",
        "The guest's CPUID leaves: the table common to every vCPU and each vCPU's own leaves (APIC ids). Args: 'all' prints each vCPU's whole table.",
        InfoFlags::RUN_ON_EMT | InfoFlags::ALL_EMTS,
        move |call: &InfoCall<'_>, out: &mut dyn Write| {
            let all = match call.args.trim() {
                "" => false,
                "all" => true,
                other => return Err(InfoError::BadArgs(format!("unknown argument {other:?}; expected 'all' or nothing"))),
            };
            let cpu = call.cpu.unwrap_or(0);
            let state = vcpus
                .get(cpu as usize)
                .ok_or_else(|| InfoError::BadArgs(format!("no vCPU {cpu}")))?;
            let own = leaves(&state.cpuid().map_err(|e| InfoError::Failed(e.to_string()))?);
            Ok(write_cpuid(out, cpu, &common, &own, all)?)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, ebx: u32) -> Leaf {
        Leaf {
            function,
            index,
            regs: [1, ebx, 3, 4],
        }
    }

    #[test]
    fn per_vcpu_part_lists_only_its_own_leaves() {
        let common = vec![leaf(0, 0, 0), leaf(1, 0, 0x0002_0800)];
        let own = vec![leaf(0, 0, 0), leaf(1, 0, 0x0102_0800)];
        let mut text = String::new();
        write_cpuid(&mut text, 1, &common, &own, false).unwrap();
        assert_eq!(
            text,
            "vCPU 1: APIC id 1, 1 leaves of its own\n  00000001/0     00000001 01020800 00000003 00000004\n"
        );
        let mut text = String::new();
        write_cpuid(&mut text, 0, &common, &common, false).unwrap();
        assert!(text.starts_with("CPUID leaves common to every vCPU: 2\n"));
        assert!(text.ends_with("vCPU 0: APIC id 0, 0 leaves of its own\n"));
        let mut text = String::new();
        write_cpuid(&mut text, 1, &common, &own, true).unwrap();
        assert_eq!(text.lines().count(), 4);
    }
}
