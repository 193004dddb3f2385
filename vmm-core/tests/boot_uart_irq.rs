//! COM1's interrupt line: the UART signals its eventfd (the irqfd KVM turns
//! into IRQ 4) when the guest enables an interrupt whose condition holds.

use std::sync::Arc;

use vmm_core::devices::{IrqLine, PioDevice, Uart};
use vmm_sys_util::eventfd::EventFd;

const IER: u16 = 1;
const IIR: u16 = 2;
const IER_THR_EMPTY: u8 = 0x02;

#[test]
fn enabling_thr_empty_raises_the_irq() {
    let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut uart = Uart::with_irq(
        Box::new(std::io::sink()),
        IrqLine::Irqfd(Arc::new(event.try_clone().unwrap())),
    );
    assert!(event.read().is_err(), "no interrupt before the guest asks");
    uart.write(IER, &[IER_THR_EMPTY]);
    assert_eq!(event.read().unwrap(), 1);
    // The guest acknowledges by reading IIR; transmitting a byte empties
    // the THR again: another interrupt.
    let mut iir = [0];
    uart.read(IIR, &mut iir);
    assert_eq!(iir[0] & 0x0f, 0x02, "THR-empty interrupt pending");
    uart.write(0, b"x");
    assert_eq!(event.read().unwrap(), 1);
}

#[test]
fn no_line_means_no_interrupt_and_no_error() {
    let mut uart = Uart::with_irq(Box::new(std::io::sink()), IrqLine::None);
    uart.write(IER, &[IER_THR_EMPTY]);
    uart.write(0, b"x");
}

#[test]
fn reset_keeps_the_interrupt_line() {
    let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut uart = Uart::with_irq(
        Box::new(std::io::sink()),
        IrqLine::Irqfd(Arc::new(event.try_clone().unwrap())),
    );
    uart.reset();
    uart.write(IER, &[IER_THR_EMPTY]);
    assert_eq!(event.read().unwrap(), 1);
}
