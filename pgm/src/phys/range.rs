//! Guest-physical ranges and the host memory behind them.

use std::fmt;
use std::sync::Arc;

use super::write_bitmap::TrackedRegion;

use super::error::PhysError;
use super::host::HostMemory;
use super::page::{PAGE_SHIFT, PageInfo, PageSlot, PageState, PageType, pages_for};

/// Protection mode of a shadowed ROM range (VirtualBox's `PGMROMPROT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RomProtection {
    /// Reads see the ROM image, writes are ignored.
    ReadRomWriteIgnore,
    /// Reads see the ROM image, writes land in the shadow RAM.
    ReadRomWriteRam,
    /// Reads see the shadow RAM, writes are ignored.
    ReadRamWriteIgnore,
    /// Reads and writes use the shadow RAM.
    ReadRamWriteRam,
}

impl RomProtection {
    /// Whether reads see the ROM image (rather than the shadow).
    pub fn reads_rom(self) -> bool {
        matches!(self, Self::ReadRomWriteIgnore | Self::ReadRomWriteRam)
    }

    /// Whether writes land in the shadow RAM (rather than being dropped).
    pub fn writes_ram(self) -> bool {
        matches!(self, Self::ReadRomWriteRam | Self::ReadRamWriteRam)
    }

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Self::ReadRomWriteIgnore => "read-ROM/write-ignore",
            Self::ReadRomWriteRam => "read-ROM/write-RAM",
            Self::ReadRamWriteIgnore => "read-RAM/write-ignore",
            Self::ReadRamWriteRam => "read-RAM/write-RAM",
        }
    }
}

/// Kind of a guest-physical range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RangeKind {
    /// Guest RAM.
    Ram,
    /// ROM with a shadow RAM copy.
    Rom,
    /// Handler-backed device memory.
    Mmio,
    /// Device-owned RAM mapped into the guest.
    Mmio2,
}

impl RangeKind {
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ram => "RAM",
            Self::Rom => "ROM",
            Self::Mmio => "MMIO",
            Self::Mmio2 => "MMIO2",
        }
    }
}

/// Identifies a range in the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RangeId(pub(crate) u32);

impl fmt::Display for RangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "range#{}", self.0)
    }
}

/// Host memory plus one tracked page per 4 KiB.
#[derive(Debug)]
pub(crate) struct Memory {
    pub(crate) region: Arc<TrackedRegion>,
    pub(crate) pages: Box<[PageSlot]>,
}

impl Memory {
    pub(crate) fn allocate(
        host: &dyn HostMemory,
        size: u64,
        page_type: PageType,
    ) -> Result<Self, PhysError> {
        let region = host.allocate(size)?;
        let pages = (0..pages_for(size))
            .map(|_| PageSlot::new(PageInfo::new(page_type, PageState::Zero)))
            .collect();
        Ok(Self { region, pages })
    }

    pub(crate) fn size(&self) -> u64 {
        self.region.size() as u64
    }

    #[inline]
    pub(crate) fn page(&self, offset: u64) -> Option<&PageSlot> {
        self.pages.get(usize::try_from(offset >> PAGE_SHIFT).ok()?)
    }

    /// Host pointer of `offset..offset + len`, if that lies inside.
    #[inline]
    fn span(&self, offset: u64, len: usize) -> Option<*mut u8> {
        let off = usize::try_from(offset).ok()?;
        let end = off.checked_add(len)?;
        // SAFETY: `off..end` was just checked to lie within the mapping.
        (end <= self.region.size()).then(|| unsafe { self.region.as_ptr().add(off) })
    }

    /// Copies guest bytes at `offset` into `buf`; false if out of bounds.
    #[inline]
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) -> bool {
        let Some(src) = self.span(offset, buf.len()) else {
            return false;
        };
        // SAFETY: `src..src + len` is inside the live mapping (checked by
        // `span`), `buf` is a distinct Rust allocation, and any byte value is
        // valid for `u8`.
        unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        true
    }

    /// Copies `data` into guest memory at `offset`; false if out of bounds.
    #[inline]
    pub(crate) fn write(&self, offset: u64, data: &[u8]) -> bool {
        let Some(dst) = self.span(offset, data.len()) else {
            return false;
        };
        // SAFETY: as in `read`; the mapping is writable (anonymous
        // read-write) and does not alias `data`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        true
    }

    /// Whether the page at `offset` holds only zero bytes.
    pub(crate) fn page_is_zero(&self, offset: u64) -> bool {
        let Some(p) = self.span(offset, super::page::PAGE_SIZE as usize) else {
            return false;
        };
        let words = p.cast::<u64>();
        (0..super::page::PAGE_SIZE as usize / 8).all(|i| {
            // SAFETY: the page lies inside the mapping, which is page
            // aligned, so every u64 read is aligned and in bounds. Volatile
            // because the guest may share the memory.
            unsafe { words.add(i).read_volatile() == 0 }
        })
    }

    /// Host address of the first byte.
    pub(crate) fn host_addr(&self) -> u64 {
        self.region.as_ptr() as u64
    }
}

/// Registered MMIO2 memory (device-owned RAM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mmio2Id(pub(crate) u32);

#[derive(Debug)]
pub(crate) enum Backing {
    Ram(Memory),
    Rom {
        rom: Memory,
        shadow: Memory,
        prot: RomProtection,
        initial: RomProtection,
    },
    Mmio,
    Mmio2 {
        id: Mmio2Id,
        mem: Arc<Memory>,
    },
}

/// One range of the guest-physical map.
#[derive(Debug)]
pub(crate) struct PhysRange {
    pub(crate) id: RangeId,
    pub(crate) start: u64,
    pub(crate) size: u64,
    pub(crate) name: String,
    pub(crate) backing: Backing,
}

impl PhysRange {
    pub(crate) fn last(&self) -> u64 {
        self.start + (self.size - 1)
    }

    pub(crate) fn kind(&self) -> RangeKind {
        match self.backing {
            Backing::Ram(_) => RangeKind::Ram,
            Backing::Rom { .. } => RangeKind::Rom,
            Backing::Mmio => RangeKind::Mmio,
            Backing::Mmio2 { .. } => RangeKind::Mmio2,
        }
    }

    /// Memory whose page states the guest changes by writing (RAM, MMIO2,
    /// ROM shadow).
    pub(crate) fn writable_memory(&self) -> Option<&Memory> {
        match &self.backing {
            Backing::Ram(m) => Some(m),
            Backing::Mmio2 { mem, .. } => Some(mem),
            Backing::Rom { shadow, .. } => Some(shadow),
            Backing::Mmio => None,
        }
    }

    /// Memory the guest currently reads.
    pub(crate) fn readable_memory(&self) -> Option<&Memory> {
        match &self.backing {
            Backing::Ram(m) => Some(m),
            Backing::Mmio2 { mem, .. } => Some(mem),
            Backing::Rom {
                rom, shadow, prot, ..
            } => Some(if prot.reads_rom() { rom } else { shadow }),
            Backing::Mmio => None,
        }
    }
}

/// Public description of a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeInfo {
    /// Range id.
    pub id: RangeId,
    /// Kind.
    pub kind: RangeKind,
    /// First byte.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// Name.
    pub name: String,
    /// ROM protection, for ROM ranges.
    pub rom_protection: Option<RomProtection>,
}

impl From<&PhysRange> for RangeInfo {
    fn from(r: &PhysRange) -> Self {
        Self {
            id: r.id,
            kind: r.kind(),
            start: r.start,
            size: r.size,
            name: r.name.clone(),
            rom_protection: match r.backing {
                Backing::Rom { prot, .. } => Some(prot),
                _ => None,
            },
        }
    }
}
