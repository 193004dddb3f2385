//! [`PciPlatform`]: bus 0 placed in the machine. It maps the ECAM, gives
//! each function's memory BARs addresses from the PCI windows (with
//! `vm-allocator`, as firmware would), and keeps one `pgm` MMIO range per
//! decoding BAR in step with what the guest programs: a moved BAR moves
//! its range, turning memory decoding off removes it, and the function is
//! told ([`PciFunction::bar_mapped`]) so that it can move what hangs on
//! the address (ioeventfds).
//!
//! Locks: a BAR or ECAM access runs with `pgm`'s map read-locked and takes
//! the bus lock; changing ranges needs the map write-locked. So ranges are
//! never changed from inside an access: the bus notes that a command or
//! BAR register was written, and [`PciPlatform::sync`] runs after the
//! access, with neither lock held (after the port access for mechanism #1,
//! from the MMIO-exit hook for ECAM).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use pgm::phys::{HandlerAction, HandlerKind, HandlerTypeId, RangeId, SharedPhysMap};
use vm_allocator::{AddressAllocator, AllocPolicy};

use super::layout::{ECAM_BASE, ECAM_SIZE, MMIO32_WINDOW, mmio64_window};
use super::{BarKind, DevFn, PciBus, PciError, PciFunction, ecam};
use crate::devices::{DeviceAction, PioDevice};

/// Command register bit: memory space decoding.
const COMMAND_MEMORY: u16 = 0x2;
/// Offset of the command register and of BAR 0.
const COMMAND: u8 = 0x04;
const BAR0: u8 = 0x10;

/// A BAR decoding in guest-physical space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapping {
    address: u64,
    range: RangeId,
}

/// Bus 0 placed in the machine: ECAM, BAR placement and decoding.
pub struct PciPlatform {
    bus: Arc<Mutex<PciBus>>,
    map: SharedPhysMap,
    bar_handler: HandlerTypeId,
    mmio32: Mutex<AddressAllocator>,
    mmio64: Mutex<AddressAllocator>,
    /// The addresses given at [`add`](Self::add), programmed again at reset.
    assigned: Mutex<Vec<(DevFn, usize, u64)>>,
    mapped: Mutex<BTreeMap<(DevFn, usize), Mapping>>,
    /// An ECAM write happened (the decode may have changed).
    ecam_written: Arc<AtomicBool>,
}

/// The handler's user value of BAR `index` of function `at`.
fn bar_user(at: DevFn, index: usize) -> u64 {
    u64::from(at.bits()) << 8 | index as u64
}

fn map_error(e: impl std::fmt::Display) -> PciError {
    PciError::Map(e.to_string())
}

impl PciPlatform {
    /// Places `bus` in the machine whose guest-physical map is `map` and
    /// whose RAM ends at `ram_end`: maps the ECAM and registers the BAR
    /// handler.
    pub fn new(bus: PciBus, map: &SharedPhysMap, ram_end: u64) -> Result<Arc<Self>, PciError> {
        let bus = Arc::new(Mutex::new(bus));
        let ecam_written = Arc::new(AtomicBool::new(false));
        let (ecam_bus, written) = (Arc::clone(&bus), Arc::clone(&ecam_written));
        let mut m = map.write();
        let ecam = m.register_handler_type(HandlerKind::Mmio, "PCI ECAM", move |a| {
            if a.data.is_write() {
                written.store(true, Ordering::Release);
            }
            let data = a.data.sub(0, a.data.len());
            ecam::access(&mut ecam_bus.lock(), a.offset, data);
            Ok(HandlerAction::Handled)
        });
        m.map_mmio(ECAM_BASE, ECAM_SIZE, ecam, 0, "PCI ECAM")
            .map_err(map_error)?;
        let bar_bus = Arc::clone(&bus);
        let bar_handler = m.register_handler_type(HandlerKind::Mmio, "PCI BAR", move |a| {
            let at = DevFn::from_bits((a.user >> 8) as u8);
            let index = (a.user & 0xff) as usize;
            let data = a.data.sub(0, a.data.len());
            match bar_bus.lock().function_mut(at) {
                Some(f) => f.bar_access(index, a.offset, data),
                None => {
                    let mut data = data;
                    data.fill_read(0xff);
                }
            }
            Ok(HandlerAction::Handled)
        });
        drop(m);
        let window = |(start, size): (u64, u64)| {
            AddressAllocator::new(start, size).map_err(|e| map_error(format!("PCI window: {e}")))
        };
        Ok(Arc::new(PciPlatform {
            bus,
            map: Arc::clone(map),
            bar_handler,
            mmio32: Mutex::new(window(MMIO32_WINDOW)?),
            mmio64: Mutex::new(window(mmio64_window(ram_end))?),
            assigned: Mutex::default(),
            mapped: Mutex::default(),
            ecam_written,
        }))
    }

    /// The bus.
    pub fn bus(&self) -> &Arc<Mutex<PciBus>> {
        &self.bus
    }

    /// Puts `function` at `at` and gives its memory BARs addresses in the
    /// PCI windows (32-bit BARs below 4 GiB, 64-bit ones above RAM), with
    /// memory decoding on, as firmware leaves them.
    pub fn add(&self, at: DevFn, mut function: Box<dyn PciFunction>) -> Result<(), PciError> {
        let mut placed = Vec::new();
        for bar in function.bars() {
            let place = |reason: String| PciError::BarPlacement {
                function: at,
                index: bar.index,
                size: bar.size,
                reason,
            };
            let window = match bar.kind {
                BarKind::Io => return Err(place("I/O BARs are not supported".into())),
                BarKind::Memory32 { .. } => &self.mmio32,
                BarKind::Memory64 { .. } => &self.mmio64,
            };
            let range = window
                .lock()
                .allocate(bar.size, bar.size, AllocPolicy::FirstMatch)
                .map_err(|e| place(e.to_string()))?;
            placed.push((at, bar.index, range.start()));
        }
        for &(_, index, address) in &placed {
            program_bar(&mut *function, index, address);
        }
        enable_memory(&mut *function);
        self.bus.lock().add(at, function)?;
        self.assigned.lock().extend(placed);
        self.sync();
        Ok(())
    }

    /// Brings the BARs' `pgm` ranges in line with the configuration
    /// spaces if a command or BAR register was written.
    pub fn sync_if_changed(&self) {
        self.ecam_written.store(false, Ordering::Release);
        if self.bus.lock().take_decode_changed() {
            self.sync();
        }
    }

    /// Whether an ECAM write may have changed what decodes where (cheap:
    /// for the MMIO-exit hook).
    pub fn ecam_written(&self) -> bool {
        self.ecam_written.load(Ordering::Acquire)
    }

    /// Brings the BARs' `pgm` ranges in line with the configuration
    /// spaces: a memory BAR decodes where it points while its function has
    /// memory decoding on (a BAR at 0 or where `pgm` has something else
    /// decodes nowhere). Functions whose BARs changed are told.
    pub fn sync(&self) {
        let wanted = self.decoding();
        let mut mapped = self.mapped.lock();
        let mut changed = Vec::new();
        {
            let mut map = self.map.write();
            mapped.retain(|&key, m| {
                if wanted.get(&key).map(|w| w.0) == Some(m.address) {
                    return true;
                }
                if let Err(e) = map.remove_range(m.range) {
                    tracing::warn!("PCI {} BAR {}: {e}", key.0, key.1);
                }
                changed.push((key, None));
                false
            });
            for (&(at, index), &(address, size)) in &wanted {
                if mapped.contains_key(&(at, index)) {
                    continue;
                }
                let name = format!("PCI {at} BAR{index}");
                let user = bar_user(at, index);
                match map.map_mmio(address, size, self.bar_handler, user, &name) {
                    Ok(range) => {
                        mapped.insert((at, index), Mapping { address, range });
                        changed.push(((at, index), Some(address)));
                    }
                    Err(e) => tracing::debug!("{name} at {address:#x} does not decode: {e}"),
                }
            }
        }
        drop(mapped);
        let mut bus = self.bus.lock();
        for ((at, index), address) in changed {
            if let Some(f) = bus.function_mut(at) {
                f.bar_mapped(index, address);
            }
        }
    }

    /// Where each memory BAR should decode: `(function, BAR)` to
    /// `(address, size)`.
    fn decoding(&self) -> BTreeMap<(DevFn, usize), (u64, u64)> {
        let bus = self.bus.lock();
        let mut wanted = BTreeMap::new();
        for (at, f) in bus.functions() {
            let mut command = [0; 2];
            f.read_config(COMMAND, &mut command);
            if u16::from_le_bytes(command) & COMMAND_MEMORY == 0 {
                continue;
            }
            for bar in f.bars() {
                let fits = bar.address.checked_add(bar.size).is_some();
                if bar.kind != BarKind::Io && bar.address != 0 && fits {
                    wanted.insert((at, bar.index), (bar.address, bar.size));
                }
            }
        }
        wanted
    }

    /// Machine reset: every function back to power-on, the BARs at the
    /// addresses [`add`](Self::add) gave them, memory decoding on.
    pub fn reset(&self) {
        {
            let mut bus = self.bus.lock();
            bus.reset();
            for &(at, index, address) in self.assigned.lock().iter() {
                if let Some(f) = bus.function_mut(at) {
                    program_bar(f, index, address);
                    enable_memory(f);
                }
            }
        }
        self.sync();
    }

    /// The BARs decoding now: function, BAR and address.
    pub fn mapped_bars(&self) -> Vec<(DevFn, usize, u64)> {
        let mapped = self.mapped.lock();
        mapped.iter().map(|(k, m)| (k.0, k.1, m.address)).collect()
    }
}

/// Writes `address` into BAR `index` (both halves of a 64-bit BAR).
fn program_bar(f: &mut dyn PciFunction, index: usize, address: u64) {
    let reg = BAR0 + 4 * index as u8;
    f.write_config(reg, &(address as u32).to_le_bytes());
    let wide = f
        .bars()
        .iter()
        .any(|b| b.index == index && matches!(b.kind, BarKind::Memory64 { .. }));
    if wide {
        f.write_config(reg + 4, &((address >> 32) as u32).to_le_bytes());
    }
}

fn enable_memory(f: &mut dyn PciFunction) {
    let mut command = [0; 2];
    f.read_config(COMMAND, &mut command);
    let command = u16::from_le_bytes(command) | COMMAND_MEMORY;
    f.write_config(COMMAND, &command.to_le_bytes());
}

/// Configuration mechanism #1 on the port bus: the bus's ports, followed
/// by [`PciPlatform::sync_if_changed`] after each write.
pub struct PciConf1 {
    platform: Arc<PciPlatform>,
}

impl PciConf1 {
    /// Mechanism #1 of `platform`'s bus.
    pub fn new(platform: Arc<PciPlatform>) -> Self {
        PciConf1 { platform }
    }
}

impl PioDevice for PciConf1 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        self.platform.bus.lock().read(offset, data);
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        let action = self.platform.bus.lock().write(offset, data);
        self.platform.sync_if_changed();
        action
    }

    fn reset(&mut self) {
        self.platform.reset();
    }
}

#[cfg(test)]
#[path = "platform_tests.rs"]
mod tests;
