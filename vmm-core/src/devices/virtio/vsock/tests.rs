//! The vsock device's rings (driven as a driver would, with mock queues)
//! against real Unix sockets.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::conn::CONN_BUF;
use super::host::Listener;
use super::muxer::Muxer;
use super::packet::{HDR_LEN, HOST_CID, Header, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, op};
use super::rings::{EVENT_QUEUE, RX_QUEUE, Rings, TX_QUEUE};
use super::{Vsock, VsockSpec, VsockStats};
use crate::devices::virtio::testing::{Recorder, Ring, guest_ram};
use crate::devices::virtio::{Activation, GuestRam, VirtioDevice, WorkerEvent};

const GUEST: u64 = 3;
const RX_BUF: u32 = (HDR_LEN + 4096) as u32;

struct Fx<'m> {
    rx: Ring<'m>,
    tx: Ring<'m>,
    rings: Rings,
    irq: Arc<Recorder>,
    stats: stam::Registry,
    path: PathBuf,
    _dir: tempfile::TempDir,
    next_buf: u64,
    rx_seen: u16,
}

fn fixture(mem: &GuestRam) -> Fx<'_> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let rx = Ring::new(mem, 0, 16);
    let tx = Ring::new(mem, 0x1_0000, 16);
    let ev = Ring::new(mem, 0x2_0000, 16);
    let stats = stam::Registry::new();
    let vstats = VsockStats::register(&stats, "vsock0").unwrap();
    let listener = Listener::bind(&path).unwrap();
    let muxer = Muxer::new(GUEST, path.clone(), listener, vstats.clone()).unwrap();
    let irq = Recorder::new();
    let queues = [
        rx.handle(RX_QUEUE),
        tx.handle(TX_QUEUE),
        ev.handle(EVENT_QUEUE),
    ];
    let rings = Rings::new(muxer, mem.clone(), queues, irq.clone(), vstats, false);
    Fx {
        rx,
        tx,
        rings,
        irq,
        stats,
        path,
        _dir: dir,
        next_buf: 0x10_0000,
        rx_seen: 0,
    }
}

fn guest_hdr(src_port: u32, dst_port: u32, op: u16) -> Header {
    Header {
        src_cid: GUEST,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        kind: TYPE_STREAM,
        op,
        buf_alloc: 4096,
        ..Header::default()
    }
}

impl Fx<'_> {
    fn buf(&mut self, len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(0x1000);
        addr
    }

    /// The guest sends `hdr` (its len set to the payload's) and `payload`.
    fn send(&mut self, mut hdr: Header, payload: &[u8]) {
        hdr.len = payload.len() as u32;
        let mut bytes = hdr.encode().to_vec();
        bytes.extend_from_slice(payload);
        let addr = self.buf(bytes.len() as u32);
        self.tx.write(addr, &bytes);
        self.tx.add(&[(addr, bytes.len() as u32, false)]);
        self.rings.serve(WorkerEvent::Queue(TX_QUEUE)).unwrap();
    }

    /// The guest adds `n` receive buffers.
    fn give_rx(&mut self, n: usize) {
        for _ in 0..n {
            let addr = self.buf(RX_BUF);
            self.rx.add(&[(addr, RX_BUF, true)]);
        }
    }

    /// The host sockets' events reach the device.
    fn pump(&mut self) {
        let event = WorkerEvent::Host {
            token: 0,
            events: vmm_sys_util::epoll::EventSet::IN,
        };
        self.rings.serve(event).unwrap();
    }

    /// Packets the device put in receive buffers since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        while self.rx_seen < self.rx.used_count() {
            let (id, len) = self.rx.used(self.rx_seen);
            self.rx_seen += 1;
            let addr = self.rx_addr(id);
            let bytes = self.rx.read(addr, len as usize);
            let hdr = Header::parse(&bytes).unwrap();
            assert_eq!(hdr.len as usize, bytes.len() - HDR_LEN);
            out.push((hdr, bytes[HDR_LEN..].to_vec()));
        }
        out
    }

    /// The buffer of descriptor `id` (the receive ring's table is at 0).
    fn rx_addr(&self, id: u32) -> u64 {
        let bytes = self.rx.read(u64::from(id) * 16, 8);
        u64::from_le_bytes(bytes.try_into().unwrap())
    }

    fn stat(&self, leaf: &str) -> u64 {
        let name = format!("/Devices/vsock0/{leaf}");
        match self
            .stats
            .snapshot(&name)
            .get(&name)
            .map(|s| s.value.clone())
        {
            Some(stam::Value::Counter { value } | stam::Value::Gauge { value, .. }) => value,
            other => panic!("{name}: {other:?}"),
        }
    }
}

fn host_read(stream: &mut UnixStream, n: usize) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = vec![0; n];
    stream.read_exact(&mut buf).unwrap();
    buf
}

/// A host program connects with `CONNECT port`; the guest accepts.
/// Returns the stream and the host port the device picked.
fn host_connect(f: &mut Fx<'_>, guest_port: u32, extra: &[u8]) -> (UnixStream, u32) {
    let mut host = UnixStream::connect(&f.path).unwrap();
    host.write_all(format!("CONNECT {guest_port}\n").as_bytes())
        .unwrap();
    host.write_all(extra).unwrap();
    f.pump();
    let got = f.recv();
    assert_eq!(got.len(), 1, "{got:?}");
    let req = got[0].0;
    assert_eq!(
        (req.op, req.src_cid, req.dst_cid),
        (op::REQUEST, HOST_CID, GUEST)
    );
    assert_eq!((req.dst_port, req.buf_alloc), (guest_port, CONN_BUF));
    assert!(req.src_port >= 1 << 30);
    f.send(guest_hdr(guest_port, req.src_port, op::RESPONSE), &[]);
    let ok = format!("OK {}\n", req.src_port);
    assert_eq!(host_read(&mut host, ok.len()), ok.as_bytes());
    (host, req.src_port)
}

#[test]
fn a_host_program_connects_and_bytes_flow_both_ways_under_credit() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture(&mem);
    f.give_rx(8);
    // Bytes after the CONNECT line are the connection's first data.
    let (mut host, local) = host_connect(&mut f, 52, b"early");
    f.pump();
    let got = f.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0.op, got[0].0.src_port, got[0].0.dst_port),
        (op::RW, local, 52)
    );
    assert_eq!(got[0].1, b"early");

    f.send(guest_hdr(52, local, op::RW), b"ping");
    assert_eq!(host_read(&mut host, 4), b"ping");

    // The guest gave 4096 bytes of credit; 5 are used.
    host.write_all(&[9; 5000]).unwrap();
    f.pump();
    let sent: usize = f
        .recv()
        .iter()
        .map(|(h, d)| {
            assert_eq!(h.op, op::RW);
            d.len()
        })
        .sum();
    assert_eq!(sent, 4096 - 5);
    f.pump();
    assert!(f.recv().is_empty(), "nothing beyond the credit");
    // The guest consumed everything: the rest flows.
    let mut update = guest_hdr(52, local, op::CREDIT_UPDATE);
    update.fwd_cnt = 4096;
    f.send(update, &[]);
    f.pump();
    let sent: usize = f.recv().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(sent, 5000 - (4096 - 5));

    // A credit request is answered with the device's credit.
    f.send(guest_hdr(52, local, op::CREDIT_REQUEST), &[]);
    let got = f.recv();
    assert_eq!(got[0].0.op, op::CREDIT_UPDATE);
    assert_eq!((got[0].0.buf_alloc, got[0].0.fwd_cnt), (CONN_BUF, 4));

    // The guest closes: the host sees the end, the guest gets its reset.
    let mut shutdown = guest_hdr(52, local, op::SHUTDOWN);
    shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    f.send(shutdown, &[]);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let got = f.recv();
    assert_eq!(got.iter().map(|(h, _)| h.op).collect::<Vec<_>>(), [op::RST]);
    assert_eq!(f.stat("Connections"), 0);
    assert!(f.irq.take_signals().contains(&RX_QUEUE));
}

#[test]
fn a_host_program_that_stops_sending_still_gets_the_guests_bytes() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture(&mem);
    f.give_rx(8);
    let (mut host, local) = host_connect(&mut f, 52, b"");
    host.write_all(b"request").unwrap();
    host.shutdown(Shutdown::Write).unwrap();
    f.pump();
    f.pump();
    // The guest gets the bytes, then: the host sends no more (and still
    // receives).
    let got = f.recv();
    let ops: Vec<_> = got
        .iter()
        .map(|(h, d)| (h.op, h.flags, d.clone()))
        .collect();
    assert_eq!(
        ops,
        [
            (op::RW, 0, b"request".to_vec()),
            (op::SHUTDOWN, SHUTDOWN_SEND, vec![])
        ]
    );
    assert_eq!(f.stat("Connections"), 1);
    // The guest answers, then stops sending too: the host reads the
    // answer and the end, the guest gets its reset.
    f.send(guest_hdr(52, local, op::RW), b"answer");
    let mut shutdown = guest_hdr(52, local, op::SHUTDOWN);
    shutdown.flags = SHUTDOWN_SEND;
    f.send(shutdown, &[]);
    let mut rest = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"answer");
    let got = f.recv();
    assert_eq!(got.iter().map(|(h, _)| h.op).collect::<Vec<_>>(), [op::RST]);
    assert_eq!(f.stat("Connections"), 0);
    assert_eq!(f.stat("Resets"), 1);
}

#[test]
fn a_guest_connects_to_path_port_and_is_refused_where_nobody_listens() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture(&mem);
    f.give_rx(8);
    let listener = UnixListener::bind(format!("{}_1234", f.path.display())).unwrap();
    f.send(guest_hdr(999, 1234, op::REQUEST), &[]);
    let got = f.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0.op, got[0].0.src_port, got[0].0.dst_port),
        (op::RESPONSE, 1234, 999)
    );
    let (mut server, _) = listener.accept().unwrap();
    server.write_all(b"hi").unwrap();
    f.pump();
    let got = f.recv();
    assert_eq!((got[0].0.op, got[0].1.as_slice()), (op::RW, &b"hi"[..]));
    f.send(guest_hdr(999, 1234, op::RW), b"yo");
    assert_eq!(host_read(&mut server, 2), b"yo");

    // The host program closes: the guest is told both ways are done.
    drop(server);
    f.pump();
    let got = f.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0.op, got[0].0.flags),
        (op::SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND)
    );
    // Its reset is not answered.
    f.send(guest_hdr(999, 1234, op::RST), &[]);
    assert!(f.recv().is_empty());

    f.send(guest_hdr(1000, 4321, op::REQUEST), &[]);
    let got = f.recv();
    assert_eq!(
        (got[0].0.op, got[0].0.src_port, got[0].0.dst_port),
        (op::RST, 4321, 1000)
    );
    assert_eq!(f.stat("Refused"), 1);
}

#[test]
fn bad_packets_are_reset_or_dropped_never_fatal() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture(&mem);
    f.give_rx(8);
    // Data for no connection: reset.
    f.send(guest_hdr(7, 8, op::RW), b"x");
    // A datagram type: reset.
    let mut dgram = guest_hdr(7, 9, op::REQUEST);
    dgram.kind = 2;
    f.send(dgram, &[]);
    // A reset for no connection: nothing.
    f.send(guest_hdr(7, 10, op::RST), &[]);
    // Another source CID: dropped without an answer.
    let mut spoofed = guest_hdr(7, 11, op::RW);
    spoofed.src_cid = 4;
    f.send(spoofed, &[]);
    let got: Vec<_> = f.recv().iter().map(|(h, _)| (h.op, h.src_port)).collect();
    assert_eq!(got, [(op::RST, 8), (op::RST, 9)]);

    // A header claiming more payload than the chain has: reset.
    let mut liar = guest_hdr(7, 12, op::RW).encode();
    liar[24..28].copy_from_slice(&100u32.to_le_bytes());
    let addr = f.buf(64);
    f.tx.write(addr, &liar);
    f.tx.add(&[(addr, HDR_LEN as u32 + 10, false)]);
    // A chain shorter than a header: counted, returned.
    f.tx.add(&[(addr, 20, false)]);
    f.rings.serve(WorkerEvent::Queue(TX_QUEUE)).unwrap();
    let got: Vec<_> = f.recv().iter().map(|(h, _)| (h.op, h.src_port)).collect();
    assert_eq!(got, [(op::RST, 12)]);
    assert_eq!(f.tx.used_count(), 6);
    assert_eq!(f.stat("BadPackets"), 4);
    assert_eq!(f.irq.resets(), 0);
}

#[test]
fn a_guest_overrunning_its_credit_is_reset_and_memory_stays_bounded() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture(&mem);
    f.give_rx(8);
    let listener = UnixListener::bind(format!("{}_77", f.path.display())).unwrap();
    f.send(guest_hdr(5, 77, op::REQUEST), &[]);
    let (_server, _) = listener.accept().unwrap(); // never reads
    assert_eq!(f.recv()[0].0.op, op::RESPONSE);
    let chunk = vec![1u8; 60 * 1024];
    for _ in 0..64 {
        f.send(guest_hdr(5, 77, op::RW), &chunk);
        if f.stat("Connections") == 0 {
            break;
        }
    }
    assert_eq!(f.stat("Connections"), 0, "reset before 3.75 MiB");
    let ops: Vec<_> = f.recv().iter().map(|(h, _)| h.op).collect();
    assert_eq!(ops.last(), Some(&op::RST), "{ops:?}");
}

#[test]
fn a_bad_connect_line_closes_the_host_stream() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture(&mem);
    f.give_rx(2);
    let mut host = UnixStream::connect(&f.path).unwrap();
    host.write_all(b"HELLO 5\n").unwrap();
    f.pump();
    let mut rest = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.read_to_end(&mut rest).unwrap();
    assert!(f.recv().is_empty());
    assert_eq!(f.stat("Refused"), 1);
}

#[test]
fn broken_rings_ask_for_a_reset_and_descriptor_loops_end() {
    let mem = guest_ram(16 << 20);
    let mut f = fixture(&mem);
    let flags = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    f.tx.add_raw(&[(0x50_0000, 8, flags, Some(0))]);
    f.rings.serve(WorkerEvent::Queue(TX_QUEUE)).unwrap();
    assert_eq!(f.tx.used_count(), 1);
    // An RST answer needs a receive buffer outside guest RAM.
    f.rx.add(&[(1 << 40, RX_BUF, true)]);
    f.send_raw_rw_for_nobody();
    assert!(f.rings.handle(WorkerEvent::Queue(TX_QUEUE)).is_err());
    assert_eq!(f.irq.resets(), 1);
}

impl Fx<'_> {
    fn send_raw_rw_for_nobody(&mut self) {
        let bytes = guest_hdr(1, 2, op::RW).encode();
        let addr = self.buf(64);
        self.tx.write(addr, &bytes);
        self.tx.add(&[(addr, HDR_LEN as u32, false)]);
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_restored_device_resets_the_guests_connections_with_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let stats = stam::Registry::new();
    let spec = VsockSpec {
        cid: 7,
        socket: dir.path().join("a.sock"),
    };
    let saved = Vsock::open(&spec, "vsock0", &stats).unwrap().save();
    // The first device is gone, its socket file removed.
    assert!(!spec.socket.exists());

    let mut dev = Vsock::open(&spec, "vsock1", &stats).unwrap();
    // While it lives, a second device cannot take the socket.
    let err = Vsock::open(&spec, "vsock2", &stats)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("live socket"), "{err}");
    dev.restore(&saved).unwrap();
    let other = VsockSpec {
        cid: 8,
        socket: dir.path().join("b.sock"),
    };
    let mut other = Vsock::open(&other, "vsock3", &stats).unwrap();
    assert!(
        other
            .restore(&saved)
            .unwrap_err()
            .to_string()
            .contains("CID 7")
    );
    assert!(other.restore(&saved[..6]).is_err());

    let mem = guest_ram(16 << 20);
    let (rx, tx, mut ev) = (
        Ring::new(&mem, 0, 16),
        Ring::new(&mem, 0x1_0000, 16),
        Ring::new(&mem, 0x2_0000, 16),
    );
    ev.write(0x40_0000, &[0xff; 4]);
    ev.add(&[(0x40_0000, 4, true)]);
    let irq = Recorder::new();
    dev.activate(Activation {
        memory: mem.clone(),
        features: dev.features(),
        queues: vec![rx.handle(0), tx.handle(1), ev.handle(2)],
        interrupt: irq.clone(),
    })
    .unwrap();
    assert_eq!(ev.used_count(), 1, "sent at activation");
    assert_eq!(ev.used(0).1, 4);
    assert_eq!(ev.read(0x40_0000, 4), [0, 0, 0, 0], "TRANSPORT_RESET");
    assert_eq!(irq.take_signals(), [EVENT_QUEUE]);

    // The device serves host programs on its worker thread.
    let mut host = UnixStream::connect(&spec.socket).unwrap();
    host.write_all(b"CONNECT 9\n").unwrap();
    let mut rx = rx;
    rx.add(&[(0x50_0000, RX_BUF, true)]);
    // The worker sleeps until a notification or a host event; the
    // connect above is one.
    wait_until("the request in the receive ring", || rx.used_count() == 1);
    let req = Header::parse(&rx.read(0x50_0000, HDR_LEN)).unwrap();
    assert_eq!((req.op, req.dst_cid, req.dst_port), (op::REQUEST, 7, 9));
    let queues = dev.deactivate().unwrap();
    assert_eq!(queues.len(), 3);
    // Deactivated and activated again (a live save): the event is not
    // sent twice.
    let mut text = String::new();
    dev.describe(&mut text).unwrap();
    assert!(
        text.contains("guest CID 7") && text.contains("1 connections open"),
        "{text}"
    );
    let mut config = [0u8; 8];
    dev.read_config(0, &mut config);
    assert_eq!(u64::from_le_bytes(config), 7);
}

#[test]
fn a_stale_socket_file_is_replaced_and_other_files_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    Listener::bind(&path).unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, b"keep").unwrap();
    let err = Listener::bind(&file).unwrap_err().to_string();
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
}
