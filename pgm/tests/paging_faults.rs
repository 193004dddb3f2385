//! The CPU as the oracle for rights and error codes: a long-mode guest with
//! a #PF handler probes reads, writes and fetches from CPL 0 (RFLAGS.AC
//! clear and set) and CPL 3 under every mix of CR0.WP, SMEP, SMAP and NXE;
//! the walker must predict each outcome and each error code and CR2.

mod paging_support;

use iced_x86::code_asm::{CodeAssembler, cr2, dword_ptr, ecx, qword_ptr, rax, rbx};
use kvm_bindings::kvm_segment;
use kvm_ioctls::VcpuExit;
use paging_support::kvm::{Guest, GuestMem, flat_segment};
use paging_support::{Builder, Format};
use pgm::paging::{
    Access, AccessKind, P, PagingState, PhysAccess, Privilege, RW, US, WalkError, WalkOptions, XD,
    cr0, cr4, efer, translate,
};

const MEM_SIZE: u64 = 16 << 20;
/// CPL 0 probe code: read, write and fetch snippets 0x100 apart.
const CODE0: u64 = 0x1000;
/// CPL 3 probe code, on a user page.
const CODE3: u64 = 0x9000;
const GDT: u64 = 0x2000;
const IDT: u64 = 0x3000;
const HANDLERS: u64 = 0x4000;
const STACK_TOP: u64 = 0x6000;
const TSS: u64 = 0x7000;
/// Vector, error code and CR2 written by the handlers.
const RESULT: u64 = 0x8000;
const TABLES: (u64, u64) = (0x10_0000, 0x20_0000);
/// No exception was taken (the probe reached its HLT).
const NONE: u64 = 0xffff;

fn assemble(at: u64, f: impl FnOnce(&mut CodeAssembler)) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    f(&mut a);
    a.assemble(at).unwrap()
}

/// GDT, IDT, TSS, handlers and probe snippets.
fn install_system(mem: &GuestMem) {
    let gdt: [u64; 8] = [
        0,
        0,
        0x00cf_9300_0000_ffff, // 0x10 data, DPL 0
        0x00af_9b00_0000_ffff, // 0x18 code64, DPL 0
        0x00cf_f300_0000_ffff, // 0x20 data, DPL 3
        0x00af_fb00_0000_ffff, // 0x28 code64, DPL 3
        0x67 | (TSS & 0xff_ffff) << 16 | 0x89 << 40 | (TSS >> 24 & 0xff) << 56, // 0x30 TSS
        TSS >> 32,
    ];
    for (i, d) in gdt.iter().enumerate() {
        mem.write_u64(GDT + 8 * i as u64, *d).unwrap();
    }
    mem.write_u64(TSS + 4, STACK_TOP).unwrap(); // RSP0
    // #UD (vector 6), #GP (13) and #PF (14) handlers record what happened.
    for (vector, has_code) in [(6u64, false), (13, true), (14, true)] {
        let at = HANDLERS + vector * 0x40;
        let code = assemble(at, |a| {
            a.mov(rbx, RESULT).unwrap();
            if has_code {
                a.pop(rax).unwrap();
                a.mov(qword_ptr(rbx + 8), rax).unwrap();
            }
            a.mov(rax, cr2).unwrap();
            a.mov(qword_ptr(rbx + 16), rax).unwrap();
            a.mov(qword_ptr(rbx), vector as i32).unwrap();
            a.hlt().unwrap();
        });
        mem.write(at, &code).unwrap();
        let gate_lo = (at & 0xffff) | 0x18 << 16 | 0x8e << 40 | (at >> 16 & 0xffff) << 48;
        mem.write_u64(IDT + vector * 16, gate_lo).unwrap();
        mem.write_u64(IDT + vector * 16 + 8, at >> 32).unwrap();
    }
    // Probes: RAX holds the target. CPL 0 ends in HLT, CPL 3 in UD2.
    for (base, user) in [(CODE0, false), (CODE3, true)] {
        for (i, kind) in [AccessKind::Read, AccessKind::Write, AccessKind::Execute]
            .iter()
            .enumerate()
        {
            let at = base + i as u64 * 0x100;
            let code = assemble(at, |a| {
                match kind {
                    AccessKind::Read => a.mov(ecx, dword_ptr(rax)).unwrap(),
                    AccessKind::Write => a.mov(dword_ptr(rax), 0x5a5a_5a5au32).unwrap(),
                    AccessKind::Execute => a.jmp(rax).unwrap(),
                }
                if user {
                    a.ud2().unwrap()
                } else {
                    a.hlt().unwrap()
                }
            });
            mem.write(at, &code).unwrap();
        }
    }
}

/// Probe targets: (virtual page, leaf level, leaf flags, table flags).
const TARGETS: [(u64, u8, u64, u64); 11] = [
    (0x40_0000, 1, P | RW | US, P | RW | US),
    (0x40_1000, 1, P | US, P | RW | US),
    (0x40_2000, 1, P | RW, P | RW | US),
    (0x40_3000, 1, P, P | RW | US),
    (0x40_4000, 1, P | RW | US | XD, P | RW | US),
    (0x40_5000, 1, P | RW | XD, P | RW | US),
    (0x40_6000, 1, 0, P | RW | US),
    (0x40_7000, 1, P | RW | US | (1 << 51), P | RW | US),
    (0x60_0000, 2, P | RW | US, P | RW | US),
    // The page table's PDE is supervisor / read-only: it wins over the PTE.
    (0x80_0000, 1, P | RW | US, P | RW),
    (0xa0_0000, 1, P | RW | US, P | US),
];

/// Zeroes guest memory and installs the system structures.
fn prepare(g: &Guest) {
    let zeros = vec![0u8; MEM_SIZE as usize];
    g.mem.write(0, &zeros).unwrap();
    install_system(&g.mem);
}

/// Builds a complete set of page tables in table area `area` and returns
/// its root. Every configuration gets fresh tables, so no translation
/// cached (by a TLB or by KVM's shadow pages) under an earlier
/// configuration can answer for a later one.
fn build(g: &Guest, area: u64) -> u64 {
    let first = TABLES.0 + area * 0x1_0000;
    let mut b = Builder::new(&g.mem, Format::Long4, first, first + 0x1_0000);
    let sys = P | RW | US;
    for page in [CODE0, GDT, IDT, HANDLERS, 0x5000, TSS, RESULT] {
        b.map(page, page, 1, P | RW, sys).unwrap();
    }
    b.map(CODE3, CODE3, 1, P | US, sys).unwrap();
    for (i, &(va, level, flags, tflags)) in TARGETS.iter().enumerate() {
        let frame = 0x20_0000 * (level as u64 - 1) + 0x50_0000 + i as u64 * 0x1000;
        let frame = if level == 2 { 0xc0_0000 } else { frame };
        b.map(va, frame, level, flags, tflags).unwrap();
    }
    b.root
}

/// Runs one probe; returns (vector or `NONE`, error code, CR2), or `None`
/// when KVM does not take the control-register state.
fn probe(g: &mut Guest, st: &PagingState, va: u64, access: Access) -> Option<(u64, u64, u64)> {
    g.mem.write_u64(RESULT, NONE).unwrap();
    let user = access.is_user();
    let mut s = g.vcpu.get_sregs().unwrap();
    s.cs = if user {
        flat_segment(0x2b, 0xb, 3, true)
    } else {
        flat_segment(0x18, 0xb, 0, true)
    };
    s.ss = if user {
        flat_segment(0x23, 3, 3, false)
    } else {
        flat_segment(0x10, 3, 0, false)
    };
    s.ds = s.ss;
    s.es = s.ss;
    s.fs = s.ss;
    s.gs = s.ss;
    s.tr = kvm_segment {
        base: TSS,
        limit: 0x67,
        selector: 0x30,
        type_: 0xb,
        s: 0,
        l: 0,
        db: 0,
        g: 0,
        ..flat_segment(0x30, 0xb, 0, false)
    };
    s.gdt.base = GDT;
    s.gdt.limit = 8 * 8 - 1;
    s.idt.base = IDT;
    s.idt.limit = 16 * 16 - 1;
    s.cr0 = st.cr0 | 0x30;
    s.cr3 = st.cr3;
    s.cr4 = st.cr4;
    s.efer = st.efer;
    // KVM may refuse control bits its CPUID does not offer (SMEP, SMAP).
    if g.vcpu.set_sregs(&s).is_err() {
        return None;
    }
    let back = g.vcpu.get_sregs().unwrap();
    if (back.cr0 & s.cr0, back.cr4, back.efer & s.efer) != (s.cr0, s.cr4, s.efer) {
        return None;
    }
    let kind = match access.kind {
        AccessKind::Read => 0,
        AccessKind::Write => 1,
        AccessKind::Execute => 2,
    };
    let mut r = g.vcpu.get_regs().unwrap();
    r.rip = if user { CODE3 } else { CODE0 } + kind * 0x100;
    r.rax = va;
    r.rsp = STACK_TOP;
    r.rflags = if access.privilege == (Privilege::Supervisor { ac: true }) {
        0x4_0002
    } else {
        2
    };
    g.vcpu.set_regs(&r).unwrap();
    match g.vcpu.run().expect("KVM_RUN") {
        VcpuExit::Hlt => {}
        other => {
            let exit = format!("{other:?}");
            panic!("probe {va:#x} {access:?}: unexpected exit {exit}");
        }
    }
    let rd = |o| g.mem.read_u64(RESULT + o).unwrap();
    Some((rd(0), rd(8), rd(16)))
}

#[test]
fn walker_predicts_every_fault_the_cpu_raises() {
    let Some(mut g) = Guest::open(MEM_SIZE) else {
        return;
    };
    prepare(&g);
    let mut area = 0;
    let accesses = [
        Access::new(AccessKind::Read, Privilege::Supervisor { ac: false }),
        Access::new(AccessKind::Write, Privilege::Supervisor { ac: false }),
        Access::new(AccessKind::Execute, Privilege::Supervisor { ac: false }),
        Access::new(AccessKind::Read, Privilege::Supervisor { ac: true }),
        Access::new(AccessKind::Write, Privilege::Supervisor { ac: true }),
        Access::user_read(),
        Access::user_write(),
        Access::user_exec(),
    ];
    let mut faults = 0;
    let mut probes = 0;
    let mut skipped = std::collections::BTreeSet::new();
    for wp in [false, true] {
        for extra in [0, cr4::SMEP, cr4::SMAP, cr4::SMEP | cr4::SMAP] {
            for nxe in [false, true] {
                let root = build(&g, area);
                area += 1;
                let st = PagingState::new(g.features)
                    .with_cr0(cr0::PE | cr0::PG | if wp { cr0::WP } else { 0 })
                    .with_cr4(cr4::PAE | extra)
                    .with_efer(efer::LME | efer::LMA | if nxe { efer::NXE } else { 0 })
                    .with_cr3(root);
                for &(va, ..) in &TARGETS {
                    for &access in &accesses {
                        // Fetch targets hold the probe's terminator.
                        let ours = translate(&st, &g.mem, va, access, WalkOptions::default());
                        if let Ok(t) = &ours {
                            let end: &[u8] = if access.is_user() {
                                &[0x0f, 0x0b]
                            } else {
                                &[0xf4]
                            };
                            g.mem.write(t.gpa, end).unwrap();
                        }
                        let Some((vector, code, addr)) = probe(&mut g, &st, va, access) else {
                            skipped.insert(extra);
                            continue;
                        };
                        probes += 1;
                        let ctx = format!("va {va:#x} {access:?} WP={wp} CR4+{extra:#x} NXE={nxe}");
                        match ours {
                            Ok(_) => {
                                let done = if access.is_user() { 6 } else { NONE };
                                assert_eq!(
                                    vector, done,
                                    "{ctx}: CPU faulted ({code:#x}), walker allowed"
                                );
                            }
                            Err(WalkError::PageFault(pf)) => {
                                faults += 1;
                                assert_eq!(
                                    vector, 14,
                                    "{ctx}: walker says {pf}, CPU vector {vector}"
                                );
                                assert_eq!(
                                    (code, addr),
                                    (u64::from(pf.error_code), va),
                                    "{ctx}: {pf}"
                                );
                            }
                            Err(e) => panic!("{ctx}: {e}"),
                        }
                    }
                }
            }
        }
    }
    for cr4_bits in &skipped {
        eprintln!(
            "!!! KVM refused CR4 {cr4_bits:#x} (not in its CPUID): those probes were skipped !!!"
        );
    }
    eprintln!("{probes} probes, {faults} page faults, all as predicted");
    assert!(faults > 100);
}
