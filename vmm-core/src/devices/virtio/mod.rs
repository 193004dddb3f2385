//! Virtio 1.x devices and the contract between a device and its transport.
//!
//! A device ([`VirtioDevice`]) knows its type, features, configuration
//! space and how to serve its queues; it knows nothing of PCI. The
//! transport (virtio over PCI) owns the registers the driver programs
//! (status, feature negotiation, queue addresses, MSI-X vectors), builds
//! `virtio-queue` [`Queue`]s from them, and hands them to the device when
//! the driver sets `DRIVER_OK` ([`VirtioDevice::activate`]). Interrupts go
//! back through the transport's [`Interrupt`].
//!
//! Queue notifications arrive as eventfds (KVM's ioeventfds, so a notify
//! does not return to user space on the EMT); each device serves them on
//! its own thread with a [`QueueWorker`]. Before a save, or at a reset,
//! the transport calls [`VirtioDevice::deactivate`]: the device finishes
//! every request it took from a ring, stops its thread and hands the
//! queues back with their positions, so that nothing is half-written and
//! nothing replayed twice.
//!
//! Data flows one way: transport → device (activation, queues, config
//! writes) and device → transport (interrupts) only through [`Interrupt`].

mod attach;
pub mod block;
mod device;
pub mod net;
pub mod pci;
mod ring;
mod rng;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod testing;
pub mod vsock;
mod worker;

pub(crate) use attach::attach_virtio;
pub use block::{Block, BlockSpec, BlockSpecError};
pub use device::{Activation, DeviceError, Interrupt, QueueHandle, VirtioDevice};
pub use net::{Net, NetSpec};
pub use pci::VirtioPci;
pub use rng::Rng;
pub use vsock::{Vsock, VsockSpec};
pub use worker::{QueueWorker, STOP_TIMEOUT, WorkerControl, WorkerEvent};

/// A virtio device attached to the VM: its PCI address and transport.
#[derive(Clone)]
pub(crate) struct VirtioSlot {
    /// Where it is on bus 0.
    pub(crate) at: crate::devices::pci::DevFn,
    /// Its transport (registers, queues, the device).
    pub(crate) transport: std::sync::Arc<parking_lot::Mutex<pci::transport::Transport>>,
}

/// The guest memory devices reach by DMA: guest RAM as `pgm` lays it out.
/// Every write through it (`vm-memory` and `virtio-queue` calls alike)
/// marks the written pages in `pgm`'s [`WriteBitmap`](pgm::phys::WriteBitmap),
/// so a live save sends them again: a device need not report its writes,
/// but must not write guest RAM through raw host pointers.
pub type GuestRam = pgm::phys::TrackedMemory;

/// The queue type every device serves.
pub type Queue = virtio_queue::Queue;
