use std::sync::Arc;
use std::sync::atomic::Ordering;

use iom::Data;
use parking_lot::Mutex;
use virtio_queue::QueueT;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

use super::layout::*;
use super::*;
use crate::devices::pci::irq::fake::FakeRouting;
use crate::devices::virtio::{Activation, Interrupt, QueueHandle};

const VERSION_1: u64 = 1 << 32;
const OTHER_FEATURE: u64 = 1 << 5;

/// What the fake device was given.
#[derive(Default)]
struct Seen {
    active: Option<(u64, Vec<QueueHandle>, Arc<dyn Interrupt>)>,
    activations: u32,
}

struct FakeDevice(Arc<Mutex<Seen>>);

impl VirtioDevice for FakeDevice {
    fn name(&self) -> &str {
        "fake0"
    }
    fn device_type(&self) -> u32 {
        4
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        VERSION_1 | OTHER_FEATURE
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = 0xa0 + (offset as u8) + i as u8;
        }
    }
    fn activate(&mut self, a: Activation) -> Result<(), DeviceError> {
        let mut seen = self.0.lock();
        seen.activations += 1;
        seen.active = Some((a.features, a.queues, a.interrupt));
        Ok(())
    }
    fn deactivate(&mut self) -> Result<Vec<QueueHandle>, DeviceError> {
        Ok(self.0.lock().active.take().map(|a| a.1).unwrap_or_default())
    }
    fn save(&self) -> Vec<u8> {
        Vec::new()
    }
    fn restore(&mut self, _: &[u8]) -> Result<(), DeviceError> {
        Ok(())
    }
    fn describe(&self, out: &mut dyn std::fmt::Write) -> std::fmt::Result {
        writeln!(out, "fake")
    }
}

struct Rig {
    pci: VirtioPci,
    routing: Arc<FakeRouting>,
    seen: Arc<Mutex<Seen>>,
    memory: GuestRam,
}

fn rig() -> Rig {
    let memory = GuestRam::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let routing = Arc::new(FakeRouting::default());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let pci = VirtioPci::new(
        Box::new(FakeDevice(Arc::clone(&seen))),
        DevFn::new(2, 0).unwrap(),
        memory.clone(),
        routing.clone(),
        &stam::Registry::new(),
    )
    .unwrap();
    Rig {
        pci,
        routing,
        seen,
        memory,
    }
}

impl Rig {
    fn write(&mut self, offset: u64, value: u64, len: usize) {
        let bytes = value.to_le_bytes();
        self.pci.bar_access(0, offset, Data::Write(&bytes[..len]));
    }
    fn read(&mut self, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.pci.bar_access(0, offset, Data::Read(&mut b[..len]));
        u64::from_le_bytes(b)
    }
    fn status(&mut self) -> u8 {
        self.read(0x14, 1) as u8
    }
    /// The driver's steps up to FEATURES_OK with `features`.
    fn negotiate(&mut self, features: u64) {
        self.write(0x14, 1 | 2, 1);
        for select in 0..2 {
            self.write(0x08, select, 4);
            self.write(0x0c, features >> (32 * select) & 0xffff_ffff, 4);
        }
        self.write(0x14, 1 | 2 | 8, 1);
    }
    /// Programs queue `index` at the rings of `mock`, size 8.
    fn setup_queue(&mut self, index: u16, mock: &MockSplitQueue<'_, GuestRam>, vector: u16) {
        self.write(0x16, u64::from(index), 2);
        self.write(0x18, 8, 2);
        self.write(0x1a, u64::from(vector), 2);
        for (reg, addr) in [
            (0x20, mock.desc_table_addr()),
            (0x28, mock.avail_addr()),
            (0x30, mock.used_addr()),
        ] {
            self.write(reg, addr.0 & 0xffff_ffff, 4);
            self.write(reg + 4, addr.0 >> 32, 4);
        }
        self.write(0x1c, 1, 2);
    }
    fn msix_enable(&mut self) {
        let control = self.pci.msix_cap + 3;
        self.pci.write_config(control, &[0x80]);
    }
}

/// The capability list as `(id, offset)` pairs.
fn capabilities(config: &ConfigSpace) -> Vec<(u8, u8)> {
    let mut b = [0u8; 1];
    config.read(0x34, &mut b);
    let mut caps = Vec::new();
    let mut at = b[0];
    while at != 0 {
        let mut head = [0u8; 2];
        config.read(at, &mut head);
        caps.push((head[0], at));
        at = head[1];
    }
    caps
}

#[test]
fn the_function_is_a_modern_virtio_device_with_its_capabilities() {
    let r = rig();
    let config = r.pci.config();
    let id = config.identity();
    assert_eq!((id.vendor, id.device, id.revision), (0x1af4, 0x1044, 1));
    let bars = config.bars();
    assert_eq!((bars[0].index, bars[0].size), (0, BAR_SIZE));
    let caps = capabilities(config);
    let types: Vec<u8> = caps
        .iter()
        .filter(|c| c.0 == 0x09)
        .map(|&(_, at)| {
            let mut b = [0u8; 16];
            config.read(at, &mut b);
            let offset = u32::from_le_bytes(b[8..12].try_into().unwrap());
            assert_eq!(b[4], 0, "in BAR 0");
            match b[3] {
                1 => assert_eq!(u64::from(offset), COMMON_OFFSET),
                2 => {
                    assert_eq!(u64::from(offset), NOTIFY_OFFSET);
                    let mut m = [0u8; 4];
                    config.read(at + 16, &mut m);
                    assert_eq!(u64::from(u32::from_le_bytes(m)), NOTIFY_MULTIPLIER);
                }
                3 => assert_eq!(u64::from(offset), ISR_OFFSET),
                4 => assert_eq!(u64::from(offset), DEVICE_CFG_OFFSET),
                other => panic!("cfg_type {other}"),
            }
            b[3]
        })
        .collect();
    assert_eq!(types, [1, 2, 3, 4]);
    assert!(caps.iter().any(|c| c.0 == MSIX_CAP_ID));
    let mut pin = [0u8];
    config.read(0x3d, &mut pin);
    assert_eq!(pin[0], 1, "INTA#");
}

#[test]
fn features_are_negotiated_and_unoffered_ones_refused() {
    let mut r = rig();
    assert_eq!(r.read(0x12, 2), 2, "num_queues");
    r.write(0x00, 1, 4);
    assert_eq!(r.read(0x04, 4), 1, "VERSION_1 in the high half");
    r.write(0x00, 0, 4);
    assert_eq!(r.read(0x04, 4), OTHER_FEATURE);
    r.negotiate(VERSION_1 | 1 << 7);
    assert_eq!(r.status() & 8, 0, "FEATURES_OK refused");
    r.write(0x14, 0, 1);
    r.negotiate(OTHER_FEATURE);
    assert_eq!(r.status() & 8, 0, "no VERSION_1: refused");
    r.write(0x14, 0, 1);
    r.negotiate(VERSION_1 | OTHER_FEATURE);
    assert_eq!(r.status(), 1 | 2 | 8);
    r.write(0x08, 0, 4);
    assert_eq!(r.read(0x0c, 4), OTHER_FEATURE);
    assert_eq!(r.read(DEVICE_CFG_OFFSET + 2, 2), 0xa3a2, "device config");
}

#[test]
fn driver_ok_activates_the_programmed_queues_and_reset_takes_them_back() {
    let mut r = rig();
    let mem = r.memory.clone();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 8);
    r.negotiate(VERSION_1);
    // Size above the maximum: ignored; the size stays the maximum.
    r.write(0x16, 1, 2);
    r.write(0x18, 64, 2);
    assert_eq!(r.read(0x18, 2), 8);
    r.setup_queue(0, &mock, 1);
    assert_eq!(r.read(0x20, 8), mock.desc_table_addr().0);
    assert_eq!(r.read(0x1e, 2), 0, "queue_notify_off");
    r.write(0x14, 1 | 2 | 8 | 4, 1);
    {
        let seen = r.seen.lock();
        let (features, queues, _) = seen.active.as_ref().expect("activated");
        assert_eq!(*features, VERSION_1);
        assert_eq!(queues.len(), 1, "only queue 0 is enabled");
        assert_eq!(queues[0].queue.used_ring(), mock.used_addr().0);
        // A notify that exits reaches the queue's eventfd.
        r.pci.bar_access(0, NOTIFY_OFFSET, Data::Write(&[0, 0]));
        assert_eq!(queues[0].notify.read().unwrap(), 1);
    }
    r.write(0x14, 0, 1);
    assert!(r.seen.lock().active.is_none(), "deactivated");
    assert_eq!(r.status(), 0);
    r.write(0x16, 0, 2);
    assert_eq!(r.read(0x1c, 2), 0, "queue disabled");
    assert_eq!(r.read(0x1a, 2), u64::from(NO_VECTOR));
}

#[test]
fn a_queue_outside_memory_is_not_activated_and_needs_reset() {
    let mut r = rig();
    r.negotiate(VERSION_1);
    r.write(0x16, 0, 2);
    r.write(0x20, 0x7fff_0000, 4);
    r.write(0x24, 0x10, 4);
    r.write(0x1c, 1, 2);
    r.write(0x14, 1 | 2 | 8 | 4, 1);
    assert_eq!(r.seen.lock().activations, 0);
    assert_ne!(r.status() & 0x40, 0, "DEVICE_NEEDS_RESET");
    // INTx fallback: the config change is in the ISR, INTA# asserted
    // (slot 2, pin A: GSI 18); reading the ISR clears both.
    assert_eq!(r.routing.intx.lock().get(&18), Some(&true));
    assert_eq!(r.read(ISR_OFFSET, 1), 2);
    assert_eq!(r.read(ISR_OFFSET, 1), 0);
    assert_eq!(r.routing.intx.lock().get(&18), Some(&false));
}

#[test]
fn queue_interrupts_use_msix_vectors_when_enabled() {
    let mut r = rig();
    let mem = r.memory.clone();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 8);
    r.msix_enable();
    // Vector 1 (GSI 25): message programmed, unmasked.
    let entry = MSIX_TABLE_OFFSET + 16;
    r.write(entry, 0xfee0_0000, 4);
    r.write(entry + 8, 0x44, 4);
    r.write(entry + 12, 0, 4);
    assert_eq!(r.routing.routes.lock().get(&25), Some(&(0xfee0_0000, 0x44)));
    r.negotiate(VERSION_1);
    r.setup_queue(0, &mock, 1);
    // A vector past the table reads back as NO_VECTOR.
    r.write(0x10, 9, 2);
    assert_eq!(r.read(0x10, 2), u64::from(NO_VECTOR));
    r.write(0x14, 15, 1);
    let interrupt = Arc::clone(&r.seen.lock().active.as_ref().unwrap().2);
    interrupt.signal_queue(0);
    assert_eq!(r.routing.fired(25), 1);
    assert_eq!(r.read(ISR_OFFSET, 1), 0, "no ISR with MSI-X");
    // Masked: pending in the PBA, sent at unmask.
    r.write(entry + 12, 1, 4);
    interrupt.signal_queue(0);
    assert_eq!(r.routing.fired(25), 0);
    assert_eq!(r.read(MSIX_PBA_OFFSET, 1), 0b10);
    r.write(entry + 12, 0, 4);
    assert_eq!(r.routing.fired(25), 1);
}

#[test]
fn notify_ioeventfds_follow_bar_0() {
    let mut r = rig();
    r.pci.bar_mapped(0, Some(0xc000_0000));
    let registered: Vec<u64> = r.routing.ioeventfds.lock().keys().copied().collect();
    assert_eq!(registered, [0xc000_3000, 0xc000_3004]);
    r.pci.bar_mapped(0, Some(0xc010_0000));
    let registered: Vec<u64> = r.routing.ioeventfds.lock().keys().copied().collect();
    assert_eq!(registered, [0xc010_3000, 0xc010_3004]);
    r.pci.bar_mapped(0, None);
    assert!(r.routing.ioeventfds.lock().is_empty());
    let t = r.pci.transport();
    assert_eq!(t.lock().shared.status.load(Ordering::Acquire), 0);
}

#[test]
fn a_parked_device_starts_again_and_after_a_load_looks_at_and_signals_every_queue() {
    let mut r = rig();
    let mem = r.memory.clone();
    let (q0, q1) = (
        MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 8),
        MockSplitQueue::create(&mem, GuestAddress(0x2_0000), 8),
    );
    r.msix_enable();
    // Vectors 1 and 2 (GSIs 25 and 26): programmed, unmasked.
    for v in [1u64, 2] {
        let entry = MSIX_TABLE_OFFSET + 16 * v;
        r.write(entry, 0xfee0_0000, 4);
        r.write(entry + 8, 0x40 + v, 4);
        r.write(entry + 12, 0, 4);
    }
    r.negotiate(VERSION_1);
    r.setup_queue(0, &q0, 1);
    r.setup_queue(1, &q1, 2);
    r.write(0x14, 15, 1);
    assert_eq!(r.seen.lock().activations, 1);
    let t = r.pci.transport();
    let notified = |r: &Rig| -> Vec<u64> {
        let seen = r.seen.lock();
        let (_, queues, _) = seen.active.as_ref().expect("active");
        queues
            .iter()
            .map(|q| q.notify.read().unwrap_or(0))
            .collect()
    };

    // A save parks it; only resuming the VM starts it again, as it was.
    t.lock().park().unwrap();
    assert!(r.seen.lock().active.is_none(), "parked: stopped");
    t.lock().unpark();
    assert_eq!(r.seen.lock().activations, 2);
    assert_eq!(notified(&r), [0, 0]);
    assert_eq!((r.routing.fired(25), r.routing.fired(26)), (0, 0));
    t.lock().unpark();
    assert_eq!(r.seen.lock().activations, 2, "unparked once");

    // A loaded state: each queue is looked at and signalled once.
    {
        let mut t = t.lock();
        t.deactivate().unwrap();
        t.parked = Some(transport::Parked::Loaded);
    }
    t.lock().unpark();
    assert_eq!(r.seen.lock().activations, 3);
    assert_eq!(notified(&r), [1, 1]);
    assert_eq!((r.routing.fired(25), r.routing.fired(26)), (1, 1));

    // A reset forgets a parked device.
    t.lock().park().unwrap();
    r.write(0x14, 0, 1);
    t.lock().unpark();
    assert_eq!(r.seen.lock().activations, 3);
}
