//! The vsock device's harness: its receive, transmit and event queues as
//! three [`RingSpec`]s say, a real Unix socket listening at `PATH_1234`.

use std::os::unix::net::UnixListener;

use vmm_sys_util::epoll::EventSet;

use super::{AREA, AREA_LEN, Progress, RAM, RING_STRIDE, Recorder, Ring, RingSpec};
use super::{SPARE_BUFS, SPARE_RINGS, TIME_LIMIT, guest_ram, within};
use crate::devices::virtio::vsock::packet::{HDR_LEN, HOST_CID, Header, TYPE_STREAM, op};
use crate::devices::virtio::vsock::{EVENT_QUEUE, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::{GuestRam, VirtioDevice, Vsock, VsockSpec, WorkerEvent};

/// The guest's CID.
pub const GUEST_CID: u64 = 3;
/// The host port a program listens on (`PATH_1234`).
pub const LISTENING_PORT: u32 = 1234;

/// What the vsock harness hands the device.
#[derive(Debug, Clone, Default)]
pub struct VsockCase {
    /// The receive queue.
    pub rx: RingSpec,
    /// The transmit queue.
    pub tx: RingSpec,
    /// The event queue.
    pub event: RingSpec,
    /// Bytes written at [`AREA`] before the run (packets).
    pub area: Vec<u8>,
    /// Whether the device was restored (it owes a transport reset event).
    pub restored: bool,
}

/// What became of a [`VsockCase`].
#[derive(Debug, Clone, Copy)]
pub struct VsockOutcome {
    /// The receive queue's progress.
    pub rx: Progress,
    /// The transmit queue's progress.
    pub tx: Progress,
    /// The event queue's progress.
    pub event: Progress,
    /// Whether the device asked for a reset.
    pub broken: bool,
}

/// Runs `case` on a fresh device and checks the device contract (see
/// [`super`]); panics where it is broken.
pub fn run(case: &VsockCase) -> VsockOutcome {
    let case = case.clone();
    within(TIME_LIMIT, move || run_here(&case))
}

/// A device at `dir/name` with a program listening at its
/// `PATH_1234`.
fn device(dir: &tempfile::TempDir, name: &str) -> (Vsock, UnixListener) {
    let socket = dir.path().join(name);
    let mut port_path = socket.clone().into_os_string();
    port_path.push(format!("_{LISTENING_PORT}"));
    let program = UnixListener::bind(port_path).unwrap();
    let spec = VsockSpec {
        cid: GUEST_CID,
        socket,
    };
    let vsock = Vsock::open(&spec, name, &stam::Registry::new()).unwrap();
    (vsock, program)
}

fn host_event() -> WorkerEvent {
    WorkerEvent::Host {
        token: 0,
        events: EventSet::IN,
    }
}

fn run_here(case: &VsockCase) -> VsockOutcome {
    let dir = tempfile::tempdir().unwrap();
    let (mut vsock, _program) = device(&dir, "vsock0");
    if case.restored {
        vsock.restore(&vsock.save()).unwrap();
    }
    let mem = guest_ram(RAM);
    let rx = Ring::from_spec(&mem, 0, &case.rx);
    let tx = Ring::from_spec(&mem, RING_STRIDE, &case.tx);
    let ev = Ring::from_spec(&mem, 2 * RING_STRIDE, &case.event);
    rx.write(AREA, &case.area[..case.area.len().min(AREA_LEN as usize)]);
    let irq = Recorder::new();
    let queues = [
        rx.handle(RX_QUEUE),
        tx.handle(TX_QUEUE),
        ev.handle(EVENT_QUEUE),
    ];
    let mut state = vsock
        .worker_state(mem.clone(), queues, irq.clone())
        .unwrap();
    let events = [
        WorkerEvent::Queue(TX_QUEUE),
        host_event(),
        WorkerEvent::Queue(RX_QUEUE),
        WorkerEvent::Queue(EVENT_QUEUE),
    ];
    // A worker ends at its handler's first error.
    let broken = events.into_iter().any(|e| state.handle(e).is_err());
    let [q_rx, q_tx, q_ev] = &state.queues;
    let out = VsockOutcome {
        rx: Progress::of(&q_rx.queue, &case.rx),
        tx: Progress::of(&q_tx.queue, &case.tx),
        event: Progress::of(&q_ev.queue, &case.event),
        broken,
    };
    for p in [out.rx, out.tx, out.event] {
        assert!(p.used == p.taken || (broken && p.used < p.taken), "{out:?}");
    }
    if broken {
        assert_eq!(irq.resets(), 1, "an error must ask for one reset");
    } else {
        assert_eq!(irq.resets(), 0, "no error, yet a reset");
        out.tx.assert_all_used("vsock transmit");
    }
    second_device_works(&dir);
    out
}

/// Another vsock device, on fresh rings, accepts a guest's connection.
fn second_device_works(dir: &tempfile::TempDir) {
    let (mut vsock, _program) = device(dir, "vsock1");
    let mem: GuestRam = guest_ram(RAM);
    let mut rings = [0, 1, 2].map(|k| Ring::new(&mem, SPARE_RINGS + k * RING_STRIDE, 16));
    let request = Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: 5000,
        dst_port: LISTENING_PORT,
        kind: TYPE_STREAM,
        op: op::REQUEST,
        buf_alloc: 4096,
        ..Header::default()
    };
    rings[1].write(SPARE_BUFS, &request.encode());
    rings[1].add(&[(SPARE_BUFS, HDR_LEN as u32, false)]);
    let rx_buf = SPARE_BUFS + 0x1000;
    let head = rings[0].add(&[(rx_buf, 4096, true)]);
    let irq = Recorder::new();
    let queues = [0, 1, 2].map(|k| rings[usize::from(k)].handle(k));
    let mut state = vsock
        .worker_state(mem.clone(), queues, irq.clone())
        .unwrap();
    state.handle(WorkerEvent::Queue(TX_QUEUE)).unwrap();
    assert_eq!(rings[1].completed().len(), 1);
    assert_eq!(rings[0].completed(), [(head, HDR_LEN as u32)]);
    let reply = Header::parse(&rings[0].read(rx_buf, HDR_LEN)).unwrap();
    assert_eq!((reply.op, reply.dst_port), (op::RESPONSE, 5000));
    assert_eq!(irq.resets(), 0);
}
