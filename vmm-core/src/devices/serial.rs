//! A 16550A UART (COM1) built on `vm-superio`.

use std::io::Write;

use vm_superio::{Serial, Trigger};

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

/// A 16550A UART whose transmitted bytes go to a sink the caller chooses.
pub struct Uart {
    serial: Serial<IrqLine, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
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
            serial: Serial::new(irq, out),
        }
    }
}

impl Uart {
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
        let irq = self.serial.interrupt_evt().clone();
        let old = std::mem::replace(
            &mut self.serial,
            Serial::new(IrqLine::None, Box::new(std::io::sink())),
        );
        let out = old.into_writer();
        match Serial::from_state(state, irq.clone(), vm_superio::serial::NoEvents, out) {
            Ok(serial) => {
                self.serial = serial;
                Ok(())
            }
            Err(e) => {
                // `from_state` consumed the sink only on success; rebuild a
                // power-on UART on a sink that drops output.
                self.serial = Serial::new(irq, Box::new(std::io::sink()));
                Err(format!("{e:?}"))
            }
        }
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
            if let Err(e) = self.serial.write(reg, value) {
                tracing::warn!("serial output lost: {e:?}");
            }
        }
        DeviceAction::Continue
    }

    fn reset(&mut self) {
        // A new 16550 in its power-on state, writing to the same sink and
        // signalling the same interrupt line.
        let irq = self.serial.interrupt_evt().clone();
        let old = std::mem::replace(
            &mut self.serial,
            Serial::new(IrqLine::None, Box::new(std::io::sink())),
        );
        self.serial = Serial::new(irq, old.into_writer());
    }
}
