//! The block device's feature bits and configuration space
//! (`struct virtio_blk_config`, little endian).

use std::mem::{offset_of, size_of};

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use super::disk::SECTOR_SIZE;

/// The size of the (only) request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request the driver may use: the queue size less the
/// header and status descriptors.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// The largest discard or write-zeroes range, in sectors (4 GiB).
pub const MAX_RANGE_SECTORS: u32 = 1 << 23;
/// Ranges per discard or write-zeroes request.
pub const MAX_RANGE_SEGMENTS: u32 = 32;
/// Discards are best aligned to the host's 4 KiB blocks.
const DISCARD_ALIGNMENT_SECTORS: u32 = 8;

/// The bytes of the configuration space.
pub type ConfigSpace = [u8; size_of::<virtio_blk_config>()];

/// The features a disk offers (`VIRTIO_BLK_F_RO` when `read_only`).
pub fn features(read_only: bool) -> u64 {
    let bits = [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_BLK_F_DISCARD,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ];
    let ro = if read_only { 1 << VIRTIO_BLK_F_RO } else { 0 };
    bits.iter().fold(ro, |acc, bit| acc | (1u64 << bit))
}

/// The configuration space of a disk of `sectors` sectors.
pub fn config_space(sectors: u64) -> ConfigSpace {
    let mut space = [0u8; size_of::<virtio_blk_config>()];
    let mut put = |offset: usize, bytes: &[u8]| {
        space[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(
        offset_of!(virtio_blk_config, capacity),
        &sectors.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, seg_max),
        &SEG_MAX.to_le_bytes(),
    );
    put(
        offset_of!(virtio_blk_config, blk_size),
        &(SECTOR_SIZE as u32).to_le_bytes(),
    );
    let u32s = [
        (
            offset_of!(virtio_blk_config, max_discard_sectors),
            MAX_RANGE_SECTORS,
        ),
        (
            offset_of!(virtio_blk_config, max_discard_seg),
            MAX_RANGE_SEGMENTS,
        ),
        (
            offset_of!(virtio_blk_config, discard_sector_alignment),
            DISCARD_ALIGNMENT_SECTORS,
        ),
        (
            offset_of!(virtio_blk_config, max_write_zeroes_sectors),
            MAX_RANGE_SECTORS,
        ),
        (
            offset_of!(virtio_blk_config, max_write_zeroes_seg),
            MAX_RANGE_SEGMENTS,
        ),
    ];
    for (offset, value) in u32s {
        put(offset, &value.to_le_bytes());
    }
    put(offset_of!(virtio_blk_config, write_zeroes_may_unmap), &[1]);
    space
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(space: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(space[offset..offset + 4].try_into().unwrap())
    }

    #[test]
    fn the_config_space_follows_virtio_blk_config() {
        let space = config_space(0x1_0000_0002);
        assert_eq!(space.len(), 96);
        assert_eq!(&space[0..8], &0x1_0000_0002u64.to_le_bytes());
        // seg_max at 12, blk_size at 20, discard limits from 36.
        assert_eq!(u32_at(&space, 12), SEG_MAX);
        assert_eq!(u32_at(&space, 20), 512);
        assert_eq!(u32_at(&space, 36), MAX_RANGE_SECTORS);
        assert_eq!(u32_at(&space, 40), MAX_RANGE_SEGMENTS);
        assert_eq!(u32_at(&space, 44), 8);
        assert_eq!(u32_at(&space, 48), MAX_RANGE_SECTORS);
        assert_eq!(u32_at(&space, 52), MAX_RANGE_SEGMENTS);
        assert_eq!(space[56], 1);
    }

    #[test]
    fn read_only_disks_offer_the_ro_feature() {
        assert_eq!(
            features(true) & (1 << VIRTIO_BLK_F_RO),
            1 << VIRTIO_BLK_F_RO
        );
        assert_eq!(features(false) & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(features(false) & (1 << VIRTIO_F_VERSION_1), 0);
        assert_ne!(features(false) & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
    }
}
