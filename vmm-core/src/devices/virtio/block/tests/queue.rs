//! The queue as a whole: many requests, wrapping indices, notifications,
//! and rings the device cannot parse.

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::*;

#[test]
fn many_requests_wrap_the_ring_and_its_indices() {
    let rig = Rig::new(64, false);
    let mut d = Driver::new(&rig.mem);
    // Start near the end of the u16 index space: 700 requests cross both
    // the ring's end (every 256) and the index's wrap at 65536.
    d.ring.start_at(u16::MAX - 40);
    let mut q = rig.serve(&d);
    let mut expected = rig.image_bytes();
    let mut served = 0;
    for batch in 0..100u64 {
        let mut slots = Vec::new();
        for i in 0..7u64 {
            let sector = (batch * 7 + i) % 64;
            let data = pattern((batch + i) as u8, 512);
            expected[sector as usize * 512..][..512].copy_from_slice(&data);
            slots.push(d.write(sector, &data));
        }
        q.process().unwrap();
        let done = d.completed();
        assert_eq!(done.len(), 7);
        served += done.len();
        for s in slots {
            assert_eq!(d.status(s), OK, "batch {batch}: {done:?}");
        }
    }
    assert_eq!(served, 700);
    assert_eq!(
        q.handle.queue.next_avail(),
        (u16::MAX - 40).wrapping_add(700)
    );
    assert_eq!(q.handle.queue.next_used(), q.handle.queue.next_avail());
    assert_eq!(rig.image_bytes(), expected);
    assert_eq!(rig.irq.signals(), 100);
}

#[test]
fn the_event_index_decides_when_the_driver_is_signalled() {
    let rig = Rig::new(8, false);
    let mut d = Driver::new(&rig.mem);
    let mut q = rig.serve(&d);
    q.handle.queue.set_event_idx(true);
    // used_event lives after the available ring's entries.
    let used_event = GuestAddress(d.ring.avail_addr() + 4 + 2 * u64::from(QSIZE));
    rig.mem.write_obj(5u16, used_event).unwrap();
    for _ in 0..3 {
        d.command(VIRTIO_BLK_T_FLUSH);
        q.process().unwrap();
    }
    assert_eq!(rig.irq.signals(), 0, "used index 3 has not passed 5");
    for _ in 0..3 {
        d.command(VIRTIO_BLK_T_FLUSH);
    }
    q.process().unwrap();
    assert_eq!(rig.irq.signals(), 1, "used index 6 passed 5");
    // The device published where it wants the next notification.
    let avail_event = GuestAddress(d.ring.used_addr() + 4 + 8 * u64::from(QSIZE));
    assert_eq!(rig.mem.read_obj::<u16>(avail_event).unwrap(), 6);
    // Nothing new: no interrupt.
    q.process().unwrap();
    assert_eq!(rig.irq.signals(), 1);
    assert_eq!(d.completed().len(), 6);
}

#[test]
fn a_descriptor_loop_breaks_the_device_without_hanging() {
    let rig = Rig::new(8, false);
    let mut d = Driver::new(&rig.mem);
    let mut q = rig.serve(&d);
    let s = d.slot();
    d.header(s, VIRTIO_BLK_T_IN, 0);
    // 0 -> 1 -> 0 -> ...: the last descriptor links back to the head.
    let back = (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16;
    d.push_raw(&[(s, 16, 0, Some(1)), (s + 0x1000, 512, back, Some(0))]);
    let fine = d.read(0, 512);
    assert!(matches!(
        q.process(),
        Err(crate::devices::virtio::block::queue::QueueError::Chain(_))
    ));
    assert_eq!(rig.irq.resets(), 1);
    assert!(rig.block.is_broken());
    assert!(d.completed().is_empty());
    assert_eq!(d.status(fine), 0xee, "nothing served after the loop");
    // A broken device serves nothing more and asks only once.
    assert!(q.process().is_err());
    assert_eq!(rig.irq.resets(), 1);
}

#[test]
fn a_chain_leaving_the_table_or_ram_breaks_the_device() {
    for next in [QSIZE, u16::MAX] {
        let rig = Rig::new(8, false);
        let mut d = Driver::new(&rig.mem);
        let mut q = rig.serve(&d);
        let s = d.slot();
        d.header(s, VIRTIO_BLK_T_FLUSH, 0);
        d.push_raw(&[(s, 16, 0, Some(next)), (s + 0x10, 1, 2, None)]);
        // The head's next flag is set by push_raw; its index is `next`.
        assert!(q.process().is_err());
        assert_eq!(rig.irq.resets(), 1);
    }
    // A head index outside the table.
    let rig = Rig::new(8, false);
    let mut d = Driver::new(&rig.mem);
    let mut q = rig.serve(&d);
    d.ring.offer(QSIZE + 3);
    assert!(q.process().is_err());
    assert_eq!(rig.irq.resets(), 1);
}

#[test]
fn an_available_index_too_far_ahead_breaks_the_device() {
    let rig = Rig::new(8, false);
    let d = Driver::new(&rig.mem);
    let mut q = rig.serve(&d);
    d.ring.set_avail_idx(QSIZE + 1);
    assert!(q.process().is_err());
    assert_eq!(rig.irq.resets(), 1);
    assert!(rig.block.is_broken());
}

#[test]
fn rings_outside_guest_ram_break_the_device() {
    let rig = Rig::new(8, false);
    let d = Driver::new(&rig.mem);
    let mut q = rig.serve(&d);
    q.handle
        .queue
        .set_used_ring_address(Some((RAM - 8) as u32), Some(0));
    assert!(q.process().is_err());
    assert_eq!(rig.irq.resets(), 1);
}
