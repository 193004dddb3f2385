//! The CPU as the oracle: guests on KVM write markers through virtual
//! addresses in every paging mode, and the walker must agree with where
//! they landed, with KVM's own `KVM_TRANSLATE`, and with the accessed and
//! dirty flags the CPU set.

mod paging_support;

use iced_x86::code_asm::{CodeAssembler, dword_ptr, eax, rax};
use kvm_ioctls::VcpuExit;
use paging_support::kvm::{Guest, flat_segment};
use paging_support::{Builder, Format};
use pgm::paging::{
    A, Access, D, FlatMemory, P, PagingState, PhysAccess, RW, WalkOptions, XD, cr0, cr4, efer,
    pf_err, translate, walk,
};

/// Guest RAM size.
const MEM_SIZE: u64 = 32 << 20;
/// Guest code lives here, identity-mapped.
const CODE: u64 = 0x1000;
/// A flat GDT (32-bit code 0x08, data 0x10, 64-bit code 0x18),
/// identity-mapped.
const GDT: u64 = 0x2000;
const GDT_ENTRIES: [u64; 4] = [
    0,
    0x00cf_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x00af_9b00_0000_ffff,
];
/// Page tables are built in this range.
const TABLES: (u64, u64) = (0x10_0000, 0x20_0000);

/// Whether the tests run in the hardware-KVM lane (`cargo xtask hwkvm`),
/// whose CPU offers every mode checked here: there, a mode the host
/// refuses or a missing feature is a failure rather than a skip.
fn in_hardware_lane() -> bool {
    std::env::var("VMM_HWKVM").as_deref() == Ok("1")
}

impl Guest {
    /// Puts the vCPU into the paging mode `state` describes at CPL 0, flat
    /// segments, RIP at `CODE`. Returns whether KVM kept CR0.PG (this
    /// host's KVM drops it outside long mode).
    fn enter(&self, state: &PagingState) -> bool {
        self.try_enter(state).expect("set sregs")
    }

    /// [`Guest::enter`], with KVM's refusal of the special registers as an
    /// error.
    fn try_enter(&self, state: &PagingState) -> Result<bool, kvm_ioctls::Error> {
        let long = state.efer & efer::LMA != 0;
        let mut s = self.vcpu.get_sregs().expect("sregs");
        for (i, d) in GDT_ENTRIES.iter().enumerate() {
            self.mem.write_u64(GDT + 8 * i as u64, *d).unwrap();
        }
        s.gdt.base = GDT;
        s.gdt.limit = (GDT_ENTRIES.len() * 8 - 1) as u16;
        s.cs = flat_segment(if long { 0x18 } else { 0x08 }, 0xb, 0, long);
        s.ds = flat_segment(0x10, 3, 0, false);
        s.es = s.ds;
        s.fs = s.ds;
        s.gs = s.ds;
        s.ss = s.ds;
        s.cr0 = state.cr0 | 0x30; // ET | NE
        s.cr3 = state.cr3;
        s.cr4 = state.cr4;
        s.efer = state.efer;
        self.vcpu.set_sregs(&s)?;
        let kept = self.vcpu.get_sregs().expect("sregs").cr0 & cr0::PG != 0;
        let mut r = self.vcpu.get_regs().expect("regs");
        r.rip = CODE;
        r.rflags = 2;
        self.vcpu.set_regs(&r).expect("set regs");
        Ok(kept)
    }

    /// Runs the guest to its HLT; returns the guest-physical addresses of
    /// writes that went to unbacked memory (MMIO exits).
    fn run_to_hlt(&mut self) -> Vec<u64> {
        let mut mmio = Vec::new();
        for _ in 0..64 {
            let exit = match self.vcpu.run().expect("KVM_RUN") {
                VcpuExit::Hlt => return mmio,
                VcpuExit::MmioWrite(gpa, _) => {
                    mmio.push(gpa);
                    continue;
                }
                other => format!("{other:?}"),
            };
            panic!(
                "unexpected exit {exit}: {:x?} {:x?}",
                self.vcpu.get_regs(),
                self.vcpu.get_sregs()
            );
        }
        panic!("guest did not halt");
    }

    /// Guest code writing each marker through its virtual address, then HLT.
    fn load_code(&self, bits: u32, markers: &[(u64, u32)]) {
        let mut a = CodeAssembler::new(bits).unwrap();
        for &(va, value) in markers {
            if bits == 64 {
                a.mov(rax, va).unwrap();
                a.mov(dword_ptr(rax), value).unwrap();
            } else {
                a.mov(eax, va as u32).unwrap();
                a.mov(dword_ptr(eax), value).unwrap();
            }
        }
        a.hlt().unwrap();
        let code = a.assemble(CODE).unwrap();
        assert!(code.len() < 0x1000);
        self.mem.write(CODE, &code).unwrap();
    }

    /// What `KVM_TRANSLATE` says about `va`: the GPA, or `None`.
    fn kvm_translate(&self, va: u64) -> Option<u64> {
        let t = self.vcpu.translate_gva(va).expect("KVM_TRANSLATE");
        (t.valid != 0).then_some(t.physical_address)
    }
}

/// One paging-mode scenario.
struct Scenario {
    format: Format,
    state: PagingState,
    /// (va, gpa, leaf level, leaf flags)
    maps: Vec<(u64, u64, u8, u64)>,
    /// (va, marker) the guest writes.
    markers: Vec<(u64, u32)>,
    /// Addresses left unmapped.
    holes: Vec<u64>,
}

fn run_scenario(g: &mut Guest, sc: &Scenario) {
    g.zero(0, MEM_SIZE);
    let mut b = Builder::new(&g.mem, sc.format, TABLES.0, TABLES.1);
    let tflags = P | RW;
    b.map(CODE, CODE, 1, P | RW, tflags).expect("map code");
    b.map(GDT, GDT, 1, P | RW, tflags).expect("map GDT");
    for &(va, gpa, level, flags) in &sc.maps {
        b.map(va, gpa, level, flags, tflags).expect("map");
    }
    let state = sc.state.with_cr3(b.root);
    let tables = b.tables.clone();
    // Our own prediction of the accessed/dirty flags, on a copy of memory.
    let shadow = FlatMemory::new(TABLES.1 as usize);
    let mut buf = vec![0u8; TABLES.1 as usize];
    g.mem.read(0, &mut buf).unwrap();
    shadow.write(0, &buf).unwrap();
    let mut ad = WalkOptions::default();
    ad.update_accessed_dirty = true;
    translate(&state, &shadow, CODE, Access::supervisor_exec(), ad).unwrap();
    for &(va, _) in &sc.markers {
        translate(&state, &shadow, va, Access::supervisor_write(), ad).unwrap();
    }

    let bits = if sc.format == Format::Legacy || sc.format == Format::Pae {
        32
    } else {
        64
    };
    g.load_code(bits, &sc.markers);
    if !g.enter(&state) {
        // This host's KVM (a software layer) clears CR0.PG outside long
        // mode and shuts the guest down when it sets PG itself: there is no
        // CPU to ask. Hardware KVM runs these scenarios.
        assert!(
            !in_hardware_lane(),
            "{:?} scenario: KVM refused CR0.PG in the hardware-KVM lane",
            sc.format
        );
        eprintln!(
            "!!! SKIPPING {:?} scenario: this host's KVM refuses CR0.PG outside long mode !!!",
            sc.format
        );
        return;
    }
    let mmio = g.run_to_hlt();

    // The walks read the tables as built (with our own A/D updates), not
    // as the CPU left them: QEMU's emulated CPU in the hardware-KVM lane
    // sets the accessed flag in PAE PDPTEs, where both the SDM and the APM
    // reserve bit 5, and the walker rightly refuses such an entry.
    for &(va, value) in &sc.markers {
        let t = walk(&state, &shadow, va, Access::supervisor_write()).expect("walk");
        if t.gpa >= MEM_SIZE {
            assert!(
                mmio.contains(&t.gpa),
                "no MMIO write at {:#x} for {va:#x}: {mmio:x?}",
                t.gpa
            );
        } else {
            assert_eq!(
                g.mem.read_u32(t.gpa).unwrap(),
                value,
                "marker for {va:#x} at {:#x}",
                t.gpa
            );
        }
        assert_eq!(
            g.kvm_translate(va),
            Some(t.gpa),
            "KVM_TRANSLATE for {va:#x}"
        );
    }
    for &va in &sc.holes {
        let e = walk(&state, &shadow, va, Access::supervisor_write()).unwrap_err();
        let pf = e.page_fault().expect("page fault");
        assert_eq!(pf.error_code, pf_err::W, "hole {va:#x}: {e}");
        assert_eq!(g.kvm_translate(va), None, "KVM_TRANSLATE maps hole {va:#x}");
    }
    // The flags the CPU set must be the ones the walker sets (an extra
    // accessed flag is allowed: CPUs may set those speculatively).
    let esz = sc.format.entry_size();
    for &table in &tables {
        for off in (0..0x1000).step_by(esz as usize) {
            let read = |m: &dyn PhysAccess| {
                if esz == 4 {
                    u64::from(m.read_u32(table + off).unwrap())
                } else {
                    m.read_u64(table + off).unwrap()
                }
            };
            let (cpu, ours) = (read(&g.mem), read(&shadow));
            assert!(
                cpu == ours || cpu == ours | A,
                "entry at {:#x}: CPU {cpu:#x}, walker {ours:#x}",
                table + off
            );
        }
    }
}

fn paged(g: &Guest) -> PagingState {
    PagingState::new(g.features).with_cr0(cr0::PE | cr0::PG | cr0::WP)
}

#[test]
fn long_mode_4k_and_2m_pages() {
    let Some(mut g) = Guest::open(MEM_SIZE) else {
        return;
    };
    let st = paged(&g)
        .with_cr4(cr4::PAE)
        .with_efer(efer::LME | efer::LMA | efer::NXE);
    let sc = Scenario {
        format: Format::Long4,
        state: st,
        maps: vec![
            (0x4000_0000, 0x30_0000, 1, P | RW),
            (0x0000_7fff_ffff_f000, 0x31_2000, 1, P | RW | XD),
            (0xffff_8000_0020_0000, 0x60_0000, 2, P | RW),
            (0xffff_ffff_ffe0_0000, 0xa0_0000, 2, P | RW | D),
        ],
        markers: vec![
            (0x4000_0ffc, 0x1111_1111),
            (0x0000_7fff_ffff_f010, 0x2222_2222),
            (0xffff_8000_0031_2344, 0x3333_3333),
            (0xffff_ffff_ffe0_0008, 0x4444_4444),
        ],
        holes: vec![
            0x4000_1000,
            0x8000_0000,
            0xffff_8000_0040_0000,
            0x0000_7fff_fff0_0000,
        ],
    };
    run_scenario(&mut g, &sc);
}

#[test]
fn legacy_32bit_4k_pages() {
    let Some(mut g) = Guest::open(MEM_SIZE) else {
        return;
    };
    let sc = Scenario {
        format: Format::Legacy,
        state: paged(&g),
        maps: vec![
            (0x4000_0000, 0x30_0000, 1, P | RW),
            (0xc000_1000, 0x31_2000, 1, P | RW | D),
            (0xffff_f000, 0x1ff_f000, 1, P | RW),
            // PS is ignored without CR4.PSE: this is a page table pointer.
            (0x8000_0000, 0x40_0000, 1, P | RW),
        ],
        markers: vec![
            (0x4000_0ffc, 0x1111_1111),
            (0xc000_1234, 0x2222_2222),
            (0xffff_fff8, 0x3333_3333),
            (0x8000_0010, 0x4444_4444),
        ],
        holes: vec![0x4000_1000, 0xc000_0000, 0x0040_0000, 0xffff_e000],
    };
    run_scenario(&mut g, &sc);
}

#[test]
fn legacy_32bit_pse_4m_pages_and_pse36() {
    let Some(mut g) = Guest::open(MEM_SIZE) else {
        return;
    };
    assert!(g.features.pse36(), "KVM offers PSE-36");
    let sc = Scenario {
        format: Format::Legacy,
        state: paged(&g).with_cr4(cr4::PSE),
        maps: vec![
            (0x8000_0000, 0x80_0000, 2, P | RW),
            (0xffc0_0000, 0x140_0000, 2, P | RW),
            (0x4000_0000, 0x30_0000, 1, P | RW),
            // PSE-36: physical bit 32 comes from PDE bit 13; nothing backs
            // it, so the guest's write must exit as MMIO at that address.
            (0x4040_0000, 0x1_0040_0000, 2, P | RW),
        ],
        markers: vec![
            (0x8012_3454, 0x1111_1111),
            (0xffff_fffc, 0x2222_2222),
            (0x4000_0004, 0x3333_3333),
            (0x4050_0000, 0x4444_4444),
        ],
        holes: vec![0x8040_0000, 0x4000_1000, 0xff80_0000],
    };
    run_scenario(&mut g, &sc);
}

#[test]
fn pae_4k_and_2m_pages_in_all_four_pdptes() {
    let Some(mut g) = Guest::open(MEM_SIZE) else {
        return;
    };
    let sc = Scenario {
        format: Format::Pae,
        state: paged(&g).with_cr4(cr4::PAE).with_efer(efer::NXE),
        maps: vec![
            (0x4000_0000, 0x30_0000, 1, P | RW),
            (0x8020_0000, 0x60_0000, 2, P | RW),
            (0xc000_0000, 0x31_5000, 1, P | RW | XD),
            // Above 4 GiB: unbacked, so the write exits as MMIO.
            (0x8040_0000, 0x2_0000_0000, 2, P | RW),
        ],
        markers: vec![
            (0x4000_0ff0, 0x1111_1111),
            (0x803f_fffc, 0x2222_2222),
            (0xc000_0800, 0x3333_3333),
            (0x8041_0000, 0x4444_4444),
        ],
        holes: vec![0x4000_1000, 0x8060_0000, 0xc000_1000, 0x7fe0_0000],
    };
    run_scenario(&mut g, &sc);
}

#[test]
fn long_mode_1g_pages_when_offered() {
    let Some(mut g) = Guest::open(MEM_SIZE) else {
        return;
    };
    if !g.features.page_1gb() {
        assert!(
            !in_hardware_lane(),
            "the hardware-KVM lane's CPU offers 1 GiB pages, KVM's CPUID does not"
        );
        eprintln!("KVM's CPUID has no 1 GiB pages: covered by the in-memory tests only");
        return;
    }
    let st = paged(&g)
        .with_cr4(cr4::PAE)
        .with_efer(efer::LME | efer::LMA | efer::NXE);
    let sc = Scenario {
        format: Format::Long4,
        state: st,
        maps: vec![(0x40_0000_0000, 0, 3, P | RW)],
        markers: vec![(0x40_0080_0004, 0x1111_1111)],
        holes: vec![0x40_4000_0000],
    };
    run_scenario(&mut g, &sc);
}

#[test]
fn five_level_paging_when_offered() {
    let Some(mut g) = Guest::open(MEM_SIZE) else {
        return;
    };
    if !g.la57 {
        eprintln!("KVM's CPUID has no LA57: 5-level paging is covered by the in-memory tests only");
        return;
    }
    let st = paged(&g)
        .with_cr4(cr4::PAE | cr4::LA57)
        .with_efer(efer::LME | efer::LMA | efer::NXE);
    if let Err(e) = g.try_enter(&st) {
        // Seen on kvm_pvm: LA57 in the supported CPUID, CR4.LA57 refused.
        // Only that software layer may do so; hardware KVM must take it.
        let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
        assert!(
            pvm && !in_hardware_lane() && e.errno() == libc::EINVAL,
            "KVM offers LA57 but refuses CR4.LA57: {e}"
        );
        eprintln!(
            "kvm_pvm lists LA57 but refuses CR4.LA57 (EINVAL): 5-level paging is covered by the lane and the in-memory tests"
        );
        return;
    }
    let sc = Scenario {
        format: Format::Long5,
        state: st,
        maps: vec![
            (0xff12_3456_789a_b000, 0x30_0000, 1, P | RW),
            (0x00ab_cdef_0020_0000, 0x60_0000, 2, P | RW),
        ],
        markers: vec![
            (0xff12_3456_789a_b008, 0x1111_1111),
            (0x00ab_cdef_0031_0000, 0x2222_2222),
        ],
        holes: vec![0xff12_3456_789a_c000, 0x0001_0000_0000_0000],
    };
    run_scenario(&mut g, &sc);
}

mod random_trees {
    //! Random page-table trees written into guest memory, the walker against
    //! `KVM_TRANSLATE` for hundreds of addresses per tree, reserved bits
    //! included.

    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    const IDX4: [u64; 5] = [0, 1, 255, 256, 511];
    const IDX3: [u64; 3] = [0, 1, 511];
    const IDX2: [u64; 4] = [0, 1, 2, 511];
    const IDX1: [u64; 3] = [0, 1, 511];
    /// Bits flipped after building: present, R/W, U/S, A, D, PS, large-page
    /// reserved and address bits, MAXPHYADDR neighbours, ignored bits, XD.
    /// (Bit 8 of non-leaf entries is left alone: AMD reserves it and Intel
    /// ignores it, so the answer depends on the vendor.)
    const FLIP: [u32; 16] = [0, 1, 2, 5, 6, 7, 13, 20, 21, 29, 47, 48, 51, 52, 62, 63];

    #[derive(Debug, Clone)]
    struct Tree {
        nx: bool,
        /// (index tuple, leaf level, frame, flags)
        maps: Vec<([usize; 4], u8, u64, u64)>,
        /// (table number, entry index, bit)
        flips: Vec<(usize, u64, u32)>,
        /// (index tuple, offset in the 2 MiB region)
        queries: Vec<([usize; 4], u64)>,
    }

    fn va(idx: [usize; 4]) -> u64 {
        let raw = IDX4[idx[0]] << 39 | IDX3[idx[1]] << 30 | IDX2[idx[2]] << 21 | IDX1[idx[3]] << 12;
        (((raw << 16) as i64) >> 16) as u64
    }

    fn tuple() -> impl Strategy<Value = [usize; 4]> {
        (0..IDX4.len(), 0..IDX3.len(), 0..IDX2.len(), 0..IDX1.len())
            .prop_map(|(a, b, c, d)| [a, b, c, d])
    }

    fn tree() -> impl Strategy<Value = Tree> {
        let flags = prop::bits::u64::masked(RW | pgm::paging::US | A | D | pgm::paging::G | XD);
        // Frames inside guest RAM or anywhere below MAXPHYADDR.
        let frame = prop_oneof![0..MEM_SIZE, 0..(1u64 << 48)];
        let map = (tuple(), 1u8..=3, frame, flags);
        (
            any::<bool>(),
            prop::collection::vec(map, 1..24),
            prop::collection::vec((0..32usize, 0..4usize, 0..FLIP.len()), 0..6),
            prop::collection::vec((tuple(), 0..(2u64 << 20)), 256),
        )
            .prop_map(|(nx, maps, flips, queries)| Tree {
                nx,
                maps,
                flips: flips
                    .into_iter()
                    .map(|(t, e, b)| (t, [0, 1, 256, 511][e], FLIP[b]))
                    .collect(),
                queries,
            })
    }

    /// How many queries ended mapped, not present, and on reserved bits.
    #[derive(Default)]
    struct Seen {
        mapped: u32,
        absent: u32,
        reserved: u32,
    }

    fn check(g: &Guest, tree: &Tree, seen: &mut Seen) -> Result<(), TestCaseError> {
        g.zero(TABLES.0, TABLES.1);
        let mut b = Builder::new(&g.mem, Format::Long4, TABLES.0, TABLES.1);
        for &(idx, level, frame, flags) in &tree.maps {
            let size = Format::Long4.leaf_size(level);
            // A failed map (a large page in the way) is part of the tree's
            // shape, not an error.
            let _ = b.map(
                va(idx),
                frame & !(size - 1),
                level,
                P | flags,
                P | RW | pgm::paging::US,
            );
        }
        for &(t, e, bit) in &tree.flips {
            if let Some(&table) = b.tables.get(t) {
                let slot = table + e * 8;
                b.write(slot, b.read(slot) ^ (1u64 << bit));
            }
        }
        let efer = efer::LME | efer::LMA | if tree.nx { efer::NXE } else { 0 };
        let st = paged(g).with_cr4(cr4::PAE).with_efer(efer).with_cr3(b.root);
        prop_assert!(g.enter(&st), "long mode must be accepted");
        // Random addresses in the 2 MiB regions the indices span, plus
        // three addresses inside every mapped page.
        let near_maps = tree.maps.iter().flat_map(|&(idx, level, _, _)| {
            let size = Format::Long4.leaf_size(level);
            let base = va(idx) & !(size - 1);
            [base, base | (size / 2 + 0x123), base | (size - 4)]
        });
        let random = tree
            .queries
            .iter()
            .map(|&(idx, off)| (va(idx) & !0x1f_ffff) | off);
        for addr in random.chain(near_maps) {
            let ours = walk(&st, &g.mem, addr, Access::supervisor_read());
            let kvm = g.kvm_translate(addr);
            match &ours {
                Ok(t) => {
                    seen.mapped += 1;
                    prop_assert_eq!(kvm, Some(t.gpa), "{:#x}: walker {:x?}", addr, t);
                }
                Err(e) => {
                    match e.page_fault() {
                        Some(pf) if pf.error_code & pf_err::RSVD != 0 => seen.reserved += 1,
                        _ => seen.absent += 1,
                    }
                    prop_assert_eq!(kvm, None, "{:#x}: walker says {}", addr, e);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn walker_matches_kvm_translate() {
        let Some(g) = Guest::open(MEM_SIZE) else {
            return;
        };
        let mut runner = TestRunner::new(Config {
            cases: 64,
            // Cases are rebuilt from the seed printed on failure.
            failure_persistence: None,
            ..Config::default()
        });
        let seen = std::cell::RefCell::new(Seen::default());
        runner
            .run(&tree(), |tree| check(&g, &tree, &mut seen.borrow_mut()))
            .unwrap();
        let seen = seen.into_inner();
        eprintln!(
            "mapped {}, not present {}, reserved {}",
            seen.mapped, seen.absent, seen.reserved
        );
        assert!(seen.mapped > 100 && seen.absent > 100 && seen.reserved > 10);
    }
}
