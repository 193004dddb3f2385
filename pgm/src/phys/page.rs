//! Per-page tracking: type, state, handler state and dirty bit packed into
//! one 32-bit atomic word per 4 KiB guest page.

use std::sync::atomic::{AtomicU32, Ordering};

/// Guest page size.
pub const PAGE_SIZE: u64 = 4096;
/// `log2(PAGE_SIZE)`.
pub const PAGE_SHIFT: u32 = 12;
/// Mask of the offset bits within a page.
pub const PAGE_OFFSET_MASK: u64 = PAGE_SIZE - 1;

/// What a guest page is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageType {
    /// Not mapped: reads as 0xFF, writes are dropped.
    Unassigned,
    /// Ordinary guest RAM.
    Ram,
    /// Handler-backed device memory (no host memory).
    Mmio,
    /// Device-owned RAM mapped into the guest.
    Mmio2,
    /// ROM image.
    Rom,
    /// RAM shadowing a ROM page.
    RomShadow,
}

impl PageType {
    const ALL: [PageType; 6] = [
        Self::Unassigned,
        Self::Ram,
        Self::Mmio,
        Self::Mmio2,
        Self::Rom,
        Self::RomShadow,
    ];

    /// Short name, as printed by the `phys` info handler.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unassigned => "unassigned",
            Self::Ram => "RAM",
            Self::Mmio => "MMIO",
            Self::Mmio2 => "MMIO2",
            Self::Rom => "ROM",
            Self::RomShadow => "ROM-shadow",
        }
    }

    fn bits(self) -> u32 {
        self as u32
    }
}

/// Backing state of a guest page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageState {
    /// Reads as zero; costs no host memory.
    Zero,
    /// Host memory backs the page.
    Allocated,
    /// Allocated and armed for write monitoring (live save).
    WriteMonitored,
    /// Shared with other pages (copy on write); reserved for page sharing.
    Shared,
    /// Given back to the host by the guest's balloon driver.
    Ballooned,
}

impl PageState {
    /// All states, in encoding order.
    pub const ALL: [PageState; 5] = [
        Self::Zero,
        Self::Allocated,
        Self::WriteMonitored,
        Self::Shared,
        Self::Ballooned,
    ];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Zero => "zero",
            Self::Allocated => "allocated",
            Self::WriteMonitored => "write-monitored",
            Self::Shared => "shared",
            Self::Ballooned => "ballooned",
        }
    }

    fn bits(self) -> u32 {
        self as u32
    }
}

/// Which physical access handler covers a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageHandlerState {
    /// No handler: the guest accesses the page directly.
    None,
    /// Writes go through a handler.
    Write,
    /// All accesses go through a handler.
    All,
}

impl PageHandlerState {
    const ALL: [PageHandlerState; 3] = [Self::None, Self::Write, Self::All];
}

/// Decoded page descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageInfo {
    /// Page type.
    pub page_type: PageType,
    /// Backing state.
    pub state: PageState,
    /// Handler coverage.
    pub handler: PageHandlerState,
    /// Written since write monitoring was last armed.
    pub dirty: bool,
}

const TYPE_SHIFT: u32 = 0;
const STATE_SHIFT: u32 = 4;
const HANDLER_SHIFT: u32 = 8;
const DIRTY_BIT: u32 = 1 << 12;
const FIELD_MASK: u32 = 0xf;

impl PageInfo {
    /// A fresh page of `page_type` in `state` with no handler.
    pub fn new(page_type: PageType, state: PageState) -> Self {
        Self {
            page_type,
            state,
            handler: PageHandlerState::None,
            dirty: false,
        }
    }

    /// The same descriptor with another page type.
    pub fn with_type(mut self, page_type: PageType) -> Self {
        self.page_type = page_type;
        self
    }

    fn pack(self) -> u32 {
        (self.page_type.bits() << TYPE_SHIFT)
            | (self.state.bits() << STATE_SHIFT)
            | ((self.handler as u32) << HANDLER_SHIFT)
            | if self.dirty { DIRTY_BIT } else { 0 }
    }

    fn unpack(word: u32) -> Self {
        let field = |shift: u32| ((word >> shift) & FIELD_MASK) as usize;
        Self {
            page_type: PageType::ALL
                .get(field(TYPE_SHIFT))
                .copied()
                .unwrap_or(PageType::Unassigned),
            state: PageState::ALL
                .get(field(STATE_SHIFT))
                .copied()
                .unwrap_or(PageState::Allocated),
            handler: PageHandlerState::ALL
                .get(field(HANDLER_SHIFT))
                .copied()
                .unwrap_or(PageHandlerState::All),
            dirty: word & DIRTY_BIT != 0,
        }
    }
}

/// One tracked page: a packed [`PageInfo`] in an atomic word, so that
/// accesses through `&PhysMap` can update page state.
#[derive(Debug)]
pub struct PageSlot(AtomicU32);

impl PageSlot {
    /// A slot holding `info`.
    pub fn new(info: PageInfo) -> Self {
        Self(AtomicU32::new(info.pack()))
    }

    /// Current descriptor.
    #[inline]
    pub fn get(&self) -> PageInfo {
        PageInfo::unpack(self.0.load(Ordering::Acquire))
    }

    /// Replaces the descriptor.
    pub fn set(&self, info: PageInfo) {
        self.0.store(info.pack(), Ordering::Release);
    }

    /// Atomically applies `f`; returns the previous descriptor.
    pub fn update(&self, mut f: impl FnMut(PageInfo) -> PageInfo) -> PageInfo {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let new = f(PageInfo::unpack(cur)).pack();
            match self
                .0
                .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(old) => return PageInfo::unpack(old),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Records a write: the page becomes allocated and dirty.
    #[inline]
    pub fn note_write(&self) {
        let info = self.get();
        if info.state != PageState::Allocated || !info.dirty {
            self.update(|mut i| {
                i.state = PageState::Allocated;
                i.dirty = true;
                i
            });
        }
    }
}

/// Number of pages covering `size` bytes (rounded up).
pub fn pages_for(size: u64) -> u64 {
    size.div_ceil(PAGE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tracking_costs_at_most_16_bytes_per_page() {
        assert!(std::mem::size_of::<PageSlot>() <= 16);
    }

    #[test]
    fn note_write_allocates_and_dirties() {
        let s = PageSlot::new(PageInfo::new(PageType::Ram, PageState::Zero));
        s.note_write();
        let i = s.get();
        assert_eq!(i.state, PageState::Allocated);
        assert!(i.dirty);
        assert_eq!(i.page_type, PageType::Ram);
    }

    proptest! {
        #[test]
        fn pack_roundtrips(t in 0usize..6, st in 0usize..5, h in 0usize..3, dirty: bool) {
            let info = PageInfo {
                page_type: PageType::ALL[t],
                state: PageState::ALL[st],
                handler: PageHandlerState::ALL[h],
                dirty,
            };
            let slot = PageSlot::new(info);
            prop_assert_eq!(slot.get(), info);
        }
    }
}
