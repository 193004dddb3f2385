//! Save and restore of a VM with 1 GiB of RAM of which 10% is touched, next
//! to copying that much memory with `memcpy`, and the time from starting a
//! restore to a running VM, with the RAM mapped from the file (the default)
//! and copied (`RamLoad::Copy`), and where the time went. Run with
//! `cargo xtask bench` or `cargo bench -p vmm-core --bench save_restore`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_core::saved_state::{AfterSave, RamLoad, RestoreOptions, RestoreReport, SaveRequest};
use vmm_core::sync::vmstate::VmState;
use vmm_core::{Vm, VmConfig, VmHandle, guests};

const RAM: u64 = 1 << 30;
const TOUCHED: usize = (RAM / 10) as usize;
/// Where the touched memory starts (above the guest's own low memory).
const TOUCHED_AT: u64 = 16 << 20;

fn wait_running(vm: &VmHandle) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while vm.state() != VmState::Running {
        assert!(Instant::now() < deadline, "the VM did not start");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Restores `file` and runs the VM until it is running; returns the
/// restore's report, the time to a restored VM and to a running one.
fn restore(file: &std::path::Path, ram: RamLoad) -> (RestoreReport, Duration, Duration) {
    let t = Instant::now();
    let options = RestoreOptions {
        ram,
        ..RestoreOptions::default()
    };
    let mut restored = Vm::restore_with(file, Box::new(std::io::sink()), options).unwrap();
    let loaded = t.elapsed();
    let report = restored.restore_report().unwrap();
    let handle = restored.handle();
    let run = std::thread::spawn(move || restored.run());
    wait_running(&handle);
    let to_running = t.elapsed();
    handle.power_off().unwrap();
    run.join().unwrap().unwrap();
    (report, loaded, to_running)
}

fn print_restore(what: &str, (r, loaded, to_running): (RestoreReport, Duration, Duration)) {
    println!(
        "  restore, RAM {what}: {loaded:?} to a loaded VM, {to_running:?} to a running one \
         ({} pages mapped)",
        r.pages_mapped
    );
    println!(
        "    verify {:?} (beside building), build {:?}, wait for verify {:?}, load {:?}, start {:?}",
        r.verify,
        r.build,
        r.verify_wait,
        r.load,
        to_running.saturating_sub(loaded)
    );
}

fn main() {
    if !hm_vmx::testing::kvm_available("save_restore bench") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmm-save-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("vm.sav");

    // A running idle guest whose RAM has 10% written (by the host, before
    // power-on: the same pages a busy guest would have dirtied).
    let firmware = guests::find("idle").unwrap().firmware().unwrap();
    let mut vm = Vm::new(VmConfig::new(RAM, firmware)).unwrap();
    let data: Vec<u8> = (0..TOUCHED)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    vm.memory()
        .ram()
        .write_slice(&data, GuestAddress(TOUCHED_AT))
        .unwrap();
    let handle = vm.handle();
    let run = std::thread::spawn(move || vm.run());
    wait_running(&handle);
    let t = Instant::now();
    let report = handle
        .save(
            &file,
            SaveRequest {
                live: false,
                then: AfterSave::PowerOff,
            },
        )
        .unwrap();
    let save = t.elapsed();
    run.join().unwrap().unwrap();

    // Baseline: copy the touched memory once.
    let mut copy = vec![0u8; TOUCHED];
    let t = Instant::now();
    copy.copy_from_slice(black_box(&data));
    black_box(&copy);
    let memcpy = t.elapsed();

    // Restore to a running VM: mapped (warm-up run first, so both
    // variants find the file in the page cache), then copied.
    restore(&file, RamLoad::Map);
    let mapped = restore(&file, RamLoad::Map);
    let copied = restore(&file, RamLoad::Copy);
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "save/restore of a VM with 1 GiB RAM, 10% touched ({} MiB), file {} MiB:",
        TOUCHED >> 20,
        report.bytes >> 20
    );
    println!("  memcpy of the touched memory: {memcpy:?}");
    println!(
        "  save:    {save:?} ({:.1}x memcpy)",
        save.as_secs_f64() / memcpy.as_secs_f64()
    );
    print_restore("mapped", mapped);
    print_restore("copied", copied);
    println!(
        "  restore to running: {:?} mapped (target < 50 ms), {:?} copied ({:.1}x)",
        mapped.2,
        copied.2,
        copied.2.as_secs_f64() / mapped.2.as_secs_f64()
    );
}
