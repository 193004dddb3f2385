//! ECAM (PCI Express enhanced configuration access): each function's
//! configuration space as 4 KiB of memory at
//! `ECAM_BASE + (bus << 20 | device << 15 | function << 12)`; the same
//! spaces configuration mechanism #1 reaches. Only bus 0 is decoded.

use iom::Data;

use super::{DevFn, PciBus};

/// The function and register an ECAM offset (from the ECAM base, bus 0)
/// selects.
pub(crate) fn decode(offset: u64) -> (DevFn, u16) {
    // Bits 19:15 device, 14:12 function: the devfn byte; 11:0 register.
    (
        DevFn::from_bits((offset >> 12) as u8),
        (offset & 0xfff) as u16,
    )
}

/// An access of the guest at `offset` into the ECAM. Accesses of 1, 2 or
/// 4 bytes within one dword reach the register; others read all ones and
/// write nothing.
pub(crate) fn access(bus: &mut PciBus, offset: u64, data: Data<'_>) {
    let (at, reg) = decode(offset);
    let len = data.len();
    let aligned = matches!(len, 1 | 2 | 4) && usize::from(reg % 4) + len <= 4;
    match data {
        Data::Read(buf) if aligned => bus.config_read(at, reg, buf),
        Data::Read(buf) => buf.fill(0xff),
        Data::Write(bytes) if aligned => bus.config_write(at, reg, bytes),
        Data::Write(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(bus: &mut PciBus, offset: u64) -> u32 {
        let mut b = [0; 4];
        access(bus, offset, Data::Read(&mut b));
        u32::from_le_bytes(b)
    }

    #[test]
    fn offsets_select_device_function_and_register() {
        assert_eq!(
            decode(0x0_8000 | 0x1000 | 0x3c),
            (DevFn::new(1, 1).unwrap(), 0x3c)
        );
        assert_eq!(decode(0xf_ffff), (DevFn::new(31, 7).unwrap(), 0xfff));
    }

    #[test]
    fn the_host_bridge_answers_as_through_conf1() {
        let mut bus = PciBus::with_host_bridge();
        assert_eq!(read32(&mut bus, 0), 0x0008_1b36);
        // Class 06/00 in the top half of register 8.
        assert_eq!(read32(&mut bus, 8) >> 16, 0x0600);
        // Absent function 00:01.0: all ones; extended space: zero.
        assert_eq!(read32(&mut bus, 0x8000), u32::MAX);
        assert_eq!(read32(&mut bus, 0x100), 0);
        // A write of the command register goes through and is seen as a
        // decode change; a misaligned access does nothing.
        access(&mut bus, 4, Data::Write(&[0x06, 0]));
        assert!(bus.take_decode_changed());
        assert_eq!(read32(&mut bus, 4) & 0xffff, 0x0006);
        access(&mut bus, 3, Data::Write(&[0xff, 0xff]));
        assert!(!bus.take_decode_changed());
        let mut b = [0; 2];
        access(&mut bus, 3, Data::Read(&mut b));
        assert_eq!(b, [0xff, 0xff]);
    }
}
