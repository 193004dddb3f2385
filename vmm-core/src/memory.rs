//! Guest memory: the PC layout in `pgm`'s guest-physical map, registered as
//! KVM slots.
//!
//! `pgm` owns and maps every byte of guest memory; this module lays out a PC
//! (RAM around the legacy hole and the 32-bit MMIO hole, the firmware ROM at
//! the top of 4 GiB and mirrored below 1 MiB), hands the slots `pgm` reports
//! to the backend and routes MMIO exits back to `pgm`. How much RAM a host
//! allows a VM is [`host_limit`]'s rule.
//!
//! Devices write guest RAM through [`GuestMemoryMap::ram`], not through
//! KVM, so KVM's dirty log misses those writes; every region of that view
//! carries `pgm`'s [`WriteBitmap`](pgm::phys::WriteBitmap), which
//! `vm-memory` marks on every write, and `pgm` drains those bitmaps
//! wherever a live save or teleport reads KVM's dirty log. No device has
//! to report its writes.

use std::io::{Seek, Write};
use std::sync::Arc;

use hm_vmx::{MemorySlot, Vm as BackendVm};
use parking_lot::Mutex;
use parking_lot::RwLock;
use pgm::phys::{
    DumpReport, FOUR_GIB, HIGH_RAM_START, KvmSlot, PAGE_SIZE, PcLayout, PhysConfig, PhysMap,
    RomProtection, SharedPhysMap, SlotSet, TrackedMemory,
};

use crate::error::{Error, Result};
use crate::gmm_host::GmmHostMemory;

pub mod host_limit;
#[cfg(test)]
mod tests;

/// The most firmware a PC mirrors just below 1 MiB.
const LOW_MIRROR_MAX: u64 = crate::config::BIOS_AREA_SIZE;

/// The PC's expansion ROM area (0xC0000-0xDFFFF), where option ROMs live.
const EXPANSION_ROM_AREA: std::ops::Range<u64> = 0xc_0000..0xe_0000;

/// What an empty expansion ROM socket reads as.
const EMPTY_ROM_BYTE: u8 = 0xff;

/// The smallest guest RAM the VMM accepts.
pub const MIN_RAM: u64 = 1 << 20;

/// Refuses `ram_size` bytes of guest RAM if this host cannot give a guest
/// that much (see [`host_limit`] for the rule), before anything is built.
pub fn check_host_ram(ram_size: u64) -> Result<()> {
    host_limit::HostMemory::probe()?.check(ram_size)
}

/// The PC layout of `ram_size` bytes of RAM: where RAM goes around the
/// legacy hole and the 32-bit MMIO hole.
pub fn pc_layout(ram_size: u64) -> PcLayout {
    PcLayout::new(ram_size)
}

fn pgm_error(e: impl std::fmt::Display) -> Error {
    Error::Memory(e.to_string())
}

/// A GMM instance with one VM whose reservation covers `ram` bytes of RAM
/// and `rom` bytes of ROM (each ROM page has a shadow page too), as `pgm`'s
/// host memory. Registers `/GMM/...` statistics and the `gmm` info handler.
fn gmm_backing(
    ram: u64,
    rom: u64,
    stats: &stam::Registry,
    info: &dbgf::InfoRegistry,
) -> Result<(gmm::Gmm, Arc<GmmHostMemory>)> {
    let pages = ram.div_ceil(PAGE_SIZE) + 2 * rom.div_ceil(PAGE_SIZE);
    let gmm = gmm::Gmm::new(gmm::GmmConfig::new(pages)).map_err(pgm_error)?;
    let reservation = gmm::Reservation {
        base: pages,
        shadow: 0,
        fixed: 0,
    };
    let vm = gmm.register_vm("vm", reservation).map_err(pgm_error)?;
    gmm.register_stats(stats).map_err(pgm_error)?;
    vm.register_stats(stats, "/GMM/VM").map_err(pgm_error)?;
    let shown = gmm.clone();
    info.register(
        "gmm",
        "Global memory manager: chunks, pages, reservations and per-VM accounts. Args: none.",
        dbgf::InfoFlags::empty(),
        move |call: &dbgf::InfoCall<'_>, out: &mut dyn std::fmt::Write| {
            Ok(shown.format_info(call.args, out)?)
        },
    )
    .map_err(pgm_error)?;
    Ok((gmm, Arc::new(GmmHostMemory::new(vm))))
}

/// A VM's memory: RAM and the firmware ROM in `pgm`'s map.
pub struct GuestMemoryMap {
    map: SharedPhysMap,
    ram: TrackedMemory,
    gmm: gmm::Gmm,
    /// The slot set the backend VM has now.
    applied: Arc<Mutex<SlotSet>>,
    /// Run after every MMIO exit, with the map unlocked.
    exit_hooks: RwLock<Vec<MmioExitHook>>,
}

/// Work a device does after an MMIO exit, once `pgm`'s map is unlocked: a
/// handler runs under the map's read lock and cannot change the map (the
/// PCI platform moves BARs the guest reprogrammed through ECAM here).
pub type MmioExitHook = Box<dyn Fn() + Send + Sync>;

impl GuestMemoryMap {
    /// Lays out `ram_size` bytes of RAM and a ROM holding `firmware`, which
    /// ends at 4 GiB and whose last 128 KiB at most are mirrored below
    /// 1 MiB, and an empty expansion ROM area (0xC0000-0xDFFFF), as on a
    /// PC, for `cpus` vCPUs (each has an A20 gate in `pgm`). Statistics and
    /// info handlers (`phys`, `handlers`) go into `stats` and `info`.
    pub fn new(
        ram_size: u64,
        firmware: &[u8],
        cpus: u32,
        stats: &stam::Registry,
        info: &dbgf::InfoRegistry,
    ) -> Result<Self> {
        if ram_size < MIN_RAM || !ram_size.is_multiple_of(4096) {
            return Err(Error::Config(format!(
                "memory size {ram_size:#x} must be a multiple of 4 KiB and at least 1 MiB"
            )));
        }
        check_host_ram(ram_size)?;
        let layout = pc_layout(ram_size);
        let rom_size = firmware.len() as u64;
        // The MMIO hole below 4 GiB (1 GiB) has room for the largest image.
        crate::firmware::check_size(rom_size)?;
        let mirror = rom_size.min(LOW_MIRROR_MAX);
        let expansion = EXPANSION_ROM_AREA.end - EXPANSION_ROM_AREA.start;
        let (gmm, host) = gmm_backing(ram_size, rom_size + mirror + expansion, stats, info)?;
        let config = PhysConfig::default().with_cpus(cpus);
        let mut map = PhysMap::new(host, config).map_err(pgm_error)?;
        layout.apply(&mut map).map_err(pgm_error)?;
        let protection = RomProtection::ReadRomWriteIgnore;
        map.add_rom(
            FOUR_GIB - rom_size,
            rom_size,
            firmware,
            protection,
            "firmware",
        )
        .map_err(pgm_error)?;
        let tail = &firmware[(rom_size - mirror) as usize..];
        map.add_rom(
            HIGH_RAM_START - mirror,
            mirror,
            tail,
            protection,
            "firmware (low mirror)",
        )
        .map_err(pgm_error)?;
        // No option ROMs: the area reads as empty sockets do. Mapped as
        // ROM rather than left unassigned, Linux's scans of it at boot
        // (16,000 reads) are memory reads, not exits to the VMM.
        map.add_rom(
            EXPANSION_ROM_AREA.start,
            expansion,
            &vec![EMPTY_ROM_BYTE; expansion as usize],
            protection,
            "expansion ROM area",
        )
        .map_err(pgm_error)?;
        let ram = map.guest_memory().map_err(pgm_error)?;
        let map = Arc::new(RwLock::new(map));
        pgm::phys::register_stats(&map, stats).map_err(pgm_error)?;
        pgm::phys::register_info(&map, info).map_err(pgm_error)?;
        Ok(GuestMemoryMap {
            map,
            ram,
            gmm,
            applied: Arc::default(),
            exit_hooks: RwLock::default(),
        })
    }

    /// Guest RAM as `vm-memory` guest memory, for loaders and devices.
    /// Writes through it are tracked for live saves (see the module
    /// documentation).
    pub fn ram(&self) -> &TrackedMemory {
        &self.ram
    }

    /// The guest-physical map.
    pub fn phys(&self) -> &SharedPhysMap {
        &self.map
    }

    /// The KVM slots `pgm` reports: RAM read-write, ROM read-only (and RAM
    /// pages under a write handler read-only, under an all-access handler
    /// left out).
    pub fn slots(&self) -> Vec<MemorySlot> {
        let map = self.map.read();
        map.kvm_slots()
            .slots
            .iter()
            .map(|s| memory_slot(s, s.size))
            .collect()
    }

    /// Registers every slot with the backend VM.
    pub fn map_into(&self, vm: &BackendVm) -> Result<()> {
        let mut applied = self.applied.lock();
        let current = self.map.read().kvm_slots().clone();
        apply_slot_changes(vm, &applied, &current)?;
        *applied = current;
        Ok(())
    }

    /// Brings the backend VM's slots up to date with `pgm`'s after the map
    /// changed (a handler registered or removed). Call it with the vCPUs out
    /// of the guest.
    pub fn sync_slots(&self, vm: &BackendVm) -> Result<()> {
        sync_slots(&self.map.read(), &self.applied, vm)
    }

    /// What the chipset's A20 line drives: opens or closes `pgm`'s A20
    /// gate of every vCPU and brings `vm`'s slots in line (the alias at
    /// 1 MiB). A failure to change the slots is logged: the device that
    /// moved the line cannot report it.
    pub(crate) fn a20_control(&self, vm: &Arc<BackendVm>) -> impl Fn(bool) + Send + Sync + 'static {
        let (map, applied, vm) = (
            Arc::clone(&self.map),
            Arc::clone(&self.applied),
            Arc::clone(vm),
        );
        move |open| {
            let mut m = map.write();
            m.set_a20(open);
            // Downgraded, not released: no other change of the map comes
            // between, and a live save's dirty log, which reads KVM's
            // slots under `applied`, waits until KVM has the new ones.
            let m = parking_lot::RwLockWriteGuard::downgrade(m);
            if let Err(e) = sync_slots(&m, &applied, &vm) {
                tracing::error!("A20 gate {}: KVM slots not updated: {e}", on_off(open));
            }
        }
    }

    /// The slot set the backend VM has now, shared with whoever else changes
    /// it (the live save's dirty log).
    pub(crate) fn applied_slots(&self) -> Arc<Mutex<SlotSet>> {
        Arc::clone(&self.applied)
    }

    /// Handles an access KVM could not satisfy from a slot: MMIO handlers,
    /// ROM writes, unassigned space (reads 0xff, writes dropped).
    pub fn mmio_exit(&self, gpa: u64, data: iom::Data<'_>) -> Result<()> {
        let done = self.map.read().mmio_exit(gpa, data).map_err(pgm_error);
        for hook in self.exit_hooks.read().iter() {
            hook();
        }
        done
    }

    /// Adds `hook` to what runs after every MMIO exit (see [`MmioExitHook`]).
    pub fn add_mmio_exit_hook(&self, hook: MmioExitHook) {
        self.exit_hooks.write().push(hook);
    }

    /// Runs GMM's page-sharing scan: identical guest pages end up backed by
    /// one host page (copy on write), all-zero pages by none; `pgm`'s page
    /// states follow. Call it with nothing writing guest RAM, the vCPUs
    /// stopped and the devices parked (a write between compare and remap
    /// would be lost).
    pub fn share_pages(&self) -> Result<gmm::ScanReport> {
        let report = self.gmm.share_scan().map_err(pgm_error)?;
        self.map.read().sync_sharing().map_err(pgm_error)?;
        Ok(report)
    }

    /// Resets memory as a machine reset does: the balloon's pages back to
    /// the guest, RAM zeroed, ROM restored. Call it with the vCPUs stopped.
    /// When GMM refuses the balloon's pages, nothing changed.
    pub fn reset(&self) -> Result<()> {
        self.map.write().reset().map_err(pgm_error)
    }

    /// Gives every page of the balloon back to the guest (zero pages, and
    /// GMM counts them allocated again), all or nothing: the part of a
    /// machine reset that GMM may refuse. Returns how many pages.
    pub fn deflate_balloon(&self) -> Result<u64> {
        self.map.read().deflate_balloon().map_err(pgm_error)
    }

    /// Writes guest-physical memory to `out` as a flat image, skipping
    /// (leaving holes for) zero pages unless `include_zero`. Call it with the
    /// vCPUs stopped.
    ///
    /// Guest writes through KVM do not pass through `pgm`, so page states are
    /// brought up to date with a zero-page scan before zero pages are left
    /// out; that scan gives zero pages back to the host, so no device may
    /// be serving requests either (as after the run).
    pub fn dump(&self, out: &mut (impl Write + Seek), include_zero: bool) -> Result<DumpReport> {
        let map = self.map.read();
        if !include_zero {
            map.scan_zero_pages().map_err(pgm_error)?;
        }
        map.dump(out, include_zero).map_err(pgm_error)
    }
}

fn on_off(open: bool) -> &'static str {
    if open { "opened" } else { "closed" }
}

/// Brings `vm`'s slots (`applied`) up to date with `map`'s. The dirty log
/// of a logging slot about to go is read into `pgm` first (KVM drops it
/// with the slot), so that a live save loses no write. Locks in the order
/// write monitoring takes them: the map, then `applied`.
fn sync_slots(map: &PhysMap, applied: &Mutex<SlotSet>, vm: &BackendVm) -> Result<()> {
    let mut applied = applied.lock();
    let current = map.kvm_slots();
    if *current == *applied {
        return Ok(());
    }
    for gone in current.changes_from(&applied).remove {
        if gone.log_dirty {
            let bitmap = vm.dirty_log(gone.slot, gone.size)?;
            map.apply_slot_dirty_bitmap(&gone, &bitmap)
                .map_err(pgm_error)?;
        }
    }
    apply_slot_changes(vm, &applied, current)?;
    *applied = current.clone();
    Ok(())
}

fn memory_slot(s: &KvmSlot, size: u64) -> MemorySlot {
    MemorySlot {
        slot: s.slot,
        guest_addr: s.guest_addr,
        size,
        host_addr: s.host_addr,
        read_only: s.read_only,
        log_dirty: s.log_dirty,
    }
}

/// Tells the backend VM how to get from slot set `old` to `new`.
///
/// KVM changes a slot in place only when nothing but its dirty-logging
/// flag changes (same number, address, size, host memory and read-only
/// flag); the guest never sees that memory disappear. Every other changed
/// slot is deleted before the new slots are created, so that they never
/// overlap.
pub(crate) fn apply_slot_changes(
    vm: &BackendVm,
    old: &SlotSet,
    new: &SlotSet,
) -> std::result::Result<(), hm_vmx::Error> {
    let changes = new.changes_from(old);
    let in_place = |gone: &KvmSlot| {
        changes.add.iter().any(|a| {
            (a.slot, a.guest_addr, a.size, a.host_addr, a.read_only)
                == (
                    gone.slot,
                    gone.guest_addr,
                    gone.size,
                    gone.host_addr,
                    gone.read_only,
                )
        })
    };
    for gone in changes.remove.iter().filter(|g| !in_place(g)) {
        // SAFETY: size 0 unmaps the slot; no host memory is handed out.
        unsafe { vm.set_memory_slot(&memory_slot(gone, 0)) }?;
    }
    for added in &changes.add {
        // SAFETY: the host ranges belong to `pgm`'s map, which the VM keeps
        // alive for as long as the backend VM exists (the `Vm` drops its
        // backend before its memory).
        unsafe { vm.set_memory_slot(&memory_slot(added, added.size)) }?;
    }
    Ok(())
}
