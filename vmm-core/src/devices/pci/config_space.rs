//! A type-0 PCI configuration space: 256 bytes with a mask of the bits the
//! guest may write, a mask of the bits it clears by writing ones (status),
//! base address registers with the sizing protocol, and a capability list.

use super::PciError;

/// Bytes in a function's (conventional) configuration space.
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Base address registers of a type-0 header.
pub const BAR_COUNT: usize = 6;

const VENDOR_ID: usize = 0x00;
const DEVICE_ID: usize = 0x02;
const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const REVISION: usize = 0x08;
const CLASS: usize = 0x09;
const CACHE_LINE_SIZE: usize = 0x0c;
const LATENCY_TIMER: usize = 0x0d;
const HEADER_TYPE: usize = 0x0e;
const BAR0: usize = 0x10;
const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
const SUBSYSTEM_ID: usize = 0x2e;
const CAPABILITIES_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
const INTERRUPT_PIN: usize = 0x3d;
/// Capabilities go after the standard header.
const CAPABILITIES_START: usize = 0x40;

/// Command bits a guest may set: I/O space, memory space, bus master,
/// parity error response, SERR# enable and interrupt disable.
const COMMAND_WRITABLE: u16 = 0x0001 | 0x0002 | 0x0004 | 0x0040 | 0x0100 | 0x0400;
/// Status bits a guest clears by writing ones: master data parity error,
/// signaled and received target abort, received master abort, signaled
/// system error, detected parity error.
const STATUS_WRITE_ONE_TO_CLEAR: u16 = 0x0100 | 0x0800 | 0x1000 | 0x2000 | 0x4000 | 0x8000;
/// Status bit: the function has a capability list.
const STATUS_CAPABILITIES: u16 = 0x0010;

/// BAR bit 0: the BAR is an I/O BAR.
const BAR_IO: u32 = 0x1;
/// Memory BAR type bits: a 64-bit BAR.
const BAR_MEM_64: u32 = 0x4;
/// Memory BAR bit 3: prefetchable.
const BAR_PREFETCHABLE: u32 = 0x8;

/// What a function is: the read-only identity fields of its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision ID.
    pub revision: u8,
    /// Base class code.
    pub class: u8,
    /// Sub-class code.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

/// The kind of a base address register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// I/O ports (4 to 256 bytes).
    Io,
    /// Memory below 4 GiB.
    Memory32 {
        /// Reads have no side effects.
        prefetchable: bool,
    },
    /// Memory anywhere (takes this BAR and the next one).
    Memory64 {
        /// Reads have no side effects.
        prefetchable: bool,
    },
}

impl BarKind {
    /// The read-only low bits of the BAR register.
    fn type_bits(self) -> u32 {
        let prefetch = |p: bool| if p { BAR_PREFETCHABLE } else { 0 };
        match self {
            BarKind::Io => BAR_IO,
            BarKind::Memory32 { prefetchable } => prefetch(prefetchable),
            BarKind::Memory64 { prefetchable } => BAR_MEM_64 | prefetch(prefetchable),
        }
    }

    /// The sizes a BAR of this kind may have.
    fn sizes(self) -> std::ops::RangeInclusive<u64> {
        match self {
            BarKind::Io => 4..=256,
            BarKind::Memory32 { .. } => 16..=1 << 31,
            BarKind::Memory64 { .. } => 16..=1 << 63,
        }
    }
}

/// A base address register as the guest has programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// Which BAR (0 to 5; a 64-bit BAR also takes the next one).
    pub index: usize,
    /// I/O or memory, 32 or 64 bits.
    pub kind: BarKind,
    /// Bytes it decodes (a power of two).
    pub size: u64,
    /// Where the guest placed it.
    pub address: u64,
}

/// A type-0 configuration space.
///
/// ```
/// use vmm_core::devices::pci::{BarKind, ConfigSpace, Identity};
///
/// let id = Identity { vendor: 0x1b36, device: 0x0008, revision: 0, class: 6,
///     subclass: 0, prog_if: 0, subsystem_vendor: 0x1af4, subsystem: 0x1100 };
/// let mut config = ConfigSpace::new(id);
/// config.add_bar(0, BarKind::Memory32 { prefetchable: false }, 0x1000)?;
/// config.write(0x10, &[0xff; 4]);
/// let mut size = [0; 4];
/// config.read(0x10, &mut size);
/// assert_eq!(u32::from_le_bytes(size), 0xffff_f000);
/// # Ok::<(), vmm_core::devices::pci::PciError>(())
/// ```
pub struct ConfigSpace {
    regs: [u8; CONFIG_SPACE_SIZE],
    /// Bits the guest may write.
    writable: [u8; CONFIG_SPACE_SIZE],
    /// Bits the guest clears by writing ones.
    write_one_to_clear: [u8; CONFIG_SPACE_SIZE],
    /// What a reset goes back to.
    power_on: [u8; CONFIG_SPACE_SIZE],
    bars: [Option<(BarKind, u64)>; BAR_COUNT],
    /// Where the next capability goes.
    next_capability: usize,
    /// The `next` pointer of the last capability (0x34 while there is none).
    last_link: usize,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("identity", &self.identity())
            .field("bars", &self.bars())
            .finish_non_exhaustive()
    }
}

impl ConfigSpace {
    /// A header for `id`: single-function type 0, nothing enabled, no BARs
    /// and no capabilities.
    pub fn new(id: Identity) -> Self {
        let mut c = ConfigSpace {
            regs: [0; CONFIG_SPACE_SIZE],
            writable: [0; CONFIG_SPACE_SIZE],
            write_one_to_clear: [0; CONFIG_SPACE_SIZE],
            power_on: [0; CONFIG_SPACE_SIZE],
            bars: [None; BAR_COUNT],
            next_capability: CAPABILITIES_START,
            last_link: CAPABILITIES_POINTER,
        };
        c.set_u16(VENDOR_ID, id.vendor);
        c.set_u16(DEVICE_ID, id.device);
        c.regs[REVISION] = id.revision;
        c.regs[CLASS..CLASS + 3].copy_from_slice(&[id.prog_if, id.subclass, id.class]);
        c.regs[HEADER_TYPE] = 0;
        c.set_u16(SUBSYSTEM_VENDOR_ID, id.subsystem_vendor);
        c.set_u16(SUBSYSTEM_ID, id.subsystem);
        c.writable[COMMAND..COMMAND + 2].copy_from_slice(&COMMAND_WRITABLE.to_le_bytes());
        c.write_one_to_clear[STATUS..STATUS + 2]
            .copy_from_slice(&STATUS_WRITE_ONE_TO_CLEAR.to_le_bytes());
        for reg in [CACHE_LINE_SIZE, LATENCY_TIMER, INTERRUPT_LINE] {
            c.writable[reg] = 0xff;
        }
        c.power_on = c.regs;
        c
    }

    /// The identity fields.
    pub fn identity(&self) -> Identity {
        identity_of(&self.regs)
    }

    /// Gives the function BAR `index` of `kind` decoding `size` bytes (a
    /// power of two within the kind's limits). A step of building the
    /// function: what the space holds then becomes its power-on state.
    pub fn add_bar(&mut self, index: usize, kind: BarKind, size: u64) -> Result<(), PciError> {
        let slots = if matches!(kind, BarKind::Memory64 { .. }) {
            2
        } else {
            1
        };
        if index + slots > BAR_COUNT {
            return Err(PciError::BarIndex { index, kind });
        }
        if !size.is_power_of_two() || !kind.sizes().contains(&size) {
            return Err(PciError::BarSize { index, kind, size });
        }
        if (index..index + slots).any(|i| self.bar_slot_taken(i)) {
            return Err(PciError::BarTaken { index });
        }
        // Sizes are at least 4 (I/O) and 16 (memory): the type bits stay
        // read-only.
        let mask = !(size - 1);
        let offset = BAR0 + 4 * index;
        self.set_u32(offset, kind.type_bits());
        self.writable[offset..offset + 4].copy_from_slice(&(mask as u32).to_le_bytes());
        if slots == 2 {
            let high = (mask >> 32) as u32;
            self.writable[offset + 4..offset + 8].copy_from_slice(&high.to_le_bytes());
        }
        self.bars[index] = Some((kind, size));
        self.power_on = self.regs;
        Ok(())
    }

    /// Whether BAR register `i` is in use (by its own BAR or as the upper
    /// half of a 64-bit one).
    fn bar_slot_taken(&self, i: usize) -> bool {
        self.bars[i].is_some()
            || i.checked_sub(1)
                .and_then(|p| self.bars[p])
                .is_some_and(|(kind, _)| matches!(kind, BarKind::Memory64 { .. }))
    }

    /// The BARs with the addresses the guest gave them.
    pub fn bars(&self) -> Vec<Bar> {
        let bars = self.bars.iter().enumerate();
        bars.filter_map(|(index, bar)| {
            let (kind, size) = (*bar)?;
            let offset = BAR0 + 4 * index;
            let low = u64::from(self.u32_at(offset) & !kind.type_bits());
            let address = match kind {
                BarKind::Memory64 { .. } => low | u64::from(self.u32_at(offset + 4)) << 32,
                _ => low,
            };
            Some(Bar {
                index,
                kind,
                size,
                address,
            })
        })
        .collect()
    }

    /// Adds a capability with `id` and `body` (the bytes after its ID and
    /// next pointer), of which the guest may write the bits in `writable`
    /// (as long as `body`); returns its offset. A step of building the
    /// function, as [`add_bar`](Self::add_bar) is.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[u8]) -> Result<u8, PciError> {
        let at = self.next_capability;
        let end = (at + 2 + body.len()).next_multiple_of(4);
        if writable.len() != body.len() || end > CONFIG_SPACE_SIZE {
            return Err(PciError::CapabilitySpace {
                id,
                len: body.len(),
            });
        }
        self.regs[at] = id;
        self.regs[at + 2..at + 2 + body.len()].copy_from_slice(body);
        self.writable[at + 2..at + 2 + body.len()].copy_from_slice(writable);
        // `at` < 256: it fits the pointer byte.
        self.regs[self.last_link] = at as u8;
        self.last_link = at + 1;
        self.next_capability = end;
        let status = u16_at(&self.regs, STATUS) | STATUS_CAPABILITIES;
        self.set_u16(STATUS, status);
        self.power_on = self.regs;
        Ok(at as u8)
    }

    /// Sets the (read-only) interrupt pin register: 1 for INTA# to 4 for
    /// INTD#, 0 for none. A step of building the function.
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.regs[INTERRUPT_PIN] = pin;
        self.power_on = self.regs;
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the end read as
    /// all ones.
    pub fn read(&self, offset: u8, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self
                .regs
                .get(usize::from(offset) + i)
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// Writes `data` at `offset`: only the writable bits change, ones
    /// clear write-one-to-clear bits, bytes past the end are dropped.
    pub fn write(&mut self, offset: u8, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let at = usize::from(offset) + i;
            let Some(reg) = self.regs.get_mut(at) else {
                return;
            };
            let (writable, clear) = (self.writable[at], self.write_one_to_clear[at]);
            *reg = (*reg & !writable | value & writable) & !(value & clear);
        }
    }

    /// Back to the power-on values (machine reset).
    pub fn reset(&mut self) {
        self.regs = self.power_on;
    }

    /// The whole space, as saved.
    pub fn bytes(&self) -> &[u8; CONFIG_SPACE_SIZE] {
        &self.regs
    }

    /// Takes the guest-changeable bits (writable and write-one-to-clear)
    /// from `saved`; everything else stays this function's own. Refused if
    /// `saved` is of another function.
    pub fn restore(&mut self, saved: &[u8; CONFIG_SPACE_SIZE]) -> Result<(), PciError> {
        if identity_of(saved) != self.identity() {
            return Err(PciError::RestoreIdentity {
                saved: identity_of(saved),
                ours: self.identity(),
            });
        }
        for (at, reg) in self.regs.iter_mut().enumerate() {
            let kept = self.writable[at] | self.write_one_to_clear[at];
            *reg = *reg & !kept | saved[at] & kept;
        }
        Ok(())
    }

    fn u32_at(&self, at: usize) -> u32 {
        let mut b = [0; 4];
        b.copy_from_slice(&self.regs[at..at + 4]);
        u32::from_le_bytes(b)
    }

    fn set_u16(&mut self, at: usize, v: u16) {
        self.regs[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set_u32(&mut self, at: usize, v: u32) {
        self.regs[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
}

fn u16_at(regs: &[u8; CONFIG_SPACE_SIZE], at: usize) -> u16 {
    u16::from_le_bytes([regs[at], regs[at + 1]])
}

/// The identity fields of the space `regs`.
fn identity_of(regs: &[u8; CONFIG_SPACE_SIZE]) -> Identity {
    Identity {
        vendor: u16_at(regs, VENDOR_ID),
        device: u16_at(regs, DEVICE_ID),
        revision: regs[REVISION],
        prog_if: regs[CLASS],
        subclass: regs[CLASS + 1],
        class: regs[CLASS + 2],
        subsystem_vendor: u16_at(regs, SUBSYSTEM_VENDOR_ID),
        subsystem: u16_at(regs, SUBSYSTEM_ID),
    }
}

#[cfg(test)]
#[path = "config_space_tests.rs"]
mod tests;
