//! What the devices share about reading a driver's rings.

use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use super::{GuestRam, Queue};

/// The driver broke a ring (an index past the queue, a buffer outside
/// guest RAM): the device asks for a reset and stops until it gets one.
#[derive(Debug)]
pub struct Broken(pub String);

/// The next chain the driver made available on `queue`, if any; an
/// available ring the device cannot read is [`Broken`].
pub(crate) fn pop<'m>(
    queue: &mut Queue,
    memory: &'m GuestRam,
) -> Result<Option<DescriptorChain<&'m GuestRam>>, Broken> {
    let mut iter = queue
        .iter(memory)
        .map_err(|e| Broken(format!("available ring: {e}")))?;
    Ok(iter.next())
}

/// Bytes before the first entry of a split used ring (`flags`, `idx`).
const USED_HEADER: u64 = 4;
/// Bytes of one used ring entry.
const USED_ENTRY: u64 = 8;
/// Bytes before the first entry of a split available ring.
const AVAIL_HEADER: u64 = 4;

fn used_ring_error(e: impl std::fmt::Display) -> Broken {
    Broken(format!("used ring: {e}"))
}

/// Returns `entries` (head, bytes written) to the used ring with one
/// store of the used index, so that the driver sees all of them or none:
/// a received frame spread over several buffers must not be seen in
/// part. `virtio-queue` publishes every entry it adds, so all but the
/// last are written here and the last through [`QueueT::add_used`],
/// whose release store of the index publishes them all. Its
/// notification count then misses `entries.len() - 1` entries: decide
/// on an interrupt with [`wants_interrupt`].
pub(crate) fn add_used_all(
    queue: &mut Queue,
    mem: &GuestRam,
    entries: &[(u16, u32)],
) -> Result<(), Broken> {
    let Some((&(last_head, last_len), rest)) = entries.split_last() else {
        return Ok(());
    };
    let start = queue.next_used();
    for (i, &(head, len)) in rest.iter().enumerate() {
        if head >= queue.size() {
            return Err(used_ring_error(format!("head {head} past the queue")));
        }
        let slot = start.wrapping_add(i as u16) % queue.size();
        let at = GuestAddress(queue.used_ring())
            .checked_add(USED_HEADER + USED_ENTRY * u64::from(slot))
            .ok_or_else(|| used_ring_error("address overflow"))?;
        // `struct virtq_used_elem`: the head's index and the length, LE.
        let mut entry = [0u8; USED_ENTRY as usize];
        entry[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        entry[4..].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&entry, at).map_err(used_ring_error)?;
    }
    queue.set_next_used(start.wrapping_add(rest.len() as u16));
    queue
        .add_used(mem, last_head, last_len)
        .map_err(used_ring_error)
}

/// Whether the driver wants an interrupt for the `added` used entries
/// returned since the last call: always without `VIRTIO_RING_F_EVENT_IDX`,
/// else when its `used_event` lies among them (the test
/// [`QueueT::needs_notification`] makes, with the true count of entries
/// where [`add_used_all`] leaves `virtio-queue`'s short).
pub(crate) fn wants_interrupt(
    queue: &mut Queue,
    mem: &GuestRam,
    added: u16,
) -> Result<bool, Broken> {
    // Fences the used entries against the read below, and resets the
    // queue's own count.
    let plain = queue
        .needs_notification(mem)
        .map_err(|e| Broken(format!("used ring: {e}")))?;
    if !queue.event_idx_enabled() {
        return Ok(plain);
    }
    let at = GuestAddress(queue.avail_ring())
        .checked_add(AVAIL_HEADER + 2 * u64::from(queue.size()))
        .ok_or_else(|| Broken("available ring: address overflow".into()))?;
    let used_event = mem
        .load::<u16>(at, Ordering::Acquire)
        .map(u16::from_le)
        .map_err(|e| Broken(format!("available ring: {e}")))?;
    let new = queue.next_used();
    Ok(new.wrapping_sub(used_event).wrapping_sub(1) < added)
}

/// The guest address of byte `offset` of `chain`'s device-writable
/// buffers (counted as `virtio-queue`'s `Writer` counts them), if the
/// chain is that long.
pub(crate) fn writable_byte(
    chain: &DescriptorChain<&GuestRam>,
    offset: u64,
) -> Option<GuestAddress> {
    let mut left = offset;
    for d in chain.clone().writable() {
        let len = u64::from(d.len());
        if left < len {
            return d.addr().checked_add(left);
        }
        left -= len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testing::{Ring, guest_ram};

    #[test]
    fn a_batch_is_published_with_one_index_and_counted_for_interrupts() {
        let mem = guest_ram(1 << 20);
        let mut ring = Ring::new(&mem, 0, 8);
        ring.start_at(6); // the batch wraps around the ring's end
        let mut queue = ring.queue();
        queue.set_event_idx(true);
        // The driver wants an interrupt once entry 7 (the second) is used.
        ring.set_used_event(7);
        add_used_all(&mut queue, &mem, &[(3, 100), (4, 200), (5, 50)]).unwrap();
        assert_eq!(ring.used_count(), 9);
        assert_eq!(ring.completed(), [(3, 100), (4, 200), (5, 50)]);
        // virtio-queue alone counts one entry (9) and would not ask.
        assert!(wants_interrupt(&mut queue, &mem, 3).unwrap());
        add_used_all(&mut queue, &mem, &[(1, 1), (2, 2)]).unwrap();
        assert!(!wants_interrupt(&mut queue, &mem, 2).unwrap());
    }

    #[test]
    fn a_head_past_the_queue_is_refused() {
        let mem = guest_ram(1 << 20);
        let ring = Ring::new(&mem, 0, 8);
        let mut queue = ring.queue();
        assert!(add_used_all(&mut queue, &mem, &[(8, 1), (0, 1)]).is_err());
        assert_eq!(ring.used_count(), 0);
    }

    #[test]
    fn writable_bytes_skip_readable_descriptors_and_cross_buffers() {
        let mem = guest_ram(1 << 20);
        let mut ring = Ring::new(&mem, 0, 8);
        ring.add(&[(0x8000, 4, false), (0x9000, 10, true), (0xa000, 10, true)]);
        let mut queue = ring.queue();
        let chain = pop(&mut queue, &mem).unwrap().unwrap();
        assert_eq!(writable_byte(&chain, 9), Some(GuestAddress(0x9009)));
        assert_eq!(writable_byte(&chain, 10), Some(GuestAddress(0xa000)));
        assert_eq!(writable_byte(&chain, 20), None);
    }
}
