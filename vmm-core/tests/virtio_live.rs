//! A virtio device through a teleport. Device writes to guest RAM during a
//! live save reach the target: a teleport goes through a proxy that holds
//! the stream once the first live pass has sent the device's buffer page;
//! the virtio entropy device then fills that buffer (and its used ring) on
//! its worker thread, bypassing KVM and its dirty log; the target must see
//! those bytes. A request whose notification the source never served
//! (it waited in the source's eventfd when the device stopped) is served
//! by the target once it runs, and by nobody else: the proxy also holds
//! the target's answer, and the source, stopped after its final pass,
//! must not serve a notification that comes meanwhile (its guest RAM no
//! longer goes anywhere).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::Capture;
use common::virtio::RngQueue;
use hm_vmx::testing::kvm_available;
use vm_memory::{Bytes, GuestAddress};
use vmm_core::devices::virtio::Rng;
use vmm_core::{RunOutcome, Vm, VmConfig, guests};

const RAM: u64 = 64 << 20;
/// The rings, and the buffer the device fills: low in RAM, so the first
/// live pass sends them early.
const RINGS: u64 = 0x80_0000;
const BUFFER: u64 = 0x90_0000;
const SECOND: u64 = 0x91_0000;
const LEN: u32 = 256;
/// Incompressible guest RAM above the buffer: the first pass has far more
/// to send after the buffer than socket buffers hold.
const NOISE_AT: u64 = 16 << 20;
const NOISE: usize = 40 << 20;
/// The proxy holds the stream after this many bytes: past the (mostly
/// zero) pages below [`NOISE_AT`], well inside the noise.
const HOLD_AFTER: u64 = 8 << 20;

fn config(serial: &Capture) -> VmConfig {
    let mut config = VmConfig::new(RAM, guests::find("idle").unwrap().firmware().unwrap());
    config.serial = Box::new(serial.clone());
    config.virtio.push(Box::new(Rng::new("rng0")));
    config
}

/// Where a [`holding_proxy`] stops, says so on the first channel and
/// waits for the second.
struct Hold {
    held: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

impl Hold {
    fn wait(&self) {
        self.held.send(()).unwrap();
        self.release.recv_timeout(Duration::from_secs(30)).unwrap();
    }
}

/// A hold and the test's ends of its channels (held, release).
fn hold() -> (Hold, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (held, held_rx) = mpsc::channel();
    let (release_tx, release) = mpsc::channel();
    (Hold { held, release }, held_rx, release_tx)
}

/// A proxy between the teleport source and `target`: it forwards the
/// source's first [`HOLD_AFTER`] bytes, holds (`stream`) and forwards
/// the rest; it holds the target's first answer (`answer`: the state is
/// loaded) before passing it and the rest on.
fn holding_proxy(target: String, stream: Hold, answer: Hold) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let proxy = std::thread::spawn(move || {
        let (mut source, _) = listener.accept().unwrap();
        let mut target = TcpStream::connect(target).unwrap();
        let answers = {
            let (mut from, mut to) = (target.try_clone().unwrap(), source.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut first = [0u8; 1];
                if from.read_exact(&mut first).is_ok() {
                    answer.wait();
                    let _ = to.write_all(&first);
                    let _ = std::io::copy(&mut from, &mut to);
                }
                let _ = to.shutdown(Shutdown::Write);
            })
        };
        let mut buf = vec![0u8; 64 << 10];
        let mut sent = 0u64;
        let mut holding = true;
        loop {
            let n = source.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            target.write_all(&buf[..n]).unwrap();
            sent += n as u64;
            if holding && sent >= HOLD_AFTER {
                holding = false;
                stream.wait();
            }
        }
        let _ = target.shutdown(Shutdown::Write);
        answers.join().unwrap();
    });
    (address, proxy)
}

#[test]
fn device_writes_during_a_live_teleport_reach_the_target() {
    if !kvm_available("device_writes_during_a_live_teleport_reach_the_target") {
        return;
    }
    // The target, as it loaded the state.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target_address = listener.local_addr().unwrap().to_string();
    let target_serial = Capture::default();
    let target_config = config(&target_serial);
    let target = std::thread::spawn(move || Vm::incoming(target_config, &listener));

    // The source: device set up, noise in RAM, the guest running.
    let serial = Capture::default();
    let mut vm = Vm::new(config(&serial)).unwrap();
    vm.memory()
        .ram()
        .write_slice(
            &common::noise_bytes(NOISE, 0x2545_f491_4f6c_dd1d),
            GuestAddress(NOISE_AT),
        )
        .unwrap();
    let queue = RngQueue::start(vm.memory(), RINGS);
    let handle = vm.handle();
    let run = std::thread::spawn(move || vm.run());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !serial.text().contains("heartbeat") {
        assert!(Instant::now() < deadline, "{}", serial.text());
        std::thread::sleep(Duration::from_millis(10));
    }

    // The idle guest: the counter guest's descriptor tables lie in ROM,
    // and the stall recovery that maps them writable takes `pgm`'s map
    // for writing, which waits for the held pass (and the MMIO exits of
    // the notify below behind it) until the stream moves again.
    let (stream_hold, stream_held, stream_go) = hold();
    let (answer_hold, answer_held, answer_go) = hold();
    let (proxy_address, proxy) = holding_proxy(target_address, stream_hold, answer_hold);
    let teleport = {
        let handle = handle.clone();
        std::thread::spawn(move || handle.teleport(&proxy_address))
    };
    // The first live pass has sent the buffer's page (zero) and the rings;
    // the source waits on the socket, its guest and device running.
    stream_held
        .recv_timeout(Duration::from_secs(60))
        .expect("the teleport streams");
    let mem = handle.memory();
    queue.offer(mem, 0, BUFFER, LEN);
    queue.wait_used(mem, 1, || format!("state {:?}", handle.state()));
    let mut written = vec![0u8; LEN as usize];
    mem.ram()
        .read_slice(&mut written, GuestAddress(BUFFER))
        .unwrap();
    assert!(written.iter().any(|&b| b != 0));
    // A second buffer whose notification the device will never see here.
    queue.make_available(mem, 1, SECOND, LEN);
    stream_go.send(()).unwrap();

    // The state is in the target; the source is stopped after its final
    // pass and waits for the answer. A notification now (one that waited
    // in the eventfd when the device stopped) is not served: whatever the
    // source's device did now would be lost, or done twice.
    answer_held
        .recv_timeout(Duration::from_secs(60))
        .expect("the target loads the state");
    queue.notify(mem);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        queue.used_idx(mem),
        1,
        "the source served a request after its final pass"
    );
    answer_go.send(()).unwrap();

    let report = teleport.join().unwrap().expect("teleport");
    assert!(report.live_passes >= 1, "{report:?}");
    assert_eq!(run.join().unwrap().unwrap(), RunOutcome::PoweredOff);
    proxy.join().unwrap();
    let mut moved = target.join().unwrap().expect("incoming");
    let mut arrived = vec![0u8; LEN as usize];
    moved
        .memory()
        .ram()
        .read_slice(&mut arrived, GuestAddress(BUFFER))
        .unwrap();
    assert_eq!(arrived, written, "the device's bytes did not arrive");
    // The used ring the device wrote arrived too; the second buffer waits
    // until the target runs, which serves it without a new notification.
    assert_eq!(queue.used_idx(moved.memory()), 1);
    let handle = moved.handle();
    let run = std::thread::spawn(move || moved.run());
    queue.wait_used(handle.memory(), 2, || target_serial.text());
    let mut second = vec![0u8; LEN as usize];
    handle
        .memory()
        .ram()
        .read_slice(&mut second, GuestAddress(SECOND))
        .unwrap();
    assert!(second.iter().any(|&b| b != 0), "the second buffer is empty");
    // The device goes on with the next buffer.
    queue.offer(handle.memory(), 2, SECOND + 0x1000, 16);
    queue.wait_used(handle.memory(), 3, || target_serial.text());
    handle.power_off().unwrap();
    assert_eq!(run.join().unwrap().unwrap(), RunOutcome::PoweredOff);
}
