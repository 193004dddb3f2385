//! The virtio block device: a raw disk image as `vmm run --disk FILE[,ro]`
//! names it ([`BlockSpec`]), served to the guest as a [`Block`]
//! [`VirtioDevice`](super::VirtioDevice).
//!
//! - `spec`: the `--disk` argument;
//! - `disk`: the image file (size checks, `pread` / `pwrite`, `fallocate`);
//! - `config`: feature bits and `struct virtio_blk_config`;
//! - `request`: one descriptor chain checked and executed;
//! - `dma`: its data moved straight between the image and guest memory
//!   (`preadv` / `pwritev` on the guest's buffers);
//! - `queue`: the request queue as the worker thread serves it;
//! - `device`: the [`Block`] device itself;
//! - `stats`: its counters under `/Devices/<name>/`.
//!
//! A request the device can parse but not serve (a sector past the end, a
//! buffer outside guest RAM, data in the wrong direction, a write to a
//! read-only disk) ends with `VIRTIO_BLK_S_IOERR`, or with a used length
//! of 0 when it has no status byte to write; a queue it cannot parse (a
//! descriptor loop, an index outside the table, a ring outside guest RAM)
//! stops the device and asks the driver for a reset.

mod config;
mod device;
mod disk;
mod dma;
mod queue;
mod request;
mod spec;
mod stats;

#[cfg(test)]
mod tests;

pub use device::Block;
pub use disk::SECTOR_SIZE;
pub use spec::{BlockSpec, BlockSpecError};
