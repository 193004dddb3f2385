//! The device as its transport sees it: opening, configuration,
//! activation on the worker thread, saved state, `describe`.

use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::*;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::super::super::{Activation, DeviceError, VirtioDevice};
use super::*;

fn open(path: &std::path::Path, read_only: bool) -> Result<Block, DeviceError> {
    let spec = BlockSpec {
        path: path.to_owned(),
        read_only,
    };
    Block::open(&spec, "blk0", &stam::Registry::new())
}

#[test]
fn images_that_are_not_disks_are_refused_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.img");
    let err = open(&missing, false).unwrap_err();
    assert!(matches!(err, DeviceError::Host { .. }));
    assert!(err.to_string().contains("missing.img"), "{err}");

    let err = open(dir.path(), false).unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
    assert!(
        err.to_string().contains(&*dir.path().to_string_lossy()),
        "{err}"
    );

    let odd = dir.path().join("odd.img");
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    let err = open(&odd, true).unwrap_err();
    assert!(err.to_string().contains("odd.img"), "{err}");
    assert!(err.to_string().contains("1000 bytes"), "{err}");

    let empty = dir.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    assert!(
        open(&empty, false)
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
}

#[test]
fn a_read_only_image_opens_without_write_permission() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.img");
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    std::fs::set_permissions(&path, perms).unwrap();
    let block = open(&path, true).unwrap();
    assert_eq!(block.capacity(), 8);
    assert!(block.read_only());
    assert_ne!(block.features() & (1 << VIRTIO_BLK_F_RO), 0);
}

#[test]
fn the_same_name_twice_is_refused() {
    let rig = Rig::new(8, false);
    let spec = BlockSpec {
        path: rig.image.path().to_owned(),
        read_only: false,
    };
    let err = Block::open(&spec, "blk0", &rig.stats).err().unwrap();
    assert!(err.to_string().contains("statistics"), "{err}");
}

#[test]
fn config_space_reads_are_bounded() {
    let rig = Rig::new(0x1234, false);
    let mut capacity = [0u8; 8];
    rig.block.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 0x1234);
    let mut tail = [0xffu8; 8];
    rig.block.read_config(92, &mut tail);
    assert_eq!(tail, [0; 8]);
    rig.block.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 8]);
    assert_eq!(rig.block.device_type(), 2);
    assert_eq!(rig.block.queue_max_sizes(), &[QSIZE]);
}

#[test]
fn saved_state_identifies_the_disk() {
    let rig = Rig::new(16, false);
    let mut other = Rig::new(16, false).block;
    let state = rig.block.save();
    other.restore(&state).unwrap();

    let mut bigger = Rig::new(17, false).block;
    let err = bigger.restore(&state).unwrap_err();
    assert!(err.to_string().contains("16 sectors"), "{err}");
    let mut ro = Rig::new(16, true).block;
    let err = ro.restore(&state).unwrap_err();
    assert!(err.to_string().contains("read-write"), "{err}");
    assert!(other.restore(&state[..5]).is_err());
    let mut bad = state.clone();
    bad[0] = 9;
    assert!(other.restore(&bad).is_err());
    bad = state.clone();
    bad[12] = 2;
    assert!(other.restore(&bad).is_err());
}

fn wait_for(mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn the_worker_serves_notifications_and_deactivate_returns_the_positions() {
    let mut rig = Rig::new(64, false);
    let mut d = Driver::new(&rig.mem);
    // A request made available before activation (as after a restore).
    let early = d.write(5, &pattern(3, 512));
    let queue = d.ring.queue();
    let notify = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let activation = Activation {
        memory: rig.mem.clone(),
        features: rig.block.features(),
        queues: vec![QueueHandle {
            index: 0,
            queue,
            notify: notify.clone(),
        }],
        interrupt: rig.irq.clone(),
    };
    rig.block.activate(activation).unwrap();
    wait_for(|| d.ring.used_count() == 1);
    assert_eq!(d.status(early), OK);

    let r = d.read(5, 512);
    notify.write(1).unwrap();
    wait_for(|| d.ring.used_count() == 2);
    assert_eq!(d.status(r), OK);
    assert_eq!(d.data(r, 512), pattern(3, 512));
    assert_eq!(d.completed().len(), 2);

    let queues = rig.block.deactivate().unwrap();
    assert_eq!(queues.len(), 1);
    assert_eq!(queues[0].queue.next_avail(), 2);
    assert_eq!(queues[0].queue.next_used(), 2);
    assert!(rig.block.deactivate().unwrap().is_empty());
    // Stopped: a notification is not served.
    d.read(0, 512);
    notify.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.ring.used_count(), 2);

    let mut text = String::new();
    rig.block.describe(&mut text).unwrap();
    assert!(
        text.contains(&*rig.image.path().to_string_lossy()),
        "{text}"
    );
    assert!(text.contains("64 sectors"), "{text}");
    assert!(text.contains("read-write"), "{text}");
    assert!(text.contains("reads 1 (512 bytes)"), "{text}");
    assert!(text.contains("writes 1 (512 bytes)"), "{text}");
    assert!(rig.stat("cNotifications") >= 2);
}

#[test]
fn activation_needs_exactly_queue_zero() {
    let mut rig = Rig::new(8, false);
    let ring = Ring::new(&rig.mem, 0, QSIZE);
    let handle = |index| QueueHandle {
        index,
        queue: ring.queue(),
        notify: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
    };
    for queues in [vec![], vec![handle(1)], vec![handle(0), handle(1)]] {
        let activation = Activation {
            memory: rig.mem.clone(),
            features: rig.block.features(),
            queues,
            interrupt: rig.irq.clone(),
        };
        assert!(matches!(
            rig.block.activate(activation),
            Err(DeviceError::Setup { .. })
        ));
    }
    assert!(rig.block.deactivate().unwrap().is_empty());
}
