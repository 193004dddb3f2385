use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use super::*;

/// 2026-12-02 09:27:13 UTC, a Wednesday.
const WEDNESDAY: i64 = 1_796_203_633;

/// A CMOS on a host clock the test moves; starts half-way into
/// [`WEDNESDAY`]'s second.
fn cmos() -> (Cmos, Arc<AtomicI64>) {
    let now = Arc::new(AtomicI64::new(WEDNESDAY * NS_PER_SEC + NS_PER_SEC / 2));
    let clock = Arc::clone(&now);
    let cmos = Cmos::new(512 << 20, 0, Arc::new(move || clock.load(Ordering::SeqCst)));
    (cmos, now)
}

fn advance(now: &AtomicI64, ns: i64) {
    now.fetch_add(ns, Ordering::SeqCst);
}

fn get(cmos: &mut Cmos, index: u8) -> u8 {
    cmos.write(INDEX, &[index]);
    let mut b = [0];
    cmos.read(DATA, &mut b);
    b[0]
}

fn set(cmos: &mut Cmos, index: u8, value: u8) {
    cmos.write(INDEX, &[index]);
    cmos.write(DATA, &[value]);
}

/// Seconds, minutes, hours, weekday, day, month, year, century.
fn time(cmos: &mut Cmos) -> [u8; 8] {
    [0, 2, 4, 6, 7, 8, 9, 0x32].map(|i| get(cmos, i))
}

#[test]
fn shows_the_host_time_in_bcd_24_hour() {
    let (mut c, now) = cmos();
    assert_eq!(
        time(&mut c),
        [0x13, 0x27, 0x09, 0x04, 0x02, 0x12, 0x26, 0x20]
    );
    advance(&now, 47 * NS_PER_SEC);
    assert_eq!(time(&mut c)[..3], [0x00, 0x28, 0x09]);
    assert_eq!(get(&mut c, 0x0d), D_VRT);
    assert_eq!(get(&mut c, 0x0a), A_DEFAULT);
}

#[test]
fn binary_and_12_hour_modes_follow_register_b() {
    let (mut c, now) = cmos();
    set(&mut c, 0x0b, clock::B_BINARY);
    advance(&now, 4 * 3600 * NS_PER_SEC);
    assert_eq!(time(&mut c)[..3], [13, 27, 0x80 | 1]);
}

#[test]
fn uip_reads_1_just_before_the_update() {
    let (mut c, now) = cmos();
    advance(&now, NS_PER_SEC / 2 - UIP_LEAD_NS / 2);
    assert_eq!(get(&mut c, 0x0a), A_DEFAULT | A_UIP);
    advance(&now, UIP_LEAD_NS);
    assert_eq!(get(&mut c, 0x0a), A_DEFAULT);
    assert_eq!(get(&mut c, 0), 0x14);
}

#[test]
fn set_bit_lets_the_guest_set_the_time() {
    let (mut c, now) = cmos();
    set(&mut c, 0x0b, B_DEFAULT | B_SET);
    for (index, value) in [
        (0, 0x59),
        (2, 0x59),
        (4, 0x23),
        (7, 0x31),
        (8, 0x12),
        (9, 0x99),
    ] {
        set(&mut c, index, value);
    }
    advance(&now, 10 * NS_PER_SEC);
    assert_eq!(get(&mut c, 0), 0x59, "the clock stands while SET is 1");
    assert_eq!(get(&mut c, 0x0a) & A_UIP, 0);
    set(&mut c, 0x0b, B_DEFAULT);
    advance(&now, NS_PER_SEC);
    assert_eq!(
        time(&mut c)[..],
        [0x00, 0x00, 0x00, 0x06, 0x01, 0x01, 0x00, 0x21]
    );
}

#[test]
fn a_time_register_written_while_running_moves_the_clock() {
    let (mut c, now) = cmos();
    set(&mut c, 2, 0x45);
    advance(&now, 2 * NS_PER_SEC);
    assert_eq!(time(&mut c)[..3], [0x15, 0x45, 0x09]);
}

#[test]
fn a_reset_divider_stops_the_clock() {
    let (mut c, now) = cmos();
    set(&mut c, 0x0a, 0x76);
    advance(&now, 30 * NS_PER_SEC);
    assert_eq!(get(&mut c, 0), 0x13);
    set(&mut c, 0x00, 0x40);
    set(&mut c, 0x0a, A_DEFAULT);
    // The first update half a second after the divider restarts.
    advance(&now, NS_PER_SEC / 2 - 1);
    assert_eq!(get(&mut c, 0), 0x40);
    advance(&now, 1);
    assert_eq!(get(&mut c, 0), 0x41);
}

#[test]
fn register_c_reports_events_since_its_last_read() {
    let (mut c, now) = cmos();
    assert_eq!(get(&mut c, 0x0c), 0);
    advance(&now, NS_PER_SEC / 1000);
    assert_eq!(get(&mut c, 0x0c), C_PF, "1024 Hz periodic, not enabled");
    assert_eq!(get(&mut c, 0x0c), 0, "reading C clears it");
    set(&mut c, 0x0b, B_DEFAULT | B_UIE);
    set(&mut c, 0x01, 0x14);
    set(&mut c, 0x03, 0xc0);
    set(&mut c, 0x05, 0xc0);
    advance(&now, NS_PER_SEC);
    assert_eq!(get(&mut c, 0x0c), C_IRQF | C_PF | C_UF | C_AF);
    advance(&now, NS_PER_SEC);
    set(&mut c, 0x0a, A_DIVIDER_RUN);
    assert_eq!(get(&mut c, 0x0c), C_IRQF | C_PF | C_UF, "AF at :14 only");
    set(&mut c, 0x0c, 0xff);
    set(&mut c, 0x0d, 0);
    assert_eq!(get(&mut c, 0x0d), D_VRT, "C and D are read-only");
}

#[test]
fn index_port_masks_nmi_and_reads_ff() {
    let (mut c, _) = cmos();
    c.write(INDEX, &[NMI_MASK | 0x0d]);
    assert!(c.nmi_masked());
    let mut b = [0];
    c.read(DATA, &mut b);
    assert_eq!(b[0], D_VRT);
    c.read(INDEX, &mut b);
    assert_eq!(b[0], 0xff);
    c.write(INDEX, &[0x0d]);
    assert!(!c.nmi_masked());
}

#[test]
fn memory_sizes_as_a_bios_leaves_them() {
    let (mut c, _) = cmos();
    let word = |c: &mut Cmos, i| u16::from_le_bytes([get(c, i), get(c, i + 1)]);
    assert_eq!(word(&mut c, 0x15), 640);
    assert_eq!(word(&mut c, 0x17), 0xffff);
    assert_eq!(word(&mut c, 0x30), 0xffff);
    assert_eq!(word(&mut c, 0x34), (512 - 16) * 16);
    let sum: u16 = (0x10..=0x2d).map(|i| u16::from(get(&mut c, i))).sum();
    assert_eq!(
        u16::from_be_bytes([get(&mut c, 0x2e), get(&mut c, 0x2f)]),
        sum
    );
    let mut big = Cmos::new(3 << 30, 2 << 30, system_clock());
    assert_eq!(
        [0x5b, 0x5c, 0x5d].map(|i| get(&mut big, i)),
        [0x00, 0x80, 0x00]
    );
    let small = Cmos::new(8 << 20, 0, system_clock());
    assert_eq!(small.state().ram[0x17..=0x18], 7168u16.to_le_bytes());
    assert_eq!(small.state().ram[0x34..=0x35], [0, 0]);
}

#[test]
fn reset_clears_the_interrupt_enables_and_keeps_the_time() {
    let (mut c, now) = cmos();
    set(&mut c, 0x0b, B_DEFAULT | B_PIE | B_UIE);
    set(&mut c, 0x40, 0x5a);
    c.reset();
    assert_eq!(get(&mut c, 0x0b), B_DEFAULT);
    assert_eq!(get(&mut c, 0x40), 0x5a);
    advance(&now, NS_PER_SEC);
    assert_eq!(get(&mut c, 0), 0x14);
}

#[test]
fn state_round_trips() {
    let (mut c, _) = cmos();
    set(&mut c, 2, 0x45);
    set(&mut c, 0x50, 7);
    c.write(INDEX, &[NMI_MASK | 0x50]);
    let (mut d, _) = cmos();
    d.set_state(&c.state());
    assert_eq!(d.state(), c.state());
    assert!(d.nmi_masked());
    assert_eq!(get(&mut d, 2), 0x45);
}

/// An interrupt line whose signals the test counts.
fn line() -> (IrqLine, Arc<vmm_sys_util::eventfd::EventFd>) {
    let event = Arc::new(vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap());
    (IrqLine::Irqfd(Arc::clone(&event)), event)
}

#[test]
fn an_enabled_event_raises_irq_8_until_c_is_read() {
    let (c, now) = cmos();
    let (irq, event) = line();
    let mut c = c.with_irq(irq);
    assert_eq!(c.next_interrupt_in(), None, "no interrupt enabled");
    set(&mut c, 0x0b, B_DEFAULT | B_UIE);
    let half = std::time::Duration::from_nanos(NS_PER_SEC as u64 / 2);
    assert_eq!(c.next_interrupt_in(), Some(half));
    advance(&now, NS_PER_SEC);
    c.collect_events();
    assert_eq!(event.read().unwrap(), 1);
    assert_eq!(c.next_interrupt_in(), None, "IRQF waits for C");
    advance(&now, NS_PER_SEC);
    c.collect_events();
    assert!(event.read().is_err(), "no second edge before C is read");
    assert_eq!(get(&mut c, 0x0c), C_IRQF | C_PF | C_UF);
    advance(&now, NS_PER_SEC);
    c.collect_events();
    assert_eq!(event.read().unwrap(), 1);
    set(&mut c, 0x0b, B_DEFAULT | B_PIE);
    get(&mut c, 0x0c);
    let period = c.next_interrupt_in().unwrap();
    assert!(
        period <= std::time::Duration::from_nanos(976_563),
        "{period:?}"
    );
}

#[test]
fn the_interrupt_thread_raises_update_interrupts() {
    let (irq, event) = line();
    let cmos = Cmos::new(64 << 20, 0, system_clock()).with_irq(irq);
    let cmos = Arc::new(parking_lot::Mutex::new(cmos));
    spawn_interrupts(&cmos).unwrap();
    set(&mut cmos.lock(), 0x0b, B_DEFAULT | B_UIE);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while event.read().is_err() {
        assert!(std::time::Instant::now() < deadline, "no update interrupt");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(get(&mut cmos.lock(), 0x0c) & (C_IRQF | C_UF), C_IRQF | C_UF);
}

proptest::proptest! {
    /// A guest writing anything to either port (the index port included:
    /// every index, NMI bit set or not) and reading back, while its clock
    /// runs on by any amount, crashes nothing: the index port keeps
    /// reading 0xff, the NMI mask follows the last index written, every
    /// register still reads and the state still round-trips.
    #[test]
    fn garbage_on_both_ports_crashes_nothing(
        accesses in proptest::collection::vec(
            (0u16..4, proptest::bits::u8::ANY, 0usize..=4, proptest::bool::ANY, 0i64..3 * NS_PER_SEC),
            1..200,
        ),
    ) {
        let (mut c, now) = cmos();
        let mut nmi_masked = c.nmi_masked();
        for (offset, value, len, write, ns) in accesses {
            advance(&now, ns);
            if write {
                let data = [value; 4];
                proptest::prop_assert_eq!(c.write(offset, &data[..len]), DeviceAction::Continue);
                if offset == INDEX && len > 0 {
                    nmi_masked = value & NMI_MASK != 0;
                }
            } else {
                let mut data = [0xa5; 4];
                c.read(offset, &mut data[..len]);
                if offset == INDEX && len > 0 {
                    proptest::prop_assert_eq!(data[0], 0xff);
                }
                proptest::prop_assert!(data[1.min(len)..len].iter().all(|&b| b == 0));
            }
            proptest::prop_assert_eq!(c.nmi_masked(), nmi_masked);
        }
        for index in 0..0x80 {
            get(&mut c, index);
        }
        let (mut d, _) = cmos();
        d.set_state(&c.state());
        proptest::prop_assert_eq!(d.state(), c.state());
    }
}
