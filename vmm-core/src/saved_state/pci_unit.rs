//! The `pci` saved-state unit: the configuration address latch and the
//! configuration space of every function on bus 0.

use std::sync::Arc;

use ssm::{Unit, UnitReader, UnitWriter};

use super::units::failed;
use crate::devices::pci::{CONFIG_SPACE_SIZE, DevFn, PciBusState, PciPlatform};

/// Functions bus 0 can hold (32 devices of 8 functions).
const MAX_FUNCTIONS: u16 = 256;

/// `pci`, version 1: the address latch (u32), the number of functions
/// (u16), then for each its address (device << 3 | function, u8) and its
/// 256 configuration-space bytes. A load restores the bits the guest can
/// change, refuses a bus with other functions, and lets the BARs decode
/// where the restored registers say.
pub(crate) struct PciUnit {
    pub(crate) platform: Arc<PciPlatform>,
}

impl Unit for PciUnit {
    fn name(&self) -> &str {
        "pci"
    }

    fn version(&self) -> u32 {
        1
    }

    fn save_exec(&mut self, w: &mut UnitWriter<'_>) -> ssm::Result<()> {
        let state = self.platform.bus().lock().state();
        let count = u16::try_from(state.functions.len()).map_err(failed)?;
        w.put_u32(state.address)?;
        w.put_u16(count)?;
        for (at, bytes) in &state.functions {
            w.put_u8(at.bits())?;
            w.put_bytes(bytes)?;
        }
        Ok(())
    }

    fn load_exec(&mut self, r: &mut UnitReader<'_>, _version: u32, _pass: u32) -> ssm::Result<()> {
        let address = r.get_u32()?;
        let count = r.get_u16()?;
        if count > MAX_FUNCTIONS {
            return Err(failed(format!(
                "{count} PCI functions saved, bus 0 holds {MAX_FUNCTIONS}"
            )));
        }
        let mut functions = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let at = DevFn::from_bits(r.get_u8()?);
            let mut bytes = [0; CONFIG_SPACE_SIZE];
            r.get_bytes(&mut bytes)?;
            functions.push((at, bytes));
        }
        let state = PciBusState { address, functions };
        self.platform
            .bus()
            .lock()
            .set_state(&state)
            .map_err(failed)?;
        self.platform.sync();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::PioDevice;
    use crate::devices::pci::PciBus;
    use parking_lot::{Mutex, RwLock};
    use ssm::{Manager, SaveOptions, StreamReader};

    fn unit(bus: PciBus) -> (Arc<Mutex<PciBus>>, Box<PciUnit>) {
        let map = Arc::new(RwLock::new(pgm::phys::PhysMap::with_defaults()));
        let platform = PciPlatform::new(bus, &map, 1 << 30).unwrap();
        let bus = Arc::clone(platform.bus());
        (bus, Box::new(PciUnit { platform }))
    }

    fn save(bus: PciBus) -> Vec<u8> {
        let mut m = Manager::new();
        m.register(unit(bus).1).unwrap();
        let mut bytes = Vec::new();
        m.save(&mut bytes, &SaveOptions::default()).unwrap();
        bytes
    }

    fn load(bytes: &[u8], bus: PciBus) -> ssm::Result<Arc<Mutex<PciBus>>> {
        let (bus, unit) = unit(bus);
        let mut m = Manager::new();
        m.register(unit)?;
        m.load(StreamReader::from_slice(bytes)?)?;
        Ok(bus)
    }

    #[test]
    fn the_latch_and_the_guests_settings_come_back() {
        let mut bus = PciBus::with_host_bridge();
        // 00:00.0 register 0x04: command = memory space | bus master.
        bus.write(0, &0x8000_0004u32.to_le_bytes());
        bus.write(4, &[0x06, 0x00]);
        let saved = save(bus);
        let restored = load(&saved, PciBus::with_host_bridge()).unwrap();
        let mut restored = restored.lock();
        let mut data = [0; 4];
        restored.read(0, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0x8000_0004);
        restored.read(4, &mut data[..2]);
        assert_eq!(&data[..2], &[0x06, 0x00]);
    }

    #[test]
    fn a_bus_with_other_functions_is_refused() {
        let saved = save(PciBus::with_host_bridge());
        let err = load(&saved, PciBus::new()).err().unwrap();
        assert!(err.to_string().contains("00:00.0"), "{err}");
    }
}
