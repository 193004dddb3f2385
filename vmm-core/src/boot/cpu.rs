//! The CPU state at a kernel's entry point: the boot GDT, identity page
//! tables and the registers the 64-bit and PVH boot protocols ask for.

use hm_vmx::{Fpu, Segment};
use pgm::phys::TrackedMemory;
use vm_memory::{Bytes, GuestAddress};

use super::error::{Result, mem_err};
use super::layout::{BOOT_STACK_TOP, GDT_ADDR, PAGE_TABLES_ADDR};

/// Code segment selector of the boot protocol (`__BOOT_CS`).
pub const BOOT_CS: u16 = 0x10;
/// Data segment selector of the boot protocol (`__BOOT_DS`).
pub const BOOT_DS: u16 = 0x18;
/// Task register selector.
pub const BOOT_TSS: u16 = 0x20;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// How a kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The 64-bit boot protocol: long mode, paging on with an identity map
    /// of the low 4 GiB, RSI holding the zero page's address.
    Long64 {
        /// The entry point.
        rip: u64,
        /// The zero page.
        boot_params: u64,
    },
    /// The PVH entry: 32-bit protected mode, paging off, EBX holding the
    /// `hvm_start_info` address.
    Pvh32 {
        /// The entry point.
        eip: u64,
        /// The start-info structure.
        start_info: u64,
    },
}

/// The boot GDT: null, null, 64-bit code (0x10), flat data (0x18), and a
/// 32-bit TSS (0x20); with `long` false the code segment is 32-bit flat.
fn gdt(long: bool) -> [u64; 5] {
    let code = if long {
        0x00af_9b00_0000_ffff
    } else {
        0x00cf_9b00_0000_ffff
    };
    [0, 0, code, 0x00cf_9300_0000_ffff, 0x0000_8b00_0000_0067]
}

/// Unpacks a GDT descriptor into the form KVM takes.
fn segment(selector: u16, descriptor: u64) -> Segment {
    let limit = ((descriptor & 0xffff) | ((descriptor >> 32) & 0xf_0000)) as u32;
    let g = ((descriptor >> 55) & 1) as u8;
    Segment {
        base: ((descriptor >> 16) & 0xff_ffff) | (((descriptor >> 56) & 0xff) << 24),
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector,
        type_: ((descriptor >> 40) & 0xf) as u8,
        present: ((descriptor >> 47) & 1) as u8,
        dpl: ((descriptor >> 45) & 3) as u8,
        db: ((descriptor >> 54) & 1) as u8,
        s: ((descriptor >> 44) & 1) as u8,
        l: ((descriptor >> 53) & 1) as u8,
        g,
        avl: ((descriptor >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT and, for a 64-bit entry, page tables identity-mapping the
/// low 4 GiB with 2 MiB pages.
pub fn write_tables(mem: &TrackedMemory, entry: &Entry) -> Result<()> {
    let long = matches!(entry, Entry::Long64 { .. });
    let gdt: Vec<u8> = gdt(long).iter().flat_map(|d| d.to_le_bytes()).collect();
    mem.write_slice(&gdt, GuestAddress(GDT_ADDR))
        .map_err(mem_err("the boot GDT"))?;
    if long {
        mem.write_slice(
            &identity_tables(PAGE_TABLES_ADDR),
            GuestAddress(PAGE_TABLES_ADDR),
        )
        .map_err(mem_err("the boot page tables"))?;
    }
    Ok(())
}

/// PML4, PDPT and four page directories at `base` mapping 0..4 GiB 1:1.
fn identity_tables(base: u64) -> Vec<u8> {
    const PRESENT_RW: u64 = 0x3;
    const LARGE: u64 = 0x80;
    let mut words = vec![0u64; 6 * 512];
    words[0] = (base + 0x1000) | PRESENT_RW;
    for gib in 0..4u64 {
        words[512 + gib as usize] = (base + 0x2000 + gib * 0x1000) | PRESENT_RW;
        for mib2 in 0..512u64 {
            let phys = (gib << 30) | (mib2 << 21);
            words[1024 + (gib * 512 + mib2) as usize] = phys | PRESENT_RW | LARGE;
        }
    }
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Puts the bootstrap processor in the state `entry` requires.
pub fn set_entry_state(vcpu: &hm_vmx::Vcpu, entry: &Entry) -> Result<()> {
    let long = matches!(entry, Entry::Long64 { .. });
    let table = gdt(long);
    let state = vcpu.state();
    let mut sregs = state.sregs()?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (table.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = segment(BOOT_CS, table[2]);
    let data = segment(BOOT_DS, table[3]);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(BOOT_TSS, table[4]);
    sregs.tr.type_ = 0xb; // busy 32-bit TSS, as VM entry requires
    sregs.ldt.unusable = 1;
    sregs.ldt.selector = 0;
    sregs.ldt.type_ = 2;
    sregs.ldt.present = 1;
    let mut regs = hm_vmx::Regs {
        rflags: 0x2,
        ..Default::default()
    };
    match *entry {
        Entry::Long64 { rip, boot_params } => {
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = PAGE_TABLES_ADDR;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
            regs.rip = rip;
            regs.rsi = boot_params;
        }
        Entry::Pvh32 { eip, start_info } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = eip;
            regs.rbx = start_info;
            regs.rsp = BOOT_STACK_TOP;
        }
    }
    state.set_sregs(&sregs)?;
    state.set_regs(&regs)?;
    let fpu = Fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    state.set_fpu(&fpu)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit() {
        let cs = segment(BOOT_CS, gdt(true)[2]);
        assert_eq!((cs.l, cs.db, cs.type_, cs.present, cs.s), (1, 0, 0xb, 1, 1));
        assert_eq!((cs.base, cs.limit), (0, 0xffff_ffff));
        let cs32 = segment(BOOT_CS, gdt(false)[2]);
        assert_eq!((cs32.l, cs32.db), (0, 1));
    }

    #[test]
    fn data_and_tss_segments() {
        let ds = segment(BOOT_DS, gdt(true)[3]);
        assert_eq!((ds.type_, ds.db, ds.g, ds.limit), (3, 1, 1, 0xffff_ffff));
        let tr = segment(BOOT_TSS, gdt(true)[4]);
        assert_eq!((tr.s, tr.limit, tr.present), (0, 0x67, 1));
    }

    #[test]
    fn identity_map_covers_4g() {
        let t = identity_tables(PAGE_TABLES_ADDR);
        let word = |i: usize| u64::from_le_bytes(t[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!(word(0), (PAGE_TABLES_ADDR + 0x1000) | 3);
        assert_eq!(word(512 + 3), (PAGE_TABLES_ADDR + 0x5000) | 3);
        assert_eq!(word(1024), 0x83);
        // The last 2 MiB page below 4 GiB maps itself.
        assert_eq!(word(1024 + 4 * 512 - 1), 0xffe0_0000 | 0x83);
    }
}
