//! A reset with an inflated balloon: the whole machine goes back to
//! power-on in one step, the balloon's pages included (its target stays),
//! and the guest's driver starts over without a refusal.

mod common;

use common::{ballooned_idle_vm, stat, wait_until};
use hm_vmx::testing::kvm_available;
use vm_memory::{Bytes, GuestAddress};
use vmm_core::sync::vmstate::VmState;
use vmm_core::{RunOutcome, VmHandle};

/// Where the idle guest counts its heartbeats, and a RAM address the test
/// writes itself.
const HEARTBEATS: u64 = 0x504;
const MARKER: u64 = 0x8_0000;

fn read_u32(handle: &VmHandle, gpa: u64) -> u32 {
    handle.memory().ram().read_obj(GuestAddress(gpa)).unwrap()
}

fn rip(handle: &VmHandle) -> String {
    let mut text = String::new();
    handle.run_info("cpumguest", "", &mut text).unwrap();
    let at = text.find("rip=").expect("rip in cpumguest");
    text[at..at + 20].to_owned()
}

#[test]
fn a_reset_empties_the_balloon_with_everything_else() {
    if !kvm_available("a_reset_empties_the_balloon_with_everything_else") {
        return;
    }
    let (handle, serial, run) = ballooned_idle_vm(4 << 20);
    assert_eq!(stat(&handle, "/GMM/cBalloonedPages"), 1024);

    // Suspended, so that the state right after the reset can be looked at.
    handle.pause().unwrap();
    handle
        .memory()
        .ram()
        .write_obj(0xdead_beef_u32, GuestAddress(MARKER))
        .unwrap();
    assert_ne!(read_u32(&handle, HEARTBEATS), 0);
    assert_ne!(rip(&handle), "rip=000000000000fff0");
    handle.reset().expect("reset with an inflated balloon");
    assert_eq!(handle.state(), VmState::Suspended);
    // The balloon is empty in the device, pgm and GMM; its target stays.
    assert_eq!(handle.balloon(), (4 << 20, 0));
    assert_eq!(stat(&handle, "/PGM/Page/cBalloonedPages"), 0);
    assert_eq!(stat(&handle, "/GMM/cBalloonedPages"), 0);
    // RAM is zero and the vCPU at the reset vector.
    assert_eq!(read_u32(&handle, MARKER), 0);
    assert_eq!(read_u32(&handle, HEARTBEATS), 0);
    assert_eq!(rip(&handle), "rip=000000000000fff0");

    // The guest starts over, and its driver gives the pages again: none
    // is refused as ballooned already.
    handle.resume().unwrap();
    wait_until("a second start", &serial, || {
        serial.text().matches("vmm idle: started").count() == 2
    });
    wait_until("the balloon inflated again", &serial, || {
        handle.balloon() == (4 << 20, 4 << 20)
    });
    assert_eq!(stat(&handle, "/GMM/cBalloonedPages"), 1024);
    assert_eq!(stat(&handle, "/VMM/Balloon/Refused"), 0);
    handle.power_off().unwrap();
    assert_eq!(run.join().unwrap().unwrap(), RunOutcome::PoweredOff);
}
