//! Bus 0 behind configuration mechanism #1: a dword address latch at
//! 0xCF8 and a data window at 0xCFC-0xCFF.

use std::collections::BTreeMap;

use super::{CONFIG_SPACE_SIZE, DevFn, HostBridge, PciError, PciFunction};
use crate::devices::{DeviceAction, PioDevice};

/// The first port of configuration mechanism #1 (the address latch; the
/// data window follows at 0xCFC).
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
/// Ports of the mechanism: address 0xCF8-0xCFB, data 0xCFC-0xCFF.
pub const PCI_CONFIG_PORTS: u16 = 8;

/// Offset of the data window from [`PCI_CONFIG_PORT`].
const DATA: u16 = 4;
/// Address bit 31: the data window reaches configuration space.
const ENABLE: u32 = 1 << 31;
/// Address bits that hold: enable, bus (23:16), device (15:11), function
/// (10:8) and dword register (7:2); the others read as zero.
const ADDRESS_BITS: u32 = ENABLE | 0x00ff_fffc;
/// The command register.
const COMMAND: u16 = 0x04;
/// The BAR registers of a type-0 header.
const BARS: (u16, u16) = (0x10, 0x28);

/// What the bus saves: the address latch and every function's
/// configuration space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciBusState {
    /// The value in the address latch.
    pub address: u32,
    /// Each function's configuration space, by address.
    pub functions: Vec<(DevFn, [u8; CONFIG_SPACE_SIZE])>,
}

/// PCI bus 0 with its configuration mechanism, attached to the I/O port
/// bus at [`PCI_CONFIG_PORT`].
///
/// ```
/// use vmm_core::devices::PioDevice;
/// use vmm_core::devices::pci::PciBus;
///
/// let mut bus = PciBus::with_host_bridge();
/// bus.write(0, &0x8000_0000u32.to_le_bytes()); // 00:00.0, register 0
/// let mut id = [0; 4];
/// bus.read(4, &mut id);
/// assert_eq!(u32::from_le_bytes(id), 0x0008_1b36);
/// ```
#[derive(Default)]
pub struct PciBus {
    address: u32,
    functions: BTreeMap<DevFn, Box<dyn PciFunction>>,
    /// A write reached a command or BAR register since
    /// [`take_decode_changed`](Self::take_decode_changed) last looked.
    decode_changed: bool,
}

/// Whether a configuration write of `len` bytes at `offset` touches the
/// command register or a BAR (what decides where BARs decode).
fn touches_decode(offset: u16, len: usize) -> bool {
    let end = offset + len as u16;
    let overlaps = |start: u16, stop: u16| offset < stop && start < end;
    overlaps(COMMAND, COMMAND + 2) || overlaps(BARS.0, BARS.1)
}

impl PciBus {
    /// A bus with nothing on it.
    pub fn new() -> Self {
        Self::default()
    }

    /// A bus with the [`HostBridge`] at 00:00.0.
    pub fn with_host_bridge() -> Self {
        let mut bus = Self::new();
        bus.functions
            .insert(DevFn::from_bits(0), Box::new(HostBridge::new()));
        bus
    }

    /// Puts `function` at `at`.
    pub fn add(&mut self, at: DevFn, function: Box<dyn PciFunction>) -> Result<(), PciError> {
        if self.functions.contains_key(&at) {
            return Err(PciError::SlotTaken(at));
        }
        self.functions.insert(at, function);
        Ok(())
    }

    /// The function the address latch selects and the byte offset of data
    /// lane `lane` in its space, if the latch is enabled and selects a
    /// present function on bus 0.
    fn selected(&mut self, lane: u16) -> Option<(&mut Box<dyn PciFunction>, u8)> {
        let a = self.address;
        let bus = (a >> 16) & 0xff;
        if a & ENABLE == 0 || bus != 0 {
            return None;
        }
        // Bits 15:8 are device and function; bits 7:2 the dword register.
        let devfn = DevFn::from_bits((a >> 8) as u8);
        let offset = (a as u8 & 0xfc) | lane as u8;
        self.functions.get_mut(&devfn).map(|f| (f, offset))
    }

    /// Reads configuration register bytes of function `at` from `offset`
    /// (0-4095, as ECAM reaches them): absent functions read all ones,
    /// the extended space past 256 bytes reads zero (no extended
    /// capabilities).
    pub fn config_read(&mut self, at: DevFn, offset: u16, data: &mut [u8]) {
        match self.functions.get_mut(&at) {
            None => data.fill(0xff),
            Some(_) if offset >= CONFIG_SPACE_SIZE as u16 => data.fill(0),
            Some(f) => f.read_config(offset as u8, data),
        }
    }

    /// Writes configuration register bytes of function `at` at `offset`;
    /// writes to absent functions or the extended space are dropped.
    pub fn config_write(&mut self, at: DevFn, offset: u16, data: &[u8]) {
        if offset >= CONFIG_SPACE_SIZE as u16 {
            return;
        }
        if let Some(f) = self.functions.get_mut(&at) {
            f.write_config(offset as u8, data);
            self.decode_changed |= touches_decode(offset, data.len());
        }
    }

    /// Whether a command or BAR register was written since the last call
    /// (BARs may decode elsewhere now); clears the flag.
    pub fn take_decode_changed(&mut self) -> bool {
        std::mem::take(&mut self.decode_changed)
    }

    /// The function at `at`.
    pub fn function_mut(&mut self, at: DevFn) -> Option<&mut (dyn PciFunction + 'static)> {
        self.functions.get_mut(&at).map(|f| &mut **f)
    }

    /// The functions in address order.
    pub fn functions(&self) -> impl Iterator<Item = (DevFn, &dyn PciFunction)> {
        self.functions.iter().map(|(&at, f)| (at, &**f))
    }

    /// What the bus saves.
    pub fn state(&self) -> PciBusState {
        PciBusState {
            address: self.address,
            functions: self
                .functions
                .iter()
                .map(|(&at, f)| (at, *f.config().bytes()))
                .collect(),
        }
    }

    /// Restores what [`state`](Self::state) returned: the same functions
    /// must be at the same addresses. On an error the bus is left partly
    /// restored (a failed restore discards the VM).
    pub fn set_state(&mut self, state: &PciBusState) -> Result<(), PciError> {
        let list = |it: &mut dyn Iterator<Item = DevFn>| {
            it.map(|at| at.to_string()).collect::<Vec<_>>().join(", ")
        };
        let saved = list(&mut state.functions.iter().map(|(at, _)| *at));
        let ours = list(&mut self.functions.keys().copied());
        if saved != ours {
            return Err(PciError::RestoreFunctions { saved, ours });
        }
        for (at, bytes) in &state.functions {
            if let Some(f) = self.functions.get_mut(at) {
                f.config_mut().restore(bytes)?;
            }
        }
        self.address = state.address & ADDRESS_BITS;
        self.decode_changed = true;
        Ok(())
    }
}

/// Whether an access of `len` bytes at `offset` stays inside one of the
/// two dword registers (accesses straddling them reach neither).
fn within_dword(offset: u16, len: usize) -> bool {
    usize::from(offset % 4) + len <= 4
}

impl PioDevice for PciBus {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
            return;
        }
        // A narrower access to 0xCF8-0xCFB is an ordinary I/O cycle that
        // nothing here decodes; so is a data access with the latch off,
        // beyond bus 0 or at an absent function.
        data.fill(0xff);
        if offset >= DATA
            && within_dword(offset, data.len())
            && let Some((f, at)) = self.selected(offset - DATA)
        {
            f.read_config(at, data);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        if offset == 0 && data.len() == 4 {
            let mut v = [0; 4];
            v.copy_from_slice(data);
            self.address = u32::from_le_bytes(v) & ADDRESS_BITS;
        } else if offset >= DATA
            && within_dword(offset, data.len())
            && let Some((f, at)) = self.selected(offset - DATA)
        {
            f.write_config(at, data);
            self.decode_changed |= touches_decode(u16::from(at), data.len());
        }
        DeviceAction::Continue
    }

    fn reset(&mut self) {
        self.address = 0;
        for f in self.functions.values_mut() {
            f.reset();
        }
        self.decode_changed = true;
    }
}

#[cfg(test)]
#[path = "bus_tests.rs"]
mod tests;
