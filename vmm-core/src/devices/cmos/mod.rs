//! The PC's CMOS: an MC146818 real-time clock and its 128 bytes of
//! battery-backed RAM behind an index port (0x70, bit 7 masks NMI) and a
//! data port (0x71).
//!
//! The clock follows the host's clock (UTC) plus an offset the guest sets
//! by writing the time (register B's SET bit, or a time register while the
//! clock runs). Registers A to D behave as the chip's: A's update-in-
//! progress flag reads 1 during the last 244 µs of each second and the
//! divider bits stop the clock, B selects BCD or binary and 12- or 24-hour
//! data, C reports the periodic, alarm and update-ended events since it was
//! last read (reading clears it), D reports valid RAM and time. The RAM
//! holds what a PC BIOS leaves there: the memory sizes and the century.
//! An enabled event raises the interrupt line (IRQ 8) when C's IRQF flag
//! goes from 0 to 1; [`spawn_interrupts`] runs the thread that notices
//! events as they fall due.

mod clock;
mod interrupts;

use std::sync::Arc;

use parking_lot::Condvar;
use vm_superio::Trigger;

use super::{DeviceAction, IrqLine, PioDevice};
use clock::REG_B;
pub use interrupts::spawn_interrupts;

/// The I/O base of the CMOS: index at +0 (0x70), data at +1 (0x71).
pub const CMOS_PORT: u16 = 0x70;
/// Ports the CMOS's range spans.
pub const CMOS_PORTS: u16 = 2;
/// The CMOS RAM byte that holds the century (the FADT names it for the OS).
pub const CMOS_CENTURY: u8 = 0x32;

const INDEX: u16 = 0;
const DATA: u16 = 1;
/// Bit 7 of a byte written to the index port masks NMI.
const NMI_MASK: u8 = 0x80;

const REG_A: usize = 0x0a;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
/// Register A: update in progress.
const A_UIP: u8 = 0x80;
/// Register A: the divider-control bits, and the value that runs the
/// clock from the PC's 32.768 kHz crystal.
const A_DIVIDER: u8 = 0x70;
const A_DIVIDER_RUN: u8 = 0x20;
/// Register A: the periodic-rate bits.
const A_RATE: u8 = 0x0f;
/// Register B: the clock is stopped for the guest to set it.
const B_SET: u8 = 0x80;
/// Register B: interrupt enables for the periodic, alarm and update-ended
/// events (each at the bit of its flag in C).
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_SQWE: u8 = 0x08;
/// Register C: an enabled event happened; periodic, alarm, update ended.
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
/// Register D: valid RAM and time.
const D_VRT: u8 = 0x80;

/// What firmware leaves in A (32.768 kHz, 1024 Hz periodic rate) and B
/// (24-hour BCD).
const A_DEFAULT: u8 = A_DIVIDER_RUN | 0x06;
const B_DEFAULT: u8 = clock::B_24H;

/// How long before each second's update A's UIP reads 1.
const UIP_LEAD_NS: i64 = 244_000;
const NS_PER_SEC: i64 = 1_000_000_000;
/// How long after the divider chain leaves reset the first update comes.
const DIVIDER_FIRST_UPDATE_NS: i64 = NS_PER_SEC / 2;
/// The most seconds of missed alarms a read of C looks back (a day holds
/// every alarm pattern).
const ALARM_LOOKBACK: i64 = 86_400;

/// The host's clock: nanoseconds since the Unix epoch.
pub type HostClock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The host's real-time clock.
pub fn system_clock() -> HostClock {
    Arc::new(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    })
}

/// The CMOS's state, for a saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmosState {
    /// The 128 bytes: time, alarm and control registers, then RAM.
    pub ram: [u8; 128],
    /// The selected byte.
    pub index: u8,
    /// Whether the last index write masked NMI.
    pub nmi_masked: bool,
    /// Guest time minus host time, in nanoseconds.
    pub offset_ns: i64,
    /// Guest time up to which register C reports events, in nanoseconds
    /// since the epoch.
    pub events_seen_ns: i64,
}

/// An MC146818 RTC with CMOS RAM.
///
/// ```
/// use vmm_core::devices::{Cmos, PioDevice, system_clock};
/// let mut cmos = Cmos::new(512 << 20, 0, system_clock());
/// cmos.write(0, &[0x09]); // year
/// let mut year = [0];
/// cmos.read(1, &mut year);
/// assert!(year[0] >= 0x25, "BCD year {:#x}", year[0]);
/// ```
pub struct Cmos {
    state: CmosState,
    host: HostClock,
    irq: IrqLine,
    /// Wakes the interrupt thread when the registers that time its next
    /// event change.
    wake: Arc<Condvar>,
}

impl Cmos {
    /// A CMOS whose clock shows the host's time, with the memory-size bytes
    /// of a PC with `below_4g` bytes of RAM under 4 GiB and `above_4g`
    /// above.
    pub fn new(below_4g: u64, above_4g: u64, host: HostClock) -> Self {
        let mut ram = [0; 128];
        ram[REG_A] = A_DEFAULT;
        ram[REG_B] = B_DEFAULT;
        ram[REG_D] = D_VRT;
        write_memory_sizes(&mut ram, below_4g, above_4g);
        let now = host();
        let mut cmos = Cmos {
            state: CmosState {
                ram,
                index: 0,
                nmi_masked: false,
                offset_ns: 0,
                events_seen_ns: now,
            },
            host,
            irq: IrqLine::None,
            wake: Arc::new(Condvar::new()),
        };
        cmos.latch_time();
        cmos
    }

    /// The CMOS with its interrupt on `irq`.
    pub fn with_irq(self, irq: IrqLine) -> Self {
        Cmos { irq, ..self }
    }

    /// The state, for a saved state.
    pub fn state(&self) -> CmosState {
        self.state.clone()
    }

    /// Puts back a state [`Cmos::state`] returned.
    pub fn set_state(&mut self, state: &CmosState) {
        self.state = state.clone();
        self.wake.notify_all();
    }

    /// Whether the guest masked NMI through the index port.
    pub fn nmi_masked(&self) -> bool {
        self.state.nmi_masked
    }

    fn guest_now_ns(&self) -> i64 {
        (self.host)().saturating_add(self.state.offset_ns)
    }

    /// Whether the clock counts: divider running and SET clear.
    fn running(&self) -> bool {
        let ram = &self.state.ram;
        ram[REG_A] & A_DIVIDER == A_DIVIDER_RUN && ram[REG_B] & B_SET == 0
    }

    /// Copies the current guest time into the time registers.
    fn latch_time(&mut self) {
        let secs = self.guest_now_ns().div_euclid(NS_PER_SEC);
        clock::store(&mut self.state.ram, secs);
    }

    /// Makes the clock continue from the time the registers hold: at
    /// `phase` nanoseconds into that second if the divider chain restarts,
    /// else keeping the chain's position within the second. Registers that
    /// hold no valid time leave the clock as it was.
    fn adopt_registers(&mut self, phase: Option<i64>) {
        let Some(secs) = clock::load(&self.state.ram) else {
            return;
        };
        let now = self.guest_now_ns();
        let kept = now.rem_euclid(NS_PER_SEC);
        let target = secs
            .saturating_mul(NS_PER_SEC)
            .saturating_add(phase.unwrap_or(kept));
        self.state.offset_ns = self
            .state
            .offset_ns
            .saturating_add(target.saturating_sub(now));
    }

    /// The periodic interrupt's period for register A's rate bits (none
    /// for rate 0), in nanoseconds.
    fn period_ns(&self) -> Option<i64> {
        let hz: i64 = match self.state.ram[REG_A] & A_RATE {
            0 => return None,
            1 => 256,
            2 => 128,
            rate => 32_768 >> (rate - 1),
        };
        Some(NS_PER_SEC / hz)
    }

    /// Sets C's flags for the events between the last look and now.
    fn collect_events(&mut self) {
        let now = self.guest_now_ns();
        let seen = self.state.events_seen_ns;
        self.state.events_seen_ns = now;
        if now <= seen || self.state.ram[REG_A] & A_DIVIDER != A_DIVIDER_RUN {
            return;
        }
        let mut flags = 0;
        if let Some(period) = self.period_ns()
            && now.div_euclid(period) > seen.div_euclid(period)
        {
            flags |= C_PF;
        }
        let (from, to) = (seen.div_euclid(NS_PER_SEC), now.div_euclid(NS_PER_SEC));
        if self.running() && to > from {
            flags |= C_UF;
            let first = (from + 1).max(to - ALARM_LOOKBACK);
            if (first..=to).any(|s| clock::alarm_matches(&self.state.ram, s)) {
                flags |= C_AF;
            }
        }
        let ram = &mut self.state.ram;
        ram[REG_C] |= flags;
        // Each enable bit of B sits where C has its event's flag.
        if ram[REG_C] & C_IRQF == 0 && ram[REG_C] & ram[REG_B] & (C_PF | C_AF | C_UF) != 0 {
            ram[REG_C] |= C_IRQF;
            if let Err(e) = self.irq.trigger() {
                tracing::warn!("RTC interrupt lost: {e}");
            }
        }
    }

    /// How long until the next event whose interrupt is enabled, if one
    /// can raise it (none while IRQF waits for C to be read).
    fn next_interrupt_in(&self) -> Option<std::time::Duration> {
        let ram = &self.state.ram;
        if ram[REG_C] & C_IRQF != 0 || ram[REG_A] & A_DIVIDER != A_DIVIDER_RUN {
            return None;
        }
        let now = self.guest_now_ns();
        let next_multiple = |period: i64| (now.div_euclid(period) + 1) * period;
        let periodic = (ram[REG_B] & B_PIE != 0)
            .then(|| self.period_ns().map(next_multiple))
            .flatten();
        let second = (ram[REG_B] & (B_UIE | B_AIE) != 0 && self.running())
            .then(|| next_multiple(NS_PER_SEC));
        let next = periodic.into_iter().chain(second).min()?;
        Some(std::time::Duration::from_nanos(
            u64::try_from(next - now).unwrap_or(0),
        ))
    }

    fn read_register(&mut self, index: usize) -> u8 {
        match index {
            REG_A => {
                let phase = self.guest_now_ns().rem_euclid(NS_PER_SEC);
                let uip = self.running() && phase >= NS_PER_SEC - UIP_LEAD_NS;
                self.state.ram[REG_A] | if uip { A_UIP } else { 0 }
            }
            REG_C => {
                self.collect_events();
                self.wake.notify_all();
                std::mem::take(&mut self.state.ram[REG_C])
            }
            i if clock::is_time_register(i) => {
                if self.running() {
                    self.latch_time();
                }
                self.state.ram[i]
            }
            i => self.state.ram[i],
        }
    }

    fn write_register(&mut self, index: usize, value: u8) {
        let was_running = self.running();
        let divider_stopped = self.state.ram[REG_A] & A_DIVIDER != A_DIVIDER_RUN;
        match index {
            REG_A => {
                self.collect_events();
                self.state.ram[REG_A] = value & !A_UIP;
            }
            REG_B => {
                self.collect_events();
                if was_running {
                    self.latch_time();
                }
                self.state.ram[REG_B] = value;
            }
            REG_C | REG_D => return,
            i if clock::is_time_register(i) && was_running => {
                self.latch_time();
                self.state.ram[i] = value;
                self.adopt_registers(None);
                return;
            }
            i => self.state.ram[i] = value,
        }
        match (was_running, self.running()) {
            (true, false) => self.latch_time(),
            (false, true) => {
                // A divider chain leaving reset makes its first update
                // half a second later.
                let restarted = divider_stopped.then_some(NS_PER_SEC - DIVIDER_FIRST_UPDATE_NS);
                self.adopt_registers(restarted);
                self.state.events_seen_ns = self.guest_now_ns();
            }
            _ => {}
        }
        self.wake.notify_all();
    }
}

/// The memory-size bytes a PC BIOS leaves in CMOS RAM, and the checksum
/// over 0x10..=0x2d.
fn write_memory_sizes(ram: &mut [u8; 128], below_4g: u64, above_4g: u64) {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    let clamp16 = |v: u64| u16::try_from(v).unwrap_or(u16::MAX).to_le_bytes();
    let base_kib = clamp16(640);
    let extended_kib = clamp16(below_4g.saturating_sub(MIB) / KIB);
    let above_16m = clamp16(below_4g.saturating_sub(16 * MIB) / (64 * KIB));
    let above_4g_units = (above_4g / (64 * KIB)).min(0xff_ffff).to_le_bytes();
    ram[0x15..=0x16].copy_from_slice(&base_kib);
    ram[0x17..=0x18].copy_from_slice(&extended_kib);
    ram[0x30..=0x31].copy_from_slice(&extended_kib);
    ram[0x34..=0x35].copy_from_slice(&above_16m);
    ram[0x5b..=0x5d].copy_from_slice(&above_4g_units[..3]);
    let sum: u16 = ram[0x10..=0x2d].iter().map(|&b| u16::from(b)).sum();
    ram[0x2e..=0x2f].copy_from_slice(&sum.to_be_bytes());
}

impl PioDevice for Cmos {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = match offset {
            DATA => self.read_register(usize::from(self.state.index)),
            // The index port is write-only.
            _ => 0xff,
        };
        crate::devices::answer_byte(data, value);
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        let Some(&value) = data.first() else {
            return DeviceAction::Continue;
        };
        match offset {
            INDEX => {
                self.state.nmi_masked = value & NMI_MASK != 0;
                self.state.index = value & !NMI_MASK;
            }
            DATA => self.write_register(usize::from(self.state.index), value),
            _ => {}
        }
        DeviceAction::Continue
    }

    fn reset(&mut self) {
        // The chip's reset line clears the interrupt enables and flags; the
        // time and RAM are battery-backed.
        self.collect_events();
        self.state.ram[REG_B] &= !(B_PIE | B_AIE | B_UIE | B_SQWE);
        self.state.ram[REG_C] = 0;
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests;
