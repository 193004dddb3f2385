//! The block device's harness: one request queue as a [`RingSpec`] says,
//! over a 64-sector image.

use std::io::Write as _;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};

use super::{AREA, AREA_LEN, Progress, RAM, Recorder, Ring, RingSpec, SPARE_BUFS, SPARE_RINGS};
use super::{TIME_LIMIT, guest_ram, within};
use crate::devices::virtio::{Block, BlockSpec};

/// Sectors of the harness's images.
pub const SECTORS: u64 = 64;

/// What the block harness hands the device.
#[derive(Debug, Clone, Default)]
pub struct BlockCase {
    /// The request queue.
    pub ring: RingSpec,
    /// Bytes written at [`AREA`] before the run (request headers, data,
    /// discard ranges), at most [`AREA_LEN`].
    pub area: Vec<u8>,
    /// Whether the disk is read-only.
    pub read_only: bool,
}

/// What became of a [`BlockCase`].
#[derive(Debug, Clone, Copy)]
pub struct BlockOutcome {
    /// The request queue's progress.
    pub queue: Progress,
    /// Whether the device stopped and asked for a reset.
    pub broken: bool,
}

/// Runs `case` on a fresh device and checks the device contract (see
/// [`super`]); panics where it is broken.
pub fn run(case: &BlockCase) -> BlockOutcome {
    let case = case.clone();
    within(TIME_LIMIT, move || run_here(&case))
}

fn image(dir: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    let bytes: Vec<u8> = (0..SECTORS * 512).map(|i| i as u8).collect();
    file.write_all(&bytes).unwrap();
    path
}

fn run_here(case: &BlockCase) -> BlockOutcome {
    let dir = tempfile::tempdir().unwrap();
    let stats = stam::Registry::new();
    let spec = BlockSpec {
        path: image(&dir, "disk.img"),
        read_only: case.read_only,
    };
    let block = Block::open(&spec, "blk0", &stats).unwrap();
    let mem = guest_ram(RAM);
    let area = &case.area[..case.area.len().min(AREA_LEN as usize)];
    let ring = Ring::from_spec(&mem, 0, &case.ring);
    ring.write(AREA, area);
    let irq = Recorder::new();
    let mut queue = block.queue_state(ring.handle(0), mem.clone(), irq.clone());
    let result = queue.process();
    let progress = Progress::of(&queue.handle.queue, &case.ring);
    assert!(progress.used <= progress.taken, "{progress:?}");
    match &result {
        Ok(()) => {
            assert_eq!(irq.resets(), 0, "no error, yet a reset");
            progress.assert_all_used("block");
        }
        Err(_) => {
            assert_eq!(irq.resets(), 1, "an error must ask for one reset");
            assert!(block.is_broken());
        }
    }
    let size = std::fs::metadata(&spec.path).unwrap().len();
    assert_eq!(size, SECTORS * 512, "the image changed its size");
    second_device_works(&dir, &stats);
    BlockOutcome {
        queue: progress,
        broken: result.is_err(),
    }
}

/// Another block device, on fresh rings, serves a well-formed read.
fn second_device_works(dir: &tempfile::TempDir, stats: &stam::Registry) {
    let spec = BlockSpec {
        path: image(dir, "other.img"),
        read_only: false,
    };
    let block = Block::open(&spec, "blk1", stats).unwrap();
    let mem = guest_ram(RAM);
    let mut ring = Ring::new(&mem, SPARE_RINGS, 16);
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    header[8..].copy_from_slice(&1u64.to_le_bytes());
    ring.write(SPARE_BUFS, &header);
    let head = ring.add(&[
        (SPARE_BUFS, 16, false),
        (SPARE_BUFS + 0x1000, 512, true),
        (SPARE_BUFS + 0x10, 1, true),
    ]);
    let irq = Recorder::new();
    let mut queue = block.queue_state(ring.handle(0), mem.clone(), irq.clone());
    queue.process().unwrap();
    assert_eq!(ring.completed(), [(head, 513)]);
    assert_eq!(ring.read(SPARE_BUFS + 0x10, 1), [VIRTIO_BLK_S_OK as u8]);
    let expected: Vec<u8> = (512..1024).map(|i| i as u8).collect();
    assert_eq!(ring.read(SPARE_BUFS + 0x1000, 512), expected);
    assert_eq!(irq.resets(), 0);
}
