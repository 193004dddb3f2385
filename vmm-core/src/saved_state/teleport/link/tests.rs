use std::net::TcpListener;
use std::sync::mpsc;

use super::*;

/// A peer that accepts one connection and reads nothing until the
/// returned sender is dropped; the source side of the connection.
fn silent_peer() -> (TcpStream, mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (release, released) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let held = listener.accept();
        let _ = released.recv_timeout(Duration::from_secs(60));
        drop(held);
    });
    (stream, release)
}

/// Writes until the socket fails; returns the error.
fn write_until_error(io: &mut LinkIo) -> io::Error {
    let chunk = vec![0x5a; 1 << 16];
    loop {
        if let Err(e) = io.write_all(&chunk) {
            return e;
        }
    }
}

#[test]
fn a_stalled_peer_is_reported_and_the_next_write_fails_at_once() {
    let (stream, _release) = silent_peer();
    stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let slot = TeleportSlot::default();
    let guard = slot.begin(Duration::from_secs(1), || Ok(())).unwrap();
    guard.attach(&stream).unwrap();
    let mut io = guard.link_io(stream);
    write_until_error(&mut io);
    assert!(io.link().stalled());
    assert!(!io.link().cancelled());
    // A buffered writer's last flush must not wait for the peer again.
    let start = Instant::now();
    assert!(io.write_all(&[1; 4096]).is_err());
    assert!(start.elapsed() < Duration::from_millis(100));
}

#[test]
fn a_cancel_wakes_a_blocked_write_and_waits_for_the_teleport_to_end() {
    let (stream, _release) = silent_peer();
    // Far longer than the test: only the cancel ends the write.
    stream
        .set_write_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let slot = TeleportSlot::default();
    let guard = slot.begin(Duration::from_secs(1), || Ok(())).unwrap();
    guard.attach(&stream).unwrap();
    let mut io = guard.link_io(stream);
    let start = Instant::now();
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || {
            let e = write_until_error(&mut io);
            let cancelled = io.link().cancelled();
            drop(guard);
            (e, cancelled)
        });
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(slot.end().unwrap(), Ended::Cancelled);
        // The teleport has ended (its guard is gone) by the time the
        // cancel returns.
        assert!(slot.unless_in_progress(|| Ok(())).is_ok());
        let (e, cancelled) = writer.join().unwrap();
        assert!(cancelled, "{e}");
    });
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(matches!(slot.cancel(), Err(TeleportError::NotInProgress)));
}

#[test]
fn a_cancel_while_connecting_fails_the_attach() {
    let (stream, _release) = silent_peer();
    let slot = TeleportSlot::default();
    let guard = slot.begin(Duration::from_secs(1), || Ok(())).unwrap();
    std::thread::scope(|scope| {
        let canceller = scope.spawn(|| slot.cancel());
        // The cancel has marked the link; the connect "completes" now.
        while !guard.link().cancelled() {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(matches!(
            guard.attach(&stream),
            Err(TeleportError::Cancelled)
        ));
        drop(guard);
        assert!(canceller.join().unwrap().is_ok());
    });
}

#[test]
fn once_handed_over_a_cancel_is_refused_and_waits_for_the_end() {
    let (stream, _release) = silent_peer();
    let slot = TeleportSlot::default();
    let guard = slot.begin(Duration::from_secs(1), || Ok(())).unwrap();
    guard.attach(&stream).unwrap();
    let mut io = guard.link_io(stream);
    io.hand_over(0x07).unwrap();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(guard);
        });
        assert!(matches!(slot.cancel(), Err(TeleportError::HandedOver)));
        assert!(slot.unless_in_progress(|| Ok(())).is_ok());
    });
}

#[test]
fn one_teleport_at_a_time() {
    let slot = TeleportSlot::default();
    assert_eq!(slot.end().unwrap(), Ended::NoneInProgress);
    let guard = slot.begin(Duration::from_secs(1), || Ok(())).unwrap();
    let refused =
        |r: crate::Result<()>| matches!(r, Err(crate::Error::Teleport(TeleportError::InProgress)));
    assert!(refused(
        slot.begin(Duration::from_secs(1), || Ok(())).map(drop)
    ));
    assert!(refused(slot.unless_in_progress(|| Ok(()))));
    drop(guard);
    // A teleport that is not ready does not take the slot.
    let not_ready = slot.begin(Duration::from_secs(1), || {
        Err(TeleportError::NotInProgress.into())
    });
    assert!(not_ready.is_err());
    assert!(slot.begin(Duration::from_secs(1), || Ok(())).is_ok());
}
