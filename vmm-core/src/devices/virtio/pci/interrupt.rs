//! The transport's side of [`Interrupt`]: what device threads and the EMT
//! share (device status, ISR, MSI-X vectors and table), and delivery by
//! MSI-X or, when the driver did not enable MSI-X, by INTx with the ISR.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU16, Ordering};

use parking_lot::Mutex;
use stam::{Counter, Unit};
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;

use crate::devices::pci::{IrqRouting, Msix};
use crate::devices::virtio::Interrupt;

/// The vector that means "no interrupt" (`VIRTIO_MSI_NO_VECTOR`).
pub const NO_VECTOR: u16 = 0xffff;
/// ISR bit 0: a queue interrupt.
pub(crate) const ISR_QUEUE: u8 = 1;
/// ISR bit 1: a configuration change.
pub(crate) const ISR_CONFIG: u8 = 2;

/// The per-device statistics under `/Devices/<name>/`.
pub(crate) struct Stats {
    /// Notifications that exited to the VMM (no ioeventfd at the address).
    pub(crate) notify_exits: Counter,
    /// Interrupts sent (MSI-X messages and INTx assertions).
    pub(crate) interrupts: Counter,
    /// Signals held pending because the vector was masked.
    pub(crate) masked: Counter,
}

impl Stats {
    /// Registers the counters of device `name` in `stats`.
    pub(crate) fn register(stats: &stam::Registry, name: &str) -> Result<Self, stam::Error> {
        let counter = |leaf: &str, desc: &str| {
            stats.counter(format!("/Devices/{name}/{leaf}"), Unit::Occurrences, desc)
        };
        Ok(Stats {
            notify_exits: counter(
                "NotifyExits",
                "Queue notifications that exited to the VMM (those through ioeventfds do not)",
            )?,
            interrupts: counter(
                "Interrupts",
                "Interrupts sent to the driver (MSI-X messages and INTx assertions)",
            )?,
            masked: counter(
                "InterruptsMasked",
                "Interrupts held pending because their MSI-X vector was masked",
            )?,
        })
    }
}

/// What the EMT (register accesses) and the device's threads share.
pub(crate) struct Shared {
    /// The device status register.
    pub(crate) status: AtomicU8,
    /// The ISR status (INTx only): bits read and cleared by the driver.
    pub(crate) isr: AtomicU8,
    /// The configuration change vector.
    pub(crate) config_vector: AtomicU16,
    /// Each queue's vector.
    pub(crate) queue_vectors: Vec<AtomicU16>,
    /// The MSI-X vectors.
    pub(crate) msix: Mutex<Msix>,
    pub(crate) routing: Arc<dyn IrqRouting>,
    /// The GSI INTA# raises.
    pub(crate) intx_gsi: u32,
    pub(crate) stats: Stats,
}

impl Shared {
    /// A shared state for `queues` queues, vectors unassigned.
    pub(crate) fn new(
        queues: usize,
        msix: Msix,
        routing: Arc<dyn IrqRouting>,
        intx_gsi: u32,
        stats: Stats,
    ) -> Self {
        Shared {
            status: AtomicU8::new(0),
            isr: AtomicU8::new(0),
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            msix: Mutex::new(msix),
            routing,
            intx_gsi,
            stats,
        }
    }

    /// Sends `vector` by MSI-X, or, with MSI-X off, sets `isr_bit` and
    /// asserts INTx.
    fn signal(&self, vector: u16, isr_bit: u8) {
        let mut msix = self.msix.lock();
        if msix.enabled() {
            if vector != NO_VECTOR {
                msix.signal(vector);
                if msix.is_pending(vector) {
                    self.stats.masked.inc();
                } else {
                    self.stats.interrupts.inc();
                }
            }
            return;
        }
        drop(msix);
        self.isr.fetch_or(isr_bit, Ordering::AcqRel);
        self.set_intx(true);
        self.stats.interrupts.inc();
    }

    /// Drives INTA#.
    pub(crate) fn set_intx(&self, level: bool) {
        if let Err(e) = self.routing.set_intx(self.intx_gsi, level) {
            tracing::warn!("virtio INTx (GSI {}): {e}", self.intx_gsi);
        }
    }

    /// The driver read the ISR: returns it, clears it and lowers INTA#.
    pub(crate) fn take_isr(&self) -> u8 {
        let isr = self.isr.swap(0, Ordering::AcqRel);
        if isr != 0 {
            self.set_intx(false);
        }
        isr
    }

    /// Back to the power-on state of the virtio registers (the MSI-X
    /// table is the PCI function's and stays).
    pub(crate) fn reset(&self) {
        self.status.store(0, Ordering::Release);
        self.take_isr();
        self.config_vector.store(NO_VECTOR, Ordering::Release);
        for v in &self.queue_vectors {
            v.store(NO_VECTOR, Ordering::Release);
        }
    }
}

impl Interrupt for Shared {
    fn signal_queue(&self, queue: u16) {
        let vector = self
            .queue_vectors
            .get(usize::from(queue))
            .map_or(NO_VECTOR, |v| v.load(Ordering::Acquire));
        self.signal(vector, ISR_QUEUE);
    }

    fn signal_config(&self) {
        self.signal(self.config_vector.load(Ordering::Acquire), ISR_CONFIG);
    }

    fn needs_reset(&self) {
        self.status
            .fetch_or(VIRTIO_CONFIG_S_NEEDS_RESET as u8, Ordering::AcqRel);
        self.signal_config();
    }
}
