//! The thread that raises the CMOS's interrupts as its events fall due:
//! it sleeps until the next enabled event (or until the guest changes the
//! registers that time it), collects the events into register C, and so
//! raises IRQ 8 when C's IRQF flag goes to 1.

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use super::Cmos;

/// The longest the thread sleeps before looking again (and noticing that
/// the CMOS is gone).
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Starts the interrupt thread of `cmos`; it ends on its own once the CMOS
/// is dropped.
///
/// ```
/// use std::sync::Arc;
/// use parking_lot::Mutex;
/// use vmm_core::devices::{Cmos, spawn_interrupts, system_clock};
/// let cmos = Arc::new(Mutex::new(Cmos::new(64 << 20, 0, system_clock())));
/// spawn_interrupts(&cmos)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn spawn_interrupts(cmos: &Arc<Mutex<Cmos>>) -> std::io::Result<()> {
    let weak = Arc::downgrade(cmos);
    std::thread::Builder::new()
        .name("cmos-rtc".into())
        .spawn(move || run(&weak))
        .map(drop)
}

fn run(cmos: &Weak<Mutex<Cmos>>) {
    while let Some(device) = cmos.upgrade() {
        let mut c = device.lock();
        c.collect_events();
        let wait = c
            .next_interrupt_in()
            .map_or(IDLE_WAIT, |d| d.min(IDLE_WAIT));
        let wake = Arc::clone(&c.wake);
        wake.wait_for(&mut c, wait);
    }
}
