//! A virtio entropy device on the PCI bus of a real VM, driven from the
//! host side the way a driver does through its registers (the project's
//! guests have no virtio driver): found through mechanism #1 and ECAM,
//! BAR 0 decoding where the platform placed it, a queue served, and the
//! device's state surviving a save and a restore.

mod common;

use common::Capture;
use common::virtio::{BAR0, RngQueue, mmio_read};
use hm_vmx::testing::kvm_available;
use vm_memory::{Bytes, GuestAddress};
use vmm_core::devices::pci::layout::ECAM_BASE;
use vmm_core::devices::virtio::Rng;
use vmm_core::saved_state::RestoreOptions;
use vmm_core::{Vm, VmConfig, guests};

/// The rings, and the buffer the device fills.
const RINGS: u64 = 0x80_0000;
const BUFFER: u64 = 0x90_0000;

fn vm(serial: &Capture) -> Vm {
    vm_with(serial, "rng0")
}

/// The counter guest with an entropy device called `name`.
fn vm_with(serial: &Capture, name: &str) -> Vm {
    let mut config = VmConfig::new(
        16 << 20,
        guests::find("counter").unwrap().firmware().unwrap(),
    );
    config.serial = Box::new(serial.clone());
    config.virtio.push(Box::new(Rng::new(name)));
    Vm::new(config).unwrap()
}

fn info(vm: &Vm) -> String {
    let mut out = String::new();
    vm.run_info("virtio", "", &mut out).unwrap();
    out
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
    assert_eq!(mmio_read(vm.memory(), ECAM_BASE + 0x8000, 4), 0x1044_1af4);
    assert_eq!(mmio_read(vm.memory(), ECAM_BASE + 0x8010, 4), BAR0);
    // The driver's steps: features, queue 0, DRIVER_OK, a buffer.
    let queue = RngQueue::start(vm.memory(), RINGS);
    queue.offer(vm.memory(), 0, BUFFER, 64);
    queue.wait_used(vm.memory(), 1, || info(&vm));
    let ram = vm.memory().ram().clone();
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
    // Loaded, the device waits for the VM to run: a request made now is
    // served only then.
    let text = info(&restored);
    assert!(
        text.contains("status 0x0f (parked until the VM runs)"),
        "{text}"
    );
    assert!(text.contains("1/1 queues ready"), "{text}");
    assert_eq!(queue.used_idx(restored.memory()), 1);
    queue.offer(restored.memory(), 1, BUFFER + 0x1000, 32);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(queue.used_idx(restored.memory()), 1, "{}", info(&restored));
    // Running, the queue goes on from where it was: the request is served
    // into the next used entry, and so is the one after it.
    let handle = restored.handle();
    let mut restored = restored;
    let run = std::thread::spawn(move || restored.run());
    queue.wait_used(handle.memory(), 2, || format!("{:?}", handle.state()));
    queue.offer(handle.memory(), 2, BUFFER + 0x2000, 32);
    queue.wait_used(handle.memory(), 3, || format!("{:?}", handle.state()));
    let mut text = String::new();
    handle.run_info("virtio", "", &mut text).unwrap();
    assert!(text.contains("status 0x0f (active)"), "{text}");
    handle.power_off().unwrap();
    run.join().unwrap().unwrap();
}

/// The threads of this process named `name` (as `/proc` shows them).
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// A dropped VM has stopped its devices' workers before its memory goes:
/// a worker still running would write unmapped guest RAM.
#[test]
fn a_dropped_vm_has_stopped_its_device_workers() {
    if !kvm_available("a_dropped_vm_has_stopped_its_device_workers") {
        return;
    }
    let serial = Capture::default();
    let vm = vm_with(&serial, "rngdrop");
    let queue = RngQueue::start(vm.memory(), RINGS);
    queue.offer(vm.memory(), 0, BUFFER, 64);
    queue.wait_used(vm.memory(), 1, || info(&vm));
    assert_eq!(threads_named("virtio-rngdrop"), 1);
    drop(vm);
    assert_eq!(
        threads_named("virtio-rngdrop"),
        0,
        "the worker outlived its VM"
    );
}
