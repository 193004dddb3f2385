//! Reads and writes of guest-physical memory honouring handlers, ROM
//! protection, unassigned space and the A20 gate; MMIO exit dispatch.

use iom::Data;

use super::error::PhysError;
use super::handler::{HandlerAccess, HandlerAction, HandlerRange};
use super::map::PhysMap;
use super::page::{PAGE_OFFSET_MASK, PAGE_SIZE, PageHandlerState, PageState};
use super::range::{Backing, Memory, PhysRange};

/// What `pgm` does with an access's data when no handler takes it.
trait DefaultAccess {
    /// Unassigned space or MMIO without a handler: reads give 0xFF,
    /// writes are dropped.
    fn fill_unassigned(&mut self);
    /// Plain memory access; writes mark the page written.
    fn memory(&mut self, mem: &Memory, offset: u64);
}

impl DefaultAccess for Data<'_> {
    fn fill_unassigned(&mut self) {
        self.fill_read(0xff);
    }

    fn memory(&mut self, mem: &Memory, offset: u64) {
        let ok = match self {
            Data::Read(b) => mem.read(offset, b),
            Data::Write(b) => {
                if let Some(p) = mem.page(offset) {
                    p.note_write();
                }
                mem.write(offset, b)
            }
        };
        if !ok {
            self.fill_unassigned();
        }
    }
}

impl PhysMap {
    /// Reads guest-physical memory at `gpa` into `buf`, as a device or the
    /// VMM sees it: handlers are called, ROM reads follow the protection,
    /// unassigned space reads as 0xFF, the A20 mask applies.
    #[inline]
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), PhysError> {
        self.access(gpa, Data::Read(buf))
    }

    /// Writes `data` to guest-physical memory at `gpa`: handlers are called,
    /// ROM writes follow the protection, writes to unassigned space are
    /// dropped, the A20 mask applies.
    #[inline]
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), PhysError> {
        self.access(gpa, Data::Write(data))
    }

    /// Handles an MMIO exit of a vCPU: an access KVM could not satisfy (no
    /// slot, a read-only slot written). A read's buffer is filled.
    #[inline]
    pub fn mmio_exit(&self, gpa: u64, data: Data<'_>) -> Result<(), PhysError> {
        #[cfg(feature = "stats")]
        if let Some(c) = &self.counters {
            c.mmio_exits.inc();
        }
        self.access(gpa, data)
    }

    fn access(&self, gpa: u64, mut buf: Data<'_>) -> Result<(), PhysError> {
        let mask = self.a20_mask();
        let len = buf.len();
        let mut done = 0usize;
        while done < len {
            let addr = gpa.wrapping_add(done as u64) & mask;
            let in_page = (PAGE_SIZE - (addr & PAGE_OFFSET_MASK)) as usize;
            let chunk = in_page.min(len - done);
            done += self.access_chunk(addr, buf.sub(done, chunk))?;
        }
        Ok(())
    }

    /// Performs an access within one page; returns the bytes handled (the
    /// chunk may be cut at a handler boundary).
    fn access_chunk(&self, addr: u64, mut buf: Data<'_>) -> Result<usize, PhysError> {
        let len = buf.len();
        let Some(range) = self.range_at(addr) else {
            #[cfg(feature = "stats")]
            if let Some(c) = &self.counters {
                c.unassigned.inc();
            }
            buf.fill_unassigned();
            return Ok(len);
        };
        let offset = addr - range.start;
        match &range.backing {
            Backing::Mmio => {
                let action = match self.handlers.lookup(addr) {
                    Some(h) => self.call_handler(h, addr, &mut buf)?,
                    None => HandlerAction::Default,
                };
                if action == HandlerAction::Default {
                    buf.fill_unassigned();
                }
                Ok(len)
            }
            Backing::Rom {
                rom, shadow, prot, ..
            } => {
                match buf {
                    Data::Read(_) => {
                        buf.memory(if prot.reads_rom() { rom } else { shadow }, offset)
                    }
                    Data::Write(_) if prot.writes_ram() => buf.memory(shadow, offset),
                    Data::Write(_) =>
                    {
                        #[cfg(feature = "stats")]
                        if let Some(c) = &self.counters {
                            c.rom_writes_ignored.inc();
                        }
                    }
                }
                Ok(len)
            }
            Backing::Ram(mem) => self.memory_chunk(range, mem, offset, addr, buf),
            Backing::Mmio2 { mem, .. } => self.memory_chunk(range, mem, offset, addr, buf),
        }
    }

    #[inline]
    fn memory_chunk(
        &self,
        range: &PhysRange,
        mem: &Memory,
        offset: u64,
        addr: u64,
        mut buf: Data<'_>,
    ) -> Result<usize, PhysError> {
        let len = buf.len();
        let info = mem.page(offset).map(|p| p.get());
        if let Data::Read(b) = &mut buf
            && info.is_some_and(|i| i.state == PageState::Ballooned)
        {
            // Whatever the host still maps there while it takes the page
            // back, a page the guest gave to its balloon reads zero.
            b.fill(0);
            return Ok(len);
        }
        let handled = match info.map(|i| i.handler) {
            Some(PageHandlerState::All) => true,
            Some(PageHandlerState::Write) => buf.is_write(),
            _ => false,
        };
        if !handled {
            buf.memory(mem, offset);
            return Ok(len);
        }
        if let Some(h) = self.handlers.lookup(addr) {
            let n = (h.last - addr + 1).min(len as u64) as usize;
            let mut part = buf.sub(0, n);
            if self.call_handler(h, addr, &mut part)? == HandlerAction::Default {
                part.memory(mem, offset);
            }
            return Ok(n);
        }
        // no handler at `addr`: plain access up to the next handler, if any
        let last = addr + (len as u64 - 1);
        let n = match self.handlers.overlapping(addr, last).next() {
            Some(h) => (h.first - addr) as usize,
            None => len,
        };
        debug_assert!(n > 0 && range.last() >= addr + (n as u64 - 1));
        buf.sub(0, n).memory(mem, offset);
        Ok(n)
    }

    fn call_handler(
        &self,
        h: &HandlerRange,
        addr: u64,
        buf: &mut Data<'_>,
    ) -> Result<HandlerAction, PhysError> {
        let t = self.handler_type(h.type_id)?;
        #[cfg(feature = "stats")]
        if let Some(c) = &self.counters {
            c.handler_calls.inc();
        }
        let len = buf.len();
        let mut access = HandlerAccess {
            gpa: addr,
            offset: addr - h.first,
            data: buf.sub(0, len),
            user: h.user,
            map: self,
        };
        (t.callback)(&mut access).map_err(|source| PhysError::Handler {
            desc: h.desc.clone(),
            gpa: addr,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use crate::phys::{
        HandlerAction, HandlerError, HandlerKind, PageState, PhysMap, RomProtection,
    };

    #[test]
    fn rom_protection_modes() {
        let mut map = PhysMap::with_defaults();
        map.add_rom(
            0xe_0000,
            0x2000,
            &[0xaa; 0x2000],
            RomProtection::ReadRomWriteIgnore,
            "rom",
        )
        .unwrap();
        let rd = |m: &PhysMap| {
            let mut b = [0u8; 1];
            m.read(0xe_1000, &mut b).unwrap();
            b[0]
        };
        map.write(0xe_1000, &[1]).unwrap();
        assert_eq!(rd(&map), 0xaa);
        map.set_rom_protection(0xe_0000, RomProtection::ReadRomWriteRam)
            .unwrap();
        map.write(0xe_1000, &[2]).unwrap();
        assert_eq!(rd(&map), 0xaa);
        map.set_rom_protection(0xe_0000, RomProtection::ReadRamWriteIgnore)
            .unwrap();
        assert_eq!(rd(&map), 2);
        map.write(0xe_1000, &[3]).unwrap();
        assert_eq!(rd(&map), 2);
        map.set_rom_protection(0xe_0000, RomProtection::ReadRamWriteRam)
            .unwrap();
        map.write(0xe_1000, &[4]).unwrap();
        assert_eq!(rd(&map), 4);
        assert!(
            map.set_rom_protection(0x1000, RomProtection::ReadRamWriteRam)
                .is_err()
        );
    }

    #[test]
    fn write_handler_on_ram_and_default_access() {
        let mut map = PhysMap::with_defaults();
        map.add_ram(0, 0x10000, "ram").unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let h = hits.clone();
        let t = map.register_handler_type(HandlerKind::Write, "mon", move |a| {
            h.fetch_add(1, Ordering::Relaxed);
            assert!(a.data.is_write());
            if matches!(a.data, iom::Data::Write([0xee, ..])) {
                return Err(HandlerError("refused".into()));
            }
            Ok(HandlerAction::Default)
        });
        map.register_handler(t, 0x2010, 0x201f, 7, "watch").unwrap();
        // a write straddling the handler: only the covered part calls it
        map.write(0x2008, &[9; 32]).unwrap();
        assert_eq!(hits.load(Ordering::Relaxed), 1);
        let mut b = [0u8; 32];
        map.read(0x2008, &mut b).unwrap();
        assert_eq!(b, [9; 32]);
        assert_eq!(hits.load(Ordering::Relaxed), 1);
        assert!(map.write(0x2010, &[0xee]).is_err());
        // the page is read-only for KVM
        let slot = map
            .kvm_slots()
            .slots
            .iter()
            .find(|s| s.guest_addr == 0x2000)
            .unwrap();
        assert!(slot.read_only);
        assert_eq!(slot.size, 0x1000);
        map.deregister_handler(0x2010).unwrap();
        assert_eq!(map.kvm_slots().slots.len(), 1);
        map.check_handlers().unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Reads and writes through a map with ALL handlers agree byte for
        /// byte with a model: handled bytes read as the handler's fill and
        /// drop writes, the rest behaves as memory.
        #[test]
        fn accesses_match_a_byte_model(
            handlers in proptest::collection::vec((0u64..0x3000, 1u64..0x40), 0..12),
            ops in proptest::collection::vec((proptest::bool::ANY, 0u64..0x3000, 1usize..0x300, 1u8..255), 1..24),
        ) {
            let mut map = PhysMap::with_defaults();
            map.add_ram(0, 0x3000, "ram").unwrap();
            let t = map.register_handler_type(HandlerKind::All, "all", |a| {
                a.data.fill_read(a.user as u8);
                Ok(HandlerAction::Handled)
            });
            let mut owner = vec![0u8; 0x3000];
            for (i, (first, len)) in handlers.into_iter().enumerate() {
                let last = (first + len - 1).min(0x2fff);
                let fill = 0x80 + i as u8;
                if map.register_handler(t, first, last, u64::from(fill), "h").is_ok() {
                    owner[first as usize..=last as usize].fill(fill);
                }
            }
            let mut model = vec![0u8; 0x3000];
            for (write, at, len, val) in ops {
                let len = len.min(0x3000 - at as usize);
                let r = at as usize..at as usize + len;
                if write {
                    map.write(at, &vec![val; len]).unwrap();
                    for i in r {
                        if owner[i] == 0 {
                            model[i] = val;
                        }
                    }
                } else {
                    let mut b = vec![0u8; len];
                    map.read(at, &mut b).unwrap();
                    let want: Vec<u8> = r.map(|i| if owner[i] != 0 { owner[i] } else { model[i] }).collect();
                    proptest::prop_assert_eq!(b, want);
                }
            }
        }
    }

    #[test]
    fn access_spanning_two_handlers_calls_both() {
        let mut map = PhysMap::with_defaults();
        map.add_ram(0, 0x2000, "ram").unwrap();
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let c = calls.clone();
        let t = map.register_handler_type(HandlerKind::All, "all", move |a| {
            c.lock().unwrap().push((a.gpa, a.data.len(), a.user));
            a.data.fill_read(a.user as u8);
            Ok(HandlerAction::Handled)
        });
        map.register_handler(t, 0x1010, 0x1017, 0xa1, "a").unwrap();
        map.register_handler(t, 0x1020, 0x1027, 0xb2, "b").unwrap();
        map.write(0x1000, &[7; 0x40]).unwrap();
        let mut b = [0u8; 0x40];
        map.read(0x1000, &mut b).unwrap();
        let mut want = [7u8; 0x40];
        want[0x10..0x18].fill(0xa1);
        want[0x20..0x28].fill(0xb2);
        assert_eq!(b, want);
        assert_eq!(
            *calls.lock().unwrap(),
            vec![
                (0x1010, 8, 0xa1),
                (0x1020, 8, 0xb2),
                (0x1010, 8, 0xa1),
                (0x1020, 8, 0xb2)
            ]
        );
    }

    #[test]
    fn unassigned_a20_and_page_crossing() {
        let mut map = PhysMap::with_defaults();
        map.add_ram(0, 0x20_0000, "ram").unwrap();
        map.write(0xffe, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 4];
        map.read(0xffe, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        map.read(0x1f_fffe, &mut b).unwrap();
        assert_eq!(b, [0, 0, 0xff, 0xff]);
        map.write(0x10_0010, &[5]).unwrap();
        map.set_a20(false);
        map.read(0x10_0010, &mut b[..1]).unwrap();
        assert_eq!(b[0], 0);
        map.write(0x10_0020, &[6]).unwrap();
        map.set_a20(true);
        map.read(0x20, &mut b[..1]).unwrap();
        assert_eq!(b[0], 6);
        assert_eq!(map.page_info(0x1000).state, PageState::Allocated);
        assert_eq!(map.page_info(0x3000).state, PageState::Zero);
        map.read(u64::MAX - 1, &mut b).unwrap();
    }

    #[test]
    fn handler_can_access_other_memory_through_the_map() {
        let mut map = PhysMap::with_defaults();
        map.add_ram(0, 0x1000, "ram").unwrap();
        let t = map.register_handler_type(HandlerKind::Mmio, "dma", |a| {
            // a doorbell write copies RAM byte 0 to byte 1
            let mut b = [0u8];
            a.map.read(0, &mut b)?;
            a.map.write(1, &b)?;
            Ok(HandlerAction::Handled)
        });
        map.map_mmio(0x1000_0000, 0x1000, t, 0, "dma").unwrap();
        map.write(0, &[0x42]).unwrap();
        map.mmio_exit(0x1000_0000, iom::Data::Write(&[1])).unwrap();
        let mut b = [0u8];
        map.read(1, &mut b).unwrap();
        assert_eq!(b[0], 0x42);
    }

    #[test]
    fn mmio_default_and_handled() {
        let mut map = PhysMap::with_defaults();
        let t = map.register_handler_type(HandlerKind::Mmio, "dev", |a| {
            if a.offset == 0 {
                return Ok(HandlerAction::Default);
            }
            a.data.fill_read(a.user as u8);
            Ok(HandlerAction::Handled)
        });
        map.map_mmio(0x1000_0000, 0x1000, t, 0x5a, "dev").unwrap();
        let mut b = [0u8; 2];
        map.mmio_exit(0x1000_0000, iom::Data::Read(&mut b)).unwrap();
        assert_eq!(b, [0xff; 2]);
        map.mmio_exit(0x1000_0004, iom::Data::Read(&mut b)).unwrap();
        assert_eq!(b, [0x5a; 2]);
        assert!(map.map_mmio(0x1000_0000, 0x1000, t, 0, "again").is_err());
        let w = map.register_handler_type(HandlerKind::Write, "w", |_| Ok(HandlerAction::Handled));
        assert!(map.map_mmio(0x2000_0000, 0x1000, w, 0, "bad kind").is_err());
        assert!(
            map.register_handler(t, 0x1000_0000, 0x1000_0fff, 0, "x")
                .is_err()
        );
        assert!(map.deregister_handler(0x1000_0000).is_err());
    }
}
