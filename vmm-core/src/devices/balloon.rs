//! The memory balloon: a paravirtual device through which the guest gives
//! RAM back to the host (VirtualBox does this through the guest additions
//! and VMMDev; here it is a small port protocol).
//!
//! Ports (32-bit accesses), from [`BALLOON_PORT`]:
//! - `+0` read: the balloon size the host asks for, in 4 KiB pages;
//! - `+4` read: the pages the guest has given so far;
//! - `+4` write: the guest gives the page with this frame number
//!   (inflate): `pgm` marks it ballooned, GMM takes its memory back;
//! - `+8` write: the guest takes the page with this frame number back
//!   (deflate).
//!
//! A page the guest may not give or take (not RAM, already ballooned, not
//! ballooned) is refused, counted under `/VMM/Balloon/Refused`, and changes
//! nothing. A machine reset empties the balloon and keeps its target.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pgm::phys::SharedPhysMap;
use stam::Counter;

use super::{DeviceAction, PioDevice};

/// The first I/O port of the balloon device.
pub const BALLOON_PORT: u16 = 0x510;
/// How many ports it occupies.
pub const BALLOON_PORTS: u16 = 12;

/// The balloon's target and size, shared with the VM's control side.
#[derive(Debug, Default)]
pub struct BalloonState {
    target: AtomicU64,
    pages: AtomicU64,
}

impl BalloonState {
    /// Asks the guest for a balloon of `pages` pages.
    pub fn set_target(&self, pages: u64) {
        self.target.store(pages, Ordering::Relaxed);
    }

    /// The size asked for, in pages.
    pub fn target(&self) -> u64 {
        self.target.load(Ordering::Relaxed)
    }

    /// The pages the guest has given.
    pub fn pages(&self) -> u64 {
        self.pages.load(Ordering::Relaxed)
    }

    /// Takes over a saved target and size (the guest's balloon driver keeps
    /// its pages across a save and restore).
    pub(crate) fn restore(&self, target: u64, pages: u64) {
        self.target.store(target, Ordering::Relaxed);
        self.pages.store(pages, Ordering::Relaxed);
    }
}

/// The balloon device on the I/O bus.
pub struct Balloon {
    phys: SharedPhysMap,
    state: Arc<BalloonState>,
    refused: Counter,
}

impl Balloon {
    /// A balloon giving pages of `phys` back; `refused` counts the pages
    /// the guest offered or claimed wrongly.
    pub fn new(phys: SharedPhysMap, state: Arc<BalloonState>, refused: Counter) -> Self {
        Balloon {
            phys,
            state,
            refused,
        }
    }

    fn change(&self, frame: u32, inflate: bool) {
        let gpa = u64::from(frame) << 12;
        match self.phys.read().balloon(&[gpa], inflate) {
            Ok(()) if inflate => {
                self.state.pages.fetch_add(1, Ordering::Relaxed);
            }
            Ok(()) => {
                self.state.pages.fetch_sub(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.refused.inc();
                tracing::debug!("balloon: page {gpa:#x} refused: {e}");
            }
        }
    }
}

fn dword(data: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(data.try_into().ok()?))
}

impl PioDevice for Balloon {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = match offset {
            0 => self.state.target(),
            4 => self.state.pages(),
            _ => u64::MAX,
        };
        let bytes = u32::try_from(value).unwrap_or(u32::MAX).to_le_bytes();
        for (d, b) in data
            .iter_mut()
            .zip(bytes.iter().chain(std::iter::repeat(&0xff)))
        {
            *d = *b;
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        match (offset, dword(data)) {
            (4, Some(frame)) => self.change(frame, true),
            (8, Some(frame)) => self.change(frame, false),
            _ => self.refused.inc(),
        }
        DeviceAction::Continue
    }

    /// Machine reset: the guest's driver starts over with an empty balloon
    /// (the reset gave `pgm`'s ballooned pages back to the guest first);
    /// the target stays, for the driver to inflate to again (as QEMU's
    /// virtio-balloon keeps the size it asks for across a reset).
    fn reset(&mut self) {
        self.state.pages.store(0, Ordering::Relaxed);
    }
}
