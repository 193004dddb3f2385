//! The network device's harness: its receive and transmit queues as two
//! [`RingSpec`]s say, a datagram socket pair standing in for the tap.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use vmm_sys_util::epoll::EventSet;

use super::{AREA, AREA_LEN, Progress, RAM, RING_STRIDE, Recorder, Ring, RingSpec};
use super::{SPARE_BUFS, SPARE_RINGS, TIME_LIMIT, guest_ram, within};
use crate::devices::virtio::net::{Backend, NetStats, RX_QUEUE, RxTx, TX_QUEUE};
use crate::devices::virtio::{GuestRam, WorkerEvent};

/// The virtio-net header's length.
const HDR: usize = 12;
/// Frames longer than this are cut (the socket pair's limit is larger).
pub const MAX_CASE_FRAME: usize = 4096;

impl Backend for UnixDatagram {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        UnixDatagram::recv(self, buf)
    }

    fn send(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        UnixDatagram::send(self, frame)
    }
}

/// What the network harness hands the device.
#[derive(Debug, Clone, Default)]
pub struct NetCase {
    /// The receive queue.
    pub rx: RingSpec,
    /// The transmit queue.
    pub tx: RingSpec,
    /// Bytes written at [`AREA`] before the run (transmitted frames).
    pub area: Vec<u8>,
    /// Frames the host sends the guest, virtio-net header included (cut
    /// at [`MAX_CASE_FRAME`]).
    pub frames: Vec<Vec<u8>>,
    /// Whether the driver accepted `VIRTIO_NET_F_MRG_RXBUF` (frames over
    /// several receive buffers).
    pub mergeable: bool,
}

/// What became of a [`NetCase`].
#[derive(Debug, Clone, Copy)]
pub struct NetOutcome {
    /// The receive queue's progress.
    pub rx: Progress,
    /// The transmit queue's progress.
    pub tx: Progress,
    /// Whether the device asked for a reset.
    pub broken: bool,
}

/// A device state on `rx` and `tx` (its counters in `stats`) whose
/// driver accepted `features`, and the host end of its socket pair.
pub fn device(
    mem: &GuestRam,
    rx: &Ring<'_>,
    tx: &Ring<'_>,
    irq: &Arc<Recorder>,
    stats: &stam::Registry,
    features: u64,
) -> (RxTx<UnixDatagram>, UnixDatagram) {
    let (dev_side, host) = UnixDatagram::pair().unwrap();
    dev_side.set_nonblocking(true).unwrap();
    host.set_nonblocking(true).unwrap();
    let dev = RxTx::new(
        dev_side,
        mem.clone(),
        rx.handle(RX_QUEUE),
        tx.handle(TX_QUEUE),
        irq.clone(),
        NetStats::register(stats, "net0").unwrap(),
        features,
    );
    (dev, host)
}

/// Runs `case` on a fresh device and checks the device contract (see
/// [`super`]); panics where it is broken.
pub fn run(case: &NetCase) -> NetOutcome {
    let case = case.clone();
    within(TIME_LIMIT, move || run_here(&case))
}

fn run_here(case: &NetCase) -> NetOutcome {
    let mem = guest_ram(RAM);
    let rx = Ring::from_spec(&mem, 0, &case.rx);
    let tx = Ring::from_spec(&mem, RING_STRIDE, &case.tx);
    rx.write(AREA, &case.area[..case.area.len().min(AREA_LEN as usize)]);
    let irq = Recorder::new();
    let features = if case.mergeable {
        1 << VIRTIO_NET_F_MRG_RXBUF
    } else {
        0
    };
    let (mut dev, host) = device(&mem, &rx, &tx, &irq, &stam::Registry::new(), features);
    let mut frames = 0u16;
    for frame in &case.frames {
        let frame = &frame[..frame.len().min(MAX_CASE_FRAME)];
        if host.send(frame).is_ok() && frame.len() > HDR {
            frames += 1;
        }
    }
    let events = [
        WorkerEvent::Queue(TX_QUEUE),
        WorkerEvent::Host {
            token: 0,
            events: EventSet::IN,
        },
        WorkerEvent::Queue(RX_QUEUE),
    ];
    // A worker ends at its handler's first error.
    let broken = events.into_iter().any(|e| dev.handle(e).is_err());
    let out = NetOutcome {
        rx: Progress::of(&dev.rx.queue, &case.rx),
        tx: Progress::of(&dev.tx.queue, &case.tx),
        broken,
    };
    assert!(
        out.rx.used <= out.rx.taken && out.tx.used <= out.tx.taken,
        "{out:?}"
    );
    if broken {
        assert_eq!(irq.resets(), 1, "an error must ask for one reset");
    } else {
        assert_eq!(irq.resets(), 0, "no error, yet a reset");
        out.tx.assert_all_used("net transmit");
        if case.mergeable {
            // Every buffer taken is used but those holding the start of a
            // frame that emptied the ring.
            let held = dev.rx_held() as u16;
            assert_eq!(out.rx.taken - out.rx.used, held, "{:?}", out.rx);
            assert!(held == 0 || out.rx.taken == out.rx.offered, "{out:?}");
        } else {
            // Each receive buffer holds one frame (or drops it).
            let expected = frames.min(out.rx.offered);
            assert!(
                out.rx.taken == expected && out.rx.used == expected,
                "{frames} frames for {:?}",
                out.rx
            );
        }
    }
    second_device_works();
    out
}

/// Another network device, on fresh rings, sends and receives a frame.
fn second_device_works() {
    let mem = guest_ram(RAM);
    let mut rx = Ring::new(&mem, SPARE_RINGS, 16);
    let mut tx = Ring::new(&mem, SPARE_RINGS + RING_STRIDE, 16);
    let irq = Recorder::new();
    let (mut dev, host) = device(&mem, &rx, &tx, &irq, &stam::Registry::new(), 0);
    let frame: Vec<u8> = (0..64).collect();
    tx.write(SPARE_BUFS, &frame);
    tx.add(&[(SPARE_BUFS, 64, false)]);
    dev.handle(WorkerEvent::Queue(TX_QUEUE)).unwrap();
    let mut got = [0; 128];
    assert_eq!(host.recv(&mut got).unwrap(), 64);
    assert_eq!(&got[..64], &frame[..]);
    host.send(&frame).unwrap();
    let head = rx.add(&[(SPARE_BUFS + 0x1000, 1526, true)]);
    dev.handle(WorkerEvent::Queue(RX_QUEUE)).unwrap();
    assert_eq!(rx.completed(), [(head, 64)]);
    assert_eq!(tx.completed().len(), 1);
    assert_eq!(irq.resets(), 0);
}
