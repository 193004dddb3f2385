use super::*;
use crate::devices::pci::{BarKind, ConfigSpace, Identity, PciFunction};

/// A function with a 32-bit memory BAR 0 of 4 KiB.
struct Nic(ConfigSpace);

impl Nic {
    fn new() -> Self {
        let mut c = ConfigSpace::new(Identity {
            vendor: 0x8086,
            device: 0x100e,
            revision: 0,
            class: 0x02,
            subclass: 0,
            prog_if: 0,
            subsystem_vendor: 0,
            subsystem: 0,
        });
        c.add_bar(
            0,
            BarKind::Memory32 {
                prefetchable: false,
            },
            0x1000,
        )
        .unwrap();
        Nic(c)
    }
}

impl PciFunction for Nic {
    fn config(&self) -> &ConfigSpace {
        &self.0
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.0
    }
}

fn bus() -> PciBus {
    let mut bus = PciBus::with_host_bridge();
    bus.add(DevFn::new(3, 0).unwrap(), Box::new(Nic::new()))
        .unwrap();
    bus
}

/// The mechanism #1 address of bus `b`, device `d`, function `f`, register `r`.
fn address(b: u32, d: u32, f: u32, r: u32) -> u32 {
    ENABLE | b << 16 | d << 11 | f << 8 | r
}

fn select(bus: &mut PciBus, a: u32) {
    bus.write(0, &a.to_le_bytes());
}

/// Reads `len` bytes from port 0xCF8 + `offset`.
fn read(bus: &mut PciBus, offset: u16, len: usize) -> Vec<u8> {
    let mut data = vec![0; len];
    bus.read(offset, &mut data);
    data
}

fn read32(bus: &mut PciBus, offset: u16) -> u32 {
    let b = read(bus, offset, 4);
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[test]
fn the_host_bridge_answers_at_00_00_0() {
    let mut bus = PciBus::with_host_bridge();
    select(&mut bus, address(0, 0, 0, 0));
    assert_eq!(read32(&mut bus, 4), 0x0008_1b36);
    select(&mut bus, address(0, 0, 0, 0x08));
    assert_eq!(read32(&mut bus, 4) >> 8, 0x06_00_00, "class: host bridge");
}

#[test]
fn absent_functions_and_other_buses_read_all_ones() {
    let mut bus = bus();
    for a in [
        address(0, 1, 0, 0),
        address(0, 0, 1, 0),
        address(1, 0, 0, 0),
    ] {
        select(&mut bus, a);
        assert_eq!(read32(&mut bus, 4), !0, "{a:#x}");
        bus.write(4, &[0; 4]);
    }
}

#[test]
fn the_address_latch_keeps_only_its_bits() {
    let mut bus = bus();
    select(&mut bus, 0xffff_ffff);
    assert_eq!(read32(&mut bus, 0), 0x80ff_fffc);
    bus.reset();
    assert_eq!(read32(&mut bus, 0), 0);
}

#[test]
fn data_lanes_reach_the_register_bytes() {
    let mut bus = bus();
    select(&mut bus, address(0, 3, 0, 0));
    assert_eq!(read(&mut bus, 4, 2), [0x86, 0x80]);
    assert_eq!(read(&mut bus, 6, 2), [0x0e, 0x10]);
    assert_eq!(read(&mut bus, 5, 1), [0x80]);
    assert_eq!(read(&mut bus, 7, 1), [0x10]);
    select(&mut bus, address(0, 3, 0, 0x3c));
    bus.write(5, &[0x77]); // interrupt pin: read-only
    bus.write(4, &[0x0b]); // interrupt line
    assert_eq!(read32(&mut bus, 4), 0x0000_000b);
    select(&mut bus, address(0, 3, 0, 0x04));
    bus.write(4, &[0x06, 0x00]);
    assert_eq!(read(&mut bus, 4, 1), [0x06]);
}

#[test]
fn bar_sizing_through_the_ports() {
    let mut bus = bus();
    select(&mut bus, address(0, 3, 0, 0x10));
    bus.write(4, &[0xff; 4]);
    assert_eq!(read32(&mut bus, 4), 0xffff_f000);
    bus.write(4, &0xfebf_0000u32.to_le_bytes());
    assert_eq!(read32(&mut bus, 4), 0xfebf_0000);
}

#[test]
fn with_the_enable_bit_clear_data_reads_all_ones_and_writes_are_dropped() {
    let mut bus = bus();
    select(&mut bus, address(0, 3, 0, 0x3c) & !ENABLE);
    assert_eq!(read32(&mut bus, 4), !0);
    bus.write(4, &[0x0b]);
    select(&mut bus, address(0, 3, 0, 0x3c));
    assert_eq!(read(&mut bus, 4, 1), [0], "the write did not land");
}

#[test]
fn narrow_accesses_to_the_address_port_pass_by() {
    let mut bus = bus();
    select(&mut bus, address(0, 3, 0, 0));
    // Linux's probe for mechanism #2 (bytes at 0xCF8/0xCFA) and the
    // reset control register at 0xCF9 are no latch accesses.
    bus.write(3, &[0x01]);
    bus.write(1, &[0x06]);
    bus.write(2, &[0, 0]);
    assert_eq!(read(&mut bus, 0, 1), [0xff]);
    assert_eq!(read(&mut bus, 2, 2), [0xff, 0xff]);
    assert_eq!(read32(&mut bus, 0), address(0, 3, 0, 0));
    // Straddling the two registers reaches neither.
    bus.write(2, &[0; 4]);
    assert_eq!(read(&mut bus, 2, 4), [0xff; 4]);
    assert_eq!(read(&mut bus, 6, 4), [0xff; 4]);
    assert_eq!(read32(&mut bus, 0), address(0, 3, 0, 0));
}

#[test]
fn state_round_trips_and_refuses_another_bus() {
    let mut bus = bus();
    select(&mut bus, address(0, 3, 0, 0x10));
    bus.write(4, &0xfebf_0000u32.to_le_bytes());
    let state = bus.state();
    let mut other = self::bus();
    other.set_state(&state).unwrap();
    assert_eq!(other.state(), state);
    assert_eq!(read32(&mut other, 4), 0xfebf_0000);
    let mut bridge_only = PciBus::with_host_bridge();
    assert!(matches!(
        bridge_only.set_state(&state),
        Err(PciError::RestoreFunctions { .. })
    ));
    let mut moved = PciBus::with_host_bridge();
    moved
        .add(DevFn::new(4, 0).unwrap(), Box::new(Nic::new()))
        .unwrap();
    assert!(moved.set_state(&state).is_err());
}

#[test]
fn functions_cannot_share_an_address() {
    let mut bus = bus();
    let at = DevFn::new(3, 0).unwrap();
    assert_eq!(
        bus.add(at, Box::new(Nic::new())),
        Err(PciError::SlotTaken(at))
    );
    assert!(DevFn::new(32, 0).is_err());
    assert!(DevFn::new(0, 8).is_err());
    assert_eq!(DevFn::new(31, 7).unwrap().to_string(), "00:1f.7");
}
