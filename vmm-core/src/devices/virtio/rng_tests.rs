use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vmm_sys_util::eventfd::EventFd;

use super::*;

#[derive(Default)]
struct Counting {
    queue: AtomicU32,
    reset: AtomicU32,
}

impl Interrupt for Counting {
    fn signal_queue(&self, _: u16) {
        self.queue.fetch_add(1, Ordering::SeqCst);
    }
    fn signal_config(&self) {}
    fn needs_reset(&self) {
        self.reset.fetch_add(1, Ordering::SeqCst);
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(5), "{what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn writable_buffers_are_filled_used_and_signalled() {
    let mem = GuestRam::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    // A chain: a 16-byte driver-readable header (left alone), then two
    // writable buffers of 100 and 5000 bytes.
    let descs = [
        (0x10_0000, 16, 0),
        (0x20_0000, 100, VRING_DESC_F_WRITE as u16),
        (0x30_0000, 5000, VRING_DESC_F_WRITE as u16),
    ]
    .map(|(addr, len, flags)| RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0)));
    mock.build_desc_chain(&descs).unwrap();
    let queue = mock.create_queue::<super::super::Queue>().unwrap();
    let notify = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let interrupt = Arc::new(Counting::default());
    let mut rng = Rng::new("rng0");
    rng.activate(Activation {
        memory: mem.clone(),
        features: 1 << VIRTIO_F_VERSION_1,
        queues: vec![QueueHandle {
            index: 0,
            queue,
            notify: Arc::clone(&notify),
        }],
        interrupt: interrupt.clone(),
    })
    .unwrap();
    notify.write(1).unwrap();
    wait_for("the request is served", || {
        interrupt.queue.load(Ordering::SeqCst) == 1
    });
    let used_idx: u16 = mem.read_obj(GuestAddress(mock.used_addr().0 + 2)).unwrap();
    assert_eq!(used_idx, 1);
    let used_len: u32 = mem.read_obj(GuestAddress(mock.used_addr().0 + 8)).unwrap();
    assert_eq!(used_len, 5100);
    let mut header = [0u8; 16];
    mem.read_slice(&mut header, GuestAddress(0x10_0000))
        .unwrap();
    assert_eq!(header, [0; 16], "the readable part is not written");
    let mut buf = vec![0u8; 5000];
    mem.read_slice(&mut buf, GuestAddress(0x30_0000)).unwrap();
    assert!(
        buf.iter().filter(|&&b| b != 0).count() > 4000,
        "random, not zeros"
    );
    let mut tail = [0u8; 16];
    mem.read_slice(&mut tail, GuestAddress(0x30_0000 + 5000))
        .unwrap();
    assert_eq!(tail, [0; 16], "nothing past the buffer");
    let handles = rng.deactivate().unwrap();
    assert_eq!(handles[0].queue.next_used(), 1, "the position comes back");
    assert!(rng.deactivate().unwrap().is_empty());
    assert_eq!(interrupt.reset.load(Ordering::SeqCst), 0);
    let mut text = String::new();
    rng.describe(&mut text).unwrap();
    assert!(text.contains("5100 bytes served"), "{text}");
}

#[test]
fn a_state_with_bytes_is_refused_and_a_missing_queue_too() {
    let mut rng = Rng::new("rng1");
    assert!(rng.restore(&[]).is_ok());
    assert!(matches!(
        rng.restore(&[1]),
        Err(DeviceError::Restore { .. })
    ));
    let mem = GuestRam::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let err = rng
        .activate(Activation {
            memory: mem,
            features: 1 << VIRTIO_F_VERSION_1,
            queues: Vec::new(),
            interrupt: Arc::new(Counting::default()),
        })
        .unwrap_err();
    assert!(matches!(err, DeviceError::Setup { .. }), "{err}");
}
