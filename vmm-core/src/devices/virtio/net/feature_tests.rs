//! The negotiated features on the rings: offloads asked of the tap,
//! frames over several buffers (`MRG_RXBUF`), and notifications and
//! interrupts suppressed by the event indices (`EVENT_IDX`).

use virtio_bindings::virtio_net::*;
use vmm_sys_util::epoll::EventSet;

use super::offloads_for;
use super::rxtx::{RX_QUEUE, TX_QUEUE};
use super::tests::fixture_with;
use crate::devices::virtio::WorkerEvent;
use crate::devices::virtio::testing::guest_ram;

const BUFS: u64 = 0x10_0000;
const HOST: WorkerEvent = WorkerEvent::Host {
    token: 0,
    events: EventSet::IN,
};

fn bit(b: u32) -> u64 {
    1 << b
}

/// A frame: a virtio-net header (its `num_buffers` 0xffff, which the
/// device must replace) and `body_len` bytes counting up.
fn frame(body_len: usize) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f[10..12].copy_from_slice(&[0xff, 0xff]);
    f.extend((0..body_len).map(|i| i as u8));
    f
}

#[test]
fn offloads_follow_the_accepted_guest_features() {
    let csum = bit(VIRTIO_NET_F_GUEST_CSUM);
    let all = csum
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_TSO6)
        | bit(VIRTIO_NET_F_GUEST_ECN);
    let (c, t4, t6, ecn) = (
        libc::TUN_F_CSUM,
        libc::TUN_F_TSO4,
        libc::TUN_F_TSO6,
        libc::TUN_F_TSO_ECN,
    );
    assert_eq!(offloads_for(0), 0);
    assert_eq!(offloads_for(csum), c);
    assert_eq!(offloads_for(all), c | t4 | t6 | ecn);
    assert_eq!(offloads_for(csum | bit(VIRTIO_NET_F_GUEST_TSO6)), c | t6);
    // Segmentation without checksum offload, ECN without segmentation,
    // and the host-side offloads ask nothing of the tap's receive side.
    assert_eq!(offloads_for(all & !csum), 0);
    assert_eq!(offloads_for(csum | bit(VIRTIO_NET_F_GUEST_ECN)), c);
    let host_side = bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_TSO4);
    assert_eq!(offloads_for(host_side | bit(VIRTIO_NET_F_MRG_RXBUF)), 0);
}

#[test]
fn a_mergeable_frame_spreads_over_buffers_and_counts_them_in_its_header() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture_with(&mem, bit(VIRTIO_NET_F_MRG_RXBUF), false);
    let sent = frame(250); // 262 bytes: 100 + 100 + 62
    f.host.send(&sent).unwrap();
    let heads: Vec<u16> = (0..4)
        .map(|i| f.rx.add(&[(BUFS + i * 0x1000, 100, true)]))
        .collect();
    f.dev.handle(HOST).unwrap();
    assert_eq!(
        f.rx.completed(),
        [(heads[0], 100), (heads[1], 100), (heads[2], 62)]
    );
    let mut got = f.rx.read(BUFS, 100);
    got.extend(f.rx.read(BUFS + 0x1000, 100));
    got.extend(f.rx.read(BUFS + 0x2000, 62));
    assert_eq!(&got[10..12], &3u16.to_le_bytes(), "num_buffers");
    assert_eq!(&got[..10], &sent[..10]);
    assert_eq!(&got[12..], &sent[12..]);
    assert_eq!(f.irq.take_signals(), [RX_QUEUE], "one interrupt per batch");

    // A frame that fits one buffer says 1.
    f.host.send(&frame(20)).unwrap();
    f.dev.handle(HOST).unwrap();
    assert_eq!(f.rx.completed(), [(heads[3], 32)]);
    assert_eq!(f.rx.read(BUFS + 0x3000 + 10, 2), 1u16.to_le_bytes());
}

#[test]
fn a_mergeable_frame_waits_whole_until_the_driver_adds_buffers() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture_with(&mem, bit(VIRTIO_NET_F_MRG_RXBUF), true);
    f.host.send(&frame(250)).unwrap();
    // Its header split over two descriptors of the first chain.
    let first = f.rx.add(&[(BUFS, 8, true), (BUFS + 0x800, 92, true)]);
    f.dev.handle(HOST).unwrap();
    // Nothing the driver could see in part; the device wants to hear of
    // the next buffer.
    assert_eq!(f.rx.used_count(), 0);
    assert_eq!(f.dev.rx_held(), 1);
    assert!(f.irq.take_signals().is_empty());
    assert_eq!(f.rx.avail_event(), 1);
    let second = f.rx.add(&[(BUFS + 0x1000, 100, true)]);
    let third = f.rx.add(&[(BUFS + 0x3000, 200, true)]);
    f.dev.handle(WorkerEvent::Queue(RX_QUEUE)).unwrap();
    assert_eq!(f.rx.completed(), [(first, 100), (second, 100), (third, 62)]);
    assert_eq!(f.rx.read(BUFS + 0x800 + 2, 2), 3u16.to_le_bytes());
    assert_eq!(f.rx.read(BUFS + 0x800 + 4, 4), [0, 1, 2, 3], "the body");
    assert_eq!(f.dev.rx_held(), 0);
}

#[test]
fn a_buffer_smaller_than_the_header_drops_the_mergeable_frame() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture_with(&mem, bit(VIRTIO_NET_F_MRG_RXBUF), false);
    f.host.send(&frame(250)).unwrap();
    f.host.send(&frame(5)).unwrap();
    let a = f.rx.add(&[(BUFS, 100, true)]);
    let b = f.rx.add(&[(BUFS + 0x1000, 8, true)]);
    let c = f.rx.add(&[(BUFS + 0x2000, 100, true)]);
    f.dev.handle(HOST).unwrap();
    // The first frame's buffers go back empty; the second frame is whole.
    assert_eq!(f.rx.completed(), [(a, 0), (b, 0), (c, 17)]);
    assert_eq!(f.rx.read(BUFS + 0x2000 + 10, 2), 1u16.to_le_bytes());
}

#[test]
fn a_frame_larger_than_the_whole_ring_is_dropped_not_held_forever() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture_with(&mem, bit(VIRTIO_NET_F_MRG_RXBUF), false);
    f.host.send(&frame(2000)).unwrap();
    for i in 0..16 {
        f.rx.add(&[(BUFS + i * 0x1000, 64, true)]);
    }
    f.dev.handle(HOST).unwrap();
    let done = f.rx.completed();
    assert_eq!(done.len(), 16);
    assert!(done.iter().all(|&(_, len)| len == 0), "{done:?}");
    assert_eq!(f.dev.rx_held(), 0);
}

#[test]
fn without_mrg_rxbuf_a_frame_takes_one_buffer_or_is_dropped() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture_with(&mem, 0, false);
    f.host.send(&frame(250)).unwrap();
    let a = f.rx.add(&[(BUFS, 100, true)]);
    let b = f.rx.add(&[(BUFS + 0x1000, 300, true)]);
    f.dev.handle(HOST).unwrap();
    assert_eq!(f.rx.completed(), [(a, 0)]);
    f.host.send(&frame(250)).unwrap();
    f.dev.handle(HOST).unwrap();
    assert_eq!(f.rx.completed(), [(b, 262)]);
}

#[test]
fn event_idx_interrupts_only_when_the_used_index_passes_used_event() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture_with(&mem, 0, true);
    let body = frame(50);
    f.tx.write(BUFS, &body);
    // The driver wants to hear once its third chain is done.
    f.tx.set_used_event(2);
    for _ in 0..2 {
        f.tx.add(&[(BUFS, body.len() as u32, false)]);
    }
    f.dev.handle(WorkerEvent::Queue(TX_QUEUE)).unwrap();
    assert_eq!(f.tx.used_count(), 2);
    assert!(f.irq.take_signals().is_empty(), "used_event 2 not passed");
    // The device asks to be notified of the next chain only.
    assert_eq!(f.tx.avail_event(), 2);
    f.tx.add(&[(BUFS, body.len() as u32, false)]);
    f.dev.handle(WorkerEvent::Queue(TX_QUEUE)).unwrap();
    assert_eq!(f.irq.take_signals(), [TX_QUEUE]);
    assert_eq!(f.tx.avail_event(), 3);

    // Receive: the driver polls (used_event far behind): no interrupt.
    f.rx.set_used_event(100);
    f.rx.add(&[(BUFS + 0x1000, 100, true)]);
    f.host.send(&frame(10)).unwrap();
    f.dev.handle(HOST).unwrap();
    assert_eq!(f.rx.used_count(), 1);
    assert!(f.irq.take_signals().is_empty());
    // It re-arms at the next entry: the next frame interrupts.
    f.rx.set_used_event(1);
    f.rx.add(&[(BUFS + 0x2000, 100, true)]);
    f.host.send(&frame(10)).unwrap();
    f.dev.handle(HOST).unwrap();
    assert_eq!(f.irq.take_signals(), [RX_QUEUE]);
}

#[test]
fn without_event_idx_every_batch_interrupts() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture_with(&mem, 0, false);
    let body = frame(50);
    f.tx.write(BUFS, &body);
    f.tx.set_used_event(100); // meaningless without EVENT_IDX
    f.tx.add(&[(BUFS, body.len() as u32, false)]);
    f.dev.handle(WorkerEvent::Queue(TX_QUEUE)).unwrap();
    assert_eq!(f.irq.take_signals(), [TX_QUEUE]);
}
