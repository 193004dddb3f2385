//! The guest-physical map: ranges and handler registration.

use std::sync::Arc;

use super::write_bitmap::TrackedRegion;

use super::a20::A20State;
use super::error::PhysError;
use super::handler::{
    DEFAULT_MAX_HANDLERS, HandlerAccess, HandlerAction, HandlerError, HandlerKind, HandlerRange,
    HandlerTable, HandlerType, HandlerTypeId,
};
use super::host::{HostMemory, MmapHostMemory};
#[cfg(feature = "stats")]
use super::observe::AccessCounters;
use super::page::{PAGE_OFFSET_MASK, PAGE_SHIFT, PAGE_SIZE, PageHandlerState, PageInfo, PageType};
use super::range::{
    Backing, Memory, Mmio2Id, PhysRange, RangeId, RangeInfo, RangeKind, RomProtection,
};
use super::slots::SlotTracker;

mod handlers;

/// Configuration of a [`PhysMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PhysConfig {
    /// Maximum number of physical handler ranges (32..=65536).
    pub max_handlers: usize,
    /// Whether [`PhysMap::reset`] zeroes RAM.
    pub zero_ram_on_reset: bool,
    /// Number of vCPUs, each with its own A20 gate (see
    /// [`PhysMap::set_a20`]); 0 counts as 1.
    pub cpus: u32,
}

impl PhysConfig {
    /// This configuration for `cpus` vCPUs.
    ///
    /// ```
    /// let config = pgm::phys::PhysConfig::default().with_cpus(4);
    /// assert_eq!(config.cpus, 4);
    /// ```
    pub fn with_cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }
}

impl Default for PhysConfig {
    fn default() -> Self {
        Self {
            max_handlers: DEFAULT_MAX_HANDLERS,
            zero_ram_on_reset: true,
            cpus: 1,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Mmio2Entry {
    pub(crate) name: String,
    pub(crate) mem: Arc<Memory>,
    pub(crate) mapped: Option<RangeId>,
}

/// The guest-physical address space (VirtualBox's PGM physical part).
///
/// Mutations (adding ranges, handlers, changing ROM protection) take
/// `&mut self`; accesses ([`read`](Self::read), [`write`](Self::write),
/// [`mmio_exit`](Self::mmio_exit)) take `&self`, so the map can sit behind an
/// `RwLock` shared by vCPU threads and devices.
///
/// ```
/// use pgm::phys::{PhysMap, HandlerKind, HandlerAction, RomProtection};
/// let mut map = PhysMap::with_defaults();
/// map.add_ram(0, 0x10_0000, "low RAM").unwrap();
/// map.add_rom(0xf_0000 + 0x10_0000, 0x1_0000, &[0xea; 16],
///             RomProtection::ReadRomWriteIgnore, "BIOS").unwrap();
/// let t = map.register_handler_type(HandlerKind::Mmio, "dev", |a| {
///     a.data.fill_read(0x42);
///     Ok(HandlerAction::Handled)
/// });
/// map.map_mmio(0xfee0_0000, 0x1000, t, 0, "APIC").unwrap();
///
/// map.write(0x1000, &[1, 2, 3]).unwrap();
/// let mut b = [0u8; 3];
/// map.read(0x1000, &mut b).unwrap();
/// assert_eq!(b, [1, 2, 3]);
/// map.mmio_exit(0xfee0_0020, iom::Data::Read(&mut b)).unwrap();
/// assert_eq!(b, [0x42; 3]);
/// map.read(0x8000_0000, &mut b).unwrap();      // unassigned
/// assert_eq!(b, [0xff; 3]);
/// assert_eq!(map.kvm_slots().slots.len(), 2);  // RAM and ROM
/// ```
pub struct PhysMap {
    pub(crate) host: Arc<dyn HostMemory>,
    pub(crate) config: PhysConfig,
    pub(crate) ranges: Vec<PhysRange>,
    pub(crate) starts: Vec<u64>,
    next_range_id: u32,
    pub(crate) handler_types: Vec<HandlerType>,
    pub(crate) handlers: HandlerTable,
    pub(crate) mmio2: Vec<Mmio2Entry>,
    /// Each vCPU's A20 gate.
    pub(crate) a20: Vec<A20State>,
    pub(crate) slots: SlotTracker,
    pub(crate) monitoring: bool,
    #[cfg(feature = "stats")]
    pub(crate) counters: Option<AccessCounters>,
    /// RAM pages loads mapped from saved-state files.
    pub(crate) pages_mapped_from_file: u64,
    /// ROM bytes the debugger patched past write protection.
    pub(crate) rom_patches: super::rom_patch::RomPatches,
}

impl std::fmt::Debug for PhysMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhysMap")
            .field("ranges", &self.ranges.len())
            .field("handlers", &self.handlers.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn check_aligned(what: &'static str, value: u64) -> Result<(), PhysError> {
    if value & PAGE_OFFSET_MASK != 0 {
        return Err(PhysError::Misaligned { what, value });
    }
    Ok(())
}

fn check_range(start: u64, size: u64) -> Result<u64, PhysError> {
    check_aligned("start", start)?;
    check_aligned("size", size)?;
    if size == 0 {
        return Err(PhysError::InvalidRange { start, size });
    }
    start
        .checked_add(size - 1)
        .filter(|&last| last <= MAX_GUEST_PHYS)
        .ok_or(PhysError::InvalidRange { start, size })
}

/// Highest guest-physical address a range may cover (52-bit physical
/// addresses, the architectural limit).
pub const MAX_GUEST_PHYS: u64 = (1 << 52) - 1;

impl PhysMap {
    /// An empty map backed by `host`.
    pub fn new(host: Arc<dyn HostMemory>, config: PhysConfig) -> Result<Self, PhysError> {
        let handlers = HandlerTable::new(config.max_handlers)?;
        Ok(Self::build(host, config, handlers))
    }

    /// An empty map with the default configuration over [`MmapHostMemory`].
    pub fn with_defaults() -> Self {
        Self::build(
            Arc::new(MmapHostMemory::new()),
            PhysConfig::default(),
            HandlerTable::with_default_max(),
        )
    }

    fn build(host: Arc<dyn HostMemory>, config: PhysConfig, handlers: HandlerTable) -> Self {
        Self {
            host,
            handlers,
            config,
            ranges: Vec::new(),
            starts: Vec::new(),
            next_range_id: 0,
            handler_types: Vec::new(),
            mmio2: Vec::new(),
            a20: vec![A20State::OPEN; config.cpus.max(1) as usize],
            slots: SlotTracker::default(),
            monitoring: false,
            #[cfg(feature = "stats")]
            counters: None,
            pages_mapped_from_file: 0,
            rom_patches: Default::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> PhysConfig {
        self.config
    }

    /// Pages that loads of saved states mapped from their files instead of
    /// copying (see `PgmUnit`, feature `saved-state`), in total.
    pub fn pages_mapped_from_file(&self) -> u64 {
        self.pages_mapped_from_file
    }

    /// Index of the range containing `gpa`.
    #[inline]
    pub(crate) fn range_index(&self, gpa: u64) -> Option<usize> {
        let i = self.starts.partition_point(|&s| s <= gpa).checked_sub(1)?;
        (self.ranges[i].last() >= gpa).then_some(i)
    }

    /// The range containing `gpa`.
    #[inline]
    pub(crate) fn range_at(&self, gpa: u64) -> Option<&PhysRange> {
        self.range_index(gpa).map(|i| &self.ranges[i])
    }

    fn insert_range(
        &mut self,
        start: u64,
        size: u64,
        name: &str,
        backing: Backing,
    ) -> Result<RangeId, PhysError> {
        let last = check_range(start, size)?;
        let idx = self.starts.partition_point(|&s| s < start);
        let clash = [idx.checked_sub(1), Some(idx)]
            .into_iter()
            .flatten()
            .filter_map(|i| self.ranges.get(i))
            .find(|r| r.start <= last && start <= r.last());
        if let Some(r) = clash {
            return Err(PhysError::RangeOverlap {
                start,
                last,
                existing: r.name.clone(),
            });
        }
        let id = RangeId(self.next_range_id);
        self.next_range_id += 1;
        self.starts.insert(idx, start);
        self.ranges.insert(
            idx,
            PhysRange {
                id,
                start,
                size,
                name: name.to_owned(),
                backing,
            },
        );
        self.refresh_slots();
        Ok(id)
    }

    fn check_free(&self, start: u64, size: u64) -> Result<(), PhysError> {
        let last = check_range(start, size)?;
        match self
            .ranges
            .iter()
            .find(|r| r.start <= last && start <= r.last())
        {
            Some(r) => Err(PhysError::RangeOverlap {
                start,
                last,
                existing: r.name.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Adds a RAM range; all its pages start in the zero state.
    pub fn add_ram(&mut self, start: u64, size: u64, name: &str) -> Result<RangeId, PhysError> {
        self.check_free(start, size)?;
        let mem = Memory::allocate(&*self.host, size, PageType::Ram)?;
        self.insert_range(start, size, name, Backing::Ram(mem))
    }

    /// Adds a ROM range of `size` bytes holding `image` (the rest reads as
    /// zero), with a shadow RAM copy initialised from the image.
    pub fn add_rom(
        &mut self,
        start: u64,
        size: u64,
        image: &[u8],
        prot: RomProtection,
        name: &str,
    ) -> Result<RangeId, PhysError> {
        self.check_free(start, size)?;
        if image.len() as u64 > size {
            return Err(PhysError::RomImageTooLarge {
                image: image.len(),
                size,
            });
        }
        let rom = Memory::allocate(&*self.host, size, PageType::Rom)?;
        let shadow = Memory::allocate(&*self.host, size, PageType::RomShadow)?;
        for mem in [&rom, &shadow] {
            mem.write(0, image);
            let written = image.len().div_ceil(PAGE_SIZE as usize);
            mem.pages.iter().take(written).for_each(|p| p.note_write());
            mem.pages.iter().for_each(|p| {
                p.update(|mut i| {
                    i.dirty = false;
                    i
                });
            });
        }
        self.insert_range(
            start,
            size,
            name,
            Backing::Rom {
                rom,
                shadow,
                prot,
                initial: prot,
            },
        )
    }

    /// Changes the protection of the ROM range containing `gpa`.
    pub fn set_rom_protection(&mut self, gpa: u64, prot: RomProtection) -> Result<(), PhysError> {
        let idx = self.range_index(gpa);
        match idx.map(|i| &mut self.ranges[i].backing) {
            Some(Backing::Rom { prot: p, .. }) => *p = prot,
            _ => return Err(PhysError::NoSuchRange(format!("no ROM at {gpa:#x}"))),
        }
        self.refresh_slots();
        Ok(())
    }

    /// Registers a handler type; the id is used for handler ranges.
    pub fn register_handler_type(
        &mut self,
        kind: HandlerKind,
        desc: &str,
        callback: impl Fn(&mut HandlerAccess<'_>) -> Result<HandlerAction, HandlerError>
        + Send
        + Sync
        + 'static,
    ) -> HandlerTypeId {
        let id = HandlerTypeId(self.handler_types.len() as u32);
        self.handler_types.push(HandlerType {
            kind,
            desc: desc.to_owned(),
            callback: Arc::new(callback),
        });
        id
    }

    pub(crate) fn handler_type(&self, id: HandlerTypeId) -> Result<&HandlerType, PhysError> {
        self.handler_types
            .get(id.0 as usize)
            .ok_or(PhysError::UnknownHandlerType(id.0))
    }

    /// Maps an MMIO range handled by `type_id` (a [`HandlerKind::Mmio`] type).
    pub fn map_mmio(
        &mut self,
        start: u64,
        size: u64,
        type_id: HandlerTypeId,
        user: u64,
        name: &str,
    ) -> Result<RangeId, PhysError> {
        let kind = self.handler_type(type_id)?.kind;
        if kind != HandlerKind::Mmio {
            return Err(PhysError::HandlerKindMismatch {
                kind: kind.name(),
                what: "an MMIO range".into(),
            });
        }
        let last = check_range(start, size)?;
        self.check_free(start, size)?;
        self.handlers.insert(HandlerRange {
            first: start,
            last,
            type_id,
            user,
            desc: name.to_owned(),
        })?;
        self.insert_range(start, size, name, Backing::Mmio)
            .inspect_err(|_| {
                let _ = self.handlers.remove(start);
            })
    }

    /// Registers device-owned RAM (not yet mapped into the guest).
    pub fn register_mmio2(&mut self, size: u64, name: &str) -> Result<Mmio2Id, PhysError> {
        check_range(0, size)?;
        let mem = Memory::allocate(&*self.host, size, PageType::Mmio2)?;
        self.mmio2.push(Mmio2Entry {
            name: name.to_owned(),
            mem: Arc::new(mem),
            mapped: None,
        });
        Ok(Mmio2Id(self.mmio2.len() as u32 - 1))
    }

    fn mmio2_entry(&self, id: Mmio2Id) -> Result<&Mmio2Entry, PhysError> {
        self.mmio2
            .get(id.0 as usize)
            .ok_or_else(|| PhysError::NoSuchRange(format!("MMIO2 region {}", id.0)))
    }

    /// The host memory of an MMIO2 region, for the owning device.
    pub fn mmio2_memory(&self, id: Mmio2Id) -> Result<Arc<TrackedRegion>, PhysError> {
        Ok(self.mmio2_entry(id)?.mem.region.clone())
    }

    /// Maps MMIO2 region `id` at `start`.
    pub fn map_mmio2(&mut self, id: Mmio2Id, start: u64) -> Result<RangeId, PhysError> {
        let entry = self.mmio2_entry(id)?;
        if entry.mapped.is_some() {
            return Err(PhysError::NoSuchRange(format!(
                "MMIO2 region '{}' is already mapped",
                entry.name
            )));
        }
        let (mem, name, size) = (entry.mem.clone(), entry.name.clone(), entry.mem.size());
        let rid = self.insert_range(start, size, &name, Backing::Mmio2 { id, mem })?;
        self.mmio2[id.0 as usize].mapped = Some(rid);
        Ok(rid)
    }

    /// Unmaps MMIO2 region `id`; its memory stays with the device.
    pub fn unmap_mmio2(&mut self, id: Mmio2Id) -> Result<(), PhysError> {
        let rid = self
            .mmio2_entry(id)?
            .mapped
            .ok_or_else(|| PhysError::NoSuchRange(format!("MMIO2 region {} not mapped", id.0)))?;
        self.remove_range(rid)
    }

    /// Removes a range (RAM, ROM, MMIO or MMIO2) and its handlers.
    pub fn remove_range(&mut self, id: RangeId) -> Result<(), PhysError> {
        let idx = self
            .ranges
            .iter()
            .position(|r| r.id == id)
            .ok_or_else(|| PhysError::NoSuchRange(id.to_string()))?;
        let (first, last) = (self.ranges[idx].start, self.ranges[idx].last());
        let covered: Vec<u64> = self
            .handlers
            .iter()
            .filter(|h| h.first <= last && first <= h.last)
            .map(|h| h.first)
            .collect();
        for h in covered {
            self.handlers.remove(h)?;
        }
        let range = self.ranges.remove(idx);
        self.starts.remove(idx);
        if let Backing::Mmio2 { id, mem } = range.backing {
            for p in mem.pages.iter() {
                p.update(|mut i| {
                    i.handler = PageHandlerState::None;
                    i
                });
            }
            if let Some(e) = self.mmio2.get_mut(id.0 as usize) {
                e.mapped = None;
            }
        }
        self.refresh_slots();
        Ok(())
    }

    /// All ranges in address order.
    pub fn ranges(&self) -> Vec<RangeInfo> {
        self.ranges.iter().map(RangeInfo::from).collect()
    }

    /// The descriptor of the page containing `gpa` (MMIO and unassigned pages
    /// are synthesised).
    pub fn page_info(&self, gpa: u64) -> PageInfo {
        let gpa = gpa & self.a20_mask();
        let Some(range) = self.range_at(gpa) else {
            return PageInfo::new(PageType::Unassigned, super::page::PageState::Zero);
        };
        let mem = match &range.backing {
            Backing::Rom { rom, .. } => Some(rom),
            _ => range.writable_memory(),
        };
        match mem.and_then(|m| m.page(gpa - range.start)) {
            Some(slot) => slot.get(),
            None => {
                let mut i = PageInfo::new(PageType::Mmio, super::page::PageState::Zero);
                i.handler = PageHandlerState::All;
                i
            }
        }
    }

    /// Descriptor of the shadow page of the ROM page containing `gpa`.
    pub fn rom_shadow_page_info(&self, gpa: u64) -> Option<PageInfo> {
        let range = self.range_at(gpa)?;
        match &range.backing {
            Backing::Rom { shadow, .. } => shadow.page(gpa - range.start).map(|s| s.get()),
            _ => None,
        }
    }

    /// Host memory spent on page tracking, in bytes (for the 16-bytes-per-page
    /// budget).
    pub fn tracking_bytes(&self) -> usize {
        let pages: usize = self
            .ranges
            .iter()
            .filter_map(|r| match &r.backing {
                Backing::Rom { rom, shadow, .. } => Some(rom.pages.len() + shadow.pages.len()),
                _ => r.writable_memory().map(|m| m.pages.len()),
            })
            .sum();
        pages * std::mem::size_of::<super::page::PageSlot>()
            + self.ranges.len() * std::mem::size_of::<PhysRange>()
    }

    /// Number of guest pages backed by memory (RAM, ROM, MMIO2).
    pub fn memory_pages(&self) -> u64 {
        self.ranges
            .iter()
            .filter(|r| r.kind() != RangeKind::Mmio)
            .map(|r| r.size >> PAGE_SHIFT)
            .sum()
    }
}

#[cfg(test)]
mod tests;
