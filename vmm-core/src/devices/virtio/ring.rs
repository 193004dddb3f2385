//! What the devices share about reading a driver's rings.

use virtio_queue::{DescriptorChain, QueueOwnedT};

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
