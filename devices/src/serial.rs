//! A 16550A UART, the PC serial port Linux's `8250` driver and every firmware
//! console know.
//!
//! The model follows the National Semiconductor PC16550D datasheet, with QEMU's
//! `hw/char/serial.c` as the reference for the places where guests depend on
//! behaviour the datasheet leaves open (THRE interrupt re-arming).
//!
//! Simplifications, all invisible to a guest that programs the chip correctly:
//! - Transmission is instantaneous: a byte written to THR is handed to the host
//!   writer during the guest's `out` instruction, so THR and the transmitter
//!   shift register are empty again by the time the guest can look (LSR THRE and
//!   TEMT always read as set and the TX FIFO never holds anything).
//! - Line settings (divisor, LCR word length, parity, stop bits) are stored and
//!   read back but do not change how bytes travel; there are no parity, framing
//!   or break errors, only overruns (which loopback mode can produce).
//! - With FIFOs, received data below the trigger level is reported by the
//!   character timeout (IIR 0xCC) 4 character times after the last byte came in
//!   or was read, at the programmed divisor and word format, as on the chip and
//!   in QEMU. The model computes the deadline from an injectable clock
//!   ([`Serial::with_clock`]); a register read after it sees the timeout at
//!   once, and the VMM's timer thread raises the IRQ at the deadline
//!   ([`Serial::time_to_next_interrupt`], [`Serial::poll_interrupt`]).
//!
//! Host input is never lost to a full FIFO: [`Serial::queue_input`] parks bytes in
//! a host-side buffer that refills the 16-byte RX FIFO as the guest drains it, as
//! if the other end of the line honoured flow control perfectly.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bus::{read_bytewise, write_bytewise, BusDevice, IrqLine};
use crate::ratelimit::LogLimiter;

/// Base I/O port and ISA IRQ of the first PC serial port.
pub const COM1: (u16, u8) = (0x3f8, 4);
/// Base I/O port and ISA IRQ of the second PC serial port.
pub const COM2: (u16, u8) = (0x2f8, 3);
/// Base I/O port and ISA IRQ of the third PC serial port (shares IRQ 4 with COM1).
pub const COM3: (u16, u8) = (0x3e8, 4);
/// Base I/O port and ISA IRQ of the fourth PC serial port (shares IRQ 3 with COM2).
pub const COM4: (u16, u8) = (0x2e8, 3);

/// Number of consecutive I/O ports a 16550A decodes, starting at its base port.
pub const SERIAL_PORT_COUNT: u16 = 8;

/// Most host input bytes [`Serial::queue_input`] keeps waiting for the guest.
pub const MAX_PENDING_INPUT: usize = 64 * 1024;

/// Depth of the 16550A receive FIFO.
const RX_FIFO_SIZE: usize = 16;

// Register offsets from the base port.
const REG_DATA: u64 = 0; // RBR (read) / THR (write); DLL when LCR.DLAB = 1
const REG_IER: u64 = 1; // DLM when LCR.DLAB = 1
const REG_IIR_FCR: u64 = 2; // IIR (read) / FCR (write)
const REG_LCR: u64 = 3;
const REG_MCR: u64 = 4;
const REG_LSR: u64 = 5;
const REG_MSR: u64 = 6;
const REG_SCR: u64 = 7;

// Interrupt enable register.
const IER_RDA: u8 = 0x01; // received data available (and character timeout)
const IER_THRE: u8 = 0x02; // transmitter holding register empty
const IER_RLS: u8 = 0x04; // receiver line status
const IER_MS: u8 = 0x08; // modem status
/// The 16550A implements only the low four IER bits; the rest read as zero,
/// which Linux relies on to tell it from UARTs with extra IER bits.
const IER_MASK: u8 = 0x0f;

// Interrupt identification register.
const IIR_NONE: u8 = 0x01;
const IIR_MS: u8 = 0x00;
const IIR_THRE: u8 = 0x02;
const IIR_RDA: u8 = 0x04;
const IIR_RLS: u8 = 0x06;
const IIR_CTI: u8 = 0x0c;
/// IIR bits 6-7, both set while the FIFOs are enabled.
const IIR_FIFO_ENABLED: u8 = 0xc0;

// FIFO control register.
const FCR_ENABLE: u8 = 0x01;
const FCR_CLEAR_RX: u8 = 0x02;
const FCR_DMA_MODE: u8 = 0x08;
const FCR_TRIGGER_MASK: u8 = 0xc0;

// Line control register.
const LCR_DLAB: u8 = 0x80;

// Modem control register.
const MCR_DTR: u8 = 0x01;
const MCR_RTS: u8 = 0x02;
const MCR_OUT1: u8 = 0x04;
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;
const MCR_MASK: u8 = 0x1f;

// Line status register.
const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;

// Modem status register: inputs in bits 4-7, their delta bits in 0-3.
const MSR_CTS: u8 = 0x10;
const MSR_DSR: u8 = 0x20;
const MSR_RI: u8 = 0x40;
const MSR_DCD: u8 = 0x80;
const MSR_DELTAS: u8 = 0x0f;

/// What the modem inputs read when not in loopback: the host end is a
/// null-modem peer that is always present and always ready to receive.
const MSR_HOST_INPUTS: u8 = MSR_CTS | MSR_DSR | MSR_DCD;

/// A monotonic clock: time since some fixed point.
pub type Clock = Box<dyn Fn() -> Duration + Send>;

/// The UART's input clock (1.8432 MHz / 16): the baud rate at divisor 1.
const BAUD_BASE: u64 = 115_200;

/// A 16550A UART; see the module documentation for what is modelled.
pub struct Serial {
    irq: Arc<dyn IrqLine>,
    /// The level last driven on `irq`, so the line is only touched on changes.
    irq_level: bool,
    out: Option<Box<dyn Write + Send>>,
    out_error_logged: bool,

    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    /// FIFO enable, DMA mode and trigger bits as last programmed (FCR is write-only).
    fcr: u8,
    /// Latched LSR error bits (only OE here); cleared by reading LSR.
    lsr_errors: u8,
    /// MSR: inputs in bits 4-7, delta bits in 0-3 (cleared by reading MSR).
    msr: u8,
    /// The THRE interrupt is armed; see [`Serial::read_iir`] for its life cycle.
    thr_ipending: bool,
    /// The last byte taken from the receiver: what RBR reads when nothing is left.
    last_rbr: u8,
    rx: VecDeque<u8>,
    /// Host input that has not fit into the RX FIFO yet.
    pending: VecDeque<u8>,
    /// When the character timeout falls due (FIFO mode, data in the receiver).
    rx_timeout_at: Option<Duration>,
    /// The character timeout fell due and no byte has come or gone since.
    timeout_pending: bool,
    /// An access armed a new timeout deadline the timer thread must learn of.
    rescheduled: bool,
    clock: Clock,

    bad_access: LogLimiter,
    dropped_input: LogLimiter,
}

impl Serial {
    /// Creates a UART in its power-on state, interrupting through `irq` and
    /// sending transmitted bytes to `out` (or discarding them if `None`).
    pub fn new(irq: Arc<dyn IrqLine>, out: Option<Box<dyn Write + Send>>) -> Self {
        Self {
            irq,
            irq_level: false,
            out,
            out_error_logged: false,
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            // 9600 baud, what a PC BIOS leaves behind; purely informational.
            dll: 0x0c,
            dlm: 0,
            fcr: 0,
            lsr_errors: 0,
            msr: MSR_HOST_INPUTS,
            thr_ipending: false,
            last_rbr: 0,
            rx: VecDeque::with_capacity(RX_FIFO_SIZE),
            pending: VecDeque::new(),
            rx_timeout_at: None,
            timeout_pending: false,
            rescheduled: false,
            clock: {
                let start = Instant::now();
                Box::new(move || start.elapsed())
            },
            bad_access: LogLimiter::new(),
            dropped_input: LogLimiter::new(),
        }
    }

    /// Reads time from `clock` instead of the host's monotonic clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Whether an access since the last call armed a timeout deadline that
    /// comes sooner than any before (clears the flag): the timer thread must
    /// re-read [`time_to_next_interrupt`](Self::time_to_next_interrupt).
    pub fn take_rescheduled(&mut self) -> bool {
        std::mem::take(&mut self.rescheduled)
    }

    /// How long until the character timeout interrupt is due, if one is
    /// armed and the guest enabled receive interrupts.
    pub fn time_to_next_interrupt(&self) -> Option<Duration> {
        let at = self.rx_timeout_at.filter(|_| self.ier & IER_RDA != 0)?;
        Some(at.saturating_sub((self.clock)()))
    }

    /// Called by the timer thread: raises the character timeout if it is due.
    pub fn poll_interrupt(&mut self) {
        if self.rx_timeout_at.is_some_and(|at| (self.clock)() >= at) {
            self.rx_timeout_at = None;
            self.timeout_pending = !self.rx.is_empty();
            self.update_irq();
        }
    }

    /// The time one character takes on the line at the programmed divisor and
    /// word format: start bit, 5-8 data bits, parity, 1 or 2 stop bits.
    fn char_time(&self) -> Duration {
        let divisor = u64::from(u16::from_le_bytes([self.dll, self.dlm])).max(1);
        let data_bits = 5 + u64::from(self.lcr & 0x03);
        let parity = u64::from(self.lcr & 0x08 != 0);
        let stop = if self.lcr & 0x04 != 0 { 2 } else { 1 };
        let bits = 1 + data_bits + parity + stop;
        Duration::from_nanos(bits * divisor * 1_000_000_000 / BAUD_BASE)
    }

    /// A byte came into or left the receiver: the character timeout starts
    /// over (FIFO mode with data left) or is off.
    fn restart_rx_timeout(&mut self) {
        self.timeout_pending = false;
        let was_armed = self.rx_timeout_at.is_some();
        self.rx_timeout_at =
            (self.fifo_enabled() && !self.rx.is_empty()).then(|| (self.clock)() + 4 * self.char_time());
        // A later deadline needs no kick: the thread wakes at the old one and
        // re-reads the new one.
        if !was_armed && self.rx_timeout_at.is_some() {
            self.rescheduled = true;
        }
    }

    /// Whether the character timeout is due (FIFO mode, data in the receiver).
    fn timeout_due(&self) -> bool {
        self.timeout_pending || self.rx_timeout_at.is_some_and(|at| (self.clock)() >= at)
    }

    /// Delivers bytes typed on the host to the guest.
    ///
    /// Bytes beyond [`MAX_PENDING_INPUT`] waiting bytes are dropped (and logged);
    /// everything else reaches the guest in order as it reads RBR. Raises the
    /// receive interrupt if the guest enabled it.
    pub fn queue_input(&mut self, bytes: &[u8]) {
        let room = MAX_PENDING_INPUT.saturating_sub(self.pending.len());
        let (accepted, dropped) = bytes.split_at(bytes.len().min(room));
        self.pending.extend(accepted);
        if !dropped.is_empty() {
            if let Some(n) = self.dropped_input.tick() {
                log::warn!("serial: guest is not reading its input, dropped {} bytes (overflow #{n})", dropped.len());
            }
        }
        self.fill_rx();
        self.update_irq();
    }

    /// How many host input bytes wait behind the RX FIFO; lets the VMM stop
    /// reading its input source while the guest is not consuming.
    pub fn pending_input(&self) -> usize {
        self.pending.len()
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn fifo_enabled(&self) -> bool {
        self.fcr & FCR_ENABLE != 0
    }

    /// How many bytes the receiver holds: 16 with FIFOs, else just RBR.
    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled() {
            RX_FIFO_SIZE
        } else {
            1
        }
    }

    fn rx_trigger(&self) -> usize {
        match self.fcr & FCR_TRIGGER_MASK {
            0x00 => 1,
            0x40 => 4,
            0x80 => 8,
            _ => 14,
        }
    }

    /// Moves waiting host input into the receiver as far as it has room.
    fn fill_rx(&mut self) {
        // In loopback the serial input pin is disconnected from the line;
        // host input waits until the guest leaves loopback.
        if self.loopback() {
            return;
        }
        let room = self.rx_capacity().saturating_sub(self.rx.len());
        let n = room.min(self.pending.len());
        self.rx.extend(self.pending.drain(..n));
        if n > 0 {
            self.restart_rx_timeout();
        }
    }

    /// The highest-priority pending, enabled interrupt as an IIR code (bits 0-3).
    fn interrupt_id(&self) -> u8 {
        if self.ier & IER_RLS != 0 && self.lsr_errors != 0 {
            IIR_RLS
        } else if self.ier & IER_RDA != 0 && !self.rx.is_empty() && self.fifo_enabled() && self.timeout_due() {
            // Checked before the trigger level, as QEMU does: data nobody
            // read for 4 character times is a timeout even above it.
            IIR_CTI
        } else if self.ier & IER_RDA != 0
            && !self.rx.is_empty()
            && (!self.fifo_enabled() || self.rx.len() >= self.rx_trigger())
        {
            IIR_RDA
        } else if self.ier & IER_THRE != 0 && self.thr_ipending {
            IIR_THRE
        } else if self.ier & IER_MS != 0 && self.msr & MSR_DELTAS != 0 {
            IIR_MS
        } else {
            IIR_NONE
        }
    }

    /// Drives the IRQ line to match the interrupt state, touching it only on
    /// changes.
    ///
    /// MCR OUT2 gates the interrupt output on a real PC (it enables the tri-state
    /// driver onto the ISA bus), but QEMU does not model that either, and firmware
    /// and test guests that forget OUT2 would simply get no interrupts.
    fn update_irq(&mut self) {
        let level = self.interrupt_id() != IIR_NONE;
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    fn lsr(&self) -> u8 {
        let dr = if self.rx.is_empty() { 0 } else { LSR_DR };
        // THR and the shift register are always empty: transmission is instant.
        dr | self.lsr_errors | LSR_THRE | LSR_TEMT
    }

    /// The modem input pins as the MSR sees them (bits 4-7).
    fn modem_inputs(&self) -> u8 {
        if self.loopback() {
            // Loopback wires RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD.
            let m = self.mcr;
            (if m & MCR_RTS != 0 { MSR_CTS } else { 0 })
                | (if m & MCR_DTR != 0 { MSR_DSR } else { 0 })
                | (if m & MCR_OUT1 != 0 { MSR_RI } else { 0 })
                | (if m & MCR_OUT2 != 0 { MSR_DCD } else { 0 })
        } else {
            MSR_HOST_INPUTS
        }
    }

    /// Takes the next received byte, as a guest read of RBR does.
    fn read_rbr(&mut self) -> u8 {
        if let Some(b) = self.rx.pop_front() {
            self.last_rbr = b;
            self.restart_rx_timeout();
        }
        self.fill_rx();
        self.update_irq();
        self.last_rbr
    }

    /// Reads IIR. Reporting THRE as the source is what acknowledges it (it
    /// comes back with the next THR write or ETBEI 0->1 transition), exactly as
    /// the datasheet's "reading IIR (if source of interrupt)" reset condition.
    fn read_iir(&mut self) -> u8 {
        let id = self.interrupt_id();
        if id == IIR_THRE {
            self.thr_ipending = false;
            self.update_irq();
        }
        let fifo_bits = if self.fifo_enabled() { IIR_FIFO_ENABLED } else { 0 };
        id | fifo_bits
    }

    fn read_lsr(&mut self) -> u8 {
        let v = self.lsr();
        if self.lsr_errors != 0 {
            self.lsr_errors = 0;
            self.update_irq();
        }
        v
    }

    fn read_msr(&mut self) -> u8 {
        let v = self.msr;
        if self.msr & MSR_DELTAS != 0 {
            self.msr &= !MSR_DELTAS;
            self.update_irq();
        }
        v
    }

    /// Puts a byte into the receiver from the loopback path, where (unlike
    /// host input) there is no flow control and the FIFO can overrun.
    fn receive_loopback(&mut self, b: u8) {
        if self.rx.len() < self.rx_capacity() {
            self.rx.push_back(b);
            self.restart_rx_timeout();
        } else {
            self.lsr_errors |= LSR_OE;
            if !self.fifo_enabled() {
                // Without FIFOs the new character overwrites RBR; with them it
                // is lost in the shift register.
                self.rx.clear();
                self.rx.push_back(b);
            }
        }
    }

    fn write_thr(&mut self, b: u8) {
        // Writing THR acknowledges a THRE interrupt. The byte leaves at once,
        // so THR is empty again and the interrupt re-arms: with the line
        // dropped in between, an edge-triggered PIC sees a fresh edge per byte.
        self.thr_ipending = false;
        self.update_irq();
        if self.loopback() {
            self.receive_loopback(b);
        } else {
            self.emit(b);
        }
        self.thr_ipending = true;
        self.update_irq();
    }

    /// Sends a byte to the host writer; failures are logged once and otherwise
    /// ignored, since a closed console must not stop the guest.
    fn emit(&mut self, b: u8) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        let res = out.write_all(&[b]).and_then(|()| out.flush());
        if let Err(e) = res {
            if !self.out_error_logged {
                self.out_error_logged = true;
                log::warn!("serial: writing guest output failed: {e}; further errors not logged");
            }
        }
    }

    fn write_ier(&mut self, v: u8) {
        let old = self.ier;
        self.ier = v & IER_MASK;
        // Enabling ETBEI while THR is empty raises THRE even if it was
        // acknowledged before (not in the datasheet, but real chips and QEMU do
        // it and Linux's THRE probe and Windows rely on it). Only on the 0->1
        // transition, as in QEMU and Bochs.
        if (old ^ self.ier) & IER_THRE != 0 {
            self.thr_ipending = self.ier & IER_THRE != 0;
        }
        // Enabling receive interrupts with a timeout armed gives the timer
        // thread a deadline to wait for.
        if old & IER_RDA == 0 && self.ier & IER_RDA != 0 && self.rx_timeout_at.is_some() {
            self.rescheduled = true;
        }
        self.update_irq();
    }

    fn write_fcr(&mut self, v: u8) {
        let enable = v & FCR_ENABLE != 0;
        if enable != self.fifo_enabled() {
            // Switching FIFO mode resets both FIFOs.
            self.rx.clear();
        }
        if enable {
            if v & FCR_CLEAR_RX != 0 {
                self.rx.clear();
            }
            // FCR_CLEAR_TX needs nothing: the TX FIFO is always empty.
            self.fcr = v & (FCR_ENABLE | FCR_DMA_MODE | FCR_TRIGGER_MASK);
        } else {
            // With FCR0 clear the other bits are not programmed.
            self.fcr = 0;
        }
        self.restart_rx_timeout();
        self.fill_rx();
        self.update_irq();
    }

    fn write_mcr(&mut self, v: u8) {
        let was_loopback = self.loopback();
        self.mcr = v & MCR_MASK;
        // The inputs follow MCR in loopback, but no delta bits are set and no
        // modem-status interrupt is raised for it: that is what QEMU and
        // rust-vmm's vm-superio do, so guests (and probes validated there)
        // read exactly the mirrored bits, e.g. 0x90 for Linux's MCR=0x1A
        // test. (The PC16550D would also flag the changes as deltas.) The
        // host-side inputs never change, so outside loopback there are no
        // deltas either.
        self.msr = self.modem_inputs() | (self.msr & MSR_DELTAS);
        if was_loopback && !self.loopback() {
            self.fill_rx();
        }
        self.update_irq();
    }

    fn read_reg(&mut self, offset: u64) -> Option<u8> {
        Some(match offset {
            REG_DATA if self.dlab() => self.dll,
            REG_DATA => self.read_rbr(),
            REG_IER if self.dlab() => self.dlm,
            REG_IER => self.ier,
            REG_IIR_FCR => self.read_iir(),
            REG_LCR => self.lcr,
            REG_MCR => self.mcr,
            REG_LSR => self.read_lsr(),
            REG_MSR => self.read_msr(),
            REG_SCR => self.scr,
            _ => return None,
        })
    }

    fn write_reg(&mut self, offset: u64, v: u8) -> bool {
        match offset {
            REG_DATA if self.dlab() => self.dll = v,
            REG_DATA => self.write_thr(v),
            REG_IER if self.dlab() => self.dlm = v,
            REG_IER => self.write_ier(v),
            REG_IIR_FCR => self.write_fcr(v),
            REG_LCR => self.lcr = v,
            REG_MCR => self.write_mcr(v),
            // LSR and MSR are read-only (LSR writes are a factory test mode).
            REG_LSR | REG_MSR => {
                log::debug!("serial: ignoring write {v:#04x} to read-only register {offset}");
            }
            REG_SCR => self.scr = v,
            _ => return false,
        }
        true
    }
}

impl BusDevice for Serial {
    /// Byte registers; a wider access reads consecutive registers.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytewise(offset, data, |reg| {
            self.read_reg(reg).unwrap_or_else(|| {
                if let Some(n) = self.bad_access.tick() {
                    log::warn!("serial: read of unknown register {reg:#x} (#{n})");
                }
                0xff
            })
        });
    }

    /// Byte registers; a wider access writes consecutive registers.
    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytewise(offset, data, |reg, v| {
            if !self.write_reg(reg, v) {
                if let Some(n) = self.bad_access.tick() {
                    log::warn!("serial: ignoring a write of {v:#04x} to unknown register {reg:#x} (#{n})");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::RecordingIrqLine;
    use std::sync::Mutex;

    /// A writer the test can look into after handing it to the UART.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl SharedBuf {
        fn contents(&self) -> Vec<u8> {
            self.0.lock().unwrap().clone()
        }
    }

    /// An IRQ line that records every call, to check calls happen only on changes.
    #[derive(Default)]
    struct CallLog(Mutex<Vec<bool>>);

    impl IrqLine for CallLog {
        fn set_level(&self, asserted: bool) {
            self.0.lock().unwrap().push(asserted);
        }
    }

    struct Harness {
        uart: Serial,
        irq: Arc<RecordingIrqLine>,
        out: SharedBuf,
        /// The UART's clock, in nanoseconds, moved by hand.
        now_ns: Arc<std::sync::atomic::AtomicU64>,
    }

    impl Harness {
        fn new() -> Self {
            let irq = Arc::new(RecordingIrqLine::default());
            let out = SharedBuf::default();
            let now_ns = Arc::new(std::sync::atomic::AtomicU64::new(1_000_000_000));
            let clock_ns = now_ns.clone();
            let uart = Serial::new(irq.clone(), Some(Box::new(out.clone())))
                .with_clock(Box::new(move || Duration::from_nanos(clock_ns.load(std::sync::atomic::Ordering::SeqCst))));
            Self { uart, irq, out, now_ns }
        }
        fn advance(&self, d: Duration) {
            self.now_ns.fetch_add(d.as_nanos() as u64, std::sync::atomic::Ordering::SeqCst);
        }
        fn rd(&mut self, off: u64) -> u8 {
            let mut b = [0u8];
            self.uart.read(off, &mut b);
            b[0]
        }
        fn wr(&mut self, off: u64, v: u8) {
            self.uart.write(off, &[v]);
        }
    }

    #[test]
    fn power_on_state() {
        let mut h = Harness::new();
        assert_eq!(h.rd(REG_IER), 0);
        assert_eq!(h.rd(REG_IIR_FCR), 0x01);
        assert_eq!(h.rd(REG_LCR), 0);
        assert_eq!(h.rd(REG_MCR), 0);
        assert_eq!(h.rd(REG_LSR), 0x60);
        assert_eq!(h.rd(REG_MSR), 0xb0);
        assert!(!h.irq.level());
    }

    /// Linux 8250 `autoconfig()`: IER scratch test, loopback test, FIFO probe.
    #[test]
    fn linux_autoconfig_sequence() {
        let mut h = Harness::new();
        // IER scratch test.
        let saved = h.rd(REG_IER);
        h.wr(REG_IER, 0);
        assert_eq!(h.rd(REG_IER) & 0x0f, 0);
        h.wr(REG_IER, 0x0f);
        assert_eq!(h.rd(REG_IER) & 0x0f, 0x0f);
        h.wr(REG_IER, saved);
        // Xscale UUE probe: IER bit 6 must not stick on a 16550A.
        h.wr(REG_IER, 0x40);
        assert_eq!(h.rd(REG_IER), 0);

        // Loopback test: LOOP | OUT2 | RTS must read back as DCD | CTS.
        let save_mcr = h.rd(REG_MCR);
        h.wr(REG_MCR, MCR_LOOP | 0x0a);
        assert_eq!(h.rd(REG_MSR) & 0xf0, 0x90);
        h.wr(REG_MCR, save_mcr);
        assert_eq!(h.rd(REG_MSR) & 0xf0, 0xb0);

        // Scratch register.
        for v in [0x55, 0xaa, 0x00] {
            h.wr(REG_SCR, v);
            assert_eq!(h.rd(REG_SCR), v);
        }

        // FIFO detection: IIR bits 6-7 = 3 means 16550A.
        h.wr(REG_IIR_FCR, 0x07);
        assert_eq!(h.rd(REG_IIR_FCR) >> 6, 3);
        // Not a 16750: IIR bit 5 (64-byte FIFO) stays clear even when asked for.
        h.wr(REG_LCR, 0x80);
        h.wr(REG_IIR_FCR, 0x21);
        assert_eq!(h.rd(REG_IIR_FCR) >> 5, 6);
        h.wr(REG_LCR, 0);
        h.wr(REG_IIR_FCR, 0);
        assert_eq!(h.rd(REG_IIR_FCR) >> 6, 0);
        // Linux's startup sanity check.
        assert_ne!(h.rd(REG_LSR), 0xff);
    }

    #[test]
    fn divisor_latch_access() {
        let mut h = Harness::new();
        h.wr(REG_IER, 0x05);
        h.wr(REG_LCR, 0x80 | 0x03);
        h.wr(REG_DATA, 0x01);
        h.wr(REG_IER, 0x02);
        assert_eq!(h.rd(REG_DATA), 0x01);
        assert_eq!(h.rd(REG_IER), 0x02);
        assert_eq!(h.rd(REG_LCR), 0x83);
        // Nothing was transmitted while DLAB was set.
        assert!(h.out.contents().is_empty());
        h.wr(REG_LCR, 0x03);
        assert_eq!(h.rd(REG_IER), 0x05, "IER untouched by DLM writes");
        h.wr(REG_DATA, b'x');
        assert_eq!(h.out.contents(), b"x");
        h.wr(REG_LCR, 0x83);
        assert_eq!((h.rd(REG_DATA), h.rd(REG_IER)), (0x01, 0x02));
    }

    #[test]
    fn output_goes_to_writer_unless_loopback() {
        let mut h = Harness::new();
        for &b in b"hi\n" {
            h.wr(REG_DATA, b);
        }
        h.wr(REG_MCR, MCR_LOOP);
        h.wr(REG_DATA, b'!');
        h.wr(REG_MCR, 0);
        assert_eq!(h.out.contents(), b"hi\n");
        assert_eq!(h.rd(REG_LSR) & LSR_DR, LSR_DR);
        assert_eq!(h.rd(REG_DATA), b'!');
    }

    #[test]
    fn write_errors_are_not_fatal() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("gone"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut uart = Serial::new(Arc::new(RecordingIrqLine::default()), Some(Box::new(Broken)));
        for _ in 0..3 {
            uart.write(REG_DATA, b"a");
        }
        assert!(uart.out_error_logged);
        let mut lsr = [0];
        uart.read(REG_LSR, &mut lsr);
        assert_eq!(lsr[0], 0x60);
        // No writer at all is fine too.
        let mut quiet = Serial::new(Arc::new(RecordingIrqLine::default()), None);
        quiet.write(REG_DATA, b"a");
    }

    #[test]
    fn rx_fifo_fill_and_overrun() {
        let mut h = Harness::new();
        h.wr(REG_IIR_FCR, 0x07);
        h.wr(REG_MCR, MCR_LOOP);
        for b in 0..17u8 {
            h.wr(REG_DATA, b);
        }
        assert_eq!(h.rd(REG_LSR), LSR_DR | LSR_OE | LSR_THRE | LSR_TEMT);
        // Reading LSR cleared OE.
        assert_eq!(h.rd(REG_LSR) & LSR_OE, 0);
        let got: Vec<u8> = (0..16).map(|_| h.rd(REG_DATA)).collect();
        assert_eq!(got, (0..16).collect::<Vec<u8>>(), "17th byte lost");
        assert_eq!(h.rd(REG_LSR) & LSR_DR, 0);
    }

    #[test]
    fn overrun_without_fifo_overwrites_rbr() {
        let mut h = Harness::new();
        h.wr(REG_MCR, MCR_LOOP);
        h.wr(REG_DATA, 1);
        h.wr(REG_DATA, 2);
        assert_eq!(h.rd(REG_LSR) & (LSR_DR | LSR_OE), LSR_DR | LSR_OE);
        assert_eq!(h.rd(REG_DATA), 2);
        assert_eq!(h.rd(REG_LSR) & LSR_DR, 0);
        // An empty RBR reads the last character again.
        assert_eq!(h.rd(REG_DATA), 2);
    }

    #[test]
    fn receiver_line_status_interrupt_has_priority() {
        let mut h = Harness::new();
        h.wr(REG_IIR_FCR, 0x01); // FIFO on, trigger 1
        h.wr(REG_MCR, MCR_LOOP);
        h.wr(REG_IER, IER_RDA | IER_THRE | IER_RLS | IER_MS);
        // THRE raised by enabling ETBEI.
        h.wr(REG_MCR, MCR_LOOP | MCR_DTR);
        assert_eq!(h.rd(REG_IIR_FCR), 0xc2);
        // THRE acknowledged by that read.
        assert_eq!(h.rd(REG_IIR_FCR), 0xc1);
        for b in 0..17u8 {
            h.wr(REG_DATA, b);
        }
        assert_eq!(h.rd(REG_IIR_FCR), 0xc6, "line status beats data");
        h.rd(REG_LSR);
        assert_eq!(h.rd(REG_IIR_FCR), 0xc4, "data beats THRE");
        for _ in 0..16 {
            h.rd(REG_DATA);
        }
        assert_eq!(h.rd(REG_IIR_FCR), 0xc2, "THR writes re-armed THRE");
        assert_eq!(h.rd(REG_IIR_FCR), 0xc1);
        assert!(!h.irq.level());
    }

    #[test]
    fn trigger_level_and_character_timeout() {
        let mut h = Harness::new();
        // 115200 baud, 8N1: a character takes 86.8 us, the timeout 4 of them.
        h.wr(REG_LCR, LCR_DLAB | 0x03);
        h.wr(REG_DATA, 1);
        h.wr(REG_IER, 0);
        h.wr(REG_LCR, 0x03);
        let timeout = 4 * Duration::from_nanos(10 * 1_000_000_000 / 115_200);
        h.wr(REG_IIR_FCR, 0x81); // FIFO on, trigger 8
        h.wr(REG_IER, IER_RDA);
        assert!(!h.irq.level());
        h.uart.queue_input(b"abc");
        assert!(h.uart.take_rescheduled(), "the timer thread must learn of the deadline");
        assert_eq!(h.uart.time_to_next_interrupt(), Some(timeout));
        assert_eq!(h.rd(REG_IIR_FCR), 0xc1, "below trigger: nothing yet");
        assert!(!h.irq.level());
        h.advance(timeout - Duration::from_nanos(1));
        h.uart.poll_interrupt();
        assert!(!h.irq.level(), "not before 4 character times");
        h.advance(Duration::from_nanos(1));
        h.uart.poll_interrupt();
        assert!(h.irq.level(), "the timer thread raises the timeout");
        assert_eq!(h.rd(REG_IIR_FCR), 0xcc, "character timeout");
        // More data, reaching the trigger: data available, and the timeout starts over.
        h.uart.queue_input(b"defgh");
        assert_eq!(h.rd(REG_IIR_FCR), 0xc4, "at trigger: data available");
        assert_eq!(h.rd(REG_DATA), b'a');
        assert_eq!(h.rd(REG_IIR_FCR), 0xc1, "a read restarts the timeout");
        assert!(!h.irq.level());
        // A register read after the deadline sees the timeout without the thread.
        h.advance(timeout);
        assert_eq!(h.rd(REG_IIR_FCR), 0xcc);
        for _ in 0..7 {
            h.rd(REG_DATA);
        }
        assert_eq!(h.rd(REG_IIR_FCR), 0xc1);
        assert!(!h.irq.level());
        assert_eq!(h.uart.time_to_next_interrupt(), None, "nothing left to time out");
        // Each trigger level.
        for (fcr, trigger) in [(0x01u8, 1usize), (0x41, 4), (0x81, 8), (0xc1, 14)] {
            h.wr(REG_IIR_FCR, fcr | FCR_CLEAR_RX);
            h.uart.queue_input(&vec![b'z'; trigger - 1]);
            if trigger > 1 {
                assert_eq!(h.rd(REG_IIR_FCR), 0xc1, "trigger {trigger}");
                h.advance(timeout);
                assert_eq!(h.rd(REG_IIR_FCR), 0xcc, "trigger {trigger}");
            }
            h.uart.queue_input(b"z");
            assert_eq!(h.rd(REG_IIR_FCR), 0xc4, "trigger {trigger}");
        }
        // Without FIFOs there is no timeout, only data available.
        h.wr(REG_IIR_FCR, 0);
        h.uart.queue_input(b"q");
        assert_eq!(h.rd(REG_IIR_FCR), 0x04);
    }

    #[test]
    fn fcr_clears_and_mode_switch() {
        let mut h = Harness::new();
        h.wr(REG_IIR_FCR, 0x01);
        h.wr(REG_MCR, MCR_LOOP);
        h.wr(REG_DATA, 1);
        h.wr(REG_DATA, 2);
        h.wr(REG_IIR_FCR, 0x01 | FCR_CLEAR_RX);
        assert_eq!(h.rd(REG_LSR) & LSR_DR, 0);
        h.wr(REG_DATA, 3);
        h.wr(REG_IIR_FCR, 0x00); // disabling FIFOs flushes them
        assert_eq!(h.rd(REG_LSR) & LSR_DR, 0);
        h.wr(REG_DATA, 4);
        h.wr(REG_IIR_FCR, 0x01); // and so does enabling them
        assert_eq!(h.rd(REG_LSR) & LSR_DR, 0);
    }

    #[test]
    fn thre_interrupt_raise_and_clear() {
        let mut h = Harness::new();
        assert_eq!(h.irq.rising_edges(), 0);
        h.wr(REG_IER, IER_THRE);
        assert!(h.irq.level(), "enabling ETBEI with THR empty raises THRE");
        assert_eq!(h.irq.rising_edges(), 1);
        assert_eq!(h.rd(REG_IIR_FCR), 0x02);
        assert!(!h.irq.level(), "reading IIR with THRE as source clears it");
        assert_eq!(h.rd(REG_IIR_FCR), 0x01);
        h.wr(REG_DATA, b'a');
        assert!(h.irq.level(), "THR write re-raises THRE");
        assert_eq!(h.irq.rising_edges(), 2);
        h.wr(REG_DATA, b'b');
        assert_eq!(h.irq.rising_edges(), 3, "each byte is a fresh edge");
        // Rewriting IER with ETBEI still set does not re-arm an acknowledged THRE.
        assert_eq!(h.rd(REG_IIR_FCR), 0x02);
        h.wr(REG_IER, IER_THRE);
        assert!(!h.irq.level());
        // Toggling ETBEI does (Linux's THRE test and Windows depend on this).
        h.wr(REG_IER, 0);
        h.wr(REG_IER, IER_THRE);
        assert!(h.irq.level());
        assert_eq!(h.rd(REG_IIR_FCR), 0x02);
        // Disabling ETBEI drops the line.
        h.wr(REG_IER, IER_THRE);
        h.wr(REG_DATA, b'c');
        assert!(h.irq.level());
        h.wr(REG_IER, 0);
        assert!(!h.irq.level());
        assert_eq!(h.out.contents(), b"abc");
    }

    #[test]
    fn loopback_mirrors_mcr_into_msr_without_deltas() {
        let mut h = Harness::new();
        h.wr(REG_IER, IER_MS);
        // Linux's autoconfig loopback test reads exactly 0x90 (as on QEMU).
        h.wr(REG_MCR, MCR_LOOP | MCR_RTS | MCR_OUT2);
        assert_eq!(h.rd(REG_MSR), 0x90);
        h.wr(REG_MCR, MCR_LOOP | MCR_RTS | MCR_DTR | MCR_OUT1 | MCR_OUT2);
        assert_eq!(h.rd(REG_MSR), 0xf0);
        h.wr(REG_MCR, MCR_LOOP);
        assert_eq!(h.rd(REG_MSR), 0x00);
        assert!(!h.irq.level(), "no modem-status interrupt for loopback changes");
        assert_eq!(h.rd(REG_IIR_FCR), 0x01);
        // Back to the host's inputs.
        h.wr(REG_MCR, 0);
        assert_eq!(h.rd(REG_MSR), 0xb0);
    }

    #[test]
    fn queue_input_of_100_bytes_drains_completely() {
        for fcr in [0x00u8, 0xc7] {
            let mut h = Harness::new();
            h.wr(REG_IIR_FCR, fcr);
            h.wr(REG_IER, IER_RDA);
            let input: Vec<u8> = (0..100u8).collect();
            h.uart.queue_input(&input);
            assert!(h.irq.level());
            let mut got = Vec::new();
            while h.rd(REG_LSR) & LSR_DR != 0 {
                got.push(h.rd(REG_DATA));
                assert!(got.len() <= 100);
            }
            assert_eq!(got, input, "fcr {fcr:#x}");
            assert!(!h.irq.level());
            assert_eq!(h.uart.pending_input(), 0);
        }
    }

    #[test]
    fn host_input_waits_during_loopback() {
        let mut h = Harness::new();
        h.wr(REG_MCR, MCR_LOOP);
        h.uart.queue_input(b"k");
        assert_eq!(h.rd(REG_LSR) & LSR_DR, 0);
        h.wr(REG_MCR, 0);
        assert_eq!(h.rd(REG_DATA), b'k');
    }

    #[test]
    fn pending_input_is_capped() {
        let mut h = Harness::new();
        h.uart.queue_input(&vec![b'a'; MAX_PENDING_INPUT + 100]);
        // One byte went into RBR, the rest wait, the excess was dropped.
        assert_eq!(h.uart.pending_input(), MAX_PENDING_INPUT - 1);
        h.uart.queue_input(b"bc");
        assert_eq!(h.uart.pending_input(), MAX_PENDING_INPUT);
        h.rd(REG_DATA);
        h.uart.queue_input(b"d");
        assert_eq!(h.uart.pending_input(), MAX_PENDING_INPUT);
    }

    #[test]
    fn irq_line_only_touched_on_changes() {
        let log = Arc::new(CallLog::default());
        let mut uart = Serial::new(log.clone(), None);
        uart.write(REG_IER, &[IER_RDA | IER_THRE]);
        for _ in 0..5 {
            uart.write(REG_DATA, b"x");
            uart.queue_input(b"yy");
            let mut b = [0];
            uart.read(REG_IIR_FCR, &mut b);
            uart.read(REG_DATA, &mut b);
            uart.read(REG_DATA, &mut b);
            uart.read(REG_IIR_FCR, &mut b);
        }
        uart.write(REG_IER, &[0]);
        let calls = log.0.lock().unwrap().clone();
        assert!(!calls.is_empty());
        assert!(calls[0], "first call raises");
        assert!(calls.windows(2).all(|w| w[0] != w[1]), "{calls:?}");
        assert_eq!(calls.last(), Some(&false));
    }

    #[test]
    fn bad_offsets_and_widths() {
        let mut h = Harness::new();
        h.uart.queue_input(b"z");
        h.wr(REG_SCR, 0x5a);
        for off in [8u64, 9, 0x100, u64::MAX] {
            assert_eq!(h.rd(off), 0xff);
            h.wr(off, 0x00);
        }
        for width in [0usize, 2, 3, 4, 8, 16] {
            for off in [8u64, u64::MAX - 1] {
                let mut buf = vec![0u8; width];
                h.uart.read(off, &mut buf);
                assert!(buf.iter().take(1).all(|&b| b == 0xff));
                h.uart.write(off, &buf);
            }
        }
        // Accesses outside the registers neither consumed input nor changed registers.
        assert_eq!(h.rd(REG_SCR), 0x5a);
        assert_eq!(h.rd(REG_IER), 0);
        assert_eq!(h.rd(REG_DATA), b'z');
        // Writes to read-only registers are ignored.
        h.wr(REG_LSR, 0x00);
        h.wr(REG_MSR, 0x00);
        assert_eq!(h.rd(REG_LSR), 0x60);
        assert_eq!(h.rd(REG_MSR), 0xb0);
        assert!(h.out.contents().is_empty());
    }

    #[test]
    fn wide_accesses_are_byte_accesses_at_consecutive_registers() {
        let mut h = Harness::new();
        // inw at LSR: LSR, then MSR (QEMU splits the same way).
        let mut w = [0u8; 2];
        h.uart.read(REG_LSR, &mut w);
        assert_eq!(w, [0x60, 0xb0]);
        // outw at LCR: LCR, then MCR.
        h.uart.write(REG_LCR, &[0x03, 0x0b]);
        assert_eq!((h.rd(REG_LCR), h.rd(REG_MCR)), (0x03, 0x0b));
        // outl at IER with DLAB clear: IER, FCR, LCR, MCR.
        h.uart.write(REG_IER, &[0x01, 0x00, 0x03, 0x08]);
        assert_eq!((h.rd(REG_IER), h.rd(REG_LCR), h.rd(REG_MCR)), (0x01, 0x03, 0x08));
    }

    #[test]
    fn random_accesses_never_panic() {
        let mut h = Harness::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            // xorshift: a deterministic stream of guest accesses.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = x % 9;
            let v = (x >> 8) as u8;
            match (x >> 16) % 5 {
                0 => h.uart.queue_input(&[v; 3]),
                1 | 2 => h.wr(off, v),
                _ => {
                    h.rd(off);
                }
            }
            // The line always matches what IIR would report.
            assert_eq!(h.irq.level(), h.uart.interrupt_id() != IIR_NONE);
        }
    }

    #[test]
    fn com_port_constants() {
        assert_eq!(COM1, (0x3f8, 4));
        assert_eq!(COM2, (0x2f8, 3));
        assert_eq!(COM3, (0x3e8, 4));
        assert_eq!(COM4, (0x2e8, 3));
    }
}
