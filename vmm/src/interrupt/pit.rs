//! The Intel 8254 programmable interval timer (book chapter 3.3), for KVM's
//! split-irqchip mode where user space emulates the PIT and drives IRQ 0 from
//! a host timer.
//!
//! The model follows the *Intel 8254 Programmable Interval Timer* datasheet
//! (order number 231164); the names below are its headings:
//!
//! - **Control Word Format**: SC1-SC0 select the counter (11 = read-back),
//!   RW1-RW0 the access (00 counter latch, 01 LSB only, 10 MSB only, 11 LSB
//!   then MSB), M2-M0 the mode (110 and 111 are modes 2 and 3), BCD the
//!   count format. A control word resets the counter's logic: OUT goes to its
//!   initial level (low in mode 0, high otherwise), the byte sequencing starts
//!   over, latched values are dropped and the counter waits for a count.
//! - **Write Operations**: a count of 0 is the maximum, 65536 (binary) or
//!   10000 (BCD). In mode 0, writing the first byte of a two-byte count stops
//!   counting and drives OUT low; the second byte restarts it.
//! - **Counter Latch Command**, **Read-Back Command**: latch the count and/or
//!   the status byte (OUTPUT, NULL COUNT, then RW, mode and BCD exactly as last
//!   written) of any subset of counters; a second latch before the latched
//!   value is read is ignored; a latched status is read before a latched count.
//!   Without a latch, reads return the count at the time of each byte.
//! - **Mode Definitions**: each count is loaded into the counting element on
//!   the CLK pulse after it is written (or after the trigger in modes 1 and 5):
//!   - mode 0, interrupt on terminal count: OUT rises N + 1 clocks after the
//!     count is written and stays high; GATE low suspends counting.
//!   - mode 1, hardware retriggerable one-shot: OUT low for N clocks from the
//!     clock after a GATE rising edge.
//!   - mode 2, rate generator: period N; OUT low for the one clock in which the
//!     count is 1. A new count takes effect at the end of the current period.
//!   - mode 3, square wave: high for ⌈N/2⌉ clocks, low for ⌊N/2⌋. A new count
//!     takes effect at the end of the current period (the chip would switch at
//!     the end of the current half cycle).
//!   - modes 2 and 3: GATE low forces OUT high and stops counting; its rising
//!     edge reloads the count on the next clock.
//!   - mode 4, software triggered strobe / mode 5, hardware triggered strobe:
//!     OUT low for one clock N + 1 clocks after the count is written / GATE
//!     rises.
//!
//! Counts below the datasheet's minimum (1 in modes 2 and 3) leave OUT high
//! without edges instead of flooding IRQ 0.
//!
//! The input clock is [`PIT_FREQUENCY_HZ`]; counting is evaluated lazily from
//! an injectable [`Clock`], on a fixed grid of CLK ticks (tick `k` happens at
//! [`tick_time_ns`]`(k)`), so the model has no threads or timers of its own.
//!
//! # IRQ 0
//!
//! Counter 0's OUT is IRQ 0. Like KVM's in-kernel PIT, the VMM raises IRQ 0 as
//! a pulse for each rising edge of OUT0 produced by counting: arm a timerfd
//! (CLOCK_MONOTONIC, absolute) for [`Pit::next_irq0_deadline`]; when it
//! fires, [`Pit::irq0_edges`] says how many edges happened (pulse the line
//! once, or once per edge); re-arm. Modes 2 and 3 are periodic, modes 0, 1, 4
//! and 5 give at most one edge per programming. After a guest write to the
//! PIT ([`Pit::take_irq0_reprogrammed`]) re-arm too, as the deadline moves.
//! OUT changes caused directly by a control word are not counted as edges.
//!
//! # Ports
//!
//! Register one [`Pit`] with `Bus::insert_with_offset_base(pit, start, len,
//! PIT_PIO_OFFSET_BASE)` for each range of [`PIT_PIO_RANGES`]: offsets 0-2 are
//! the counters (ports 0x40-0x42), 3 the control word (0x43, write only, reads
//! 0xFF), 0x21 port 0x61 (system control port B). Of port 0x61, bit 0 (counter
//! 2 GATE) and bit 1 (speaker data enable, stored only: there is no sound) are
//! implemented, bits 2-3 (parity/channel check enables) are stored; reads add
//! bit 4, the refresh toggle (flips every 15.085 µs, for BIOS delay loops) and
//! bit 5, counter 2's OUT; bits 6-7 (NMI sources) read 0. Wider accesses are
//! split into byte accesses at consecutive ports.

use devices::BusDevice;

use super::pic::LogLimiter;

/// The 8254's input clock on a PC: 14.31818 MHz / 12.
pub const PIT_FREQUENCY_HZ: u64 = 1_193_182;
/// The port every offset the [`Pit`] sees is relative to.
pub const PIT_PIO_OFFSET_BASE: u64 = 0x40;
/// The (start, length) port ranges to register the [`Pit`] at, each with
/// [`PIT_PIO_OFFSET_BASE`] as the offset base.
pub const PIT_PIO_RANGES: [(u64, u64); 2] = [(0x40, 4), (0x61, 1)];

const NS_PER_SEC: u128 = 1_000_000_000;
/// Offset of port 0x61 from [`PIT_PIO_OFFSET_BASE`].
const PORT61_OFFSET: u64 = 0x21;
/// Half period of the port 0x61 refresh toggle (bit 4).
const REFRESH_HALF_PERIOD_NS: u64 = 15_085;

/// A source of monotonic time in nanoseconds.
pub trait Clock: Send {
    /// The current time.
    fn now_ns(&self) -> u64;
}

impl<F: Fn() -> u64 + Send> Clock for F {
    fn now_ns(&self) -> u64 {
        self()
    }
}

/// The host's CLOCK_MONOTONIC, the clock a timerfd for IRQ 0 would use.
#[derive(Debug, Clone, Copy, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes only the timespec it is given.
        if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
            return 0;
        }
        let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
        let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
        secs.saturating_mul(1_000_000_000).saturating_add(nanos)
    }
}

/// The index of the last CLK tick at or before `ns`.
pub fn ticks_at(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(PIT_FREQUENCY_HZ) / NS_PER_SEC) as u64
}

/// The first nanosecond at which CLK tick `tick` has happened.
pub fn tick_time_ns(tick: u64) -> u64 {
    let ns = (u128::from(tick) * NS_PER_SEC).div_ceil(u128::from(PIT_FREQUENCY_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

fn tick(ns: u64) -> i128 {
    i128::from(ticks_at(ns))
}

/// How a counter's count is written and read (RW1-RW0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Lsb,
    Msb,
    Word,
}

/// What a counter is doing. Ticks are absolute CLK tick indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Programmed, no count written yet.
    Idle,
    /// Modes 1 and 5: count written, waiting for a GATE trigger.
    Armed,
    /// Counting; the count was (or will be) loaded at tick `load`.
    Running { load: i128 },
    /// GATE is low: counting suspended `elapsed` ticks after the load
    /// (negative: before the load).
    Paused { elapsed: i128 },
    /// Mode 0: half of a two-byte count written; counting stopped at `ce`.
    Stopped { ce: u32 },
}

/// One of the three counters.
#[derive(Debug, Clone)]
struct Channel {
    /// Bits 5:0 of the last control word (RW, mode, BCD), for the status byte.
    control: u8,
    mode: u8,
    access: Access,
    bcd: bool,
    /// The count in use, in clocks (1..=65536, or 1..=16665 for BCD).
    count: u32,
    gate: bool,
    phase: Phase,
    /// Modes 2/3: a new count and the tick it is loaded at (end of period).
    reload: Option<(i128, u32)>,
    /// A count written but not yet loaded: modes 1/5 until the next trigger,
    /// modes 2/3 while GATE is low.
    next_count: Option<u32>,
    /// The LSB of a two-byte count, waiting for the MSB.
    write_low: Option<u8>,
    /// Unlatched two-byte reads: the MSB is next.
    read_msb: bool,
    /// A latched count (as read: BCD-encoded if BCD) and how many bytes of it are left.
    latched_count: Option<(u16, u8)>,
    latched_status: Option<u8>,
    /// Rising edges of OUT at ticks up to `edges_until` not yet reported.
    edges_pending: u64,
    edges_until: i128,
}

impl Channel {
    fn new(gate: bool, now: i128) -> Self {
        Channel {
            control: 0x36,
            mode: 3,
            access: Access::Word,
            bcd: false,
            count: 0x10000,
            gate,
            phase: Phase::Idle,
            reload: None,
            next_count: None,
            write_low: None,
            read_msb: false,
            latched_count: None,
            latched_status: None,
            edges_pending: 0,
            edges_until: now,
        }
    }

    fn modulus(&self) -> u32 {
        if self.bcd {
            10_000
        } else {
            0x10000
        }
    }

    /// The phase and count at tick `t`, with a due reload applied.
    fn view(&self, t: i128) -> (Phase, u32) {
        match self.reload {
            Some((at, count)) if t >= at => (Phase::Running { load: at }, count),
            _ => (self.phase, self.count),
        }
    }

    /// Makes a due reload permanent.
    fn normalize(&mut self, t: i128) {
        if let Some((at, count)) = self.reload {
            if t >= at {
                self.phase = Phase::Running { load: at };
                self.count = count;
                self.reload = None;
            }
        }
    }

    /// Counts the edges up to `t` and applies a due reload; before any change.
    fn sync(&mut self, t: i128) {
        if t > self.edges_until {
            let edges = self.edges_between(self.edges_until, t);
            self.edges_pending = self.edges_pending.saturating_add(edges);
            self.edges_until = t;
        }
        self.normalize(t);
    }

    /// OUT level `d` ticks after the load of count `n` (d >= 0).
    fn out_after(mode: u8, n: u32, d: i128) -> bool {
        let n = i128::from(n);
        match mode {
            0 | 1 => d >= n,
            2 => n < 2 || d % n != n - 1,
            3 => n < 2 || d % n < (n + 1) / 2,
            _ => d != n, // 4, 5
        }
    }

    /// The counting element `d` ticks after the load of count `n` (d >= 0).
    fn count_after(mode: u8, n: u32, d: i128, modulus: u32) -> u32 {
        let n = i128::from(n);
        let m = i128::from(modulus);
        let ce = match mode {
            2 => n - d % n,
            3 => {
                // Counts down by two through each half of the period; an odd
                // count loads N - 1 (high half one clock longer).
                let high = (n + 1) / 2;
                let p = d % n;
                let q = if p < high { p } else { p - high };
                let start = if n % 2 == 1 { n - 1 } else { n };
                (start - 2 * q).max(0)
            }
            _ => n - d, // 0, 1, 4, 5: wraps after the terminal count
        };
        ce.rem_euclid(m) as u32
    }

    /// OUT at tick `t`.
    fn out(&self, t: i128) -> bool {
        let initial = self.mode != 0;
        let (phase, n) = self.view(t);
        match phase {
            Phase::Idle | Phase::Armed => initial,
            Phase::Running { load } if t < load => initial,
            Phase::Running { load } => Self::out_after(self.mode, n, t - load),
            Phase::Paused { .. } if matches!(self.mode, 2 | 3) => true,
            Phase::Paused { elapsed } if elapsed < 0 => initial,
            Phase::Paused { elapsed } => Self::out_after(self.mode, n, elapsed),
            Phase::Stopped { .. } => false,
        }
    }

    /// The counting element at tick `t`, as a binary number.
    fn counter(&self, t: i128) -> u32 {
        let (phase, n) = self.view(t);
        let m = self.modulus();
        match phase {
            Phase::Running { load } if t >= load => Self::count_after(self.mode, n, t - load, m),
            Phase::Paused { elapsed } if elapsed >= 0 => Self::count_after(self.mode, n, elapsed, m),
            Phase::Stopped { ce } => ce,
            _ => n % m,
        }
    }

    /// The count as the guest reads it (BCD-encoded in BCD mode).
    fn read_value(&self, t: i128) -> u16 {
        let v = self.counter(t);
        if self.bcd {
            let v = v % 10_000;
            ((v % 10) | ((v / 10 % 10) << 4) | ((v / 100 % 10) << 8) | ((v / 1000) << 12)) as u16
        } else {
            v as u16
        }
    }

    /// NULL COUNT: the last count written has not reached the counting element.
    fn null_count(&self, t: i128) -> bool {
        if self.next_count.is_some() || self.write_low.is_some() {
            return true;
        }
        let (phase, _) = self.view(t);
        if matches!(self.reload, Some((at, _)) if t < at) {
            return true;
        }
        match phase {
            Phase::Idle | Phase::Armed | Phase::Stopped { .. } => true,
            Phase::Running { load } => t < load,
            Phase::Paused { elapsed } => elapsed < 0,
        }
    }

    fn status(&self, t: i128) -> u8 {
        u8::from(self.out(t)) << 7 | u8::from(self.null_count(t)) << 6 | self.control
    }

    /// Rising edges of OUT from counting with count `n` loaded at `load`, at
    /// ticks in `(a, b]`.
    fn segment_edges(mode: u8, load: i128, n: u32, a: i128, b: i128) -> u64 {
        let n = i128::from(n);
        let count = match mode {
            2 | 3 => {
                // Edges at load + j*n, j >= 1.
                let a = a.max(load);
                if n < 2 || b <= a {
                    0
                } else {
                    (b - load) / n - (a - load) / n
                }
            }
            0 | 1 => i128::from(a < load + n && load + n <= b),
            _ => i128::from(a <= load + n && load + n < b),
        };
        u64::try_from(count).unwrap_or(0)
    }

    /// Rising edges of OUT from counting at ticks in `(a, b]`.
    fn edges_between(&self, a: i128, b: i128) -> u64 {
        if b <= a {
            return 0;
        }
        let Phase::Running { load } = self.phase else {
            return 0;
        };
        match self.reload {
            Some((at, n2)) if at <= b => {
                Self::segment_edges(self.mode, load, self.count, a, b.min(at))
                    + Self::segment_edges(self.mode, at, n2, a.max(at), b)
            }
            _ => Self::segment_edges(self.mode, load, self.count, a, b),
        }
    }

    /// The first tick after `t` with a rising edge of OUT from counting.
    fn next_edge(&self, t: i128) -> Option<i128> {
        let (phase, n) = self.view(t);
        let Phase::Running { load } = phase else {
            return None;
        };
        let n = i128::from(n);
        let edge = match self.mode {
            2 | 3 if n < 2 => return None,
            2 | 3 => {
                let d = t - load;
                let j = if d < 0 { 1 } else { d / n + 1 };
                load + j * n
            }
            0 | 1 => load + n,
            _ => load + n + 1,
        };
        (edge > t).then_some(edge)
    }

    /// A control word with RW != 00 for this counter.
    fn program(&mut self, control: u8, t: i128) {
        self.sync(t);
        self.control = control & 0x3f;
        self.access = match (control >> 4) & 3 {
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::Word,
        };
        let mode = (control >> 1) & 7;
        self.mode = if mode > 5 { mode & 3 } else { mode };
        self.bcd = control & 1 != 0;
        self.phase = Phase::Idle;
        self.reload = None;
        self.next_count = None;
        self.write_low = None;
        self.read_msb = false;
        self.latched_count = None;
        self.latched_status = None;
    }

    /// The counter latch command.
    fn latch_count(&mut self, t: i128) {
        if self.latched_count.is_none() {
            let bytes = if self.access == Access::Word { 2 } else { 1 };
            self.latched_count = Some((self.read_value(t), bytes));
        }
    }

    fn latch_status(&mut self, t: i128) {
        if self.latched_status.is_none() {
            self.latched_status = Some(self.status(t));
        }
    }

    /// The number of clocks a written count stands for.
    fn decode(&self, raw: u16) -> u32 {
        let v = if self.bcd {
            let r = u32::from(raw);
            (r & 0xf) + (r >> 4 & 0xf) * 10 + (r >> 8 & 0xf) * 100 + (r >> 12) * 1000
        } else {
            u32::from(raw)
        };
        match v {
            0 => self.modulus(),
            v => v,
        }
    }

    /// A byte written to the counter's data port.
    fn write_data(&mut self, byte: u8, t: i128) {
        self.sync(t);
        let raw = match self.access {
            Access::Lsb => u16::from(byte),
            Access::Msb => u16::from(byte) << 8,
            Access::Word => match self.write_low.take() {
                None => {
                    if self.mode == 0 {
                        self.phase = Phase::Stopped { ce: self.counter(t) };
                    }
                    self.write_low = Some(byte);
                    return;
                }
                Some(low) => u16::from(low) | u16::from(byte) << 8,
            },
        };
        let n = self.decode(raw);
        self.load_count(n, t);
    }

    /// A complete count was written at tick `t`.
    fn load_count(&mut self, n: u32, t: i128) {
        match self.mode {
            0 | 4 => {
                self.count = n;
                self.phase = if self.gate { Phase::Running { load: t + 1 } } else { Phase::Paused { elapsed: 0 } };
            }
            1 | 5 => match self.phase {
                Phase::Running { .. } => self.next_count = Some(n),
                _ => {
                    self.count = n;
                    self.phase = Phase::Armed;
                }
            },
            _ => match self.phase {
                Phase::Running { load } if t >= load => {
                    // Loaded at the end of the current period.
                    let at = match self.reload {
                        Some((at, _)) => at,
                        None => {
                            let period = i128::from(self.count.max(1));
                            load + ((t - load) / period + 1) * period
                        }
                    };
                    self.reload = Some((at, n));
                }
                Phase::Running { .. } => self.count = n,
                Phase::Paused { .. } => self.next_count = Some(n),
                _ => {
                    self.count = n;
                    self.phase = if self.gate { Phase::Running { load: t + 1 } } else { Phase::Paused { elapsed: -1 } };
                }
            },
        }
    }

    /// A byte read from the counter's data port.
    fn read_data(&mut self, t: i128) -> u8 {
        if let Some(status) = self.latched_status.take() {
            return status;
        }
        if let Some((value, left)) = self.latched_count {
            let msb = match self.access {
                Access::Lsb => false,
                Access::Msb => true,
                Access::Word => left == 1,
            };
            self.latched_count = (self.access == Access::Word && left == 2).then_some((value, 1));
            return if msb { (value >> 8) as u8 } else { value as u8 };
        }
        let value = self.read_value(t);
        let msb = match self.access {
            Access::Lsb => false,
            Access::Msb => true,
            Access::Word => {
                self.read_msb = !self.read_msb;
                !self.read_msb
            }
        };
        if msb {
            (value >> 8) as u8
        } else {
            value as u8
        }
    }

    fn set_gate(&mut self, level: bool, t: i128) {
        self.sync(t);
        let rising = level && !self.gate;
        let falling = !level && self.gate;
        self.gate = level;
        match (self.mode, self.phase) {
            (1 | 5, Phase::Armed | Phase::Running { .. }) if rising => {
                if let Some(n) = self.next_count.take() {
                    self.count = n;
                }
                self.phase = Phase::Running { load: t + 1 };
            }
            (2 | 3, Phase::Paused { .. }) if rising => {
                if let Some(n) = self.next_count.take() {
                    self.count = n;
                }
                self.phase = Phase::Running { load: t + 1 };
            }
            (0 | 4, Phase::Paused { elapsed }) if rising => {
                self.phase = Phase::Running { load: t - elapsed };
            }
            (0 | 2 | 3 | 4, Phase::Running { load }) if falling => {
                self.phase = Phase::Paused { elapsed: t - load };
                if let Some((_, n)) = self.reload.take() {
                    self.next_count = Some(n);
                }
            }
            _ => {}
        }
    }
}

/// The 8254 with port 0x61; see the module docs.
pub struct Pit {
    channels: [Channel; 3],
    clock: Box<dyn Clock>,
    /// Port 0x61 bits 1-3 as last written.
    port61: u8,
    irq0_reprogrammed: bool,
    bad_access: LogLimiter,
}

impl std::fmt::Debug for Pit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pit").field("channels", &self.channels).field("port61", &self.port61).finish_non_exhaustive()
    }
}

impl Pit {
    /// A PIT reading time from `clock` (e.g. [`MonotonicClock`]), in the
    /// power-on state the firmware finds: every counter programmed for mode 3,
    /// binary, LSB then MSB, with no count (OUT high, no IRQ 0 edges); GATE of
    /// counters 0 and 1 tied high, counter 2's GATE low (port 0x61 = 0).
    pub fn new(clock: Box<dyn Clock>) -> Self {
        let now = tick(clock.now_ns());
        Pit {
            channels: [Channel::new(true, now), Channel::new(true, now), Channel::new(false, now)],
            clock,
            port61: 0,
            irq0_reprogrammed: false,
            bad_access: LogLimiter::default(),
        }
    }

    /// Returns to the power-on state (edges not yet reported are dropped).
    pub fn reset(&mut self) {
        let now = tick(self.clock.now_ns());
        self.channels = [Channel::new(true, now), Channel::new(true, now), Channel::new(false, now)];
        self.port61 = 0;
        self.irq0_reprogrammed = true;
    }

    /// The OUT pin of counter `channel` (0-2) at `now_ns`; false for other numbers.
    pub fn out(&self, channel: u8, now_ns: u64) -> bool {
        self.channels.get(usize::from(channel)).is_some_and(|c| c.out(tick(now_ns)))
    }

    /// Drives the GATE input of counter `channel` (0-2) at `now_ns`. On a PC
    /// the gates of counters 0 and 1 are tied high; counter 2's is port 0x61
    /// bit 0, which the guest drives itself.
    pub fn set_gate(&mut self, channel: u8, level: bool, now_ns: u64) {
        if let Some(c) = self.channels.get_mut(usize::from(channel)) {
            c.set_gate(level, tick(now_ns));
            if channel == 0 {
                self.irq0_reprogrammed = true;
            }
        }
    }

    /// When the VMM must next look at IRQ 0: `now_ns` if rising edges of OUT0
    /// are waiting for [`Pit::irq0_edges`], else the time (same clock) of the
    /// next rising edge, or `None` if counter 0 will not produce one.
    pub fn next_irq0_deadline(&self, now_ns: u64) -> Option<u64> {
        let c = &self.channels[0];
        let t = tick(now_ns);
        if c.edges_pending > 0 || c.edges_between(c.edges_until, t) > 0 {
            return Some(now_ns);
        }
        let edge = c.next_edge(t.max(c.edges_until))?;
        Some(tick_time_ns(u64::try_from(edge).unwrap_or(u64::MAX)))
    }

    /// The number of rising edges of OUT0 caused by counting up to `now_ns`
    /// since the previous call: the IRQ 0 pulses that are due.
    pub fn irq0_edges(&mut self, now_ns: u64) -> u64 {
        let c = &mut self.channels[0];
        c.sync(tick(now_ns));
        std::mem::take(&mut c.edges_pending)
    }

    /// Whether the guest reprogrammed counter 0 (or its gate) since the last
    /// call: the IRQ 0 deadline may have moved and the host timer needs re-arming.
    pub fn take_irq0_reprogrammed(&mut self) -> bool {
        std::mem::take(&mut self.irq0_reprogrammed)
    }

    /// Port 0x61 bit 1: the guest enabled the speaker data path.
    pub fn speaker_data_enabled(&self) -> bool {
        self.port61 & 0x02 != 0
    }

    fn read_port(&mut self, offset: u64) -> u8 {
        let now = self.clock.now_ns();
        let t = tick(now);
        match offset {
            0..=2 => self.channels[offset as usize].read_data(t),
            PORT61_OFFSET => {
                let refresh = (now / REFRESH_HALF_PERIOD_NS) & 1 == 1;
                let c2 = &self.channels[2];
                u8::from(c2.gate) | (self.port61 & 0x0e) | u8::from(refresh) << 4 | u8::from(c2.out(t)) << 5
            }
            3 => 0xff, // the control word register cannot be read
            _ => {
                if let Some(n) = self.bad_access.tick() {
                    log::warn!("pit: read of unknown port offset {offset:#x} (#{n})");
                }
                0xff
            }
        }
    }

    fn write_port(&mut self, offset: u64, value: u8) {
        let t = tick(self.clock.now_ns());
        match offset {
            0..=2 => {
                self.channels[offset as usize].write_data(value, t);
                self.irq0_reprogrammed |= offset == 0;
            }
            3 => self.write_control(value, t),
            PORT61_OFFSET => {
                self.port61 = value & 0x0e;
                self.channels[2].set_gate(value & 1 != 0, t);
            }
            _ => {
                if let Some(n) = self.bad_access.tick() {
                    log::warn!("pit: write {value:#04x} to unknown port offset {offset:#x} (#{n})");
                }
            }
        }
    }

    fn write_control(&mut self, value: u8, t: i128) {
        let select = usize::from(value >> 6);
        if select == 3 {
            // Read-back: D5 = 0 latches counts, D4 = 0 latches status, D3-D1 select.
            for (i, c) in self.channels.iter_mut().enumerate() {
                if value & (2 << i) == 0 {
                    continue;
                }
                c.sync(t);
                if value & 0x20 == 0 {
                    c.latch_count(t);
                }
                if value & 0x10 == 0 {
                    c.latch_status(t);
                }
            }
            return;
        }
        let c = &mut self.channels[select];
        if value & 0x30 == 0 {
            c.sync(t);
            c.latch_count(t);
        } else {
            c.program(value, t);
            self.irq0_reprogrammed |= select == 0;
        }
    }
}

impl BusDevice for Pit {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        devices::bus::read_bytewise(offset, data, |port| self.read_port(port));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        devices::bus::write_bytewise(offset, data, |port, byte| self.write_port(port, byte));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A PIT on a hand-driven clock, set in CLK ticks.
    struct Bench {
        pit: Pit,
        now: Arc<AtomicU64>,
    }

    /// Tick numbers in the tests start here, away from 0.
    const T0: u64 = 1_000_000;

    impl Bench {
        fn new() -> Self {
            let now = Arc::new(AtomicU64::new(tick_time_ns(T0)));
            let clock = now.clone();
            let pit = Pit::new(Box::new(move || clock.load(Ordering::SeqCst)));
            Bench { pit, now }
        }

        /// Moves the clock to the instant CLK tick `T0 + k` happens.
        fn at(&mut self, k: u64) -> u64 {
            let ns = tick_time_ns(T0 + k);
            self.now.store(ns, Ordering::SeqCst);
            ns
        }

        fn outb(&mut self, port: u16, value: u8) {
            self.pit.write(u64::from(port) - PIT_PIO_OFFSET_BASE, &[value]);
        }

        fn inb(&mut self, port: u16) -> u8 {
            let mut b = [0u8];
            self.pit.read(u64::from(port) - PIT_PIO_OFFSET_BASE, &mut b);
            b[0]
        }

        /// Programs counter `c` with control word `cw` and a two-byte count.
        fn program(&mut self, c: u8, cw: u8, count: u16) {
            self.outb(0x43, cw);
            self.outb(0x40 + u16::from(c), count as u8);
            self.outb(0x40 + u16::from(c), (count >> 8) as u8);
        }

        fn read_word(&mut self, c: u8) -> u16 {
            let lo = self.inb(0x40 + u16::from(c));
            let hi = self.inb(0x40 + u16::from(c));
            u16::from(lo) | u16::from(hi) << 8
        }

        fn out(&mut self, c: u8, k: u64) -> bool {
            let ns = self.at(k);
            self.pit.out(c, ns)
        }

        fn status(&mut self, c: u8) -> u8 {
            self.outb(0x43, 0xe0 | 2 << c);
            self.inb(0x40 + u16::from(c))
        }
    }

    #[test]
    fn time_base_conversions() {
        assert_eq!(ticks_at(1_000_000_000), PIT_FREQUENCY_HZ);
        for k in [0u64, 1, 2, 1000, 1_193_181, 1_193_182, 123_456_789] {
            let ns = tick_time_ns(k);
            assert_eq!(ticks_at(ns), k, "tick {k} happens at {ns}");
            assert!(ns == 0 || ticks_at(ns - 1) == k - 1);
        }
        assert_eq!(tick_time_ns(u64::MAX), u64::MAX);
    }

    #[test]
    fn mode0_out_rises_after_n_plus_1_clocks() {
        let mut b = Bench::new();
        b.at(0);
        b.program(0, 0x30, 100); // counter 0, LSB/MSB, mode 0
        assert!(!b.out(0, 0), "OUT low after the control word");
        assert!(!b.out(0, 100), "N clocks after the write");
        assert!(b.out(0, 101), "N + 1 clocks after the write");
        assert!(b.out(0, 5000), "stays high");
        // The count wraps and keeps going after the terminal count.
        b.at(102);
        assert_eq!(b.read_word(0), 0xffff);
    }

    #[test]
    fn mode0_one_shot_irq0_deadline() {
        let mut b = Bench::new();
        let now = b.at(0);
        assert_eq!(b.pit.next_irq0_deadline(now), None, "power-on: no count");
        b.program(0, 0x30, 100);
        assert!(b.pit.take_irq0_reprogrammed());
        assert!(!b.pit.take_irq0_reprogrammed());
        assert_eq!(b.pit.next_irq0_deadline(now), Some(tick_time_ns(T0 + 101)));
        let early = b.at(100);
        assert_eq!(b.pit.irq0_edges(early), 0);
        let due = b.at(101);
        assert_eq!(b.pit.irq0_edges(due), 1);
        assert_eq!(b.pit.next_irq0_deadline(due), None, "one-shot");
        let later = b.at(10_000);
        assert_eq!(b.pit.irq0_edges(later), 0);
    }

    #[test]
    fn mode2_rate_generator_period() {
        let mut b = Bench::new();
        b.at(0);
        b.program(0, 0x34, 10); // counter 0, LSB/MSB, mode 2
                                // Loaded at tick 1; OUT low for the clock in which the count is 1.
        let levels: Vec<bool> = (1..=22).map(|k| b.out(0, k)).collect();
        let mut expected = vec![true; 22];
        expected[10 - 1] = false;
        expected[20 - 1] = false;
        assert_eq!(levels, expected);
        // Rising edges every 10 clocks: ticks 11, 21, 31, ...
        let now = b.at(0);
        assert_eq!(b.pit.next_irq0_deadline(now), Some(tick_time_ns(T0 + 11)));
        let now = b.at(11);
        assert_eq!(b.pit.irq0_edges(now), 1);
        assert_eq!(b.pit.next_irq0_deadline(now), Some(tick_time_ns(T0 + 21)));
        // A late VMM gets every edge it missed, once.
        let now = b.at(55);
        assert_eq!(b.pit.irq0_edges(now), 4);
        assert_eq!(b.pit.irq0_edges(now), 0);
        assert_eq!(b.pit.next_irq0_deadline(now), Some(tick_time_ns(T0 + 61)));
        // Counting down from N to 1.
        b.at(1);
        assert_eq!(b.read_word(0), 10);
        b.at(10);
        assert_eq!(b.read_word(0), 1);
        b.at(11);
        assert_eq!(b.read_word(0), 10);
    }

    #[test]
    fn mode2_new_count_takes_effect_at_end_of_period() {
        let mut b = Bench::new();
        b.at(0);
        b.program(0, 0x34, 100);
        b.at(50);
        b.outb(0x40, 40);
        b.outb(0x40, 0);
        assert_eq!(b.status(0) & 0x40, 0x40, "NULL COUNT until the reload");
        b.at(60);
        assert_eq!(b.read_word(0), 41, "still the old count");
        let now = b.at(60);
        assert_eq!(b.pit.next_irq0_deadline(now), Some(tick_time_ns(T0 + 101)));
        b.at(101);
        assert_eq!(b.read_word(0), 40);
        assert_eq!(b.status(0) & 0x40, 0);
        let now = b.at(181);
        assert_eq!(b.pit.irq0_edges(now), 3, "edges at 101, 141 and 181");
        assert_eq!(b.pit.next_irq0_deadline(now), Some(tick_time_ns(T0 + 221)));
    }

    #[test]
    fn mode3_square_wave_half_periods() {
        let mut b = Bench::new();
        b.at(0);
        b.program(0, 0x36, 10); // even count: 5 high, 5 low
        let levels: Vec<bool> = (1..=20).map(|k| b.out(0, k)).collect();
        let expected: Vec<bool> = (0..20).map(|d| d % 10 < 5).collect();
        assert_eq!(levels, expected);
        b.at(1);
        assert_eq!(b.read_word(0), 10);
        b.at(2);
        assert_eq!(b.read_word(0), 8, "counts down by two");
        let now = b.at(0);
        assert_eq!(b.pit.next_irq0_deadline(now), Some(tick_time_ns(T0 + 11)));

        b.at(100);
        b.program(0, 0x36, 11); // odd count: 6 high, 5 low
        let levels: Vec<bool> = (101..=122).map(|k| b.out(0, k)).collect();
        let expected: Vec<bool> = (0..22).map(|d| d % 11 < 6).collect();
        assert_eq!(levels, expected);
        b.at(101);
        assert_eq!(b.read_word(0), 10, "an odd count loads N - 1");
        // The 65536 maximum (count 0) gives the 18.2 Hz BIOS tick.
        let now = b.at(200);
        assert_eq!(b.pit.irq0_edges(now), 9 + 9, "N = 10 at 11..=91, N = 11 at 112..=200");
        b.program(0, 0x36, 0);
        assert_eq!(b.pit.next_irq0_deadline(now), Some(tick_time_ns(T0 + 201 + 65536)));
    }

    #[test]
    fn latch_command_freezes_the_read_value() {
        let mut b = Bench::new();
        b.at(0);
        b.program(0, 0x34, 1000);
        b.at(100);
        b.outb(0x43, 0x00); // latch counter 0
        b.at(500);
        b.outb(0x43, 0x00); // ignored: already latched
        assert_eq!(b.read_word(0), 901);
        // Unlatched again: the live count.
        assert_eq!(b.read_word(0), 501);
        // With LSB-only access one byte releases the latch.
        b.outb(0x43, 0x14); // counter 0, LSB only, mode 2
        b.outb(0x40, 200);
        b.at(510);
        b.outb(0x43, 0x00);
        b.at(520);
        assert_eq!(b.inb(0x40), 200 - 9);
        assert_eq!(b.inb(0x40), 200 - 19);
    }

    #[test]
    fn read_back_status_byte() {
        let mut b = Bench::new();
        b.at(0);
        b.outb(0x43, 0x34);
        // OUT high (mode 2), NULL COUNT (no count yet), RW/mode/BCD as written.
        assert_eq!(b.status(0), 0xf4);
        b.outb(0x40, 0x10);
        b.outb(0x40, 0x00);
        assert_eq!(b.status(0), 0xf4, "written but not loaded yet");
        b.at(1);
        assert_eq!(b.status(0), 0xb4, "loaded: count available");
        // Mode 0: OUT low until the terminal count.
        b.outb(0x43, 0x70); // counter 1, LSB/MSB, mode 0
        assert_eq!(b.status(1), 0x70);
        b.outb(0x41, 3);
        b.outb(0x41, 0);
        b.at(2);
        assert_eq!(b.status(1), 0x30);
        b.at(5);
        assert_eq!(b.status(1), 0xb0);
        // Modes 6 and 7 are 2 and 3, but the status shows the bits written.
        b.outb(0x43, 0xbc); // counter 2, LSB/MSB, mode "6"
        assert_eq!(b.status(2), 0xfc);
    }

    #[test]
    fn read_back_count_and_status_order() {
        let mut b = Bench::new();
        b.at(0);
        b.program(0, 0x30, 50);
        b.at(11);
        b.outb(0x43, 0xc2); // count and status of counter 0
        b.at(30);
        b.outb(0x43, 0xe2); // status again: ignored, still latched
        assert_eq!(b.inb(0x40), 0x30, "status first");
        assert_eq!(b.read_word(0), 40, "then the count latched with it");
        assert_eq!(b.read_word(0), 21, "then live");
        // Several counters at once: 11101100 latches status of 2 and 1.
        b.outb(0x43, 0x74);
        b.outb(0x43, 0xb0);
        b.outb(0x43, 0xec);
        assert_eq!(b.inb(0x41), 0x74 | 0xc0);
        assert_eq!(b.inb(0x42), 0x30 | 0x40);
        // 11011000: count of counter 2 only.
        b.outb(0x42, 0x34);
        b.outb(0x42, 0x12);
        b.outb(0x61, 0x01); // gate counter 2 on
        b.at(31);
        b.outb(0x43, 0xd8);
        b.at(40);
        assert_eq!(b.read_word(2), 0x1234 - 1, "latched one clock after the gate opened");
    }

    #[test]
    fn lsb_msb_access_order() {
        let mut b = Bench::new();
        b.at(0);
        b.outb(0x43, 0x34);
        b.outb(0x40, 0x34); // LSB first
        b.outb(0x40, 0x12); // then MSB
        b.at(1);
        assert_eq!(b.inb(0x40), 0x34);
        assert_eq!(b.inb(0x40), 0x12);
        // LSB only: the MSB of the count is 0.
        b.outb(0x43, 0x14);
        b.outb(0x40, 0x80);
        b.at(2);
        assert_eq!(b.inb(0x40), 0x80);
        assert_eq!(b.inb(0x40), 0x80);
        // MSB only: the LSB of the count is 0.
        b.outb(0x43, 0x24);
        b.outb(0x40, 0x02);
        b.at(3);
        assert_eq!(b.inb(0x40), 0x02);
        b.at(4);
        assert_eq!(b.inb(0x40), 0x01, "0x200 - 1 = 0x1ff");
        // A control word restarts the byte sequence.
        b.outb(0x43, 0x34);
        b.outb(0x40, 0x99);
        b.outb(0x43, 0x34);
        b.outb(0x40, 0x00);
        b.outb(0x40, 0x01);
        b.at(5);
        assert_eq!(b.read_word(0), 0x100);
    }

    #[test]
    fn mode0_first_byte_stops_counting() {
        let mut b = Bench::new();
        b.at(0);
        b.program(0, 0x30, 10);
        assert!(b.out(0, 20));
        b.outb(0x40, 5); // first byte: OUT low, counting stopped
        assert!(!b.out(0, 21));
        assert!(!b.out(0, 100));
        b.outb(0x40, 0); // second byte: count 5 loaded on the next clock
        assert!(!b.out(0, 105));
        assert!(b.out(0, 106));
    }

    #[test]
    fn counter2_gate_through_port_61() {
        let mut b = Bench::new();
        b.at(0);
        assert_eq!(b.inb(0x61) & 0x23, 0x20, "gate off, speaker off, OUT2 high");
        // Linux's PIT calibration: gate on, speaker off, mode 0, poll bit 5.
        let v = (b.inb(0x61) & !0x02) | 0x01;
        b.outb(0x61, v);
        b.outb(0x43, 0xb0);
        b.outb(0x42, 100);
        b.outb(0x42, 0);
        assert_eq!(b.inb(0x61) & 0x20, 0, "OUT2 low while counting");
        b.at(50);
        assert_eq!(b.inb(0x61) & 0x21, 0x01);
        // Gate off: counting suspended, OUT2 stays low.
        b.outb(0x61, 0x00);
        b.at(500);
        assert_eq!(b.inb(0x61) & 0x21, 0x00);
        assert_eq!(b.read_word(2), 51);
        // Gate on again: 51 more clocks to the terminal count.
        b.outb(0x61, 0x01);
        b.at(550);
        assert_eq!(b.inb(0x61) & 0x20, 0);
        b.at(551);
        assert_eq!(b.inb(0x61) & 0x20, 0x20);
        // Bits 1-3 are stored; 6 and 7 read 0.
        b.outb(0x61, 0xff);
        assert_eq!(b.inb(0x61) & 0xcf, 0x0f);
        assert!(b.pit.speaker_data_enabled());
    }

    #[test]
    fn port_61_refresh_bit_toggles() {
        let mut b = Bench::new();
        let seen: std::collections::HashSet<u8> = (0..40)
            .map(|k| {
                b.at(k * 10);
                b.inb(0x61) & 0x10
            })
            .collect();
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn mode1_gate_triggered_one_shot() {
        let mut b = Bench::new();
        b.at(0);
        b.program(2, 0xb2, 5); // counter 2, mode 1
        assert!(b.out(2, 10), "high until triggered");
        b.outb(0x61, 0x01); // trigger at tick 10
        assert!(b.out(2, 10));
        assert!(!b.out(2, 11));
        assert!(!b.out(2, 15));
        assert!(b.out(2, 16), "low for N clocks");
        // Retrigger with a new count written meanwhile.
        b.outb(0x42, 3);
        b.outb(0x42, 0);
        b.outb(0x61, 0x00);
        b.outb(0x61, 0x01);
        assert!(!b.out(2, 17));
        assert!(!b.out(2, 19));
        assert!(b.out(2, 20));
    }

    #[test]
    fn mode4_and_mode5_strobes() {
        let mut b = Bench::new();
        b.at(0);
        b.program(0, 0x38, 4); // mode 4
        let levels: Vec<bool> = (0..8).map(|k| b.out(0, k)).collect();
        assert_eq!(levels, [true, true, true, true, true, false, true, true]);
        let now = b.at(5);
        assert_eq!(b.pit.irq0_edges(now), 0);
        let now = b.at(6);
        assert_eq!(b.pit.irq0_edges(now), 1, "the strobe's rising edge");
        b.program(2, 0xba, 4); // mode 5, counter 2
        assert!(b.out(2, 20));
        b.outb(0x61, 1); // trigger at tick 20
        let levels: Vec<bool> = (21..=27).map(|k| b.out(2, k)).collect();
        assert_eq!(levels, [true, true, true, true, false, true, true]);
    }

    #[test]
    fn bcd_counting() {
        let mut b = Bench::new();
        b.at(0);
        b.program(0, 0x31, 0x1000); // mode 0, BCD 1000
        b.at(2);
        assert_eq!(b.read_word(0), 0x0999);
        b.program(0, 0x31, 0x0000); // BCD 0 = 10000
        b.at(3);
        assert_eq!(b.read_word(0), 0x0000);
        b.at(4);
        assert_eq!(b.read_word(0), 0x9999);
        let now = b.at(4);
        assert_eq!(b.pit.next_irq0_deadline(now), Some(tick_time_ns(T0 + 3 + 10_000)));
    }

    #[test]
    fn gate_low_in_mode2_holds_out_high_and_reloads() {
        let mut b = Bench::new();
        b.at(0);
        b.outb(0x61, 0x01);
        b.program(2, 0xb4, 10);
        assert!(!b.out(2, 10));
        b.outb(0x61, 0x00); // gate low while OUT is low: OUT high at once
        assert!(b.out(2, 10));
        assert!(b.out(2, 30));
        b.outb(0x61, 0x01); // reload on the next clock
        assert!(!b.out(2, 40));
        assert!(b.out(2, 41));
    }

    #[test]
    fn guest_garbage_never_panics() {
        let mut b = Bench::new();
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut k = 0u64;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            k = match x % 50 {
                0 => k.wrapping_add(x >> 20),
                1 => k.wrapping_add(65_536 * 3 + 1),
                _ => k.wrapping_add(x % 4),
            } % (u64::MAX / 2);
            let ns = b.at(k);
            let offset = [0u64, 1, 2, 3, 3, 3, 0x21, 4, 0x20, u64::MAX][((x >> 8) % 10) as usize];
            let len = [1usize, 1, 2, 4][((x >> 16) % 4) as usize];
            let bytes = (x >> 24).to_le_bytes();
            if (x >> 32).is_multiple_of(2) {
                b.pit.write(offset, &bytes[..len]);
            } else {
                let mut buf = vec![0u8; len];
                b.pit.read(offset, &mut buf);
            }
            if let Some(deadline) = b.pit.next_irq0_deadline(ns) {
                assert!(deadline >= ns);
            }
            b.pit.irq0_edges(ns);
            b.pit.out((x >> 40) as u8 % 5, ns);
        }
        // The far end of the clock.
        let mut pit = Pit::new(Box::new(|| u64::MAX));
        pit.write(3, &[0x34]);
        pit.write(0, &[2, 0]);
        pit.next_irq0_deadline(u64::MAX);
        pit.irq0_edges(u64::MAX);
    }
}
