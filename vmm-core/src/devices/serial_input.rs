//! Input for COM1's receiver: bytes from the host (a console, a script)
//! go into the UART's 64-byte receive FIFO, with backpressure.
//!
//! The sender never holds the UART's lock while it waits: it queues what
//! fits, lets go of the device, and sleeps until the guest has emptied the
//! FIFO (the UART's `in_buffer_empty` event), or for at most [`RETRY`]
//! (a guest that put its UART in loopback mode, or a reset that emptied
//! the FIFO behind the sender's back). Nothing is ever dropped while the
//! VM runs; when its run has ended the input is closed and a waiting
//! sender returns at once.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use vm_superio::serial::SerialEvents;

use super::Uart;

/// The longest a sender sleeps before it looks at the FIFO again.
const RETRY: Duration = Duration::from_millis(50);

/// The input was closed: the VM's run has ended. Bytes not yet in the
/// FIFO were not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("serial input is closed: the VM's run has ended")]
pub struct SerialInputClosed;

/// What the sender waits on: a count of FIFO drains and whether the input
/// was closed. Shared by the UART (which signals) and its senders.
#[derive(Debug, Default)]
pub(crate) struct RxSpace {
    state: Mutex<RxState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct RxState {
    /// Bumped each time the FIFO may have room again.
    drains: u64,
    closed: bool,
}

impl RxSpace {
    /// The FIFO may have room again: wake the senders.
    pub(crate) fn notify(&self) {
        self.state.lock().drains += 1;
        self.changed.notify_all();
    }

    /// The VM's run has ended: every send, waiting or to come, fails.
    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.changed.notify_all();
    }

    /// The current drain count, or the closure.
    fn drains(&self) -> Result<u64, SerialInputClosed> {
        let state = self.state.lock();
        if state.closed {
            return Err(SerialInputClosed);
        }
        Ok(state.drains)
    }

    /// Sleeps until a drain after `seen`, the closure, or [`RETRY`].
    fn wait_after(&self, seen: u64) -> Result<(), SerialInputClosed> {
        let mut state = self.state.lock();
        if state.drains == seen && !state.closed {
            self.changed.wait_for(&mut state, RETRY);
        }
        if state.closed {
            return Err(SerialInputClosed);
        }
        Ok(())
    }
}

impl SerialEvents for RxSpace {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}

    fn in_buffer_empty(&self) {
        self.notify();
    }
}

/// Sends bytes to COM1's receiver, as if they came down the serial line.
///
/// Each byte lands in the UART's receive FIFO and raises its
/// received-data interrupt (when the guest enabled it). A full FIFO makes
/// [`send`](SerialInput::send) wait until the guest has read it empty: no
/// byte is dropped, however fast the host writes. When the VM's run has
/// ended, `send` fails with [`SerialInputClosed`] instead of waiting.
/// Clones share the same UART.
///
/// ```no_run
/// use vmm_core::{Vm, VmConfig, guests};
///
/// let vm = Vm::new(VmConfig::new(16 << 20, guests::find("echo")?.firmware()?))?;
/// let input = vm.serial_input();
/// std::thread::spawn(move || {
///     // Blocks while the FIFO is full; fails once the run has ended.
///     let _ = input.send(b"hello q");
/// });
/// # Ok::<(), vmm_core::Error>(())
/// ```
#[derive(Clone)]
pub struct SerialInput {
    uart: Arc<parking_lot::Mutex<Uart>>,
    space: Arc<RxSpace>,
}

impl SerialInput {
    /// Input for `uart`.
    pub(crate) fn new(uart: Arc<parking_lot::Mutex<Uart>>) -> Self {
        let space = uart.lock().rx_space();
        SerialInput { uart, space }
    }

    /// Queues all of `bytes` in the receive FIFO, in order, waiting while
    /// it is full. Fails when the VM's run has ended (before or while it
    /// waits); the bytes not queued by then are not delivered.
    pub fn send(&self, mut bytes: &[u8]) -> Result<(), SerialInputClosed> {
        while !bytes.is_empty() {
            // Read before trying: a drain between the try and the wait
            // then ends the wait at once instead of being missed.
            let seen = self.space.drains()?;
            let queued = self.uart.lock().receive(bytes);
            bytes = &bytes[queued..];
            if !bytes.is_empty() {
                self.space.wait_after(seen)?;
            }
        }
        Ok(())
    }

    /// Closes the input: every `send`, waiting or to come, fails.
    pub(crate) fn close(&self) {
        self.space.close();
    }

    /// A guard that closes the input when dropped (a run ends, whichever
    /// way it ends).
    pub(crate) fn closed_on_drop(self) -> ClosedOnDrop {
        ClosedOnDrop(self)
    }
}

/// Closes a [`SerialInput`] when dropped.
pub(crate) struct ClosedOnDrop(SerialInput);

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::devices::{PioDevice, UART_FIFO_SIZE};

    const RBR: u16 = 0;
    const LSR: u16 = 5;
    const LSR_DATA_READY: u8 = 0x01;

    fn uart() -> Arc<parking_lot::Mutex<Uart>> {
        Arc::new(parking_lot::Mutex::new(Uart::new(
            Box::new(std::io::sink()),
        )))
    }

    /// Reads the FIFO as a guest does until `count` bytes came, with a
    /// deadline.
    fn guest_reads(uart: &parking_lot::Mutex<Uart>, count: usize) -> Vec<u8> {
        let start = Instant::now();
        let mut got = Vec::new();
        while got.len() < count {
            assert!(start.elapsed() < Duration::from_secs(10), "got {got:?}");
            let mut lsr = [0];
            let mut uart = uart.lock();
            uart.read(LSR, &mut lsr);
            if lsr[0] & LSR_DATA_READY == 0 {
                drop(uart);
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let mut byte = [0];
            uart.read(RBR, &mut byte);
            got.push(byte[0]);
        }
        got
    }

    #[test]
    fn more_than_a_fifo_arrives_whole_and_in_order() {
        let uart = uart();
        let input = SerialInput::new(Arc::clone(&uart));
        let sent: Vec<u8> = (0..5 * UART_FIFO_SIZE).map(|i| i as u8).collect();
        let sender = {
            let sent = sent.clone();
            std::thread::spawn(move || input.send(&sent))
        };
        assert_eq!(guest_reads(&uart, sent.len()), sent);
        assert_eq!(sender.join().unwrap(), Ok(()));
    }

    #[test]
    fn a_full_fifo_makes_the_sender_wait_without_the_lock() {
        let uart = uart();
        let input = SerialInput::new(Arc::clone(&uart));
        let sender = std::thread::spawn(move || input.send(&[7; UART_FIFO_SIZE + 1]));
        // The sender is stuck on the last byte; the device stays usable.
        std::thread::sleep(3 * RETRY);
        assert!(!sender.is_finished());
        let mut lsr = [0];
        uart.try_lock_for(Duration::from_secs(1))
            .expect("the sender does not hold the UART while it waits")
            .read(LSR, &mut lsr);
        assert_eq!(lsr[0] & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(
            guest_reads(&uart, UART_FIFO_SIZE + 1),
            [7; UART_FIFO_SIZE + 1]
        );
        assert_eq!(sender.join().unwrap(), Ok(()));
    }

    #[test]
    fn closing_ends_a_waiting_send_and_refuses_later_ones() {
        let uart = uart();
        let input = SerialInput::new(Arc::clone(&uart));
        let waiting = input.clone();
        let sender = std::thread::spawn(move || waiting.send(&[1; 2 * UART_FIFO_SIZE]));
        std::thread::sleep(2 * RETRY);
        let start = Instant::now();
        input.close();
        assert_eq!(sender.join().unwrap(), Err(SerialInputClosed));
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(input.send(b"x"), Err(SerialInputClosed));
    }

    #[test]
    fn a_reset_empties_the_fifo_and_the_sender_goes_on() {
        let uart = uart();
        let input = SerialInput::new(Arc::clone(&uart));
        input.send(&[1; UART_FIFO_SIZE]).unwrap();
        let sender = std::thread::spawn(move || input.send(b"after"));
        std::thread::sleep(2 * RETRY);
        uart.lock().reset();
        assert_eq!(guest_reads(&uart, 5), b"after");
        assert_eq!(sender.join().unwrap(), Ok(()));
    }
}
