//! The walker against the architecture's rules, on in-memory tables: every
//! mode, reserved bits, rights, A20, accessed/dirty updates, the TLB and
//! virtual-memory access.

mod paging_support;

use paging_support::{Builder, Format};
use pgm::paging::{
    A, Access, AccessKind, CpuFeatures, D, FlatMemory, G, GuestPaging, P, PS, PageSize,
    PagingState, PhysAccess, Privilege, RW, US, WalkError, WalkOptions, XD, cr0, cr4, efer, pf_err,
    translate, walk,
};
use proptest::prelude::*;

const TABLES: (u64, u64) = (0x10_0000, 0x18_0000);
const MEM: usize = 0x40_0000;

fn features(m: u8) -> CpuFeatures {
    CpuFeatures::new(m).unwrap()
}

fn state(format: Format, m: u8) -> PagingState {
    let s = PagingState::new(features(m)).with_cr0(cr0::PE | cr0::PG | cr0::WP);
    match format {
        Format::Legacy => s,
        Format::Pae => s.with_cr4(cr4::PAE).with_efer(efer::NXE),
        Format::Long4 => s
            .with_cr4(cr4::PAE)
            .with_efer(efer::LME | efer::LMA | efer::NXE),
        Format::Long5 => s
            .with_cr4(cr4::PAE | cr4::LA57)
            .with_efer(efer::LME | efer::LMA | efer::NXE),
    }
}

/// Error code of a failed `translate`.
fn code(r: Result<pgm::paging::Translation, WalkError>) -> u32 {
    match r {
        Err(WalkError::PageFault(pf)) => pf.error_code,
        other => panic!("expected #PF, got {other:?}"),
    }
}

fn tr(
    st: &PagingState,
    mem: &FlatMemory,
    va: u64,
    a: Access,
) -> Result<pgm::paging::Translation, WalkError> {
    translate(st, mem, va, a, WalkOptions::default())
}

const SR: Access = Access::supervisor_read();
const SW: Access = Access::supervisor_write();
const SX: Access = Access::supervisor_exec();
const UR: Access = Access::user_read();
const UW: Access = Access::user_write();
const UX: Access = Access::user_exec();

#[test]
fn legacy_rights_combine_across_levels() {
    let mem = FlatMemory::new(MEM);
    let mut b = Builder::new(&mem, Format::Legacy, TABLES.0, TABLES.1);
    b.map(0x1000, 0x20_0000, 1, P | US, P | RW | US).unwrap(); // user, read-only
    b.map(0x40_0000, 0x21_0000, 1, P | RW | US, P | RW).unwrap(); // PDE supervisor
    let st = state(Format::Legacy, 36).with_cr3(b.root);
    assert_eq!(tr(&st, &mem, 0x1abc, UR).unwrap().gpa, 0x20_0abc);
    assert_eq!(
        code(tr(&st, &mem, 0x1abc, UW)),
        pf_err::P | pf_err::W | pf_err::U
    );
    assert_eq!(code(tr(&st, &mem, 0x1abc, SW)), pf_err::P | pf_err::W);
    // CR0.WP clear: supervisor writes ignore R/W.
    let nowp = st.with_cr0(cr0::PE | cr0::PG);
    assert!(tr(&nowp, &mem, 0x1abc, SW).is_ok());
    assert_eq!(
        code(tr(&nowp, &mem, 0x1abc, UW)),
        pf_err::P | pf_err::W | pf_err::U
    );
    // U/S clear in the PDE makes the whole range supervisor-only.
    assert_eq!(code(tr(&st, &mem, 0x40_0000, UR)), pf_err::P | pf_err::U);
    assert!(tr(&st, &mem, 0x40_0000, SW).is_ok());
    // No NX in 32-bit paging; fetches from user pages by the supervisor are
    // fine without SMEP and report I/D only with SMEP.
    assert!(tr(&st, &mem, 0x1000, SX).is_ok());
    let smep = st.with_cr4(cr4::SMEP);
    assert_eq!(code(tr(&smep, &mem, 0x1000, SX)), pf_err::P | pf_err::ID);
    assert_eq!(code(tr(&st, &mem, 0x2000, UX)), pf_err::U);
    assert_eq!(code(tr(&smep, &mem, 0x2000, UX)), pf_err::U | pf_err::ID);
    // Linear addresses are 32 bits wide outside long mode.
    assert_eq!(tr(&st, &mem, 0x1_0000_1abc, UR).unwrap().gpa, 0x20_0abc);
}

#[test]
fn legacy_pse_large_pages_and_pse36() {
    let mem = FlatMemory::new(MEM);
    let mut b = Builder::new(&mem, Format::Legacy, TABLES.0, TABLES.1);
    // PDE 2 (va 8 MiB) maps a 4 MiB page at 0xff_4040_0000 (bits 39:32 in 20:13).
    b.map(0x80_0000, 0xff_0040_0000, 2, P | RW, P | RW).unwrap();
    let st = state(Format::Legacy, 48).with_cr3(b.root);
    // Without CR4.PSE the PS bit is ignored and the PDE is a table pointer.
    let t = walk(&st, &mem, 0x80_0000, SR);
    assert_ne!(t.map(|t| t.page_size), Ok(PageSize::Size4M));
    let pse = st.with_cr4(cr4::PSE);
    let t = walk(&pse, &mem, 0xa1_2345, SR).unwrap();
    assert_eq!((t.gpa, t.page_size), (0xff_0061_2345, PageSize::Size4M));
    // MAXPHYADDR 36: PDE bits 21:17 are reserved.
    let m36 = PagingState {
        features: features(36),
        ..pse
    };
    assert_eq!(
        code(walk(&m36, &mem, 0x80_0000, SR)),
        pf_err::P | pf_err::RSVD
    );
    // Without PSE-36 all of 21:13 are reserved; bit 21 always is.
    let no36 = PagingState {
        features: features(48).with_pse36(false),
        ..pse
    };
    assert_eq!(
        code(walk(&no36, &mem, 0x80_0000, SW)),
        pf_err::P | pf_err::RSVD | pf_err::W
    );
    let pde = 0x0040_0000 | P | PS | (1 << 21);
    mem.write_u32(b.root + 4 * 3, pde as u32).unwrap();
    assert_eq!(
        code(walk(&pse, &mem, 0xc0_0000, SR)),
        pf_err::P | pf_err::RSVD
    );
}

#[test]
fn pae_pdptes_and_reserved_bits() {
    let mem = FlatMemory::new(MEM);
    let mut b = Builder::new(&mem, Format::Pae, TABLES.0, TABLES.1);
    let leaf = b
        .map(0x4000_0000, 0x20_0000, 1, P | RW | XD, P | RW)
        .unwrap();
    let pde = b.map(0x4020_0000, 0x40_0000, 2, P | RW, P | RW).unwrap();
    let st = state(Format::Pae, 36).with_cr3(b.root);
    assert_eq!(tr(&st, &mem, 0x4000_0010, SW).unwrap().gpa, 0x20_0010);
    assert_eq!(tr(&st, &mem, 0x4030_0010, SR).unwrap().gpa, 0x50_0010);
    // PDPTE 0 is not present.
    let e = walk(&st, &mem, 0x10, SR).unwrap_err();
    assert_eq!(
        e.page_fault().map(|p| (p.error_code, p.level)),
        Some((0, 3))
    );
    // NX with EFER.NXE: fetch faults with I/D; without NXE, XD is reserved.
    assert_eq!(code(tr(&st, &mem, 0x4000_0000, SX)), pf_err::P | pf_err::ID);
    let nonx = st.with_efer(0);
    assert_eq!(
        code(tr(&nonx, &mem, 0x4000_0000, SR)),
        pf_err::P | pf_err::RSVD
    );
    // PAE reserves bits 62:MAXPHYADDR (not only 51:M).
    mem.write_u64(leaf, 0x20_0000 | P | RW | (1 << 62)).unwrap();
    assert_eq!(
        code(walk(&st, &mem, 0x4000_0000, SR)),
        pf_err::P | pf_err::RSVD
    );
    // 2 MiB page: bits 20:13 reserved.
    mem.write_u64(pde, 0x40_0000 | P | PS | (1 << 13)).unwrap();
    assert_eq!(
        code(walk(&st, &mem, 0x4020_0000, SR)),
        pf_err::P | pf_err::RSVD
    );
    // A PDPTE with reserved bits is refused at CR3 load: no #PF exists.
    mem.write_u64(b.root + 8, b.read(b.root + 8) | RW).unwrap();
    assert!(matches!(
        walk(&st, &mem, 0x4000_0000, SR),
        Err(WalkError::InvalidPdpte { index: 1, .. })
    ));
}

#[test]
fn long_mode_levels_sizes_and_reserved_bits() {
    let mem = FlatMemory::new(MEM);
    let mut b = Builder::new(&mem, Format::Long4, TABLES.0, TABLES.1);
    let flags = P | RW | US;
    b.map(0xffff_8000_0000_0000, 0x3_0000_0000, 3, flags, flags)
        .unwrap();
    b.map(0x7fff_ffe0_0000, 0x20_0000, 2, flags | G | D, flags)
        .unwrap();
    let pte = b
        .map(0x1000, 0x30_0000, 1, flags | (0x7ff << 52), flags)
        .unwrap();
    let st = state(Format::Long4, 48).with_cr3(b.root);
    // 1 GiB pages exist only with the CPUID bit.
    assert_eq!(
        code(walk(&st, &mem, 0xffff_8000_1234_5678, SR)),
        pf_err::P | pf_err::RSVD
    );
    let gb = PagingState {
        features: features(48).with_page_1gb(true),
        ..st
    };
    let t = walk(&gb, &mem, 0xffff_8000_1234_5678, SR).unwrap();
    assert_eq!((t.gpa, t.page_size), (0x3_1234_5678, PageSize::Size1G));
    assert_eq!(t.entries().len(), 2);
    let t = walk(&st, &mem, 0x7fff_fff0_0004, SR).unwrap();
    assert_eq!(
        (t.gpa, t.page_size, t.global, t.dirty),
        (0x30_0004, PageSize::Size2M, true, true)
    );
    // Bits 62:52 are ignored in long mode.
    assert_eq!(walk(&st, &mem, 0x1008, SR).unwrap().gpa, 0x30_0008);
    // Bits 51:MAXPHYADDR are reserved, at every level.
    let m40 = PagingState {
        features: features(40),
        ..st
    };
    assert!(walk(&m40, &mem, 0x1008, SR).is_ok());
    mem.write_u64(pte, 0x30_0000 | flags | (1 << 44)).unwrap();
    assert!(walk(&st, &mem, 0x1008, SR).is_ok());
    assert_eq!(
        code(walk(&m40, &mem, 0x1008, UW)),
        pf_err::P | pf_err::RSVD | pf_err::W | pf_err::U
    );
    // PS in a PML4E is reserved.
    mem.write_u64(b.root, b.read(b.root) | PS).unwrap();
    let e = walk(&st, &mem, 0x1008, SR).unwrap_err();
    assert_eq!(
        e.page_fault().map(|p| (p.error_code, p.level)),
        Some((pf_err::P | pf_err::RSVD, 4))
    );
    // Non-canonical addresses never reach the tables.
    assert_eq!(
        walk(&st, &mem, 0x8000_0000_0000, SR),
        Err(WalkError::NonCanonical(0x8000_0000_0000))
    );
}

#[test]
fn smep_smap_and_nx() {
    let mem = FlatMemory::new(MEM);
    let mut b = Builder::new(&mem, Format::Long4, TABLES.0, TABLES.1);
    b.map(0x1000, 0x20_0000, 1, P | RW | US, P | RW | US)
        .unwrap();
    b.map(0x2000, 0x21_0000, 1, P | RW | US | XD, P | RW | US)
        .unwrap();
    b.map(0x3000, 0x22_0000, 1, P | RW, P | RW | US).unwrap();
    let st = state(Format::Long4, 48).with_cr3(b.root);
    let smep = st.with_cr4(st.cr4 | cr4::SMEP);
    let smap = st.with_cr4(st.cr4 | cr4::SMAP);
    assert!(tr(&st, &mem, 0x1000, SX).is_ok());
    assert_eq!(code(tr(&smep, &mem, 0x1000, SX)), pf_err::P | pf_err::ID);
    assert!(tr(&smep, &mem, 0x3000, SX).is_ok());
    assert!(tr(&smep, &mem, 0x1000, UX).is_ok());
    assert_eq!(
        code(tr(&st, &mem, 0x2000, UX)),
        pf_err::P | pf_err::U | pf_err::ID
    );
    assert_eq!(
        code(tr(&st, &mem, 0x3000, UX)),
        pf_err::P | pf_err::U | pf_err::ID
    );
    // SMAP: supervisor data accesses to user pages fault unless RFLAGS.AC;
    // implicit supervisor accesses always do; fetches are SMEP's business.
    assert_eq!(code(tr(&smap, &mem, 0x1000, SR)), pf_err::P);
    assert_eq!(code(tr(&smap, &mem, 0x1000, SW)), pf_err::P | pf_err::W);
    let ac = Access::new(AccessKind::Write, Privilege::Supervisor { ac: true });
    assert!(tr(&smap, &mem, 0x1000, ac).is_ok());
    let implicit = Access::new(AccessKind::Read, Privilege::Implicit);
    assert_eq!(code(tr(&smap, &mem, 0x1000, implicit)), pf_err::P);
    assert!(tr(&smap, &mem, 0x3000, implicit).is_ok());
    assert!(tr(&smap, &mem, 0x1000, UR).is_ok());
    assert!(tr(&smap, &mem, 0x1000, SX).is_ok());
}

#[test]
fn five_level_paging() {
    let mem = FlatMemory::new(MEM);
    let mut b = Builder::new(&mem, Format::Long5, TABLES.0, TABLES.1);
    let va = 0xff12_3456_789a_b000u64;
    b.map(va, 0x20_0000, 1, P | RW, P | RW).unwrap();
    let st = state(Format::Long5, 52).with_cr3(b.root);
    let t = walk(&st, &mem, va + 0xcd, SR).unwrap();
    assert_eq!((t.gpa, t.entries().len()), (0x20_00cd, 5));
    assert_eq!(t.entries()[0].level, 5);
    // 0xff12... is canonical only with 57-bit addresses.
    let four = st.with_cr4(cr4::PAE);
    assert_eq!(walk(&four, &mem, va, SR), Err(WalkError::NonCanonical(va)));
    assert!(matches!(
        walk(&st, &mem, 0xfe00_0000_0000_0000, SR),
        Err(WalkError::NonCanonical(_))
    ));
}

#[test]
fn a20_masks_tables_and_result() {
    let mem = FlatMemory::new(MEM);
    // Real mode: identity, bit 20 cleared while A20 is closed.
    let real = PagingState::new(features(36));
    assert_eq!(walk(&real, &mem, 0x10_fff0, SR).unwrap().gpa, 0x10_fff0);
    assert_eq!(
        walk(&real.with_a20(false), &mem, 0x10_fff0, SR)
            .unwrap()
            .gpa,
        0xfff0
    );
    // 32-bit paging with the page directory at 0x101000: with A20 closed it
    // is read from 0x1000 instead.
    mem.write_u32(0x10_1000, 0x10_2000 | 0x3).unwrap();
    mem.write_u32(0x10_2000, 0x13_3000 | 0x3).unwrap();
    mem.write_u32(0x1000, 0x3000 | 0x3).unwrap();
    mem.write_u32(0x3000, 0x15_5000 | 0x3).unwrap();
    let st = state(Format::Legacy, 36).with_cr3(0x10_1000);
    assert_eq!(walk(&st, &mem, 0x10, SR).unwrap().gpa, 0x13_3010);
    let t = walk(&st.with_a20(false), &mem, 0x10, SR).unwrap();
    assert_eq!(t.gpa, 0x05_5010);
    assert_eq!(t.entries()[0].gpa, 0x1000);
}

#[test]
fn accessed_and_dirty_updates() {
    let mem = FlatMemory::new(MEM);
    let mut b = Builder::new(&mem, Format::Pae, TABLES.0, TABLES.1);
    let pte = b.map(0x4000_1000, 0x20_0000, 1, P | RW, P | RW).unwrap();
    b.map(0x4000_2000, 0x21_0000, 1, P, P | RW).unwrap();
    let st = state(Format::Pae, 36).with_cr3(b.root);
    let mut ad = WalkOptions::default();
    ad.update_accessed_dirty = true;
    let pdpte = b.read(b.root + 8);
    translate(&st, &mem, 0x4000_1000, SR, ad).unwrap();
    assert_eq!(b.read(pte), 0x20_0000 | P | RW | A);
    assert_eq!(
        b.read(b.root + 8),
        pdpte,
        "PAE PDPTEs have no accessed flag"
    );
    let t = translate(&st, &mem, 0x4000_1000, SW, ad).unwrap();
    assert!(t.dirty);
    assert_eq!(b.read(pte), 0x20_0000 | P | RW | A | D);
    // A refused access changes nothing.
    let ro = b.slot(b.tables[2], 0x4000_2000, 1);
    assert!(translate(&st, &mem, 0x4000_2000, SW, ad).is_err());
    assert_eq!(b.read(ro), 0x21_0000 | P);
    // 32-bit entries are written as 32-bit values.
    let lmem = FlatMemory::new(MEM);
    lmem.write_u32(0x1000, 0x2000 | 0x3).unwrap();
    lmem.write_u32(0x1004, 0xdead_b000).unwrap();
    lmem.write_u32(0x2000, 0x5000 | 0x3).unwrap();
    let lst = state(Format::Legacy, 36).with_cr3(0x1000);
    translate(&lst, &lmem, 0x10, SW, ad).unwrap();
    assert_eq!(lmem.read_u64(0x1000).unwrap(), 0xdead_b000_0000_2023);
    assert_eq!(lmem.read_u32(0x2000).unwrap(), 0x5063);
}

#[test]
fn tlb_caches_until_invalidated_or_flushed() {
    let mem = FlatMemory::new(MEM);
    let mut b = Builder::new(&mem, Format::Long4, TABLES.0, TABLES.1);
    let pte = b.map(0x1000, 0x20_0000, 1, P | RW, P | RW).unwrap();
    let st = state(Format::Long4, 48).with_cr3(b.root);
    let mut g = GuestPaging::new(st);
    let mut ad = WalkOptions::default();
    ad.update_accessed_dirty = true;
    g.set_options(ad);
    assert_eq!(g.translate(&mem, 0x1004, SR).unwrap(), 0x20_0004);
    assert_eq!(g.translate(&mem, 0x1008, SR).unwrap(), 0x20_0008);
    assert_eq!((g.tlb_stats().hits, g.tlb_stats().misses), (1, 1));
    // A write to a clean page walks again to set the dirty flag.
    g.translate(&mem, 0x1008, SW).unwrap();
    assert_eq!(b.read(pte) & D, D);
    assert_eq!(g.tlb_stats().misses, 2);
    // Stale until INVLPG, like the CPU's TLB.
    b.write(pte, 0x30_0000 | P | RW);
    assert_eq!(g.translate(&mem, 0x1000, SR).unwrap(), 0x20_0000);
    g.invalidate_page(0x1fff);
    assert_eq!(g.translate(&mem, 0x1000, SR).unwrap(), 0x30_0000);
    // Rights are checked on hits too.
    let e = g.translate(&mem, 0x1000, UR).unwrap_err();
    assert_eq!(
        e.page_fault().map(|p| p.error_code),
        Some(pf_err::P | pf_err::U)
    );
    // A CR3 write flushes.
    b.write(pte, 0);
    assert!(g.translate(&mem, 0x1000, SR).is_ok());
    assert!(!g.set_state(st.with_cr3(b.root | 0x8)));
    assert!(g.translate(&mem, 0x1000, SR).is_err());
    assert!(g.tlb_stats().flushes >= 1);
}

#[test]
fn virtual_reads_and_writes_cross_pages() {
    let mem = FlatMemory::new(MEM);
    let mut b = Builder::new(&mem, Format::Legacy, TABLES.0, TABLES.1);
    b.map(0x1000, 0x25_0000, 1, P | RW, P | RW).unwrap();
    b.map(0x2000, 0x21_0000, 1, P | RW, P | RW).unwrap();
    b.map(0x3000, 0x22_0000, 1, P, P | RW).unwrap();
    let mut g = GuestPaging::new(state(Format::Legacy, 36).with_cr3(b.root));
    let data: Vec<u8> = (0..=255).cycle().take(0x1400).collect();
    g.write_virt(&mem, 0x1e00, &data[..0x400], SW).unwrap();
    let mut back = vec![0u8; 0x200];
    mem.read(0x25_0e00, &mut back).unwrap();
    assert_eq!(back, data[..0x200]);
    mem.read(0x21_0000, &mut back).unwrap();
    assert_eq!(back, data[0x200..0x400]);
    let mut all = vec![0u8; 0x400];
    g.read_virt(&mem, 0x1e00, &mut all, SR).unwrap();
    assert_eq!(all, data[..0x400]);
    // The third page is read-only: nothing is written at all.
    let e = g.write_virt(&mem, 0x2f00, &data[..0x200], SW).unwrap_err();
    assert_eq!(
        e.page_fault().map(|p| (p.address, p.error_code)),
        Some((0x3000, pf_err::P | pf_err::W))
    );
    mem.read(0x21_0f00, &mut back[..0x100]).unwrap();
    assert!(back[..0x100].iter().all(|&b| b == 0));
}

fn arb_access() -> impl Strategy<Value = Access> {
    let kind = prop_oneof![
        Just(AccessKind::Read),
        Just(AccessKind::Write),
        Just(AccessKind::Execute)
    ];
    let privilege = prop_oneof![
        Just(Privilege::User),
        any::<bool>().prop_map(|ac| Privilege::Supervisor { ac }),
        Just(Privilege::Implicit),
    ];
    (kind, privilege).prop_map(|(k, p)| Access::new(k, p))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The TLB is invisible: a sequence of accesses through `GuestPaging`
    /// gives the same answers as fresh walks, whatever the access rights.
    #[test]
    fn tlb_is_transparent(
        maps in prop::collection::vec((0u64..16, 1u8..=2, any::<u64>()), 1..12),
        ops in prop::collection::vec((0u64..16, 0u64..0x20_0000, arb_access()), 1..200),
        cr4_bits in prop::sample::subsequence(vec![cr4::SMEP, cr4::SMAP], 0..=2),
        wp in any::<bool>(),
    ) {
        let mem = FlatMemory::new(MEM);
        let mut b = Builder::new(&mem, Format::Long4, TABLES.0, TABLES.1);
        for &(slot, level, flags) in &maps {
            let flags = P | (flags & (RW | US | XD | A | D));
            let _ = b.map(slot << 21, 0x20_0000 + (slot << 21), level, flags, P | RW | US);
        }
        let mut st = state(Format::Long4, 48).with_cr3(b.root);
        st.cr4 |= cr4_bits.iter().fold(0, |a, b| a | b);
        if !wp {
            st.cr0 &= !cr0::WP;
        }
        let mut g = GuestPaging::new(st);
        for &(slot, off, access) in &ops {
            let va = (slot << 21) | off;
            let fresh = translate(&st, &mem, va, access, WalkOptions::default()).map(|t| t.gpa);
            prop_assert_eq!(g.translate(&mem, va, access), fresh);
        }
    }

    /// Writing then reading guest-virtual memory gives the data back, and
    /// lands where the walker says.
    #[test]
    fn virt_write_read_roundtrip(start in 0u64..0x6000, len in 0usize..0x3000, seed in any::<u8>()) {
        let mem = FlatMemory::new(MEM);
        let mut b = Builder::new(&mem, Format::Pae, TABLES.0, TABLES.1);
        for page in 0..10u64 {
            // Scatter the pages so physical order differs from virtual.
            b.map(page << 12, 0x20_0000 + ((page * 7) % 10) * 0x1000, 1, P | RW, P | RW).unwrap();
        }
        let st = state(Format::Pae, 36).with_cr3(b.root);
        let mut g = GuestPaging::new(st);
        let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        g.write_virt(&mem, start, &data, SW).unwrap();
        let mut back = vec![0u8; len];
        g.read_virt(&mem, start, &mut back, SR).unwrap();
        prop_assert_eq!(&back, &data);
        if len > 0 {
            let last = start + len as u64 - 1;
            let gpa = walk(&st, &mem, last, SR).unwrap().gpa;
            prop_assert_eq!(mem.read_u32(gpa & !3).is_ok(), true);
            let mut one = [0u8];
            mem.read(gpa, &mut one).unwrap();
            prop_assert_eq!(one[0], data[len - 1]);
        }
    }
}

#[test]
fn pae_pdpte_registers_win_over_memory() {
    let mem = FlatMemory::new(MEM);
    let mut b = Builder::new(&mem, Format::Pae, TABLES.0, TABLES.1);
    b.map(0x4000_0000, 0x20_0000, 1, P | RW, P | RW).unwrap();
    let st = state(Format::Pae, 36).with_cr3(b.root);
    let regs = [0, b.read(b.root + 8), 0, 0];
    // The guest clears PDPTE 1 in memory without reloading CR3.
    b.write(b.root + 8, 0);
    assert!(walk(&st, &mem, 0x4000_0000, SR).is_err());
    let loaded = st.with_pae_pdptes(Some(regs));
    assert_eq!(walk(&loaded, &mem, 0x4000_0123, SR).unwrap().gpa, 0x20_0123);
    let e = walk(&loaded, &mem, 0x123, SW).unwrap_err();
    assert_eq!(
        e.page_fault().map(|p| (p.error_code, p.level)),
        Some((pf_err::W, 3))
    );
    let mut text = String::new();
    pgm::paging::info_pgmcr3(&mut text, &loaded, &mem).unwrap();
    assert!(text.contains("entries from PDPTE registers"), "{text}");
    assert!(text.contains("PDPTE[1] 0x40000000 = 0x"), "{text}");
}
