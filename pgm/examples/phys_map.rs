//! A guest-physical map with RAM, a ROM and a device's MMIO page: prints the
//! KVM memory slots a VMM would register and serves an MMIO exit.
//!
//! `cargo run -p pgm --example phys_map`

use pgm::phys::{HandlerAction, HandlerKind, PhysMap, RomProtection};

fn main() -> Result<(), pgm::PhysError> {
    let mut map = PhysMap::with_defaults();
    map.add_ram(0, 0xa_0000, "low RAM")?;
    map.add_rom(
        0xf_0000,
        0x1_0000,
        &[0xf4; 16],
        RomProtection::ReadRomWriteIgnore,
        "BIOS",
    )?;
    let dev = map.register_handler_type(HandlerKind::Mmio, "demo device", |acc| {
        acc.data.fill_read(0x42);
        Ok(HandlerAction::Handled)
    });
    map.map_mmio(0xfee0_0000, 0x1000, dev, 0, "demo device")?;

    println!("KVM memory slots:");
    for s in &map.kvm_slots().slots {
        let kind = if s.read_only {
            "read-only"
        } else {
            "read-write"
        };
        println!("  {:#010x} + {:#x} {kind}", s.guest_addr, s.size);
    }
    let mut value = [0u8; 4];
    map.mmio_exit(0xfee0_0010, iom::Data::Read(&mut value))?;
    println!("MMIO read at 0xfee00010: {value:02x?}");
    Ok(())
}
