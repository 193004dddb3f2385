//! A virtio entropy device on the PCI bus of a real VM, driven from the
//! host side the way a driver does through its registers (the project's
//! guests have no virtio driver): found through mechanism #1 and ECAM,
//! BAR 0 decoding where the platform placed it, a queue served, and the
//! device's state surviving a save and a restore.

mod common;

use std::time::{Duration, Instant};

use common::Capture;
use hm_vmx::testing::kvm_available;
use iom::Data;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_core::devices::pci::layout::{ECAM_BASE, MMIO_HOLE_START};
use vmm_core::devices::virtio::Rng;
use vmm_core::saved_state::RestoreOptions;
use vmm_core::{Vm, VmConfig, guests};

/// BAR 0 of 00:01.0: the first address of the 32-bit window.
const BAR0: u64 = MMIO_HOLE_START;
/// The rings, and the buffer the device fills.
const RINGS: u64 = 0x80_0000;
const BUFFER: u64 = 0x90_0000;

fn vm(serial: &Capture) -> Vm {
    let mut config = VmConfig::new(
        16 << 20,
        guests::find("counter").unwrap().firmware().unwrap(),
    );
    config.serial = Box::new(serial.clone());
    config.virtio.push(Box::new(Rng::new("rng0")));
    Vm::new(config).unwrap()
}

fn mmio_write(vm: &Vm, gpa: u64, value: u64, len: usize) {
    vm.memory()
        .mmio_exit(gpa, Data::Write(&value.to_le_bytes()[..len]))
        .unwrap();
}

fn mmio_read(vm: &Vm, gpa: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    vm.memory()
        .mmio_exit(gpa, Data::Read(&mut b[..len]))
        .unwrap();
    u64::from_le_bytes(b)
}

fn info(vm: &Vm) -> String {
    let mut out = String::new();
    vm.run_info("virtio", "", &mut out).unwrap();
    out
}

fn used_idx(vm: &Vm, used: u64) -> u16 {
    vm.memory().ram().read_obj(GuestAddress(used + 2)).unwrap()
}

fn wait_used(vm: &Vm, used: u64, idx: u16) {
    let start = Instant::now();
    while used_idx(vm, used) != idx {
        assert!(start.elapsed() < Duration::from_secs(5), "{}", info(vm));
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn an_entropy_device_is_found_served_and_saved() {
    if !kvm_available("an_entropy_device_is_found_served_and_saved") {
        return;
    }
    let serial = Capture::default();
    let vm = vm(&serial);
    // Mechanism #1 and ECAM see the same function.
    vm.io_bus().write(0xcf8, &0x8000_0800u32.to_le_bytes());
    let mut id = [0; 4];
    vm.io_bus().read(0xcfc, &mut id);
    assert_eq!(u32::from_le_bytes(id), 0x1044_1af4);
    assert_eq!(mmio_read(&vm, ECAM_BASE + 0x8000, 4), 0x1044_1af4);
    assert_eq!(mmio_read(&vm, ECAM_BASE + 0x8010, 4), BAR0);
    // The driver's steps: features, queue 0, DRIVER_OK.
    mmio_write(&vm, BAR0 + 0x14, 1 | 2, 1);
    mmio_write(&vm, BAR0 + 0x08, 1, 4);
    mmio_write(&vm, BAR0 + 0x0c, 1, 4); // VERSION_1
    mmio_write(&vm, BAR0 + 0x14, 1 | 2 | 8, 1);
    assert_eq!(mmio_read(&vm, BAR0 + 0x14, 1), 1 | 2 | 8);
    let ram = vm.memory().ram().clone();
    let mock = MockSplitQueue::create(&ram, GuestAddress(RINGS), 16);
    let desc = SplitDescriptor::new(BUFFER, 64, VRING_DESC_F_WRITE as u16, 0);
    mock.add_desc_chains(&[RawDescriptor::from(desc)], 0)
        .unwrap();
    mmio_write(&vm, BAR0 + 0x16, 0, 2);
    mmio_write(&vm, BAR0 + 0x18, 16, 2);
    mmio_write(&vm, BAR0 + 0x20, mock.desc_table_addr().0, 4);
    mmio_write(&vm, BAR0 + 0x28, mock.avail_addr().0, 4);
    mmio_write(&vm, BAR0 + 0x30, mock.used_addr().0, 4);
    mmio_write(&vm, BAR0 + 0x1c, 1, 2);
    mmio_write(&vm, BAR0 + 0x14, 1 | 2 | 8 | 4, 1);
    // A notify that exits (the EMT's path when no ioeventfd caught it).
    mmio_write(&vm, BAR0 + 0x3000, 0, 2);
    let (desc_table, avail, used) = (
        mock.desc_table_addr().0,
        mock.avail_addr().0,
        mock.used_addr().0,
    );
    wait_used(&vm, used, 1);
    let mut random = [0u8; 64];
    ram.read_slice(&mut random, GuestAddress(BUFFER)).unwrap();
    assert!(random.iter().any(|&b| b != 0));
    let text = info(&vm);
    assert!(
        text.contains("00:01.0 rng0: status 0x0f (active)"),
        "{text}"
    );
    assert!(text.contains("64 bytes served"), "{text}");

    // Save (the device quiesced and resumed), power off, restore.
    let dir = tempfile::tempdir().unwrap();
    let path = common::run_and_save(vm, &serial, "vmm counter: tick 0x", dir.path());

    // Without the device, the restore says what is missing.
    let err = Vm::restore(&path, Box::new(std::io::sink()), false)
        .err()
        .unwrap();
    assert!(err.to_string().contains("00:01.0"), "{err}");
    // Another device under the name is refused by the unit.
    let other = Vm::restore_with_devices(
        &path,
        Box::new(std::io::sink()),
        RestoreOptions::default(),
        vec![Box::new(Rng::new("rng9"))],
        stam::Registry::new(),
    );
    let err = other.err().unwrap().to_string();
    assert!(err.contains("rng0") && err.contains("rng9"), "{err}");

    let restored = Vm::restore_with_devices(
        &path,
        Box::new(std::io::sink()),
        RestoreOptions::default(),
        vec![Box::new(Rng::new("rng0"))],
        stam::Registry::new(),
    )
    .expect("restore");
    let text = info(&restored);
    assert!(text.contains("status 0x0f (active)"), "{text}");
    assert!(text.contains("1/1 queues ready"), "{text}");
    // The queue goes on from where it was: a second request is served
    // into the next used entry.
    let ram = restored.memory().ram();
    assert_eq!(used_idx(&restored, used), 1);
    // Descriptor 1 and avail entry 1, written as a driver does.
    let entry = GuestAddress(desc_table + 16);
    ram.write_obj(BUFFER + 0x1000, entry).unwrap();
    ram.write_obj(32u32, GuestAddress(entry.0 + 8)).unwrap();
    ram.write_obj(VRING_DESC_F_WRITE as u16, GuestAddress(entry.0 + 12))
        .unwrap();
    ram.write_obj(1u16, GuestAddress(avail + 4 + 2)).unwrap();
    ram.write_obj(2u16, GuestAddress(avail + 2)).unwrap();
    mmio_write(&restored, BAR0 + 0x3000, 0, 2);
    wait_used(&restored, used, 2);
}
