//! The i8042 PS/2 keyboard controller, with an AT keyboard behind it.
//!
//! rvmm has no real keyboard (the console is the serial port), but the i8042 is
//! still where PC guests go to reset the machine (command 0xFE, or the output
//! port's reset line), and Linux's `i8042` and `atkbd` drivers probe it at boot.
//! The model answers those probes like a controller with a keyboard that never
//! has a key pressed, so the drivers settle quickly instead of timing out.
//!
//! Ports, relative to 0x60: offset 0 is the data port (0x60), offset 4 the
//! status (read) / command (write) port (0x64). Port 0x61 (system control port
//! B) is not part of this device.
//!
//! The aux (mouse) channel exists as far as the controller goes: 0xA7/0xA8/0xA9
//! and the 0xD3 loopback work, so Linux finds an aux port. No mouse is attached:
//! bytes sent to it with 0xD4 are answered with 0xFE and the status timeout bit,
//! which Linux's psmouse treats as "no device". Linux tests aux interrupt
//! delivery and waits up to 250 ms for IRQ 12 if it is not wired (see
//! [`I8042::with_aux_irq`]); `i8042.noaux` on the kernel command line skips all
//! of this.
//!
//! Not modelled: A20 gating (KVM guests always see all memory), the keyboard
//! controller's internal RAM beyond storing bytes, password and multiplexing
//! commands, and parity errors.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::bus::{BusDevice, GuestEvent, GuestEventSink, IrqLine};
use crate::ratelimit::LogLimiter;

/// The conventional base I/O port; the device also decodes base + 4 (0x64).
pub const I8042_DATA_PORT: u16 = 0x60;
/// The status/command port, at offset 4 from [`I8042_DATA_PORT`].
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// ISA IRQ of the keyboard channel.
pub const I8042_KBD_IRQ: u8 = 1;
/// ISA IRQ of the aux (mouse) channel.
pub const I8042_AUX_IRQ: u8 = 12;

const OFFSET_DATA: u64 = 0;
const OFFSET_COMMAND: u64 = 4;

// Status register.
const STATUS_OBF: u8 = 0x01; // output buffer full
const STATUS_SYS: u8 = 0x04; // system flag (POST passed)
const STATUS_CMD: u8 = 0x08; // last write went to the command port
const STATUS_UNLOCKED: u8 = 0x10; // keyboard not inhibited by the key lock
const STATUS_AUX_OBF: u8 = 0x20; // output buffer holds aux data
const STATUS_TIMEOUT: u8 = 0x40;

// Controller command byte ("CTR" in Linux).
const CTR_KBD_INT: u8 = 0x01;
const CTR_AUX_INT: u8 = 0x02;
const CTR_SYS: u8 = 0x04;
const CTR_KBD_DISABLE: u8 = 0x10;
const CTR_AUX_DISABLE: u8 = 0x20;
const CTR_TRANSLATE: u8 = 0x40;
/// What a PC BIOS leaves: translation on, system flag set, keyboard
/// interrupt enabled, both channels enabled.
const CTR_DEFAULT: u8 = CTR_TRANSLATE | CTR_SYS | CTR_KBD_INT;

// Output port.
const OUTPORT_RESET: u8 = 0x01; // active low: 0 holds the CPU in reset
const OUTPORT_A20: u8 = 0x02;
const OUTPORT_KBD_OBF: u8 = 0x10;
const OUTPORT_AUX_OBF: u8 = 0x20;
/// Power-on value: reset line released, A20 enabled, keyboard clock/data high.
const OUTPORT_DEFAULT: u8 = 0xcc | OUTPORT_A20 | OUTPORT_RESET;

// Controller commands (written to port 0x64).
const CMD_READ_RAM: u8 = 0x20; // 0x20-0x3f; 0x20 reads the command byte
const CMD_WRITE_RAM: u8 = 0x60; // 0x60-0x7f; 0x60 writes the command byte
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_INPORT: u8 = 0xc0;
const CMD_READ_OUTPORT: u8 = 0xd0;
const CMD_WRITE_OUTPORT: u8 = 0xd1;
const CMD_WRITE_KBD_OBUF: u8 = 0xd2;
const CMD_WRITE_AUX_OBUF: u8 = 0xd3; // "aux loopback" in Linux
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_READ_TEST_INPUTS: u8 = 0xe0;
const CMD_PULSE_FIRST: u8 = 0xf0; // 0xf0-0xff pulse output port bits 0-3

const SELF_TEST_OK: u8 = 0x55;
const INTERFACE_TEST_OK: u8 = 0x00;

// Keyboard commands and replies.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCANCODE_SET: u8 = 0xf0;
const KBD_GET_ID: u8 = 0xf2;
const KBD_SET_TYPEMATIC: u8 = 0xf3;
const KBD_ENABLE: u8 = 0xf4;
const KBD_DISABLE: u8 = 0xf5;
const KBD_SET_DEFAULTS: u8 = 0xf6;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_BAT_OK: u8 = 0xaa;
const KBD_ID_FIRST: u8 = 0xab;
/// Second ID byte of an MF2 keyboard, raw and as the 8042 translates it.
const KBD_ID_SECOND_RAW: u8 = 0x83;
const KBD_ID_SECOND_TRANSLATED: u8 = 0x41;
const AUX_NO_DEVICE: u8 = 0xfe;

/// Bytes a queue holds before more are dropped: far beyond any command reply,
/// only reachable by a host flooding [`I8042::queue_keyboard_bytes`].
const MAX_QUEUED: usize = 256;

/// One byte on its way to the guest through the output buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OutByte {
    value: u8,
    /// From the aux channel: sets STATUS_AUX_OBF and uses IRQ 12.
    aux: bool,
    /// Sets STATUS_TIMEOUT (the device did not answer).
    timeout: bool,
}

impl OutByte {
    fn kbd(value: u8) -> Self {
        Self { value, aux: false, timeout: false }
    }
    fn aux(value: u8) -> Self {
        Self { value, aux: true, timeout: false }
    }
}

/// The AT keyboard's own state (as opposed to the controller's).
#[derive(Debug)]
struct Keyboard {
    /// A command that takes a parameter byte and is waiting for it.
    awaiting_param: Option<u8>,
    scanning: bool,
    scancode_set: u8,
    leds: u8,
    typematic: u8,
}

impl Keyboard {
    fn new() -> Self {
        Self { awaiting_param: None, scanning: true, scancode_set: 2, leds: 0, typematic: 0x2b }
    }

    fn set_defaults(&mut self) {
        self.scancode_set = 2;
        self.typematic = 0x2b;
    }

    /// Handles one byte the guest sent to the keyboard, appending the
    /// keyboard's replies to `reply`.
    fn write(&mut self, v: u8, translate: bool, reply: &mut Vec<u8>) {
        if let Some(cmd) = self.awaiting_param.take() {
            match cmd {
                KBD_SET_LEDS => self.leds = v & 0x07,
                KBD_SET_TYPEMATIC => self.typematic = v & 0x7f,
                KBD_SCANCODE_SET => {
                    if v == 0 {
                        reply.push(KBD_ACK);
                        // Reports the set number, itself run through the
                        // 8042's translation table when that is on.
                        let set = self.scancode_set;
                        reply.push(match (translate, set) {
                            (false, s) => s,
                            (true, 1) => 0x43,
                            (true, 3) => 0x3f,
                            (true, _) => 0x41,
                        });
                        return;
                    }
                    if (1..=3).contains(&v) {
                        self.scancode_set = v;
                    }
                }
                _ => {}
            }
            reply.push(KBD_ACK);
            return;
        }
        match v {
            KBD_SET_LEDS | KBD_SET_TYPEMATIC | KBD_SCANCODE_SET => {
                self.awaiting_param = Some(v);
                reply.push(KBD_ACK);
            }
            KBD_ECHO => reply.push(KBD_ECHO),
            KBD_GET_ID => {
                let second = if translate { KBD_ID_SECOND_TRANSLATED } else { KBD_ID_SECOND_RAW };
                reply.extend_from_slice(&[KBD_ACK, KBD_ID_FIRST, second]);
            }
            KBD_ENABLE => {
                self.scanning = true;
                reply.push(KBD_ACK);
            }
            KBD_DISABLE => {
                self.scanning = false;
                self.set_defaults();
                reply.push(KBD_ACK);
            }
            KBD_SET_DEFAULTS => {
                self.set_defaults();
                reply.push(KBD_ACK);
            }
            KBD_RESET => {
                *self = Self::new();
                reply.extend_from_slice(&[KBD_ACK, KBD_BAT_OK]);
            }
            // Resend, typematic/make/break mode commands and anything unknown:
            // acknowledge, which keeps drivers moving.
            _ => reply.push(KBD_ACK),
        }
    }
}

/// An i8042 keyboard controller with a key-less AT keyboard attached.
pub struct I8042 {
    events: GuestEventSink,
    kbd_irq: Option<Arc<dyn IrqLine>>,
    aux_irq: Option<Arc<dyn IrqLine>>,
    kbd_irq_level: bool,
    aux_irq_level: bool,

    /// Controller RAM; byte 0 is the command byte.
    ram: [u8; 32],
    sys_flag: bool,
    last_write_was_command: bool,
    output_port: u8,
    /// A controller command waiting for its parameter on the data port.
    awaiting_param: Option<u8>,

    /// The one-byte output buffer the guest reads at port 0x60.
    obuf: Option<OutByte>,
    /// The byte last read from port 0x60: reading with the buffer empty
    /// returns it again, as the chip's data register still holds it.
    last_data: u8,
    /// Controller replies (and 0xD2/0xD3 bytes), which go first.
    ctrl_queue: VecDeque<OutByte>,
    /// Bytes from the keyboard, held while the keyboard channel is disabled.
    kbd_queue: VecDeque<u8>,
    /// Bytes from the aux channel, held while it is disabled.
    aux_queue: VecDeque<OutByte>,

    keyboard: Keyboard,

    bad_access: LogLimiter,
    unknown_command: LogLimiter,
    dropped: LogLimiter,
}

impl I8042 {
    /// Creates a controller in the state a BIOS leaves it, sending reset
    /// requests to `events` and, if given, driving IRQ 1 through `kbd_irq`
    /// while the command byte enables the keyboard interrupt.
    pub fn new(events: GuestEventSink, kbd_irq: Option<Arc<dyn IrqLine>>) -> Self {
        let mut ram = [0u8; 32];
        ram[0] = CTR_DEFAULT;
        Self {
            events,
            kbd_irq,
            aux_irq: None,
            kbd_irq_level: false,
            aux_irq_level: false,
            ram,
            sys_flag: true,
            last_write_was_command: false,
            output_port: OUTPORT_DEFAULT,
            awaiting_param: None,
            obuf: None,
            last_data: 0,
            ctrl_queue: VecDeque::new(),
            kbd_queue: VecDeque::new(),
            aux_queue: VecDeque::new(),
            keyboard: Keyboard::new(),
            bad_access: LogLimiter::new(),
            unknown_command: LogLimiter::new(),
            dropped: LogLimiter::new(),
        }
    }

    /// Also drives IRQ 12 for the aux channel, which lets Linux's aux IRQ
    /// test pass at once instead of waiting for it to time out.
    pub fn with_aux_irq(mut self, aux_irq: Arc<dyn IrqLine>) -> Self {
        self.aux_irq = Some(aux_irq);
        self
    }

    /// Delivers raw bytes as if the keyboard had sent them (scan codes in
    /// whatever set the guest selected); dropped while the guest has disabled
    /// scanning, as a real keyboard would not send them.
    pub fn queue_keyboard_bytes(&mut self, bytes: &[u8]) {
        if !self.keyboard.scanning {
            return;
        }
        for &b in bytes {
            self.push_kbd(b);
        }
        self.refill();
    }

    fn ctr(&self) -> u8 {
        self.ram[0]
    }

    fn set_ctr(&mut self, v: u8) {
        self.ram[0] = v;
        // The command byte's system flag is copied to the status register.
        self.sys_flag = v & CTR_SYS != 0;
    }

    fn push_ctrl(&mut self, b: OutByte) {
        if self.ctrl_queue.len() < MAX_QUEUED {
            self.ctrl_queue.push_back(b);
        } else {
            self.log_drop();
        }
    }

    fn push_kbd(&mut self, b: u8) {
        if self.kbd_queue.len() < MAX_QUEUED {
            self.kbd_queue.push_back(b);
        } else {
            self.log_drop();
        }
    }

    fn log_drop(&mut self) {
        if let Some(n) = self.dropped.tick() {
            log::warn!("i8042: guest is not reading port 0x60, dropping output (#{n})");
        }
    }

    /// Loads the output buffer if it is empty, then updates the IRQ lines.
    fn refill(&mut self) {
        if self.obuf.is_none() {
            let ctr = self.ctr();
            self.obuf = self.ctrl_queue.pop_front();
            if self.obuf.is_none() && ctr & CTR_KBD_DISABLE == 0 {
                self.obuf = self.kbd_queue.pop_front().map(OutByte::kbd);
            }
            if self.obuf.is_none() && ctr & CTR_AUX_DISABLE == 0 {
                self.obuf = self.aux_queue.pop_front();
            }
        }
        self.update_irqs();
    }

    /// Drives IRQ 1 / IRQ 12 from the output buffer, as the 8042 ties them to
    /// "output buffer full" gated by the command byte's interrupt enables.
    fn update_irqs(&mut self) {
        let ctr = self.ctr();
        let (kbd, aux) = match self.obuf {
            Some(b) if b.aux => (false, ctr & CTR_AUX_INT != 0),
            // Like QEMU, a disabled keyboard channel also masks IRQ 1.
            Some(_) => (ctr & CTR_KBD_INT != 0 && ctr & CTR_KBD_DISABLE == 0, false),
            None => (false, false),
        };
        if kbd != self.kbd_irq_level {
            self.kbd_irq_level = kbd;
            if let Some(irq) = &self.kbd_irq {
                irq.set_level(kbd);
            }
        }
        if aux != self.aux_irq_level {
            self.aux_irq_level = aux;
            if let Some(irq) = &self.aux_irq {
                irq.set_level(aux);
            }
        }
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_UNLOCKED;
        if self.sys_flag {
            s |= STATUS_SYS;
        }
        if self.last_write_was_command {
            s |= STATUS_CMD;
        }
        if let Some(b) = self.obuf {
            s |= STATUS_OBF;
            if b.aux {
                s |= STATUS_AUX_OBF;
            }
            if b.timeout {
                s |= STATUS_TIMEOUT;
            }
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        // Reading an empty buffer returns the last byte again (the chip's
        // data register, and QEMU, keep it).
        let v = match self.obuf.take() {
            Some(b) => {
                self.last_data = b.value;
                b.value
            }
            None => self.last_data,
        };
        // Drop the IRQ before loading the next byte so that every byte is a
        // fresh edge for an edge-triggered PIC, as with the real chip's gap.
        self.update_irqs();
        self.refill();
        v
    }

    fn output_port_value(&self) -> u8 {
        let mut v = self.output_port & !(OUTPORT_KBD_OBF | OUTPORT_AUX_OBF);
        match self.obuf {
            Some(b) if b.aux => v |= OUTPORT_AUX_OBF,
            Some(_) => v |= OUTPORT_KBD_OBF,
            None => {}
        }
        v
    }

    fn request_reset(&self, why: &str) {
        log::info!("i8042: guest requested a system reset ({why})");
        (self.events)(GuestEvent::Reset);
    }

    fn write_command(&mut self, cmd: u8) {
        self.last_write_was_command = true;
        // A new command abandons one still waiting for its parameter.
        self.awaiting_param = None;
        match cmd {
            0x20..=0x3f => {
                let v = self.ram.get(usize::from(cmd - CMD_READ_RAM)).copied();
                self.push_ctrl(OutByte::kbd(v.unwrap_or(0)));
            }
            0x60..=0x7f | CMD_WRITE_OUTPORT | CMD_WRITE_KBD_OBUF | CMD_WRITE_AUX_OBUF | CMD_WRITE_AUX => {
                self.awaiting_param = Some(cmd)
            }
            CMD_AUX_DISABLE => self.set_ctr(self.ctr() | CTR_AUX_DISABLE),
            CMD_AUX_ENABLE => self.set_ctr(self.ctr() & !CTR_AUX_DISABLE),
            CMD_AUX_TEST | CMD_KBD_TEST => self.push_ctrl(OutByte::kbd(INTERFACE_TEST_OK)),
            CMD_SELF_TEST => {
                self.sys_flag = true;
                self.push_ctrl(OutByte::kbd(SELF_TEST_OK));
            }
            CMD_KBD_DISABLE => self.set_ctr(self.ctr() | CTR_KBD_DISABLE),
            CMD_KBD_ENABLE => self.set_ctr(self.ctr() & !CTR_KBD_DISABLE),
            CMD_READ_OUTPORT => self.push_ctrl(OutByte::kbd(self.output_port_value())),
            // Input port: bit 7 set = keyboard not inhibited (no keylock), as on QEMU.
            CMD_READ_INPORT => self.push_ctrl(OutByte::kbd(0x80)),
            CMD_READ_TEST_INPUTS => self.push_ctrl(OutByte::kbd(0)),
            CMD_PULSE_FIRST..=0xff => {
                // Bits 0-3 select output port lines to pulse low; line 0 is
                // the CPU reset (0xFE is the classic reboot, 0xFF a no-op).
                if cmd & OUTPORT_RESET == 0 {
                    self.request_reset("pulse output port");
                }
            }
            _ => {
                if let Some(n) = self.unknown_command.tick() {
                    log::warn!("i8042: ignoring unsupported command {cmd:#04x} (#{n})");
                }
            }
        }
        self.refill();
    }

    fn write_data(&mut self, v: u8) {
        self.last_write_was_command = false;
        match self.awaiting_param.take() {
            Some(cmd @ 0x60..=0x7f) => {
                let index = usize::from(cmd - CMD_WRITE_RAM);
                if index == 0 {
                    self.set_ctr(v);
                } else if let Some(slot) = self.ram.get_mut(index) {
                    *slot = v;
                }
            }
            Some(CMD_WRITE_OUTPORT) => {
                self.output_port = v;
                if v & OUTPORT_A20 == 0 {
                    log::debug!("i8042: guest disabled A20, which is not emulated");
                }
                if v & OUTPORT_RESET == 0 {
                    self.request_reset("output port reset line cleared");
                }
            }
            Some(CMD_WRITE_KBD_OBUF) => self.push_ctrl(OutByte::kbd(v)),
            Some(CMD_WRITE_AUX_OBUF) => self.push_ctrl(OutByte::aux(v)),
            Some(CMD_WRITE_AUX) => {
                // No mouse is attached: the controller reports a timeout.
                if self.aux_queue.len() < MAX_QUEUED {
                    self.aux_queue.push_back(OutByte { value: AUX_NO_DEVICE, aux: true, timeout: true });
                }
            }
            Some(_) | None => {
                // Plain data goes to the keyboard; sending it re-enables the
                // keyboard channel, as on real controllers and QEMU.
                self.set_ctr(self.ctr() & !CTR_KBD_DISABLE);
                let translate = self.ctr() & CTR_TRANSLATE != 0;
                let mut reply = Vec::new();
                self.keyboard.write(v, translate, &mut reply);
                for b in reply {
                    self.push_kbd(b);
                }
            }
        }
        self.refill();
    }

    fn log_bad_access(&mut self, what: &str, offset: u64, len: usize) {
        if let Some(n) = self.bad_access.tick() {
            log::warn!("i8042: ignoring {len}-byte {what} at offset {offset:#x} (#{n})");
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (OFFSET_DATA, 1) => Some(self.read_data()),
            (OFFSET_COMMAND, 1) => Some(self.status()),
            _ => None,
        };
        match (value, data.first_mut()) {
            (Some(v), Some(slot)) => *slot = v,
            _ => {
                data.fill(0xff);
                self.log_bad_access("read", offset, data.len());
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (OFFSET_DATA, [v]) => self.write_data(*v),
            (OFFSET_COMMAND, [v]) => self.write_command(*v),
            _ => self.log_bad_access("write", offset, data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::RecordingIrqLine;
    use std::sync::Mutex;

    struct Harness {
        kbc: I8042,
        events: Arc<Mutex<Vec<GuestEvent>>>,
        irq1: Arc<RecordingIrqLine>,
        irq12: Arc<RecordingIrqLine>,
    }

    impl Harness {
        fn new() -> Self {
            let events = Arc::new(Mutex::new(Vec::new()));
            let sink_events = events.clone();
            let sink: GuestEventSink = Arc::new(move |e| sink_events.lock().unwrap().push(e));
            let irq1 = Arc::new(RecordingIrqLine::default());
            let irq12 = Arc::new(RecordingIrqLine::default());
            let kbc = I8042::new(sink, Some(irq1.clone())).with_aux_irq(irq12.clone());
            Self { kbc, events, irq1, irq12 }
        }
        fn status(&mut self) -> u8 {
            let mut b = [0];
            self.kbc.read(OFFSET_COMMAND, &mut b);
            b[0]
        }
        fn data(&mut self) -> u8 {
            let mut b = [0];
            self.kbc.read(OFFSET_DATA, &mut b);
            b[0]
        }
        fn cmd(&mut self, c: u8) {
            self.kbc.write(OFFSET_COMMAND, &[c]);
        }
        fn put(&mut self, v: u8) {
            self.kbc.write(OFFSET_DATA, &[v]);
        }
        /// Reads one byte the way Linux's i8042_command does: OBF must be set.
        fn expect(&mut self, v: u8) {
            assert_ne!(self.status() & STATUS_OBF, 0, "expected {v:#x}, buffer empty");
            assert_eq!(self.data(), v);
        }
        fn flush(&mut self) -> usize {
            let mut n = 0;
            while self.status() & STATUS_OBF != 0 {
                self.data();
                n += 1;
                assert!(n < 100);
            }
            n
        }
        fn events(&self) -> Vec<GuestEvent> {
            self.events.lock().unwrap().clone()
        }
    }

    #[test]
    fn self_test() {
        let mut h = Harness::new();
        assert_eq!(h.status() & STATUS_OBF, 0);
        h.cmd(CMD_SELF_TEST);
        let s = h.status();
        assert_eq!(s & (STATUS_OBF | STATUS_SYS | STATUS_CMD), 0x0d);
        assert_eq!(h.data(), 0x55);
        assert_eq!(h.status() & STATUS_OBF, 0);
        // The data register keeps its byte: an empty read returns it again.
        assert_eq!(h.data(), 0x55);
        h.cmd(CMD_READ_INPORT);
        h.expect(0x80);
        h.cmd(CMD_KBD_TEST);
        h.expect(0x00);
        h.cmd(CMD_AUX_TEST);
        h.expect(0x00);
        assert!(h.events().is_empty());
    }

    #[test]
    fn command_byte_read_write() {
        let mut h = Harness::new();
        h.cmd(CMD_READ_RAM);
        h.expect(CTR_DEFAULT);
        h.cmd(CMD_WRITE_RAM);
        assert_ne!(h.status() & STATUS_CMD, 0);
        h.put(0x30);
        assert_eq!(h.status() & (STATUS_CMD | STATUS_SYS), 0, "SYS follows CTR bit 2");
        h.cmd(CMD_READ_RAM);
        h.expect(0x30);
        // Other RAM bytes just store.
        h.cmd(0x65);
        h.put(0x99);
        h.cmd(0x25);
        h.expect(0x99);
        // Enable/disable commands flip the CTR bits.
        h.cmd(CMD_KBD_ENABLE);
        h.cmd(CMD_AUX_ENABLE);
        h.cmd(CMD_READ_RAM);
        h.expect(0x00);
        h.cmd(CMD_KBD_DISABLE);
        h.cmd(CMD_READ_RAM);
        h.expect(CTR_KBD_DISABLE);
        h.cmd(CMD_AUX_DISABLE);
        h.cmd(CMD_READ_RAM);
        h.expect(CTR_KBD_DISABLE | CTR_AUX_DISABLE);
    }

    /// The probe of Linux's i8042 driver and atkbd, in order.
    #[test]
    fn linux_probe_sequence() {
        let mut h = Harness::new();
        // i8042_controller_check + selftest.
        assert_eq!(h.flush(), 0);
        h.cmd(CMD_SELF_TEST);
        h.expect(SELF_TEST_OK);
        // i8042_controller_init: read CTR until stable, disable kbd, write it.
        h.cmd(CMD_READ_RAM);
        h.expect(CTR_DEFAULT);
        h.cmd(CMD_READ_RAM);
        h.expect(CTR_DEFAULT);
        assert_ne!(h.status() & STATUS_UNLOCKED, 0, "keylock must be off");
        let mut ctr = (CTR_DEFAULT & !CTR_KBD_INT) | CTR_KBD_DISABLE;
        h.cmd(CMD_WRITE_RAM);
        h.put(ctr);
        assert_eq!(h.flush(), 0);

        // i8042_check_aux: loopback returns the byte flagged as aux data.
        h.cmd(CMD_WRITE_AUX_OBUF);
        h.put(0x5a);
        assert_ne!(h.status() & STATUS_AUX_OBF, 0);
        h.expect(0x5a);
        // i8042_toggle_aux(false/true) checks CTR bit 5.
        h.cmd(CMD_AUX_DISABLE);
        h.cmd(CMD_READ_RAM);
        assert_ne!(h.data() & CTR_AUX_DISABLE, 0);
        h.cmd(CMD_AUX_ENABLE);
        h.cmd(CMD_READ_RAM);
        assert_eq!(h.data() & CTR_AUX_DISABLE, 0);
        // Aux IRQ delivery test.
        ctr = (ctr | CTR_AUX_INT) & !CTR_AUX_DISABLE;
        h.cmd(CMD_WRITE_RAM);
        h.put(ctr);
        h.cmd(CMD_WRITE_AUX_OBUF);
        h.put(0xa5);
        assert!(h.irq12.level());
        assert!(!h.irq1.level());
        h.expect(0xa5);
        assert!(!h.irq12.level());
        // psmouse: nobody home.
        h.cmd(CMD_WRITE_AUX);
        h.put(0xf2);
        assert_eq!(h.status() & (STATUS_OBF | STATUS_AUX_OBF | STATUS_TIMEOUT), 0x61);
        h.expect(AUX_NO_DEVICE);

        // i8042_enable_kbd_port, then atkbd talks through IRQ 1.
        ctr = (ctr | CTR_KBD_INT) & !CTR_KBD_DISABLE;
        h.cmd(CMD_WRITE_RAM);
        h.put(ctr);
        assert!(!h.irq1.level());
        let edges = h.irq1.rising_edges();
        h.put(KBD_GET_ID);
        for (i, v) in [KBD_ACK, KBD_ID_FIRST, KBD_ID_SECOND_TRANSLATED].into_iter().enumerate() {
            assert!(h.irq1.level());
            assert_eq!(h.irq1.rising_edges(), edges + i as u64 + 1);
            h.expect(v);
        }
        assert!(!h.irq1.level());
        h.put(KBD_DISABLE);
        h.expect(KBD_ACK);
        h.put(KBD_SET_LEDS);
        h.expect(KBD_ACK);
        h.put(0x00);
        h.expect(KBD_ACK);
        h.put(KBD_SET_TYPEMATIC);
        h.expect(KBD_ACK);
        h.put(0x00);
        h.expect(KBD_ACK);
        h.put(KBD_ENABLE);
        h.expect(KBD_ACK);
        assert_eq!(h.flush(), 0);
        assert!(h.events().is_empty());
    }

    #[test]
    fn keyboard_commands() {
        let mut h = Harness::new();
        h.put(KBD_RESET);
        h.expect(KBD_ACK);
        h.expect(KBD_BAT_OK);
        h.put(KBD_ECHO);
        h.expect(KBD_ECHO);
        h.put(KBD_SCANCODE_SET);
        h.expect(KBD_ACK);
        h.put(0);
        h.expect(KBD_ACK);
        h.expect(0x41);
        // Untranslated: set 3 selected and reported as such.
        h.cmd(CMD_WRITE_RAM);
        h.put(CTR_SYS);
        let edges = h.irq1.rising_edges();
        h.put(KBD_SCANCODE_SET);
        h.expect(KBD_ACK);
        h.put(3);
        h.expect(KBD_ACK);
        h.put(KBD_SCANCODE_SET);
        h.expect(KBD_ACK);
        h.put(0);
        h.expect(KBD_ACK);
        h.expect(3);
        h.put(KBD_GET_ID);
        h.expect(KBD_ACK);
        h.expect(KBD_ID_FIRST);
        h.expect(KBD_ID_SECOND_RAW);
        h.put(0x12); // unknown: ACK
        h.expect(KBD_ACK);
        assert_eq!(h.flush(), 0);
        // No IRQ 1 without CTR_KBD_INT.
        assert_eq!(h.irq1.rising_edges(), edges);
        assert!(!h.irq1.level());
    }

    #[test]
    fn disabled_keyboard_holds_its_bytes() {
        let mut h = Harness::new();
        h.cmd(CMD_KBD_DISABLE);
        h.kbc.queue_keyboard_bytes(&[0x1c, 0xf0, 0x1c]);
        assert_eq!(h.status() & STATUS_OBF, 0);
        h.cmd(CMD_SELF_TEST);
        h.expect(SELF_TEST_OK);
        h.cmd(CMD_KBD_ENABLE);
        assert!(h.irq1.level());
        h.expect(0x1c);
        h.expect(0xf0);
        h.expect(0x1c);
        assert!(!h.irq1.level());
        // Scanning disabled: the keyboard sends nothing.
        h.put(KBD_DISABLE);
        h.expect(KBD_ACK);
        h.kbc.queue_keyboard_bytes(&[0x1c]);
        assert_eq!(h.flush(), 0);
    }

    #[test]
    fn reset_via_pulse_command() {
        let mut h = Harness::new();
        h.cmd(0xff); // pulses nothing
        h.cmd(0xfd); // pulses line 1 only
        assert!(h.events().is_empty());
        h.cmd(0xfe);
        assert_eq!(h.events(), vec![GuestEvent::Reset]);
        h.cmd(0xf0);
        assert_eq!(h.events().len(), 2);
    }

    #[test]
    fn reset_via_output_port() {
        let mut h = Harness::new();
        h.cmd(CMD_READ_OUTPORT);
        h.expect(OUTPORT_DEFAULT);
        h.cmd(CMD_WRITE_OUTPORT);
        h.put(0xdd); // A20 off, reset line high: no reset
        assert!(h.events().is_empty());
        h.cmd(CMD_READ_OUTPORT);
        h.expect(0xcd);
        h.cmd(CMD_WRITE_OUTPORT);
        h.put(0xce);
        assert_eq!(h.events(), vec![GuestEvent::Reset]);
        // A command cancels a pending parameter: the byte goes to the keyboard.
        h.cmd(CMD_WRITE_OUTPORT);
        h.cmd(CMD_READ_TEST_INPUTS);
        h.expect(0);
        h.put(0x00);
        h.expect(KBD_ACK);
        assert_eq!(h.events().len(), 1);
    }

    #[test]
    fn bad_offsets_and_widths() {
        let mut h = Harness::new();
        h.cmd(CMD_SELF_TEST);
        for off in [1u64, 2, 3, 5, 8, 0x100, u64::MAX] {
            let mut b = [0u8];
            h.kbc.read(off, &mut b);
            assert_eq!(b[0], 0xff);
            h.kbc.write(off, &[0xfe]);
        }
        for width in [0usize, 2, 4, 8] {
            for off in [0u64, 4] {
                let mut buf = vec![0u8; width];
                h.kbc.read(off, &mut buf);
                assert!(buf.iter().all(|&b| b == 0xff));
                h.kbc.write(off, &[0xfe; 8][..width]);
            }
        }
        h.cmd(0x01); // unknown command
        assert!(h.events().is_empty());
        h.expect(SELF_TEST_OK);
        // An unwired IRQ is fine.
        let sink: GuestEventSink = Arc::new(|_| {});
        let mut bare = I8042::new(sink, None);
        bare.write(OFFSET_DATA, &[KBD_RESET]);
        bare.write(OFFSET_COMMAND, &[CMD_WRITE_AUX_OBUF]);
        bare.write(OFFSET_DATA, &[1]);
    }
    #[test]
    fn random_port_traffic_never_panics_and_the_queues_stay_bounded() {
        // Random commands (resets and pulses included), data bytes, reads,
        // accesses of every width at every offset and host keyboard bytes: no
        // panic, every queue stays capped, IRQ 1 and 12 are up only with a byte
        // of their channel in the output buffer, only reset events come out,
        // and reading port 0x60 drains everything in a bounded number of reads.
        let mut h = Harness::new();
        let mut x: u64 = 0x8042_0000_0000_0001;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = (x >> 8) as u8;
            match x % 10 {
                0 | 1 => h.cmd(v),
                2 | 3 => h.put(v),
                4 => {
                    let offset = [0u64, 1, 2, 3, 4, 5, 8, u64::MAX][(x >> 16) as usize % 8];
                    let width = (x >> 24) as usize % 9;
                    if x & (1 << 40) != 0 {
                        h.kbc.read(offset, &mut vec![0u8; width]);
                    } else {
                        h.kbc.write(offset, &vec![v; width]);
                    }
                }
                5 => h.kbc.queue_keyboard_bytes(&vec![v; (x >> 32) as usize % 600]),
                _ => {
                    h.data();
                }
            }
            assert!(h.kbc.ctrl_queue.len() <= MAX_QUEUED);
            assert!(h.kbc.kbd_queue.len() <= MAX_QUEUED);
            assert!(h.kbc.aux_queue.len() <= MAX_QUEUED);
            let s = h.status();
            if h.irq1.level() {
                assert_eq!(s & (STATUS_OBF | STATUS_AUX_OBF), STATUS_OBF, "IRQ 1 without a keyboard byte");
            }
            if h.irq12.level() {
                assert_eq!(
                    s & (STATUS_OBF | STATUS_AUX_OBF),
                    STATUS_OBF | STATUS_AUX_OBF,
                    "IRQ 12 without an aux byte"
                );
            }
        }
        let events = h.events();
        assert!(!events.is_empty() && events.iter().all(|e| *e == GuestEvent::Reset));
        // Both channels on, interrupts off: everything queued comes out.
        h.cmd(CMD_WRITE_RAM);
        h.put(0);
        let mut reads = 0;
        while h.status() & STATUS_OBF != 0 {
            h.data();
            reads += 1;
            assert!(reads <= 3 * MAX_QUEUED + 1, "port 0x60 never drains");
        }
        assert!(!h.irq1.level() && !h.irq12.level());
    }
}
