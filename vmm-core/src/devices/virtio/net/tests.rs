//! The network device's rings against a datagram socket pair standing in
//! for the tap (the logic), and against a real tap (the host side).

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use super::rxtx::{RX_QUEUE, RxTx, TX_QUEUE};
use crate::devices::virtio::testing::net::device;
use crate::devices::virtio::testing::{Recorder, Ring, guest_ram};
use crate::devices::virtio::{GuestRam, WorkerEvent};

const RX_BASE: u64 = 0;
const TX_BASE: u64 = 0x1_0000;
const BUFS: u64 = 0x10_0000;

/// A device between two rings and a socket standing in for the tap; shared
/// with the feature tests.
pub(super) struct Fixture<'m> {
    pub(super) rx: Ring<'m>,
    pub(super) tx: Ring<'m>,
    pub(super) dev: RxTx<UnixDatagram>,
    pub(super) host: UnixDatagram,
    pub(super) irq: Arc<Recorder>,
    pub(super) stats: stam::Registry,
}

/// A device that accepted `features`, its rings using event indices when
/// `event_idx` is set.
pub(super) fn fixture_with(mem: &GuestRam, features: u64, event_idx: bool) -> Fixture<'_> {
    let mut rx = Ring::new(mem, RX_BASE, 16);
    let mut tx = Ring::new(mem, TX_BASE, 16);
    rx.set_event_idx(event_idx);
    tx.set_event_idx(event_idx);
    let irq = Recorder::new();
    let stats = stam::Registry::new();
    let (dev, host) = device(mem, &rx, &tx, &irq, &stats, features);
    Fixture {
        rx,
        tx,
        dev,
        host,
        irq,
        stats,
    }
}

fn fixture(mem: &GuestRam) -> Fixture<'_> {
    fixture_with(mem, 0, false)
}

fn stat(stats: &stam::Registry, leaf: &str) -> u64 {
    let name = format!("/Devices/net0/{leaf}");
    match stats.snapshot(&name).get(&name).map(|s| s.value.clone()) {
        Some(stam::Value::Counter { value }) => value,
        other => panic!("{name}: {other:?}"),
    }
}

/// A frame: a virtio-net header (all zero) and `body`.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(body);
    f
}

#[test]
fn a_transmitted_chain_reaches_the_host_as_one_frame() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture(&mem);
    let sent = frame(b"\xff\xff\xff\xff\xff\xff\x52\x54\x00\x00\x00\x01\x88\xb5hello");
    // Header and body in separate buffers, as Linux queues them.
    f.tx.write(BUFS, &sent[..12]);
    f.tx.write(BUFS + 0x1000, &sent[12..]);
    let head = f.tx.add(&[
        (BUFS, 12, false),
        (BUFS + 0x1000, sent.len() as u32 - 12, false),
    ]);
    f.dev.handle(WorkerEvent::Queue(TX_QUEUE)).unwrap();
    let mut got = vec![0; 2048];
    let n = f.host.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &sent[..]);
    assert_eq!(f.tx.used_count(), 1);
    assert_eq!(f.tx.used(0), (u32::from(head), 0));
    assert_eq!(f.irq.take_signals(), [TX_QUEUE]);
    assert_eq!(stat(&f.stats, "TransmitPackets"), 1);
    assert_eq!(stat(&f.stats, "TransmitBytes"), sent.len() as u64 - 12);
    assert_eq!(stat(&f.stats, "TransmitNotifications"), 1);
}

#[test]
fn a_transmit_chain_without_a_header_is_counted_and_returned() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture(&mem);
    f.tx.add(&[(BUFS, 8, false)]);
    // A receive-only buffer on the transmit queue: nothing to send.
    f.tx.add(&[(BUFS, 1500, true)]);
    f.dev.handle(WorkerEvent::Queue(TX_QUEUE)).unwrap();
    assert_eq!(f.tx.used_count(), 2);
    assert_eq!(stat(&f.stats, "TransmitErrors"), 2);
    assert_eq!(stat(&f.stats, "TransmitPackets"), 0);
    let mut got = [0; 64];
    assert!(f.host.recv(&mut got).is_err(), "nothing was sent");
}

#[test]
fn a_host_frame_lands_in_a_receive_buffer_with_one_buffer_in_its_header() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture(&mem);
    let mut sent = frame(b"\x52\x54\x00\x00\x00\x01from the host");
    sent[10] = 0xaa; // the host's num_buffers bytes are not passed on
    f.host.send(&sent).unwrap();
    let head = f.rx.add(&[(BUFS, 1526, true)]);
    f.dev
        .handle(WorkerEvent::Host {
            token: 0,
            events: vmm_sys_util::epoll::EventSet::IN,
        })
        .unwrap();
    assert_eq!(f.rx.used(0), (u32::from(head), sent.len() as u32));
    let got = f.rx.read(BUFS, sent.len());
    assert_eq!(&got[..10], &sent[..10]);
    assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers");
    assert_eq!(&got[12..], &sent[12..]);
    assert_eq!(f.irq.take_signals(), [RX_QUEUE]);
    assert_eq!(stat(&f.stats, "ReceivePackets"), 1);
    assert_eq!(stat(&f.stats, "ReceiveBytes"), sent.len() as u64 - 12);
}

#[test]
fn frames_wait_for_buffers_and_go_out_in_order_once_the_driver_refills() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture(&mem);
    for body in [b"first", b"other"] {
        f.host.send(&frame(body)).unwrap();
    }
    // No buffers: the first frame waits in the device, the second in the
    // host's queue.
    f.dev.receive().unwrap();
    assert_eq!(f.rx.used_count(), 0);
    assert!(f.irq.take_signals().is_empty());
    f.rx.add(&[(BUFS, 64, true)]);
    f.dev.handle(WorkerEvent::Queue(RX_QUEUE)).unwrap();
    assert_eq!(f.rx.used_count(), 1);
    assert_eq!(f.rx.read(BUFS + 12, 5), b"first");
    f.rx.add(&[(BUFS + 0x1000, 64, true)]);
    f.dev.handle(WorkerEvent::Queue(RX_QUEUE)).unwrap();
    assert_eq!(f.rx.used_count(), 2);
    assert_eq!(f.rx.read(BUFS + 0x1000 + 12, 5), b"other");
    assert_eq!(stat(&f.stats, "ReceiveNotifications"), 2);
    assert_eq!(stat(&f.stats, "ReceiveDrops"), 0);
}

#[test]
fn a_frame_larger_than_its_buffer_is_dropped_and_the_next_one_delivered() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture(&mem);
    f.host.send(&frame(&[7; 200])).unwrap();
    f.host.send(&frame(b"small")).unwrap();
    // A device-readable buffer has no room at all; a 64-byte one none for
    // 212 bytes.
    f.rx.add(&[(BUFS, 1500, false)]);
    f.rx.add(&[(BUFS + 0x1000, 64, true)]);
    f.dev.receive().unwrap();
    assert_eq!(f.rx.used_count(), 2);
    assert_eq!(f.rx.used(0).1, 0);
    assert_eq!(f.rx.used(1).1, 12 + 5);
    assert_eq!(f.rx.read(BUFS + 0x1000 + 12, 5), b"small");
    assert_eq!(stat(&f.stats, "ReceiveDrops"), 1);
    // The first "buffer" was not written.
    assert_eq!(f.rx.read(BUFS, 12), [0; 12]);
}

#[test]
fn a_descriptor_loop_ends_and_the_device_goes_on() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture(&mem);
    // Descriptor 0 names itself as next: virtio-queue stops after the
    // queue size, and the device returns the chain.
    let flags = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    f.tx.add_raw(&[(BUFS, 4, flags, Some(0))]);
    f.dev.handle(WorkerEvent::Queue(TX_QUEUE)).unwrap();
    assert_eq!(f.tx.used_count(), 1);
    let mut got = [0; 128];
    // 16 descriptors of 4 bytes: one 64-byte frame, sent as it is.
    assert_eq!(f.host.recv(&mut got).unwrap(), 64);
    assert_eq!(f.irq.resets(), 0);
}

#[test]
fn a_buffer_outside_guest_ram_breaks_the_device_without_a_panic() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture(&mem);
    f.tx.add(&[(1 << 40, 64, false)]);
    let err = f.dev.handle(WorkerEvent::Queue(TX_QUEUE)).unwrap_err();
    assert!(err.contains("transmit buffer"), "{err}");
    assert_eq!(f.irq.resets(), 1);

    f.host.send(&frame(b"x")).unwrap();
    f.rx.add(&[(1 << 40, 64, true)]);
    assert!(f.dev.handle(WorkerEvent::Queue(RX_QUEUE)).is_err());
    assert_eq!(f.irq.resets(), 2);
}

#[test]
fn an_available_index_past_the_ring_breaks_the_device() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture(&mem);
    // The driver claims 100 new chains in a ring of 16.
    f.tx.write(TX_BASE + 16 * 16 + 2, &100u16.to_le_bytes());
    assert!(f.dev.handle(WorkerEvent::Queue(TX_QUEUE)).is_err());
    assert_eq!(f.irq.resets(), 1);
}
