//! The MC146818's time-of-day and alarm registers: a date and time written
//! into them and read back, in BCD or binary and in 12- or 24-hour form as
//! register B selects.

use super::CMOS_CENTURY;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

pub(super) const SECONDS: usize = 0x00;
pub(super) const SECONDS_ALARM: usize = 0x01;
pub(super) const MINUTES: usize = 0x02;
pub(super) const MINUTES_ALARM: usize = 0x03;
pub(super) const HOURS: usize = 0x04;
pub(super) const HOURS_ALARM: usize = 0x05;
pub(super) const WEEKDAY: usize = 0x06;
pub(super) const DAY: usize = 0x07;
pub(super) const MONTH: usize = 0x08;
pub(super) const YEAR: usize = 0x09;
pub(super) const REG_B: usize = 0x0b;
/// The century byte PC firmware keeps (and ACPI's FADT names).
pub(super) const CENTURY: usize = CMOS_CENTURY as usize;

/// Register B: data in binary rather than BCD.
pub(super) const B_BINARY: u8 = 0x04;
/// Register B: 24-hour rather than 12-hour mode.
pub(super) const B_24H: u8 = 0x02;
/// The PM flag of the hours byte in 12-hour mode.
const PM: u8 = 0x80;
/// An alarm byte with both top bits set matches every value.
const DONT_CARE: u8 = 0xc0;

/// Whether the time and date registers are the ones at `index`.
pub(super) fn is_time_register(index: usize) -> bool {
    matches!(
        index,
        SECONDS | MINUTES | HOURS | WEEKDAY | DAY | MONTH | YEAR | CENTURY
    )
}

/// The data format register B selects.
#[derive(Debug, Clone, Copy)]
struct Format {
    binary: bool,
    h24: bool,
}

impl Format {
    fn of(ram: &[u8; 128]) -> Format {
        Format {
            binary: ram[REG_B] & B_BINARY != 0,
            h24: ram[REG_B] & B_24H != 0,
        }
    }

    fn encode(self, value: u8) -> u8 {
        if self.binary {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        }
    }

    fn decode(self, byte: u8) -> Option<u8> {
        if self.binary {
            return Some(byte);
        }
        let (tens, ones) = (byte >> 4, byte & 0xf);
        (tens <= 9 && ones <= 9).then_some(tens * 10 + ones)
    }

    fn encode_hour(self, hour: u8) -> u8 {
        if self.h24 {
            return self.encode(hour);
        }
        let twelve = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(twelve) | if hour >= 12 { PM } else { 0 }
    }

    fn decode_hour(self, byte: u8) -> Option<u8> {
        if self.h24 {
            return self.decode(byte);
        }
        let twelve = self.decode(byte & !PM)?;
        if !(1..=12).contains(&twelve) {
            return None;
        }
        Some(twelve % 12 + if byte & PM != 0 { 12 } else { 0 })
    }
}

/// Writes the date and time `unix_seconds` (UTC) into the time registers
/// and the century byte, in the format register B selects. A time
/// outside what the registers can hold leaves them as they are.
pub(super) fn store(ram: &mut [u8; 128], unix_seconds: i64) {
    let Ok(t) = OffsetDateTime::from_unix_timestamp(unix_seconds) else {
        return;
    };
    let Ok(year) = u16::try_from(t.year()) else {
        return;
    };
    let f = Format::of(ram);
    // The registers hold two-digit values; the casts cannot truncate.
    ram[SECONDS] = f.encode(t.second());
    ram[MINUTES] = f.encode(t.minute());
    ram[HOURS] = f.encode_hour(t.hour());
    ram[WEEKDAY] = f.encode(t.weekday().number_from_sunday());
    ram[DAY] = f.encode(t.day());
    ram[MONTH] = f.encode(u8::from(t.month()));
    ram[YEAR] = f.encode((year % 100) as u8);
    ram[CENTURY] = f.encode((year / 100 % 100) as u8);
}

/// The date and time the registers hold, as Unix seconds (UTC); `None` if
/// they do not hold a valid date and time.
pub(super) fn load(ram: &[u8; 128]) -> Option<i64> {
    let f = Format::of(ram);
    let year = i32::from(f.decode(ram[CENTURY])?) * 100 + i32::from(f.decode(ram[YEAR])?);
    let month = Month::try_from(f.decode(ram[MONTH])?).ok()?;
    let date = Date::from_calendar_date(year, month, f.decode(ram[DAY])?).ok()?;
    let time = Time::from_hms(
        f.decode_hour(ram[HOURS])?,
        f.decode(ram[MINUTES])?,
        f.decode(ram[SECONDS])?,
    )
    .ok()?;
    Some(
        PrimitiveDateTime::new(date, time)
            .assume_utc()
            .unix_timestamp(),
    )
}

/// Whether the alarm registers match the time of day `unix_seconds`.
pub(super) fn alarm_matches(ram: &[u8; 128], unix_seconds: i64) -> bool {
    let f = Format::of(ram);
    let of_day = unix_seconds.rem_euclid(86_400);
    // Each part is below 60 (or 24): the casts cannot truncate.
    let now = [
        (SECONDS_ALARM, f.encode((of_day % 60) as u8)),
        (MINUTES_ALARM, f.encode((of_day / 60 % 60) as u8)),
        (HOURS_ALARM, f.encode_hour((of_day / 3600) as u8)),
    ];
    now.iter().all(|&(alarm, value)| {
        let set = ram[alarm];
        set & DONT_CARE == DONT_CARE || set == value
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-02 09:27:13 UTC, a Wednesday.
    const WEDNESDAY: i64 = 1_796_203_633;

    fn ram(reg_b: u8) -> [u8; 128] {
        let mut ram = [0; 128];
        ram[REG_B] = reg_b;
        ram
    }

    #[test]
    fn bcd_24_hour() {
        let mut r = ram(B_24H);
        store(&mut r, WEDNESDAY);
        assert_eq!(
            [
                r[SECONDS], r[MINUTES], r[HOURS], r[WEEKDAY], r[DAY], r[MONTH], r[YEAR], r[CENTURY]
            ],
            [0x13, 0x27, 0x09, 0x04, 0x02, 0x12, 0x26, 0x20]
        );
        assert_eq!(load(&r), Some(WEDNESDAY));
    }

    #[test]
    fn binary_12_hour_afternoon_and_midnight() {
        let mut r = ram(B_BINARY);
        store(&mut r, WEDNESDAY + 6 * 3600);
        assert_eq!((r[HOURS], r[YEAR], r[CENTURY]), (PM | 3, 26, 20));
        assert_eq!(load(&r), Some(WEDNESDAY + 6 * 3600));
        let midnight = WEDNESDAY - WEDNESDAY % 86_400;
        store(&mut r, midnight);
        assert_eq!(r[HOURS], 12);
        assert_eq!(load(&r), Some(midnight));
        store(&mut r, midnight + 12 * 3600);
        assert_eq!(r[HOURS], PM | 12);
    }

    #[test]
    fn invalid_registers_are_no_time() {
        let mut r = ram(B_24H);
        store(&mut r, WEDNESDAY);
        r[MONTH] = 0x13;
        assert_eq!(load(&r), None);
        r[MONTH] = 0x1a;
        assert_eq!(load(&r), None);
        r[MONTH] = 0x02;
        r[DAY] = 0x30;
        assert_eq!(load(&r), None, "30 February");
    }

    #[test]
    fn alarm_with_dont_care_bytes() {
        let mut r = ram(B_24H);
        r[SECONDS_ALARM] = 0x13;
        r[MINUTES_ALARM] = 0xff;
        r[HOURS_ALARM] = 0xc0;
        assert!(alarm_matches(&r, WEDNESDAY));
        assert!(alarm_matches(&r, WEDNESDAY + 3600 + 60));
        assert!(!alarm_matches(&r, WEDNESDAY + 1));
        r[HOURS_ALARM] = 0x10;
        assert!(!alarm_matches(&r, WEDNESDAY));
        assert!(alarm_matches(&r, WEDNESDAY + 3600));
    }
}
