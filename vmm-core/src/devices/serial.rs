//! A 16550A UART (COM1) built on `vm-superio`.

use std::io::Write;
use std::sync::Arc;

use vm_superio::{Serial, Trigger};

use super::serial_input::RxSpace;
use super::{DeviceAction, PioDevice};

/// The I/O base of COM1.
pub const COM1_PORT: u16 = 0x3f8;

/// Bytes in the 16550A's receive FIFO.
pub(crate) const UART_FIFO_SIZE: usize = 64;

/// A UART's interrupt line.
#[derive(Debug, Default, Clone)]
pub enum IrqLine {
    /// No interrupt controller attached: the guest polls the line status
    /// register instead.
    #[default]
    None,
    /// An eventfd registered with KVM as an irqfd: a write raises the IRQ
    /// in the in-kernel interrupt controllers.
    Irqfd(std::sync::Arc<vmm_sys_util::eventfd::EventFd>),
}

impl IrqLine {
    /// An eventfd registered with KVM as `irq` of the in-kernel PIC and
    /// I/O APIC (the VM must have its irqchip), see [`hm_vmx::Vm::irqfd`].
    pub fn irqfd(vm: &hm_vmx::Vm, irq: u32) -> hm_vmx::Result<IrqLine> {
        Ok(IrqLine::Irqfd(std::sync::Arc::new(vm.irqfd(irq)?)))
    }
}

impl Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        match self {
            IrqLine::None => Ok(()),
            IrqLine::Irqfd(event) => event.write(1),
        }
    }
}

/// The `vm-superio` device inside a [`Uart`].
type Serial16550 = Serial<IrqLine, Arc<RxSpace>, Box<dyn Write + Send>>;

/// A 16550A UART whose transmitted bytes go to a sink the caller chooses.
///
/// A byte the sink refuses (a full disk, a closed pipe) is lost, not
/// retried: the guest is never stalled by its console. The loss is counted
/// (see [`Uart::count_dropped`]); telling the user is the sink's business.
/// Bytes for its receiver come through a
/// [`SerialInput`](super::SerialInput).
pub struct Uart {
    serial: Serial16550,
    dropped: Option<stam::Counter>,
}

impl Uart {
    /// A UART writing what the guest transmits to `out`, with no interrupt
    /// line.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self::with_irq(out, IrqLine::None)
    }

    /// A UART writing to `out` that signals its interrupt on `irq`.
    pub fn with_irq(out: Box<dyn Write + Send>, irq: IrqLine) -> Self {
        Uart {
            serial: Serial::with_events(irq, Arc::default(), out),
            dropped: None,
        }
    }

    /// Counts in `dropped` every transmitted byte the sink refused.
    pub fn count_dropped(mut self, dropped: stam::Counter) -> Self {
        self.dropped = Some(dropped);
        self
    }
}

impl Uart {
    /// What senders of input wait on.
    pub(crate) fn rx_space(&self) -> Arc<RxSpace> {
        Arc::clone(self.serial.events())
    }

    /// Queues as much of `bytes` in the receive FIFO as fits (raising the
    /// received-data interrupt); returns how many. None fit while the FIFO
    /// is full or the guest has the UART in loopback mode.
    pub(crate) fn receive(&mut self, bytes: &[u8]) -> usize {
        let room = self.serial.fifo_capacity().min(bytes.len());
        match self.serial.enqueue_raw_bytes(bytes) {
            Ok(queued) => queued,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            Err(e) => {
                // The bytes are in the FIFO; only the interrupt failed.
                tracing::warn!("serial: cannot raise the interrupt: {e:?}");
                room
            }
        }
    }

    /// Replaces the device by `build(interrupt line, events, sink)`, taken
    /// from the old one; on failure, by a power-on device on a sink that
    /// drops output (the sink went into the failed attempt). Wakes the
    /// senders of input: the FIFO changed under them.
    fn rebuild<E>(
        &mut self,
        build: impl FnOnce(IrqLine, Arc<RxSpace>, Box<dyn Write + Send>) -> Result<Serial16550, E>,
    ) -> Result<(), E> {
        let irq = self.serial.interrupt_evt().clone();
        let space = self.rx_space();
        let old = std::mem::replace(
            &mut self.serial,
            Serial::with_events(IrqLine::None, Arc::clone(&space), Box::new(std::io::sink())),
        );
        let built = build(irq.clone(), Arc::clone(&space), old.into_writer());
        let result = match built {
            Ok(serial) => {
                self.serial = serial;
                Ok(())
            }
            Err(e) => {
                self.serial =
                    Serial::with_events(irq, Arc::clone(&space), Box::new(std::io::sink()));
                Err(e)
            }
        };
        space.notify();
        result
    }

    /// The UART's registers and receive FIFO, for a saved state.
    pub(crate) fn state(&self) -> vm_superio::serial::SerialState {
        self.serial.state()
    }

    /// Puts back registers and FIFO from a saved state, keeping the sink and
    /// the interrupt line.
    pub(crate) fn set_state(
        &mut self,
        state: &vm_superio::serial::SerialState,
    ) -> Result<(), String> {
        if state.in_buffer.len() > UART_FIFO_SIZE {
            return Err(format!(
                "{} bytes in the receive FIFO, a 16550A holds {UART_FIFO_SIZE}",
                state.in_buffer.len()
            ));
        }
        self.rebuild(|irq, space, out| Serial::from_state(state, irq, space, out))
            .map_err(|e| format!("{e:?}"))
    }
}

impl PioDevice for Uart {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0xff, |reg| self.serial.read(reg));
        super::answer_byte(data, value);
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        if let (Ok(reg), Some(&value)) = (u8::try_from(offset), data.first()) {
            // A failing sink (closed pipe, full disk) loses output but must
            // not stop the guest.
            match self.serial.write(reg, value) {
                Ok(()) => {}
                Err(vm_superio::serial::Error::IOError(_)) => {
                    if let Some(dropped) = &self.dropped {
                        dropped.inc();
                    }
                }
                Err(e) => tracing::warn!("serial: cannot raise the interrupt: {e:?}"),
            }
        }
        DeviceAction::Continue
    }

    fn reset(&mut self) {
        // A new 16550 in its power-on state, writing to the same sink and
        // signalling the same interrupt line.
        let rebuilt: Result<(), std::convert::Infallible> =
            self.rebuild(|irq, space, out| Ok(Serial::with_events(irq, space, out)));
        let Ok(()) = rebuilt;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that refuses every write, as a full disk does.
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_the_sink_refuses_are_counted_and_the_uart_goes_on() {
        let stats = stam::Registry::new();
        let dropped = stats
            .counter("/Devices/Serial0/cbDropped", stam::Unit::Bytes, "lost")
            .unwrap();
        let mut uart = Uart::new(Box::new(Full)).count_dropped(dropped.clone());
        for &byte in b"lost" {
            assert_eq!(uart.write(0, &[byte]), DeviceAction::Continue);
        }
        assert_eq!(dropped.get(), 4);
        // The line status still says the transmitter is empty: the guest
        // keeps sending instead of waiting for a byte that never leaves.
        let mut lsr = [0];
        uart.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x20, 0x20, "THR empty");
    }
}
