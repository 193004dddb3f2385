//! Shared helpers for the paging tests: a page-table builder that writes
//! tables for any paging format into any `PhysAccess` memory.
#![allow(dead_code)] // Each test crate uses a different part of the helpers.

pub mod kvm;

use pgm::paging::{P, PS, PhysAccess};

/// Page-table format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// 32-bit paging, 4-byte entries, 2 levels.
    Legacy,
    /// PAE paging: 4 PDPTEs, then 2 levels.
    Pae,
    /// 4-level long mode.
    Long4,
    /// 5-level long mode.
    Long5,
}

impl Format {
    pub fn levels(self) -> u8 {
        match self {
            Format::Legacy => 2,
            Format::Pae => 3,
            Format::Long4 => 4,
            Format::Long5 => 5,
        }
    }

    pub fn entry_size(self) -> u64 {
        if self == Format::Legacy { 4 } else { 8 }
    }

    /// Index of `va` in the table at `level`.
    pub fn index(self, va: u64, level: u8) -> u64 {
        match self {
            Format::Legacy => (va >> (12 + 10 * u32::from(level - 1))) & 0x3ff,
            Format::Pae if level == 3 => (va >> 30) & 3,
            _ => (va >> (12 + 9 * u32::from(level - 1))) & 0x1ff,
        }
    }

    /// Bytes mapped by a leaf at `level`.
    pub fn leaf_size(self, level: u8) -> u64 {
        match (self, level) {
            (Format::Legacy, 2) => 4 << 20,
            (_, l) => 1 << (12 + 9 * u32::from(l - 1)),
        }
    }
}

/// Writes page tables into `mem`, allocating table pages from `next`.
pub struct Builder<'m, M: PhysAccess> {
    pub mem: &'m M,
    pub format: Format,
    pub root: u64,
    next: u64,
    limit: u64,
    /// Every table page allocated, root first.
    pub tables: Vec<u64>,
}

impl<'m, M: PhysAccess> Builder<'m, M> {
    /// Tables go in `[first, limit)`, which must be zeroed.
    pub fn new(mem: &'m M, format: Format, first: u64, limit: u64) -> Self {
        let mut b = Self {
            mem,
            format,
            root: 0,
            next: first,
            limit,
            tables: Vec::new(),
        };
        b.root = b.alloc().expect("room for the root table");
        b
    }

    /// A fresh zeroed table page, or `None` when the area is used up.
    pub fn alloc(&mut self) -> Option<u64> {
        if self.next + 0x1000 > self.limit {
            return None;
        }
        let page = self.next;
        self.next += 0x1000;
        self.tables.push(page);
        Some(page)
    }

    pub fn read(&self, gpa: u64) -> u64 {
        if self.format == Format::Legacy {
            u64::from(self.mem.read_u32(gpa).unwrap())
        } else {
            self.mem.read_u64(gpa).unwrap()
        }
    }

    pub fn write(&self, gpa: u64, value: u64) {
        if self.format == Format::Legacy {
            self.mem.write_u32(gpa, value as u32).unwrap();
        } else {
            self.mem.write_u64(gpa, value).unwrap();
        }
    }

    /// Address of the entry for `va` at `level` in `table`.
    pub fn slot(&self, table: u64, va: u64, level: u8) -> u64 {
        table + self.format.index(va, level) * self.format.entry_size()
    }

    /// Maps `va` to `gpa` with a leaf at `level` (1 = 4 KiB, 2 = 2/4 MiB,
    /// 3 = 1 GiB) carrying `leaf_flags`; missing tables are created with
    /// `table_flags`. Returns the leaf entry's address, or `None` when a
    /// large page is in the way or tables ran out.
    pub fn map(
        &mut self,
        va: u64,
        gpa: u64,
        level: u8,
        leaf_flags: u64,
        table_flags: u64,
    ) -> Option<u64> {
        let mut table = self.root;
        for l in (level + 1..=self.format.levels()).rev() {
            let slot = self.slot(table, va, l);
            let e = self.read(slot);
            if e & P != 0 {
                if e & PS != 0 && l <= 3 {
                    return None;
                }
                table = e & 0x000f_ffff_ffff_f000;
                continue;
            }
            let new = self.alloc()?;
            let flags = if self.format == Format::Pae && l == 3 {
                P
            } else {
                table_flags | P
            };
            self.write(slot, new | flags);
            table = new;
        }
        let slot = self.slot(table, va, level);
        let frame = if self.format == Format::Legacy && level == 2 {
            (gpa & 0xffc0_0000) | (((gpa >> 32) & 0xff) << 13)
        } else {
            gpa
        };
        let ps = if level > 1 { PS } else { 0 };
        self.write(slot, frame | leaf_flags | ps);
        Some(slot)
    }
}
