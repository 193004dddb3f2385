use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::*;

fn read(kbc: &mut I8042, offset: u16) -> u8 {
    let mut b = [0];
    kbc.read(offset, &mut b);
    b[0]
}

/// Sends controller command `command` with `param` (if any) and returns
/// what the controller answers, with the status each byte came with.
fn command(kbc: &mut I8042, command: u8, param: Option<u8>) -> Vec<(u8, u8)> {
    assert_eq!(kbc.write(COMMAND, &[command]), DeviceAction::Continue);
    if let Some(p) = param {
        assert_eq!(kbc.write(DATA, &[p]), DeviceAction::Continue);
    }
    drain(kbc)
}

fn drain(kbc: &mut I8042) -> Vec<(u8, u8)> {
    let mut out = Vec::new();
    while read(kbc, COMMAND) & STATUS_OUTPUT_FULL != 0 {
        let status = read(kbc, COMMAND);
        out.push((read(kbc, DATA), status));
    }
    out
}

fn bytes(answer: Vec<(u8, u8)>) -> Vec<u8> {
    answer.into_iter().map(|(b, _)| b).collect()
}

/// Counts what an interrupt line signalled.
struct Line(Arc<EventFd>);

impl Line {
    fn new() -> Line {
        Line(Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
    }
    fn irq(&self) -> IrqLine {
        IrqLine::Irqfd(Arc::clone(&self.0))
    }
    /// Signals since the last call.
    fn taken(&self) -> u64 {
        self.0.read().unwrap_or(0)
    }
}

#[test]
fn power_on_status_has_no_keylock() {
    let mut kbc = I8042::default();
    let status = read(&mut kbc, COMMAND);
    assert_eq!(status, STATUS_UNLOCKED | STATUS_SYSTEM_FLAG);
    assert_eq!(bytes(command(&mut kbc, 0x20, None)), [CTR_DEFAULT]);
    assert_ne!(read(&mut kbc, COMMAND) & STATUS_COMMAND, 0);
}

#[test]
fn command_byte_tests_and_port_enables() {
    let mut kbc = I8042::default();
    assert!(command(&mut kbc, 0x60, Some(0x47)).is_empty());
    assert_eq!(bytes(command(&mut kbc, 0x20, None)), [0x47]);
    assert_eq!(bytes(command(&mut kbc, 0xaa, None)), [0x55]);
    assert_eq!(bytes(command(&mut kbc, 0xab, None)), [0x00]);
    assert_eq!(bytes(command(&mut kbc, 0xa9, None)), [0x00]);
    command(&mut kbc, 0xa7, None);
    command(&mut kbc, 0xad, None);
    let ctr = bytes(command(&mut kbc, 0x20, None))[0];
    assert_eq!(ctr & (CTR_AUX_DISABLED | CTR_KBD_DISABLED), 0x30);
    command(&mut kbc, 0xa8, None);
    command(&mut kbc, 0xae, None);
    assert_eq!(bytes(command(&mut kbc, 0x20, None)), [0x47]);
}

#[test]
fn linux_mux_and_aux_loopback_probes() {
    let mut kbc = I8042::default();
    // Loopback bytes come back from the auxiliary port.
    let answer = command(&mut kbc, 0xd3, Some(0x5a));
    assert_eq!(
        answer,
        [(0x5a, STATUS_UNLOCKED | STATUS_SYSTEM_FLAG | 0x21)]
    );
    // The multiplexer check: a plain controller echoes its third byte too.
    for b in [0xf0, 0x56, 0xa4] {
        assert_eq!(bytes(command(&mut kbc, 0xd3, Some(b))), [b]);
    }
    assert_eq!(bytes(command(&mut kbc, 0xd2, Some(0x33))), [0x33]);
}

#[test]
fn interrupts_follow_the_command_byte() {
    let (kbd, aux) = (Line::new(), Line::new());
    let mut kbc = I8042::new(kbd.irq(), aux.irq());
    // Linux's AUX interrupt test: AUX enabled with its interrupt, a
    // loopback byte, IRQ 12.
    command(
        &mut kbc,
        0x60,
        Some(CTR_TRANSLATE | CTR_SYSTEM_FLAG | CTR_AUX_INT),
    );
    kbc.write(COMMAND, &[0xd3]);
    kbc.write(DATA, &[0xa5]);
    assert_eq!((kbd.taken(), aux.taken()), (0, 1));
    assert_eq!(read(&mut kbc, DATA), 0xa5);
    // Keyboard answers raise IRQ 1 once per byte entering the buffer.
    command(
        &mut kbc,
        0x60,
        Some(CTR_TRANSLATE | CTR_SYSTEM_FLAG | CTR_KBD_INT),
    );
    kbc.write(DATA, &[0xff]);
    assert_eq!(kbd.taken(), 1);
    assert_eq!(read(&mut kbc, DATA), 0xfa);
    assert_eq!(kbd.taken(), 1);
    assert_eq!(read(&mut kbc, DATA), 0xaa);
    assert_eq!(kbd.taken(), 0);
    // A byte waiting when its interrupt gets enabled raises it.
    command(&mut kbc, 0x60, Some(CTR_SYSTEM_FLAG));
    kbc.write(DATA, &[0xee]);
    assert_eq!(kbd.taken(), 0);
    kbc.write(COMMAND, &[0x60]);
    kbc.write(DATA, &[CTR_SYSTEM_FLAG | CTR_KBD_INT]);
    assert_eq!(kbd.taken(), 1);
    assert_eq!(read(&mut kbc, DATA), 0xee);
    assert_eq!(aux.taken(), 0);
}

#[test]
fn keyboard_and_mouse_behind_the_controller() {
    let mut kbc = I8042::default();
    kbc.write(DATA, &[0xf2]);
    let answer = drain(&mut kbc);
    assert_eq!(bytes(answer.clone()), [0xfa, 0xab, 0x41]);
    assert!(answer.iter().all(|&(_, s)| s & STATUS_AUX_DATA == 0));
    // The mouse's port is disabled at power-on: its answer waits.
    assert!(command(&mut kbc, 0xd4, Some(0xff)).is_empty());
    let answer = command(&mut kbc, 0xa8, None);
    assert_eq!(bytes(answer.clone()), [0xfa, 0xaa, 0x00]);
    assert!(answer.iter().all(|&(_, s)| s & STATUS_AUX_DATA != 0));
    assert_eq!(bytes(command(&mut kbc, 0xd4, Some(0xf2))), [0xfa, 0x00]);
    // A disabled keyboard port holds the keyboard's bytes.
    command(&mut kbc, 0xad, None);
    kbc.write(DATA, &[0xf4]);
    assert!(drain(&mut kbc).is_empty());
    assert_eq!(bytes(command(&mut kbc, 0xae, None)), [0xfa]);
    // Untranslated, the keyboard's identity is its own.
    command(&mut kbc, 0x60, Some(CTR_SYSTEM_FLAG));
    kbc.write(DATA, &[0xf2]);
    assert_eq!(bytes(drain(&mut kbc)), [0xfa, 0xab, 0x83]);
}

#[test]
fn output_port_and_reset() {
    let mut kbc = I8042::default();
    assert_eq!(bytes(command(&mut kbc, 0xd0, None)), [0x03]);
    assert!(command(&mut kbc, 0xd1, Some(0x01)).is_empty());
    assert_eq!(bytes(command(&mut kbc, 0xd0, None)), [0x01]);
    kbc.write(COMMAND, &[0xd1]);
    assert_eq!(kbc.write(DATA, &[0x02]), DeviceAction::Reset);
    assert_eq!(kbc.write(COMMAND, &[0xff]), DeviceAction::Continue);
    assert_eq!(kbc.write(COMMAND, &[0xfe]), DeviceAction::Reset);
    assert_eq!(kbc.write(COMMAND, &[]), DeviceAction::Continue);
    kbc.reset();
    assert_eq!(kbc.state(), I8042State::default());
}

#[test]
fn unread_answers_are_bounded() {
    let mut kbc = I8042::default();
    for _ in 0..100 {
        kbc.write(COMMAND, &[0xaa]);
    }
    // One in the output buffer, the rest waiting.
    assert_eq!(kbc.state().pending.len(), PENDING_LIMIT);
    assert_eq!(drain(&mut kbc).len(), PENDING_LIMIT + 1);
}

#[test]
fn the_output_port_drives_the_a20_line() {
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let line = A20Line::new(move |open| log.lock().push(open));
    let mut kbc = I8042::default().with_a20(Arc::clone(&line));
    // 0xd1: bit 1 clear closes the gate (port 0x92 is low), bit 0 kept set
    command(&mut kbc, 0xd1, Some(OUTPUT_PORT_NO_RESET));
    assert!(!line.is_open());
    assert_eq!(bytes(command(&mut kbc, 0xd0, None)), [OUTPUT_PORT_NO_RESET]);
    command(&mut kbc, 0xdf, None);
    assert!(line.is_open());
    assert_eq!(
        bytes(command(&mut kbc, 0xd0, None)),
        [OUTPUT_PORT_NO_RESET | OUTPUT_PORT_A20]
    );
    command(&mut kbc, 0xdd, None);
    assert!(!line.is_open());
    // a restored state leaves the line to the restore; a reset drives it
    kbc.set_state(I8042State::default());
    assert!(kbc.state().a20());
    assert!(!line.is_open());
    kbc.reset();
    assert!(line.is_open());
    assert_eq!(*seen.lock(), [false, true, false, true]);
}
