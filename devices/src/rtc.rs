//! The MC146818 real-time clock and CMOS RAM of the PC (ports 0x70/0x71).
//!
//! The clock is not a counter that ticks inside the device: every read of a
//! time register converts the host's current UTC time, plus an offset the guest
//! sets by writing the time registers, into the register's format (BCD or
//! binary, 12- or 24-hour, as register B says at the time of the read). The
//! guest therefore sees a clock that never drifts and needs no timer thread.
//!
//! Registers: 0x00-0x09 time, date and alarms; 0x0A-0x0D status registers A-D;
//! 0x32 century; everything else of the 128 bytes is plain CMOS RAM, which the
//! VMM fills before boot with [`Rtc::set_cmos_byte`] (memory sizes at
//! 0x30/0x31, 0x34/0x35 and 0x5B-0x5D, as firmware and some guests expect).
//!
//! Interrupts: with an [`IrqLine`] ([`Rtc::with_irq`]), the periodic (PIE),
//! alarm (AIE) and update-ended (UIE) interrupts raise IRQ 8 when their flag
//! comes up in register C, and reading register C lowers it again, as on a PC (SeaBIOS's
//! `int 15h AH=86h` waits on the periodic interrupt; Linux's `hwclock` on the
//! update-ended one). The device has no thread of its own: the VMM asks
//! [`Rtc::next_interrupt`] when the next one is due, arms a host timer for
//! then and calls [`Rtc::poll_interrupt`] when it fires (and again after any
//! guest access to registers A-C, which can change the answer).
//!
//! The alarm fires at the second boundary where the time of day matches the
//! alarm registers (0x01 seconds, 0x03 minutes, 0x05 hours, in the current
//! BCD/binary and 12/24-hour mode; a value 0xC0-0xFF matches anything).
//!
//! Not modelled:
//! - The divider chain: register A's DV and RS bits read back as written, but
//!   a divider reset does not stop the clock.
//! - Daylight-saving (register B DSE) and square-wave output.
//! - Day of week is derived from the date; writes to it are ignored.
//!
//! The time conversion is done in Rust rather than with `libc::gmtime_r`: the
//! guest-write path needs the inverse conversion anyway, and keeping both in
//! one place avoids `unsafe` and makes the clock injectable for tests
//! ([`Rtc::with_clock`]).

use std::time::{Duration, SystemTime};

use std::sync::Arc;

use crate::bus::{read_bytewise, write_bytewise, BusDevice, IrqLine};
use crate::ratelimit::LogLimiter;

/// The index (address) port; the device also decodes the data port at + 1.
pub const RTC_INDEX_PORT: u16 = 0x70;
/// The data port.
pub const RTC_DATA_PORT: u16 = 0x71;
/// The RTC's interrupt line on a PC.
pub const RTC_IRQ: u8 = 8;
/// Size of the CMOS address space the index port selects from.
pub const CMOS_SIZE: usize = 128;

const OFFSET_INDEX: u64 = 0;
const OFFSET_DATA: u64 = 1;

/// Bit 7 of the index port gates NMIs on a PC, not part of the address.
const INDEX_NMI_DISABLE: u8 = 0x80;

const REG_SECONDS: u8 = 0x00;
const REG_SECONDS_ALARM: u8 = 0x01;
const REG_MINUTES_ALARM: u8 = 0x03;
const REG_HOURS_ALARM: u8 = 0x05;
/// An alarm register with both top bits set matches every value.
const ALARM_DONT_CARE: u8 = 0xc0;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_DAY_OF_WEEK: u8 = 0x06;
const REG_DAY_OF_MONTH: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// The registers that hold the time, in the order a SET-bit update applies
/// them (the century first, so that the day of month meets its own month and
/// year).
const TIME_REGISTERS: [u8; 8] =
    [REG_CENTURY, REG_YEAR, REG_MONTH, REG_DAY_OF_MONTH, REG_HOURS, REG_MINUTES, REG_SECONDS, REG_DAY_OF_WEEK];

// Register A.
const A_UIP: u8 = 0x80;
const A_RATE_MASK: u8 = 0x0f;
/// 32.768 kHz time base (DV = 010), 1024 Hz periodic rate (RS = 0110).
const A_DEFAULT: u8 = 0x26;

// Register B.
const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_INTERRUPT_ENABLES: u8 = 0x70; // PIE | AIE | UIE, aligned with C's flags
const B_BINARY: u8 = 0x04; // DM: binary instead of BCD
const B_24H: u8 = 0x02;
/// 24-hour mode, BCD: what PC firmware programs.
const B_DEFAULT: u8 = B_24H;

// Register C.
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;

// Register D.
const D_VRT: u8 = 0x80; // RAM and time valid (battery good)

/// How long before each second boundary register A reports an update in
/// progress. The datasheet sets UIP 244 us before the update; the registers
/// here change exactly at the boundary, so a guest that saw UIP clear has at
/// least this long to read them consistently.
const UIP_WINDOW_NS: u32 = 244_000;
const NANOS_PER_SEC: u32 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// A source of the current time as a duration since the Unix epoch (UTC).
pub type Clock = Box<dyn Fn() -> Duration + Send>;

/// The host's wall clock; a clock set before 1970 reads as the epoch.
fn system_clock() -> Duration {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO)
}

/// Days since 1970-01-01 of a proleptic Gregorian date. Linear in `day`, so
/// an out-of-range day (Feb 31) lands in the next month.
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    // Count years from March so the leap day falls at the end of a year.
    let (m, d) = (i64::from(month), i64::from(day));
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a count of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // In range by construction: day 1-31, month 1-12.
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A broken-down UTC time with the fields the CMOS registers hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl DateTime {
    fn from_unix(secs: i64) -> Self {
        let (year, month, day) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
        let tod = secs.rem_euclid(SECS_PER_DAY);
        Self { year, month, day, hour: (tod / 3600) as u8, minute: (tod / 60 % 60) as u8, second: (tod % 60) as u8 }
    }

    fn to_unix(self) -> i64 {
        // Saturating: only a host clock near the end of i64 time gets close,
        // and that must not become a panic in a debug build.
        let tod = i64::from(self.hour) * 3600 + i64::from(self.minute) * 60 + i64::from(self.second);
        days_from_civil(self.year, self.month, self.day).saturating_mul(SECS_PER_DAY).saturating_add(tod)
    }

    /// Day of week as the RTC counts it: 1 = Sunday.
    fn weekday(self) -> u8 {
        // 1970-01-01 was a Thursday.
        let days = self.to_unix().div_euclid(SECS_PER_DAY);
        ((days + 4).rem_euclid(7) + 1) as u8
    }
}

/// An MC146818 RTC with 128 bytes of CMOS RAM.
pub struct Rtc {
    clock: Clock,
    index: u8,
    ram: [u8; CMOS_SIZE],
    reg_a: u8,
    reg_b: u8,
    /// Guest time minus host time, in seconds.
    offset_secs: i64,
    /// The time as the guest is setting it, while register B's SET bit
    /// stops the clock.
    frozen: Option<DateTime>,
    /// The time registers' bytes as the guest wrote them while SET is on
    /// (see [`TIME_REGISTERS`]). Like the chip's own registers, they read back
    /// as written, unconverted and unchecked, until SET is cleared; then they
    /// are read in the data mode of that moment and the clock starts from
    /// them. The running clock derives the day of week from the date (as QEMU
    /// does on every update), so a day of week only lasts while SET is on.
    frozen_raw: [Option<u8>; TIME_REGISTERS.len()],
    /// When register C was last read, to tell which flags have come up since.
    flags_read_at: Duration,
    /// IRQ 8, if the interrupts are wired.
    irq: Option<Arc<dyn IrqLine>>,
    /// Whether IRQ 8 is asserted (until register C is read).
    irq_asserted: bool,
    /// Set by accesses that can move [`Rtc::next_interrupt`] (registers A-C).
    rescheduled: bool,
    bad_access: LogLimiter,
    bad_value: LogLimiter,
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new()
    }
}

impl Rtc {
    /// Creates an RTC showing the host's current UTC time, with zeroed CMOS RAM.
    pub fn new() -> Self {
        Self::with_clock(Box::new(system_clock))
    }

    /// Creates an RTC that reads the time from `clock` instead of the host.
    pub fn with_clock(clock: Clock) -> Self {
        let flags_read_at = clock();
        Self {
            clock,
            index: 0,
            ram: [0; CMOS_SIZE],
            reg_a: A_DEFAULT,
            reg_b: B_DEFAULT,
            offset_secs: 0,
            frozen: None,
            frozen_raw: [None; TIME_REGISTERS.len()],
            flags_read_at,
            irq: None,
            irq_asserted: false,
            rescheduled: false,
            bad_access: LogLimiter::new(),
            bad_value: LogLimiter::new(),
        }
    }

    /// Wires the periodic and update-ended interrupts to `irq` (IRQ 8 on a PC).
    pub fn with_irq(mut self, irq: Arc<dyn IrqLine>) -> Self {
        self.irq = Some(irq);
        self
    }

    /// When, on this RTC's clock (time since the Unix epoch), the next enabled
    /// interrupt flag comes up; `None` if no interrupt is enabled, none is
    /// wired, or IRQ 8 is already asserted (nothing new happens until the guest
    /// reads register C). A time in the past means "now".
    pub fn next_interrupt(&self) -> Option<Duration> {
        if self.irq.is_none() || self.irq_asserted {
            return None;
        }
        let last = self.flags_read_at.as_nanos();
        let mut next: Option<u128> = None;
        if self.reg_b & B_PIE != 0 {
            if let Some(period) = self.periodic_period_ns() {
                next = Some((last / period + 1) * period);
            }
        }
        if self.reg_b & B_UIE != 0 && self.reg_b & B_SET == 0 {
            let second = u128::from(NANOS_PER_SEC);
            let update = (last / second + 1) * second;
            next = Some(next.map_or(update, |n| n.min(update)));
        }
        if self.reg_b & B_AIE != 0 && self.reg_b & B_SET == 0 {
            let last_guest = self.to_guest_secs(self.flags_read_at);
            if let Some(alarm) = self.next_alarm_after(last_guest) {
                // Back on the host's time line (the guest's clock is offset by whole seconds).
                let host_secs = u128::try_from(alarm.saturating_sub(self.offset_secs)).unwrap_or(0);
                let at = host_secs * u128::from(NANOS_PER_SEC);
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        next.map(|ns| Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)))
    }

    /// Whether a guest access since the last call may have moved
    /// [`next_interrupt`](Self::next_interrupt): a write to register A or B (rate,
    /// enables) or a read of C (which acknowledges an interrupt). Clears the flag.
    pub fn take_rescheduled(&mut self) -> bool {
        std::mem::take(&mut self.rescheduled)
    }

    /// How long from now until [`next_interrupt`](Self::next_interrupt) (zero if
    /// it is already due).
    pub fn time_to_next_interrupt(&self) -> Option<Duration> {
        self.next_interrupt().map(|at| at.saturating_sub((self.clock)()))
    }

    /// Asserts IRQ 8 if an enabled interrupt is due; returns whether it did.
    pub fn poll_interrupt(&mut self) -> bool {
        let due = self.next_interrupt().is_some_and(|at| at <= (self.clock)());
        if due {
            self.irq_asserted = true;
            if let Some(irq) = &self.irq {
                irq.set_level(true);
            }
        }
        due
    }

    /// Stores `value` at CMOS address `index` as a guest write to that
    /// register would (so for the clock registers it sets the clock); for use
    /// by the VMM before boot. Addresses past 127 are ignored.
    pub fn set_cmos_byte(&mut self, index: u8, value: u8) {
        if usize::from(index) < CMOS_SIZE {
            self.write_register(index, value);
        } else {
            log::warn!("rtc: set_cmos_byte index {index:#x} is beyond the CMOS");
        }
    }

    fn host_secs(&self) -> i64 {
        i64::try_from((self.clock)().as_secs()).unwrap_or(i64::MAX)
    }

    /// The time the clock shows now (or the frozen one while SET is on).
    fn current_time(&self) -> DateTime {
        self.frozen.unwrap_or_else(|| DateTime::from_unix(self.host_secs().saturating_add(self.offset_secs)))
    }

    /// Makes the running clock show `t` from now on.
    fn set_running_time(&mut self, t: DateTime) {
        self.offset_secs = t.to_unix().saturating_sub(self.host_secs());
    }

    fn binary(&self) -> bool {
        self.reg_b & B_BINARY != 0
    }

    fn hour_24(&self) -> bool {
        self.reg_b & B_24H != 0
    }

    /// Formats a field for the guest; values beyond two BCD digits wrap.
    fn encode(&self, v: i64) -> u8 {
        if self.binary() {
            v.clamp(0, 255) as u8
        } else {
            let v = v.rem_euclid(100) as u8;
            ((v / 10) << 4) | (v % 10)
        }
    }

    /// Parses a guest-written field; `None` for bytes that are not valid BCD.
    fn decode(&self, raw: u8) -> Option<u8> {
        if self.binary() {
            return Some(raw);
        }
        let (hi, lo) = (raw >> 4, raw & 0x0f);
        (hi <= 9 && lo <= 9).then_some(hi * 10 + lo)
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.hour_24() {
            return self.encode(i64::from(hour));
        }
        // 12-hour mode: 12 AM, 1-11 AM, 12 PM, 1-11 PM; bit 7 flags PM.
        let pm = if hour >= 12 { 0x80 } else { 0 };
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(i64::from(h12)) | pm
    }

    fn decode_hour(&self, raw: u8) -> Option<u8> {
        if self.hour_24() {
            return self.decode(raw).filter(|h| *h < 24);
        }
        let pm = raw & 0x80 != 0;
        let h12 = self.decode(raw & 0x7f).filter(|h| (1..=12).contains(h))?;
        Some(h12 % 12 + if pm { 12 } else { 0 })
    }

    fn update_in_progress(&self) -> bool {
        self.reg_b & B_SET == 0 && (self.clock)().subsec_nanos() >= NANOS_PER_SEC - UIP_WINDOW_NS
    }

    /// The periodic interrupt period selected by register A's RS bits.
    fn periodic_period_ns(&self) -> Option<u128> {
        let hz: u32 = match self.reg_a & A_RATE_MASK {
            0 => return None,
            // RS 1 and 2 repeat rates 8 and 9 with a 32.768 kHz time base.
            1 => 256,
            2 => 128,
            rs => 32_768 >> (rs - 1),
        };
        Some(u128::from(NANOS_PER_SEC / hz))
    }

    /// Host clock time as the guest's clock shows it, in whole seconds.
    fn to_guest_secs(&self, host: Duration) -> i64 {
        i64::try_from(host.as_secs()).unwrap_or(i64::MAX).saturating_add(self.offset_secs)
    }

    /// One alarm register: `Some(None)` for "don't care", `Some(Some(v))` for a
    /// value, `None` for a value that can never match (invalid BCD, out of range).
    fn alarm_field(&self, index: u8, limit: u8) -> Option<Option<u8>> {
        let raw = self.ram[usize::from(index)];
        if raw & ALARM_DONT_CARE == ALARM_DONT_CARE {
            return Some(None);
        }
        let value = if index == REG_HOURS_ALARM { self.decode_hour(raw) } else { self.decode(raw) };
        value.filter(|v| *v < limit).map(Some)
    }

    /// The first second after guest time `after` (Unix seconds) whose time of
    /// day matches the alarm registers, or `None` if none ever can.
    fn next_alarm_after(&self, after: i64) -> Option<i64> {
        let second = self.alarm_field(REG_SECONDS_ALARM, 60)?;
        let minute = self.alarm_field(REG_MINUTES_ALARM, 60)?;
        let hour = self.alarm_field(REG_HOURS_ALARM, 24)?;
        let start = after.checked_add(1)?;
        let first_minute = start.div_euclid(60) * 60;
        // Every hour:minute comes round within 1441 minute starts.
        for k in 0..=1440i64 {
            let minute_start = first_minute + k * 60;
            let tod = minute_start.rem_euclid(SECS_PER_DAY);
            if hour.is_some_and(|h| i64::from(h) != tod / 3600) || minute.is_some_and(|m| i64::from(m) != tod / 60 % 60)
            {
                continue;
            }
            let earliest = (start - minute_start).max(0);
            match second.map(i64::from) {
                Some(s) if s >= earliest => return Some(minute_start + s),
                Some(_) => continue,
                None => return Some(minute_start + earliest),
            }
        }
        None
    }

    /// Reads register C: the flags raised since it was last read, which the
    /// read clears.
    fn read_reg_c(&mut self) -> u8 {
        let now = (self.clock)();
        let last = std::mem::replace(&mut self.flags_read_at, now);
        let mut flags = 0;
        if self.reg_b & B_SET == 0 && now.as_secs() > last.as_secs() {
            flags |= C_UF;
            // Alarms, like updates, happen at second boundaries.
            let (last_guest, now_guest) = (self.to_guest_secs(last), self.to_guest_secs(now));
            if self.next_alarm_after(last_guest).is_some_and(|alarm| alarm <= now_guest) {
                flags |= C_AF;
            }
        }
        // The MC146818 sets PF whatever PIE says; QEMU runs the periodic
        // timer only while PIE is set, so PF is never seen without it there,
        // and a guest that checks register C exactly after an update or alarm
        // interrupt expects no PF. rvmm does the same.
        if let Some(period) = self.periodic_period_ns().filter(|_| self.reg_b & B_PIE != 0) {
            if now.as_nanos() / period > last.as_nanos() / period {
                flags |= C_PF;
            }
        }
        if flags & self.reg_b & B_INTERRUPT_ENABLES != 0 {
            flags |= C_IRQF;
        }
        if std::mem::take(&mut self.irq_asserted) {
            if let Some(irq) = &self.irq {
                irq.set_level(false);
            }
        }
        flags
    }

    fn read_register(&mut self, index: u8) -> u8 {
        if let Some(raw) = TIME_REGISTERS.iter().position(|&r| r == index).and_then(|i| self.frozen_raw[i]) {
            return raw;
        }
        match index {
            REG_SECONDS => self.encode(i64::from(self.current_time().second)),
            REG_MINUTES => self.encode(i64::from(self.current_time().minute)),
            REG_HOURS => self.encode_hour(self.current_time().hour),
            REG_DAY_OF_WEEK => self.encode(i64::from(self.current_time().weekday())),
            REG_DAY_OF_MONTH => self.encode(i64::from(self.current_time().day)),
            REG_MONTH => self.encode(i64::from(self.current_time().month)),
            REG_YEAR => self.encode(self.current_time().year.rem_euclid(100)),
            REG_CENTURY => self.encode(self.current_time().year.div_euclid(100)),
            REG_A => {
                let uip = if self.update_in_progress() { A_UIP } else { 0 };
                self.reg_a | uip
            }
            REG_B => self.reg_b,
            REG_C => {
                self.rescheduled = true;
                self.read_reg_c()
            }
            REG_D => D_VRT,
            // Alarms and RAM; the index is 7 bits so this never misses.
            _ => self.ram.get(usize::from(index)).copied().unwrap_or(0xff),
        }
    }

    fn write_register(&mut self, index: u8, v: u8) {
        if let (Some(slot), Some(_)) = (TIME_REGISTERS.iter().position(|&r| r == index), self.frozen) {
            self.frozen_raw[slot] = Some(v);
            return;
        }
        match index {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY_OF_MONTH | REG_MONTH | REG_YEAR | REG_CENTURY => {
                self.write_time_field(index, v)
            }
            REG_DAY_OF_WEEK => log::debug!("rtc: ignoring day-of-week write {v:#x} (derived from the date)"),
            // UIP is read-only.
            REG_A => {
                self.rescheduled = true;
                self.reg_a = v & !A_UIP
            }
            REG_B => {
                self.rescheduled = true;
                self.write_reg_b(v)
            }
            REG_C | REG_D => {
                log::debug!("rtc: ignoring write {v:#x} to read-only register {index:#x}")
            }
            _ => {
                if let Some(slot) = self.ram.get_mut(usize::from(index)) {
                    *slot = v;
                }
            }
        }
    }

    fn write_reg_b(&mut self, mut v: u8) {
        let was_set = self.reg_b & B_SET != 0;
        if v & B_SET != 0 {
            // SET stops updates and, per the datasheet, clears UIE.
            v &= !B_UIE;
            if !was_set {
                self.frozen = Some(self.current_time());
            }
            self.reg_b = v;
        } else if let Some(mut t) = self.frozen.take() {
            // The clock restarts from whatever the guest wrote meanwhile, read
            // in the data mode and hour format in force from now on.
            self.reg_b = v;
            let written = std::mem::take(&mut self.frozen_raw);
            for (&index, raw) in TIME_REGISTERS.iter().zip(written) {
                if let Some(raw) = raw {
                    self.apply_time_field(&mut t, index, raw);
                }
            }
            self.set_running_time(t);
        } else {
            self.reg_b = v;
        }
    }

    /// Applies a guest write to one time field of the running clock.
    fn write_time_field(&mut self, index: u8, raw: u8) {
        let mut t = self.current_time();
        if self.apply_time_field(&mut t, index, raw) {
            self.set_running_time(t);
        }
    }

    /// Sets field `index` of `t` from the register byte `raw` in the current
    /// data mode; an invalid value (bad BCD, out of range) is logged and left
    /// out. The day of week is derived from the date, so it is left out too.
    fn apply_time_field(&mut self, t: &mut DateTime, index: u8, raw: u8) -> bool {
        let applied = match index {
            REG_SECONDS => self.decode(raw).filter(|v| *v < 60).map(|v| t.second = v),
            REG_MINUTES => self.decode(raw).filter(|v| *v < 60).map(|v| t.minute = v),
            REG_HOURS => self.decode_hour(raw).map(|v| t.hour = v),
            REG_DAY_OF_MONTH => self.decode(raw).filter(|v| (1..=31).contains(v)).map(|v| t.day = v),
            REG_MONTH => self.decode(raw).filter(|v| (1..=12).contains(v)).map(|v| t.month = v),
            REG_YEAR => {
                self.decode(raw).filter(|v| *v < 100).map(|v| t.year = t.year.div_euclid(100) * 100 + i64::from(v))
            }
            REG_CENTURY => self.decode(raw).map(|v| t.year = i64::from(v) * 100 + t.year.rem_euclid(100)),
            _ => None,
        };
        if index == REG_DAY_OF_WEEK {
            return false;
        }
        if applied.is_none() {
            if let Some(n) = self.bad_value.tick() {
                log::warn!("rtc: ignoring invalid value {raw:#04x} for register {index:#x} (#{n})");
            }
            return false;
        }
        true
    }

    fn log_bad_access(&mut self, what: &str, offset: u64, len: usize) {
        if let Some(n) = self.bad_access.tick() {
            log::warn!("rtc: ignoring {len}-byte {what} at offset {offset:#x} (#{n})");
        }
    }
}

impl BusDevice for Rtc {
    /// Byte ports; a wider access is byte accesses at consecutive ports.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytewise(offset, data, |port| match port {
            OFFSET_DATA => self.read_register(self.index),
            // The index port is write-only.
            OFFSET_INDEX => 0xff,
            _ => {
                self.log_bad_access("read", port, 1);
                0xff
            }
        });
    }

    /// Byte ports; e.g. `outw` to port 0x70 sets the index, then writes the data.
    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytewise(offset, data, |port, v| match port {
            // The NMI mask bit has no effect: rvmm does not route NMIs here.
            OFFSET_INDEX => self.index = v & !INDEX_NMI_DISABLE,
            OFFSET_DATA => self.write_register(self.index, v),
            _ => self.log_bad_access("write", port, 1),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecordingIrqLine;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// 2024-02-29 13:45:07 UTC, a Thursday.
    const LEAP_DAY: u64 = 1_709_214_307;

    struct Harness {
        rtc: Rtc,
        now_ns: Arc<AtomicU64>,
    }

    impl Harness {
        fn at(secs: u64) -> Self {
            let now_ns = Arc::new(AtomicU64::new(secs * 1_000_000_000));
            let c = now_ns.clone();
            let rtc = Rtc::with_clock(Box::new(move || Duration::from_nanos(c.load(Ordering::SeqCst))));
            Self { rtc, now_ns }
        }
        fn advance_ms(&self, ms: u64) {
            self.now_ns.fetch_add(ms * 1_000_000, Ordering::SeqCst);
        }
        fn get(&mut self, index: u8) -> u8 {
            self.rtc.write(OFFSET_INDEX, &[index]);
            let mut b = [0];
            self.rtc.read(OFFSET_DATA, &mut b);
            b[0]
        }
        fn set(&mut self, index: u8, v: u8) {
            self.rtc.write(OFFSET_INDEX, &[index]);
            self.rtc.write(OFFSET_DATA, &[v]);
        }
        /// Seconds, minutes, hours, weekday, day, month, year, century.
        fn time(&mut self) -> [u8; 8] {
            [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32].map(|r| self.get(r))
        }
    }

    #[test]
    fn calendar_conversions() {
        for secs in [0i64, LEAP_DAY as i64, 951_782_400, 4_107_542_400, -1, -86_401] {
            assert_eq!(DateTime::from_unix(secs).to_unix(), secs);
        }
        let t = DateTime::from_unix(LEAP_DAY as i64);
        assert_eq!((t.year, t.month, t.day), (2024, 2, 29));
        assert_eq!((t.hour, t.minute, t.second), (13, 45, 7));
        assert_eq!(t.weekday(), 5);
        // 2000-01-01 was a Saturday; 2100 is not a leap year.
        assert_eq!(DateTime::from_unix(946_684_800).weekday(), 7);
        let t = DateTime::from_unix(4_107_542_400); // 2100-03-01
        assert_eq!((t.year, t.month, t.day), (2100, 3, 1));
        assert_eq!(days_from_civil(2100, 2, 29), days_from_civil(2100, 3, 1));
    }

    #[test]
    fn defaults() {
        let mut h = Harness::at(LEAP_DAY);
        assert_eq!(h.get(REG_A), A_DEFAULT);
        assert_eq!(h.get(REG_B), 0x02);
        assert_eq!(h.get(REG_C), 0x00);
        assert_eq!(h.get(REG_D), 0x80);
        assert_eq!(h.get(0x40), 0);
    }

    #[test]
    fn bcd_and_binary() {
        let mut h = Harness::at(LEAP_DAY);
        assert_eq!(h.time(), [0x07, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]);
        h.set(REG_B, B_24H | B_BINARY);
        assert_eq!(h.time(), [7, 45, 13, 5, 29, 2, 24, 20]);
        h.advance_ms(1000);
        assert_eq!(h.get(REG_SECONDS), 8);
    }

    #[test]
    fn twelve_hour_mode() {
        let mut h = Harness::at(LEAP_DAY);
        h.set(REG_B, 0x00); // BCD, 12h
        assert_eq!(h.get(REG_HOURS), 0x81, "1 PM");
        h.set(REG_B, B_BINARY);
        assert_eq!(h.get(REG_HOURS), 0x81);
        let midnight = LEAP_DAY - (13 * 3600 + 45 * 60 + 7);
        let mut h = Harness::at(midnight);
        h.set(REG_B, 0x00);
        assert_eq!(h.get(REG_HOURS), 0x12, "12 AM");
        let mut h = Harness::at(midnight + 12 * 3600 + 30);
        h.set(REG_B, 0x00);
        assert_eq!(h.get(REG_HOURS), 0x92, "12 PM");
        // Writing 11 PM in 12h BCD reads back as 23 in 24h mode.
        h.set(REG_HOURS, 0x91);
        h.set(REG_B, B_24H);
        assert_eq!(h.get(REG_HOURS), 0x23);
        // Hour 0 does not exist in 12h mode.
        h.set(REG_B, 0x00);
        h.set(REG_HOURS, 0x80);
        assert_eq!(h.get(REG_HOURS), 0x91);
    }

    #[test]
    fn setting_the_clock_with_set_bit() {
        let mut h = Harness::at(LEAP_DAY);
        h.set(REG_B, B_SET | B_24H | B_UIE);
        assert_eq!(h.get(REG_B), B_SET | B_24H, "SET clears UIE");
        for (reg, v) in [
            (REG_SECONDS, 0x58),
            (REG_MINUTES, 0x59),
            (REG_HOURS, 0x23),
            (REG_DAY_OF_MONTH, 0x31),
            (REG_MONTH, 0x12),
            (REG_YEAR, 0x25),
        ] {
            h.set(reg, v);
        }
        // Frozen while SET is on, and UIP never shows. The day of week is a
        // register of its own: the new date does not change it (2024-02-29
        // was a Thursday, 5).
        h.advance_ms(5_999);
        assert_eq!(h.time(), [0x58, 0x59, 0x23, 0x05, 0x31, 0x12, 0x25, 0x20]);
        assert_eq!(h.get(REG_A) & A_UIP, 0);
        h.set(REG_B, B_24H);
        h.advance_ms(3_000);
        assert_eq!(h.time(), [0x01, 0x00, 0x00, 0x05, 0x01, 0x01, 0x26, 0x20]);
    }

    #[test]
    fn registers_written_under_set_read_back_as_written_until_set_is_cleared() {
        // As on the chip and in QEMU: the bytes are kept, not converted or
        // checked, while SET holds the clock; clearing SET reads them in the
        // data mode of that moment and ignores what is not a valid time.
        let mut h = Harness::at(LEAP_DAY);
        h.set(REG_B, B_SET | B_24H);
        h.set(REG_MINUTES, 0x45);
        h.set(REG_HOURS, 0x12);
        h.set(REG_SECONDS, 0x7a);
        // Switching to binary under SET converts nothing.
        h.set(REG_B, B_SET | B_24H | B_BINARY);
        assert_eq!((h.get(REG_MINUTES), h.get(REG_HOURS), h.get(REG_SECONDS)), (0x45, 0x12, 0x7a));
        // Cleared in binary: 0x12 is 18 hours; 0x45 would be 69 minutes and
        // 0x7a 122 seconds, both invalid and left out, so the frozen 45
        // minutes and 7 seconds stay.
        h.set(REG_B, B_24H | B_BINARY);
        assert_eq!((h.get(REG_HOURS), h.get(REG_MINUTES), h.get(REG_SECONDS)), (18, 45, 7));
    }

    #[test]
    fn writes_without_set_bit_move_the_clock() {
        let mut h = Harness::at(LEAP_DAY);
        h.set(REG_YEAR, 0x99);
        h.set(REG_CENTURY, 0x19);
        assert_eq!(h.get(REG_YEAR), 0x99);
        assert_eq!(h.get(REG_CENTURY), 0x19);
        // 2099 is not a leap year: Feb 29 rolled over to Mar 1 on the year write.
        assert_eq!((h.get(REG_MONTH), h.get(REG_DAY_OF_MONTH)), (0x03, 0x01));
        h.advance_ms(2_000);
        assert_eq!(h.get(REG_SECONDS), 0x09);
        // Invalid BCD and out-of-range values are ignored.
        h.set(REG_MINUTES, 0x1a);
        h.set(REG_MINUTES, 0x60);
        h.set(REG_MONTH, 0x13);
        h.set(REG_DAY_OF_MONTH, 0x00);
        h.set(REG_DAY_OF_WEEK, 0x01);
        assert_eq!(h.time(), [0x09, 0x45, 0x13, 0x02, 0x01, 0x03, 0x99, 0x19]);
    }

    #[test]
    fn day_of_week_written_under_set_reads_back_until_the_clock_runs() {
        let mut h = Harness::at(LEAP_DAY);
        let implied = h.get(REG_DAY_OF_WEEK);
        let other = implied % 7 + 1;
        h.set(REG_B, B_DEFAULT | B_SET);
        h.set(REG_DAY_OF_WEEK, other);
        assert_eq!(h.get(REG_DAY_OF_WEEK), other, "reads back while SET holds the clock");
        h.set(REG_B, B_DEFAULT);
        assert_eq!(h.get(REG_DAY_OF_WEEK), implied, "the running clock derives it from the date");
        h.set(REG_DAY_OF_WEEK, other);
        assert_eq!(h.get(REG_DAY_OF_WEEK), implied);
    }

    #[test]
    fn nmi_bit_is_stripped() {
        let mut h = Harness::at(LEAP_DAY);
        h.set(0x80 | 0x0f, 0xab);
        assert_eq!(h.get(0x0f), 0xab);
        assert_eq!(h.get(0x8f), 0xab);
        assert_eq!(h.get(0x80 | REG_D), 0x80);
        assert_eq!(h.get(0x80 | REG_SECONDS), 0x07);
        let mut b = [0];
        h.rtc.read(OFFSET_INDEX, &mut b);
        assert_eq!(b[0], 0xff);
    }

    #[test]
    fn set_cmos_byte_readback() {
        let mut h = Harness::at(LEAP_DAY);
        let fields = [
            (0x30, 0x00),
            (0x31, 0xfc),
            (0x34, 0x00),
            (0x35, 0x3f),
            (0x5b, 0x00),
            (0x5c, 0x01),
            (0x5d, 0x00),
            (0x7f, 0x42),
            (0x01, 0xc0), // seconds alarm: plain storage
        ];
        for (i, v) in fields {
            h.rtc.set_cmos_byte(i, v);
        }
        for (i, v) in fields {
            assert_eq!(h.get(i), v, "index {i:#x}");
        }
        h.rtc.set_cmos_byte(0x80, 0x11);
        h.rtc.set_cmos_byte(0xff, 0x11);
        assert_eq!(h.get(0x00), 0x07, "out-of-range index did not alias");
        h.rtc.set_cmos_byte(REG_B, B_24H | B_BINARY);
        assert_eq!(h.get(REG_SECONDS), 7);
    }

    #[test]
    fn register_a_and_uip() {
        let mut h = Harness::at(LEAP_DAY);
        h.set(REG_A, 0xff);
        assert_eq!(h.get(REG_A), 0x7f, "UIP is not writable");
        h.set(REG_A, A_DEFAULT);
        h.advance_ms(500);
        assert_eq!(h.get(REG_A), 0x26);
        h.now_ns.fetch_add(499_800_000, Ordering::SeqCst);
        assert_eq!(h.get(REG_A), 0xa6, "UIP just before the boundary");
        assert_eq!(h.get(REG_SECONDS), 0x07);
        h.now_ns.fetch_add(200_000, Ordering::SeqCst);
        assert_eq!(h.get(REG_A), 0x26);
        assert_eq!(h.get(REG_SECONDS), 0x08);
    }

    #[test]
    fn register_c_flags_and_read_clear() {
        let mut h = Harness::at(LEAP_DAY);
        assert_eq!(h.get(REG_C), 0);
        h.advance_ms(1);
        assert_eq!(h.get(REG_C), 0, "no periodic flag without PIE (as on QEMU)");
        h.advance_ms(1000);
        assert_eq!(h.get(REG_C), C_UF);
        assert_eq!(h.get(REG_C), 0, "read clears");
        h.set(REG_B, B_24H | B_PIE);
        h.advance_ms(1);
        assert_eq!(h.get(REG_C), C_IRQF | C_PF, "1024 Hz periodic flag");
        h.set(REG_B, B_24H);
        h.set(REG_B, B_24H | B_UIE);
        h.set(REG_A, 0x20); // periodic off
        h.advance_ms(1000);
        assert_eq!(h.get(REG_C), C_IRQF | C_UF);
        h.set(REG_C, 0xff);
        h.set(REG_D, 0x00);
        assert_eq!((h.get(REG_C), h.get(REG_D)), (0, 0x80));
    }

    #[test]
    fn host_clock_is_plausible() {
        let mut rtc = Rtc::new();
        rtc.write(OFFSET_INDEX, &[REG_CENTURY]);
        let mut b = [0];
        rtc.read(OFFSET_DATA, &mut b);
        assert_eq!(b[0], 0x20);
    }

    #[test]
    fn absurd_host_clock_does_not_panic() {
        for now in [Duration::MAX, Duration::from_secs(i64::MAX as u64), Duration::ZERO] {
            let mut rtc = Rtc::with_clock(Box::new(move || now));
            for reg in [0x00u8, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32, 0x0a, 0x0c] {
                rtc.write(OFFSET_INDEX, &[reg]);
                let mut b = [0];
                rtc.read(OFFSET_DATA, &mut b);
                rtc.write(OFFSET_DATA, &[0x01]);
                rtc.read(OFFSET_DATA, &mut b);
            }
            rtc.write(OFFSET_INDEX, &[REG_B]);
            rtc.write(OFFSET_DATA, &[B_SET | B_BINARY]);
            rtc.write(OFFSET_INDEX, &[REG_CENTURY]);
            rtc.write(OFFSET_DATA, &[0xff]);
            rtc.write(OFFSET_INDEX, &[REG_B]);
            rtc.write(OFFSET_DATA, &[B_BINARY]);
        }
    }

    #[test]
    fn bad_offsets_and_widths() {
        let mut h = Harness::at(LEAP_DAY);
        h.set(0x20, 0x33);
        for off in [2u64, 3, 0x100, u64::MAX] {
            let mut b = [0u8];
            h.rtc.read(off, &mut b);
            assert_eq!(b[0], 0xff);
            h.rtc.write(off, &[0]);
        }
        for width in [0usize, 8] {
            let mut buf = vec![0u8; width];
            h.rtc.read(2, &mut buf);
            assert!(buf.iter().all(|&b| b == 0xff));
            h.rtc.write(2, &buf);
        }
        assert_eq!(h.get(0x20), 0x33);
    }

    #[test]
    fn wide_accesses_are_byte_accesses_at_consecutive_ports() {
        let mut h = Harness::at(LEAP_DAY);
        // outw 0x70, ax: AL is the index, AH the data.
        h.rtc.write(OFFSET_INDEX, &[0x21, 0x5a]);
        assert_eq!(h.get(0x21), 0x5a);
        // inw 0x70: the write-only index port, then the data of the index just set.
        h.rtc.write(OFFSET_INDEX, &[0x21]);
        let mut w = [0u8; 2];
        h.rtc.read(OFFSET_INDEX, &mut w);
        assert_eq!(w, [0xff, 0x5a]);
        // Bytes beyond the two ports read as all ones and writes there do nothing.
        let mut l = [0u8; 4];
        h.rtc.read(OFFSET_INDEX, &mut l);
        assert_eq!(l, [0xff, 0x5a, 0xff, 0xff]);
    }

    #[test]
    fn periodic_interrupt_raises_irq8_until_register_c_is_read() {
        let mut h = Harness::at(LEAP_DAY);
        let irq = Arc::new(RecordingIrqLine::default());
        h.rtc = std::mem::take(&mut h.rtc).with_irq(irq.clone());
        assert_eq!(h.rtc.next_interrupt(), None, "nothing enabled");
        // 1024 Hz (RS = 6, the default) with PIE, as SeaBIOS's int 15h/86h sets it.
        h.get(REG_C);
        assert!(h.rtc.take_rescheduled(), "reading C can move the next interrupt");
        assert!(!h.rtc.take_rescheduled());
        h.get(REG_SECONDS);
        assert!(!h.rtc.take_rescheduled(), "reading the clock cannot");
        h.set(REG_B, B_DEFAULT | B_PIE);
        assert!(h.rtc.take_rescheduled(), "writing B can");
        let start = Duration::from_secs(LEAP_DAY);
        let period = Duration::from_nanos(976_562);
        // Periods are counted on the clock's own time line, so the first one ends within a period.
        let first = h.rtc.next_interrupt().unwrap();
        assert!(first > start && first <= start + period, "{first:?}");
        assert!(!h.rtc.poll_interrupt(), "not due yet");
        assert!(!irq.level());
        h.advance_ms(1);
        assert!(h.rtc.poll_interrupt());
        assert!(irq.level());
        assert_eq!(h.rtc.next_interrupt(), None, "nothing new until C is read");
        let c = h.get(REG_C);
        assert_eq!(c & (C_IRQF | C_PF), C_IRQF | C_PF);
        assert!(!irq.level(), "reading C lowers IRQ 8");
        let next = h.rtc.next_interrupt().unwrap();
        assert!(next > start + period && next <= start + Duration::from_millis(1) + period);
        // Disabling PIE stops it.
        h.set(REG_B, B_DEFAULT);
        assert_eq!(h.rtc.next_interrupt(), None);
    }

    #[test]
    fn update_ended_interrupt_comes_at_the_second_boundary() {
        let mut h = Harness::at(LEAP_DAY);
        h.advance_ms(300);
        let irq = Arc::new(RecordingIrqLine::default());
        h.rtc = std::mem::take(&mut h.rtc).with_irq(irq.clone());
        h.get(REG_C);
        h.set(REG_B, B_DEFAULT | B_UIE);
        assert_eq!(h.rtc.next_interrupt(), Some(Duration::from_secs(LEAP_DAY + 1)));
        h.advance_ms(700);
        assert!(h.rtc.poll_interrupt());
        assert!(irq.level());
        assert_eq!(h.get(REG_C) & (C_IRQF | C_UF), C_IRQF | C_UF);
        assert!(!irq.level());
        // SET stops updates (and clears UIE).
        h.set(REG_B, B_DEFAULT | B_SET | B_UIE);
        assert_eq!(h.rtc.next_interrupt(), None);
    }

    #[test]
    fn an_unwired_rtc_never_schedules_interrupts() {
        let mut h = Harness::at(LEAP_DAY);
        h.set(REG_B, B_DEFAULT | B_PIE | B_UIE);
        assert_eq!(h.rtc.next_interrupt(), None);
        h.advance_ms(2000);
        assert!(!h.rtc.poll_interrupt());
    }

    #[test]
    fn alarm_interrupt_at_the_matching_second() {
        // LEAP_DAY is 13:45:07; an alarm at 13:45:10 (BCD, 24-hour).
        let mut h = Harness::at(LEAP_DAY);
        let irq = Arc::new(RecordingIrqLine::default());
        h.rtc = std::mem::take(&mut h.rtc).with_irq(irq.clone());
        h.set(REG_SECONDS_ALARM, 0x10);
        h.set(REG_MINUTES_ALARM, 0x45);
        h.set(REG_HOURS_ALARM, 0x13);
        h.get(REG_C);
        h.set(REG_B, B_DEFAULT | B_AIE);
        assert_eq!(h.rtc.next_interrupt(), Some(Duration::from_secs(LEAP_DAY + 3)));
        h.advance_ms(2000);
        assert!(!h.rtc.poll_interrupt());
        assert_eq!(h.get(REG_C) & C_AF, 0, "not yet");
        h.advance_ms(1000);
        assert!(h.rtc.poll_interrupt());
        assert!(irq.level());
        assert_eq!(h.get(REG_C), C_IRQF | C_AF | C_UF);
        assert!(!irq.level());
        // The same time tomorrow.
        assert_eq!(h.rtc.next_interrupt(), Some(Duration::from_secs(LEAP_DAY + 3 + 86_400)));
        // Don't-care seconds and minutes: every second of hour 13 from now.
        h.set(REG_SECONDS_ALARM, 0xff);
        h.set(REG_MINUTES_ALARM, 0xc0);
        assert_eq!(h.rtc.next_interrupt(), Some(Duration::from_secs(LEAP_DAY + 4)));
        // Every field "don't care": every second. An invalid value never matches.
        h.set(REG_HOURS_ALARM, 0xc0);
        assert_eq!(h.rtc.next_interrupt(), Some(Duration::from_secs(LEAP_DAY + 4)));
        h.set(REG_HOURS_ALARM, 0x25);
        assert_eq!(h.rtc.next_interrupt(), None);
        // The guest's clock is offset from the host's: the alarm follows the guest's time.
        h.set(REG_HOURS_ALARM, 0x14);
        h.set(REG_MINUTES_ALARM, 0x00);
        h.set(REG_SECONDS_ALARM, 0x00);
        h.set(REG_HOURS, 0x13);
        h.set(REG_MINUTES, 0x59);
        h.set(REG_SECONDS, 0x50);
        h.get(REG_C);
        let next = h.rtc.next_interrupt().unwrap();
        let now = Duration::from_nanos(h.now_ns.load(Ordering::SeqCst));
        assert_eq!(next.as_secs() - now.as_secs(), 10, "14:00:00 is 10 s after 13:59:50");
    }
    #[test]
    fn random_register_traffic_never_panics() {
        // Random indexes (NMI bit included), register writes of any value in
        // any mode (BCD, binary, 12-hour, SET), alarms, rates, wide accesses at
        // every offset, and time jumping by up to a day, from 1970, 2024 and
        // 2524: no panic; IRQ 8 goes up only when an interrupt is polled due,
        // and reading register C lowers it; a scheduled interrupt that is not
        // yet due is in the future.
        let mut raised = 0u32;
        for (seed, start) in [(1u64, LEAP_DAY), (2, 0), (3, 17_500_000_000)] {
            let mut h = Harness::at(start);
            let irq = Arc::new(RecordingIrqLine::default());
            h.rtc = std::mem::take(&mut h.rtc).with_irq(irq.clone());
            let mut x: u64 = 0x0146_8180_0000_0000 | seed;
            for _ in 0..5000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let v = (x >> 8) as u8;
                let reg = [
                    REG_SECONDS,
                    REG_MINUTES,
                    REG_HOURS,
                    REG_DAY_OF_WEEK,
                    REG_DAY_OF_MONTH,
                    REG_MONTH,
                    REG_YEAR,
                    REG_CENTURY,
                    REG_SECONDS_ALARM,
                    REG_MINUTES_ALARM,
                    REG_HOURS_ALARM,
                    REG_A,
                    REG_B,
                    REG_B,
                    REG_C,
                    REG_D,
                    v,
                ][(x >> 16) as usize % 17];
                match x % 10 {
                    0..=2 => h.set(reg, v),
                    3 | 4 => {
                        h.get(reg);
                    }
                    5 => {
                        let offset = [0u64, 1, 2, 3, u64::MAX][(x >> 24) as usize % 5];
                        let width = (x >> 32) as usize % 9;
                        if x & (1 << 40) != 0 {
                            h.rtc.read(offset, &mut vec![0u8; width]);
                        } else {
                            h.rtc.write(offset, &vec![v; width]);
                        }
                    }
                    6 => h.rtc.set_cmos_byte(v, (x >> 48) as u8),
                    7 => h.advance_ms([0, 1, 7, 500, 1000, 3_600_000, 86_400_000][(x >> 24) as usize % 7]),
                    _ => {
                        let level = irq.level();
                        let due = h.rtc.poll_interrupt();
                        raised += u32::from(due);
                        assert!(!due || irq.level(), "due but IRQ 8 low");
                        assert!(due || irq.level() == level, "IRQ 8 moved without a due interrupt");
                        let now = Duration::from_nanos(h.now_ns.load(Ordering::SeqCst));
                        if let Some(at) = h.rtc.next_interrupt() {
                            assert!(due || at > now, "an interrupt due at {at:?} was not raised at {now:?}");
                        }
                        let _ = h.rtc.time_to_next_interrupt();
                        h.rtc.take_rescheduled();
                    }
                }
                if reg == REG_C && x % 10 <= 4 && x % 10 >= 3 {
                    assert!(!irq.level(), "reading C lowers IRQ 8");
                }
            }
        }
        assert!(raised > 50, "{raised} interrupts");
    }
}
