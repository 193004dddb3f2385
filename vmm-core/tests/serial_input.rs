//! COM1's receiver: bytes sent through `Vm::serial_input` reach a guest
//! that reads them by interrupt, all of them and in order, however many
//! more than the 64-byte FIFO; after the run the input is closed.

mod common;

use std::time::Duration;

use common::Capture;
use hm_vmx::testing::kvm_available;
use vmm_core::devices::SerialInputClosed;
use vmm_core::{RunOutcome, Vm, VmConfig, guests};

fn echo_vm() -> (Vm, Capture) {
    let capture = Capture::default();
    let mut config = VmConfig::new(16 << 20, guests::find("echo").unwrap().firmware().unwrap());
    config.serial = Box::new(capture.clone());
    (Vm::new(config).expect("VM builds"), capture)
}

/// 300 bytes (no `q`): letters, digits, punctuation and newlines.
fn payload() -> Vec<u8> {
    let alphabet = b"abcdefghijklmnoprstuvwxyz0123456789 .,-\n";
    (0..300).map(|i| alphabet[i * 7 % alphabet.len()]).collect()
}

#[test]
fn the_echo_guest_gets_every_byte_by_interrupt_in_order() {
    if !kvm_available("the_echo_guest_gets_every_byte_by_interrupt_in_order") {
        return;
    }
    let (mut vm, serial) = echo_vm();
    let input = vm.serial_input();
    let sent = payload();
    let sender = {
        let (input, sent) = (input.clone(), sent.clone());
        std::thread::spawn(move || {
            input.send(&sent)?;
            input.send(b"q")
        })
    };
    let outcome = vm.run();
    let text = serial.text();
    assert_eq!(outcome.unwrap(), RunOutcome::GuestExit(0), "{text}");
    assert_eq!(sender.join().unwrap(), Ok(()));
    let echoed = text
        .strip_prefix("vmm echo: ready\n")
        .and_then(|rest| rest.strip_suffix("\nvmm echo: bye\n"))
        .unwrap_or_else(|| panic!("not ready ... bye:\n{text}"));
    assert_eq!(echoed, String::from_utf8(sent).unwrap().to_uppercase());
    // The run is over: input is refused, not queued for nobody.
    assert_eq!(input.send(b"late"), Err(SerialInputClosed));
}

#[test]
fn a_send_waiting_on_a_guest_that_never_reads_ends_with_the_run() {
    if !kvm_available("a_send_waiting_on_a_guest_that_never_reads_ends_with_the_run") {
        return;
    }
    // The demo guest never reads COM1: the FIFO fills and the sender waits
    // until the run ends.
    let capture = Capture::default();
    let mut config = VmConfig::new(16 << 20, guests::find("demo").unwrap().firmware().unwrap());
    config.serial = Box::new(capture.clone());
    let mut vm = Vm::new(config).unwrap();
    let input = vm.serial_input();
    let sender = std::thread::spawn(move || input.send(&[b'x'; 1000]));
    assert_eq!(vm.run().unwrap(), RunOutcome::GuestExit(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !sender.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the sender still waits"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sender.join().unwrap(), Err(SerialInputClosed));
}
