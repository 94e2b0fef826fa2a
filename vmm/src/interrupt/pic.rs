//! The cascaded pair of Intel 8259A programmable interrupt controllers of
//! every PC (book chapter 3.1), for KVM's split-irqchip mode where the local
//! APICs stay in the kernel and user space emulates the PIC.
//!
//! The model follows the *Intel 8259A Programmable Interrupt Controller*
//! datasheet (order number 231468); the section names below are its headings:
//!
//! - **Interrupt Sequence**: an INTA cycle picks the highest-priority request
//!   of IRR that is not masked and outranks everything in service, sets its ISR
//!   bit (unless in automatic EOI mode) and returns `ICW2 base | level`. In
//!   cascade mode the master answers IRQ 2 by letting the slave supply the
//!   vector. If nothing is requested any more at INTA time "the 8259A will issue
//!   an interrupt level 7": the vector of IR7 with no ISR bit set. A spurious
//!   request on the slave still sets the master's ISR bit 2 (the master did
//!   acknowledge its IR2), so the guest must EOI the master, as Linux does.
//! - **Initialization Command Words** (ICW1-ICW4): ICW1 resets the chip (IMR
//!   and ISR cleared, IR7 lowest priority, special mask mode off, IRR selected
//!   for reading, edge-sense latches re-armed) and starts the sequence;
//!   ICW2 is the vector base (T7-T3), ICW3 is read in cascade mode only,
//!   ICW4 only when ICW1.IC4 is set (else every ICW4 function is zero). ICW1's
//!   ADI and the 8080-mode fields are ignored: the PC runs the 8259A in 8086
//!   mode. ICW3 is recorded but the wiring is fixed: slave on master IR2.
//! - **Operation Command Words**: OCW1 is the IMR; OCW2 (R, SL, EOI) selects
//!   non-specific EOI (001), specific EOI (011), rotate on non-specific EOI
//!   (101), rotate in automatic EOI mode set (100) / clear (000), rotate on
//!   specific EOI (111), set priority (110) and no-op (010); OCW3 selects
//!   IRR/ISR for reading (RR, RIS), the poll command (P) and special mask mode
//!   (ESMM, SMM).
//! - **Fully Nested Mode**, **Automatic Rotation**, **Specific Rotation**: the
//!   priority order is a rotation of 0..7; `priority_add` is the level with
//!   the highest priority (0 after ICW1).
//! - **Special Mask Mode**: masked levels do not hold off lower priorities
//!   while in service, and (datasheet note on EOI) a non-specific EOI does not
//!   clear an ISR bit masked in the IMR.
//! - **Poll Command**: the next read of either port is an interrupt
//!   acknowledge that returns `0x80 | level`, or 0 when nothing is requested.
//! - **Edge and Level Triggered Modes**: in level mode IRR follows the line
//!   (it is not cleared by INTA, so a line still high after the EOI interrupts
//!   again); in edge mode a low-to-high transition latches IRR. Per-line level
//!   mode comes from the ELCR (PIIX/ICH "edge/level control registers" at
//!   ports 0x4D0/0x4D1; IRQ 0, 1, 2, 8 and 13 are always edge) or, for a whole
//!   chip, from ICW1.LTIM.
//! - **Special Fully Nested Mode** (ICW4.SFNM, master): a slave request of
//!   higher priority than the one in service reaches the CPU although the
//!   master's IR2 is in service.
//!
//! Deviation, as in QEMU and KVM: the real chip needs an edge-triggered request
//! to stay high until the first INTA pulse and turns a vanished one into a
//! spurious IR7. Here the latched IRR bit stays set when the line drops, so a
//! device model that pulses its line (raise, lower) is never lost.
//!
//! The INT output is held low until the chip has completed an ICW sequence:
//! a never-initialized PIC has no vector base, and a guest initializes it with
//! interrupts disabled anyway.
//!
//! # Registration
//!
//! One [`PicPair`] handles all six ports as one [`BusDevice`]: register it with
//! `Bus::insert_with_offset_base(pic, start, len, PIC_PIO_OFFSET_BASE)` for
//! each range of [`PIC_PIO_RANGES`], so it sees offsets 0x00/0x01 (master
//! 0x20/0x21), 0x80/0x81 (slave 0xA0/0xA1) and 0x4B0/0x4B1 (ELCR 0x4D0/0x4D1).
//! Wider accesses are split into byte accesses at consecutive ports, as the ISA
//! bus does (a 16-bit write to 0x4D0 sets both ELCRs).
//!
//! # Use by the VMM
//!
//! Devices call [`PicPair::set_irq`] with their line level. When
//! [`PicPair::has_interrupt`] is true and the vCPU can take an external
//! interrupt, the VMM runs [`PicPair::acknowledge`] and injects the vector with
//! KVM_INTERRUPT (the LAPIC in the kernel forwards it as ExtINT through LINT0).

use devices::BusDevice;

/// Master command port (ICW1, OCW2, OCW3; reads IRR/ISR or the poll byte).
pub const PIC_MASTER_COMMAND: u16 = 0x20;
/// Master data port (ICW2-ICW4, OCW1 = IMR).
pub const PIC_MASTER_DATA: u16 = 0x21;
/// Slave command port.
pub const PIC_SLAVE_COMMAND: u16 = 0xa0;
/// Slave data port.
pub const PIC_SLAVE_DATA: u16 = 0xa1;
/// Edge/level control register of IRQ 0-7; IRQ 8-15 at the next port.
pub const PIC_ELCR: u16 = 0x4d0;

/// The port every offset the [`PicPair`] sees is relative to.
pub const PIC_PIO_OFFSET_BASE: u64 = 0x20;
/// The (start, length) port ranges to register the [`PicPair`] at, each with
/// [`PIC_PIO_OFFSET_BASE`] as the offset base.
pub const PIC_PIO_RANGES: [(u64, u64); 3] = [(0x20, 2), (0xa0, 2), (0x4d0, 2)];

/// The master IR line the slave's INT output is wired to.
const CASCADE_IRQ: u8 = 2;
/// ELCR bits that may be set: IRQ 0, 1, 2 (master) and 8, 13 (slave) are
/// hard-wired edge on PIIX/ICH.
const ELCR_MASK: [u8; 2] = [0xf8, 0xde];

// ICW1 bits.
const ICW1_IC4: u8 = 0x01;
const ICW1_SNGL: u8 = 0x02;
const ICW1_LTIM: u8 = 0x08;
const ICW1_INIT: u8 = 0x10;
// ICW4 bits.
const ICW4_UPM: u8 = 0x01;
const ICW4_AEOI: u8 = 0x02;
const ICW4_SFNM: u8 = 0x10;
// OCW3 bits.
const OCW3_SELECT: u8 = 0x08;
const OCW3_RIS: u8 = 0x01;
const OCW3_RR: u8 = 0x02;
const OCW3_POLL: u8 = 0x04;
const OCW3_SMM: u8 = 0x20;
const OCW3_ESMM: u8 = 0x40;

pub(crate) use devices::ratelimit::LogLimiter;

/// Where a chip is in its initialization sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InitState {
    /// Operational: data-port writes are OCW1.
    Ready,
    /// ICW1 seen, ICW2 (vector base) expected next.
    Icw2,
    /// ICW3 (cascade wiring) expected next.
    Icw3,
    /// ICW4 (mode) expected next.
    Icw4,
}

/// One 8259A.
#[derive(Debug, Clone)]
struct Chip {
    /// Whether this is the master (IR2 cascade, special fully nested mode).
    master: bool,
    /// Interrupt request register.
    irr: u8,
    /// In-service register.
    isr: u8,
    /// Interrupt mask register (OCW1).
    imr: u8,
    /// Current level of each IR input line.
    lines: u8,
    /// Edge/level control register (1 = level).
    elcr: u8,
    /// ICW1.LTIM: every input level-triggered.
    ltim: bool,
    /// ICW2 vector base (T7-T3).
    vector_base: u8,
    /// The level that currently has the highest priority.
    priority_add: u8,
    init: InitState,
    /// An ICW sequence has completed since the last ICW1 / reset.
    initialized: bool,
    icw4_needed: bool,
    single: bool,
    icw3: u8,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    special_mask: bool,
    special_fully_nested: bool,
    /// OCW3 RIS: the command port reads ISR (else IRR).
    read_isr: bool,
    /// A poll command is waiting for the next read.
    poll: bool,
}

impl Chip {
    fn new(master: bool) -> Self {
        Chip {
            master,
            irr: 0,
            isr: 0,
            imr: 0,
            lines: 0,
            elcr: 0,
            ltim: false,
            vector_base: 0,
            priority_add: 0,
            init: InitState::Ready,
            initialized: false,
            icw4_needed: false,
            single: false,
            icw3: 0,
            auto_eoi: false,
            rotate_on_auto_eoi: false,
            special_mask: false,
            special_fully_nested: false,
            read_isr: false,
            poll: false,
        }
    }

    /// The inputs that are level-triggered.
    fn level_mask(&self) -> u8 {
        if self.ltim {
            0xff
        } else {
            self.elcr
        }
    }

    /// Drives input `pin` (0-7) to `level`.
    fn set_input(&mut self, pin: u8, level: bool) {
        let mask = 1u8 << (pin & 7);
        if self.level_mask() & mask != 0 {
            if level {
                self.irr |= mask;
            } else {
                self.irr &= !mask;
            }
        } else if level && self.lines & mask == 0 {
            self.irr |= mask;
        }
        if level {
            self.lines |= mask;
        } else {
            self.lines &= !mask;
        }
    }

    /// Level-triggered IRR bits follow their lines (after an ELCR/LTIM change).
    fn resync_level_irr(&mut self) {
        let level = self.level_mask();
        self.irr = (self.irr & !level) | (self.lines & level);
    }

    /// The priority (0 = highest) of the highest-priority bit of `mask`.
    fn priority(&self, mask: u8) -> Option<u8> {
        (0..8u8).find(|p| mask & (1 << ((p + self.priority_add) & 7)) != 0)
    }

    fn level_of(&self, priority: u8) -> u8 {
        (priority + self.priority_add) & 7
    }

    /// The level the chip would interrupt for now, if any (priority resolver).
    fn pending(&self) -> Option<u8> {
        let requested = self.priority(self.irr & !self.imr)?;
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if self.special_fully_nested && self.master {
            in_service &= !(1 << CASCADE_IRQ);
        }
        match self.priority(in_service) {
            Some(current) if current <= requested => None,
            _ => Some(self.level_of(requested)),
        }
    }

    /// The INT output pin.
    fn int_output(&self) -> bool {
        self.initialized && self.pending().is_some()
    }

    /// The acknowledge half of an INTA cycle (or a poll) for `level`.
    fn intack(&mut self, level: u8) {
        let mask = 1u8 << level;
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (level + 1) & 7;
            }
        } else {
            self.isr |= mask;
        }
        // A level-triggered request stays in IRR while its line is high.
        if self.level_mask() & mask == 0 {
            self.irr &= !mask;
        }
    }

    /// Clears the highest-priority in-service bit; returns its level.
    fn non_specific_eoi(&mut self) -> Option<u8> {
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        let level = self.level_of(self.priority(in_service)?);
        self.isr &= !(1 << level);
        Some(level)
    }

    /// A write to the command port (A0 = 0).
    fn write_command(&mut self, value: u8) {
        if value & ICW1_INIT != 0 {
            self.icw1(value);
        } else if value & OCW3_SELECT != 0 {
            if value & OCW3_POLL != 0 {
                self.poll = true;
            }
            if value & OCW3_RR != 0 {
                self.read_isr = value & OCW3_RIS != 0;
            }
            if value & OCW3_ESMM != 0 {
                self.special_mask = value & OCW3_SMM != 0;
            }
        } else {
            let level = value & 7;
            match value >> 5 {
                0b000 => self.rotate_on_auto_eoi = false,
                0b100 => self.rotate_on_auto_eoi = true,
                0b001 => {
                    self.non_specific_eoi();
                }
                0b101 => {
                    if let Some(l) = self.non_specific_eoi() {
                        self.priority_add = (l + 1) & 7;
                    }
                }
                0b011 => self.isr &= !(1 << level),
                0b111 => {
                    self.isr &= !(1 << level);
                    self.priority_add = (level + 1) & 7;
                }
                0b110 => self.priority_add = (level + 1) & 7,
                _ => {} // 010: no operation
            }
        }
    }

    fn icw1(&mut self, value: u8) {
        self.ltim = value & ICW1_LTIM != 0;
        self.single = value & ICW1_SNGL != 0;
        self.icw4_needed = value & ICW1_IC4 != 0;
        self.imr = 0;
        self.isr = 0;
        // Edge-sense latches are reset: an edge input that is high now must go
        // low and high again. Level inputs keep requesting while high.
        self.irr = self.lines & self.level_mask();
        self.priority_add = 0;
        self.special_mask = false;
        self.read_isr = false;
        self.poll = false;
        self.auto_eoi = false;
        self.rotate_on_auto_eoi = false;
        self.special_fully_nested = false;
        self.initialized = false;
        self.init = InitState::Icw2;
    }

    /// Completes the ICW sequence if nothing more is expected.
    fn finish_init_after(&mut self, state: InitState) {
        let next = match state {
            InitState::Icw2 if !self.single => InitState::Icw3,
            InitState::Icw2 | InitState::Icw3 if self.icw4_needed => InitState::Icw4,
            _ => InitState::Ready,
        };
        self.init = next;
        if next == InitState::Ready {
            self.initialized = true;
        }
    }

    /// A write to the data port (A0 = 1). Returns a complaint worth logging.
    fn write_data(&mut self, value: u8) -> Option<&'static str> {
        let state = self.init;
        let mut complaint = None;
        match state {
            InitState::Ready => self.imr = value,
            InitState::Icw2 => self.vector_base = value & 0xf8,
            InitState::Icw3 => {
                self.icw3 = value;
                let expected = if self.master { 1 << CASCADE_IRQ } else { CASCADE_IRQ };
                if value != expected {
                    complaint = Some("ICW3 does not match the PC wiring (slave on IR2)");
                }
            }
            InitState::Icw4 => {
                self.auto_eoi = value & ICW4_AEOI != 0;
                self.special_fully_nested = value & ICW4_SFNM != 0;
                if value & ICW4_UPM == 0 {
                    complaint = Some("ICW4 selects 8080 mode; running in 8086 mode");
                }
            }
        }
        if state != InitState::Ready {
            self.finish_init_after(state);
        }
        complaint
    }

    /// A read of the command (`data == false`) or data port.
    fn read(&mut self, data: bool) -> u8 {
        if self.poll {
            self.poll = false;
            return match self.pending() {
                Some(level) => {
                    self.intack(level);
                    0x80 | level
                }
                None => 0,
            };
        }
        if data {
            self.imr
        } else if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }
}

/// The master/slave 8259A pair of a PC with its ELCR; see the module docs.
#[derive(Debug, Clone)]
pub struct PicPair {
    /// `[master, slave]`.
    chips: [Chip; 2],
    bad_access: LogLimiter,
    bad_program: LogLimiter,
}

impl Default for PicPair {
    fn default() -> Self {
        Self::new()
    }
}

impl PicPair {
    /// A pair in its power-on state: not initialized (INT low), all lines low,
    /// every input edge-triggered.
    pub fn new() -> Self {
        PicPair {
            chips: [Chip::new(true), Chip::new(false)],
            bad_access: LogLimiter::default(),
            bad_program: LogLimiter::default(),
        }
    }

    /// Returns both chips to the power-on state (system reset); the levels of
    /// the input lines are kept, since the devices still drive them.
    pub fn reset(&mut self) {
        for (i, chip) in self.chips.iter_mut().enumerate() {
            let lines = chip.lines;
            *chip = Chip::new(i == 0);
            chip.lines = lines;
        }
        self.propagate_cascade();
    }

    /// Feeds the slave's INT output into the master's IR2.
    fn propagate_cascade(&mut self) {
        let out = self.chips[1].int_output();
        self.chips[0].set_input(CASCADE_IRQ, out);
    }

    /// Drives ISA interrupt line `irq` (0-15) to `level`. IRQ 2 is the
    /// cascade input, driven by the slave only; requests for it (and for lines
    /// above 15) are ignored.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        match irq {
            CASCADE_IRQ => {
                if let Some(n) = self.bad_access.tick() {
                    log::warn!("pic: IRQ 2 is the cascade input, ignoring a device on it (#{n})");
                }
                return;
            }
            0..=7 => self.chips[0].set_input(irq, level),
            8..=15 => self.chips[1].set_input(irq - 8, level),
            _ => {
                if let Some(n) = self.bad_access.tick() {
                    log::warn!("pic: ignoring IRQ {irq}, the PIC pair has 16 lines (#{n})");
                }
                return;
            }
        }
        self.propagate_cascade();
    }

    /// The master's INT output: an interrupt is waiting for an INTA cycle.
    pub fn has_interrupt(&self) -> bool {
        self.chips[0].int_output()
    }

    /// Runs an INTA cycle and returns the vector the CPU would read, for
    /// injection with KVM_INTERRUPT.
    ///
    /// With nothing pending (the request went away after INT was seen) this is
    /// the spurious vector, the master's base + 7, and no ISR bit is set; when
    /// the master selected the cascade but the slave has nothing, it is the
    /// slave's base + 7 with the master's ISR bit 2 set. Returns `None` only if
    /// the master has not been initialized (there is no vector base yet).
    pub fn acknowledge(&mut self) -> Option<u8> {
        let master = &self.chips[0];
        if !master.initialized {
            return None;
        }
        let vector = match master.pending() {
            Some(CASCADE_IRQ) if !master.single => {
                self.chips[0].intack(CASCADE_IRQ);
                let slave = &mut self.chips[1];
                match slave.pending() {
                    Some(level) => {
                        slave.intack(level);
                        slave.vector_base | level
                    }
                    None => slave.vector_base | 7,
                }
            }
            Some(level) => {
                self.chips[0].intack(level);
                self.chips[0].vector_base | level
            }
            None => master.vector_base | 7,
        };
        self.propagate_cascade();
        Some(vector)
    }

    /// The edge/level control registers: bit n set = IRQ n level-triggered.
    pub fn elcr(&self) -> u16 {
        u16::from(self.chips[0].elcr) | u16::from(self.chips[1].elcr) << 8
    }

    /// Sets the edge/level control registers (as ports 0x4D0/0x4D1 would;
    /// IRQ 0, 1, 2, 8 and 13 stay edge-triggered). Firmware tables (the MP
    /// table, ACPI) describe PCI lines as level; the VMM can preset them here.
    pub fn set_elcr(&mut self, elcr: u16) {
        self.write_elcr(0, elcr as u8);
        self.write_elcr(1, (elcr >> 8) as u8);
    }

    fn write_elcr(&mut self, chip: usize, value: u8) {
        let c = &mut self.chips[chip];
        c.elcr = value & ELCR_MASK[chip];
        c.resync_level_irr();
        self.propagate_cascade();
    }

    fn read_port(&mut self, offset: u64) -> u8 {
        let value = match offset {
            0x00 | 0x01 | 0x80 | 0x81 => {
                let chip = usize::from(offset >= 0x80);
                self.chips[chip].read(offset & 1 == 1)
            }
            0x4b0 | 0x4b1 => self.chips[(offset & 1) as usize].elcr,
            _ => {
                if let Some(n) = self.bad_access.tick() {
                    log::warn!("pic: read of unknown port offset {offset:#x} (#{n})");
                }
                return 0xff;
            }
        };
        // A poll is an INTA: the slave's INT may have dropped.
        self.propagate_cascade();
        value
    }

    fn write_port(&mut self, offset: u64, value: u8) {
        match offset {
            0x00 | 0x01 | 0x80 | 0x81 => {
                let chip = usize::from(offset >= 0x80);
                let c = &mut self.chips[chip];
                if offset & 1 == 0 {
                    c.write_command(value);
                } else if let Some(why) = c.write_data(value) {
                    if let Some(n) = self.bad_program.tick() {
                        let name = if chip == 0 { "master" } else { "slave" };
                        log::warn!("pic: {name} {why} (value {value:#04x}, #{n})");
                    }
                }
                self.propagate_cascade();
            }
            0x4b0 | 0x4b1 => self.write_elcr((offset & 1) as usize, value),
            _ => {
                if let Some(n) = self.bad_access.tick() {
                    log::warn!("pic: write {value:#04x} to unknown port offset {offset:#x} (#{n})");
                }
            }
        }
    }
}

impl BusDevice for PicPair {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.read_port(offset.wrapping_add(i as u64));
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &byte) in data.iter().enumerate() {
            self.write_port(offset.wrapping_add(i as u64), byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Port I/O as the guest does it, at absolute port numbers.
    fn outb(pic: &mut PicPair, port: u16, value: u8) {
        pic.write(u64::from(port) - PIC_PIO_OFFSET_BASE, &[value]);
    }

    fn inb(pic: &mut PicPair, port: u16) -> u8 {
        let mut b = [0u8];
        pic.read(u64::from(port) - PIC_PIO_OFFSET_BASE, &mut b);
        b[0]
    }

    /// Linux `init_8259A(0)` (arch/x86/kernel/i8259.c), then unmasks the
    /// IRQs set in `unmask` (IMR = its complement).
    fn linux_init(unmask: u16) -> PicPair {
        let mut pic = PicPair::new();
        outb(&mut pic, 0x21, 0xff);
        outb(&mut pic, 0xa1, 0xff);
        outb(&mut pic, 0x20, 0x11); // ICW1: select 8259A-1 init, ICW4 needed
        outb(&mut pic, 0x21, 0x20); // ICW2: IR0-7 mapped to 0x20-0x27
        outb(&mut pic, 0x21, 0x04); // ICW3: slave on IR2
        outb(&mut pic, 0x21, 0x01); // ICW4: 8086 mode, normal EOI
        outb(&mut pic, 0xa0, 0x11);
        outb(&mut pic, 0xa1, 0x28); // IR8-15 mapped to 0x28-0x2f
        outb(&mut pic, 0xa1, 0x02); // slave ID 2
        outb(&mut pic, 0xa1, 0x01);
        outb(&mut pic, 0x21, !(unmask as u8));
        outb(&mut pic, 0xa1, !((unmask >> 8) as u8));
        pic
    }

    fn isr(pic: &mut PicPair, command_port: u16) -> u8 {
        outb(pic, command_port, 0x0b);
        inb(pic, command_port)
    }

    fn irr(pic: &mut PicPair, command_port: u16) -> u8 {
        outb(pic, command_port, 0x0a);
        inb(pic, command_port)
    }

    fn pulse(pic: &mut PicPair, irq: u8) {
        pic.set_irq(irq, true);
        pic.set_irq(irq, false);
    }

    #[test]
    fn linux_init_8259a() {
        let mut pic = linux_init(0x0004); // everything masked but the cascade
        assert!(!pic.has_interrupt());
        assert_eq!(inb(&mut pic, 0x21), 0xfb);
        assert_eq!(inb(&mut pic, 0xa1), 0xff);
        // Unmask IRQ 1 and IRQ 12 as the drivers would.
        outb(&mut pic, 0x21, 0xf9);
        outb(&mut pic, 0xa1, 0xef);
        pulse(&mut pic, 1);
        assert!(pic.has_interrupt());
        assert_eq!(pic.acknowledge(), Some(0x21));
        assert!(!pic.has_interrupt());
        outb(&mut pic, 0x20, 0x61); // Linux: specific EOI for IRQ 1
        assert_eq!(isr(&mut pic, 0x20), 0);

        pulse(&mut pic, 12);
        assert!(pic.has_interrupt());
        assert_eq!(pic.acknowledge(), Some(0x2c));
        assert_eq!(isr(&mut pic, 0xa0), 1 << 4);
        assert_eq!(isr(&mut pic, 0x20), 1 << 2);
        // Linux: slave specific EOI, then master specific EOI for the cascade.
        outb(&mut pic, 0xa0, 0x60 | 4);
        outb(&mut pic, 0x20, 0x60 | 2);
        assert_eq!(isr(&mut pic, 0xa0), 0);
        assert_eq!(isr(&mut pic, 0x20), 0);
        assert!(!pic.has_interrupt());
    }

    #[test]
    fn seabios_init_vector_bases_08_70() {
        // SeaBIOS pic_reset(0x08, 0x70): master and slave ICWs interleaved.
        let mut pic = PicPair::new();
        outb(&mut pic, 0x20, 0x11);
        outb(&mut pic, 0xa0, 0x11);
        outb(&mut pic, 0x21, 0x08);
        outb(&mut pic, 0xa1, 0x70);
        outb(&mut pic, 0x21, 0x04);
        outb(&mut pic, 0xa1, 0x02);
        outb(&mut pic, 0x21, 0x01);
        outb(&mut pic, 0xa1, 0x01);
        // PIC_IRQMASK_DEFAULT: everything but the cascade masked.
        outb(&mut pic, 0x21, 0xfb);
        outb(&mut pic, 0xa1, 0xff);
        pulse(&mut pic, 0);
        assert!(!pic.has_interrupt(), "IRQ 0 is masked");
        assert_eq!(irr(&mut pic, 0x20), 1, "the edge is latched in IRR");
        // The BIOS enables the timer and the RTC.
        outb(&mut pic, 0x21, 0xfa);
        outb(&mut pic, 0xa1, 0xfe);
        assert!(pic.has_interrupt(), "the latched request is now unmasked");
        pulse(&mut pic, 8);
        assert_eq!(pic.acknowledge(), Some(0x08));
        outb(&mut pic, 0x20, 0x20);
        assert_eq!(pic.acknowledge(), Some(0x70));
        outb(&mut pic, 0xa0, 0x20);
        outb(&mut pic, 0x20, 0x20);
        assert!(!pic.has_interrupt());
    }

    #[test]
    fn priority_irq1_before_irq3() {
        let mut pic = linux_init(0xffff);
        pulse(&mut pic, 3);
        pulse(&mut pic, 1);
        assert_eq!(irr(&mut pic, 0x20), 0b1010);
        assert_eq!(pic.acknowledge(), Some(0x21));
        // IRQ 3 waits while IRQ 1 is in service (fully nested mode).
        assert!(!pic.has_interrupt());
        outb(&mut pic, 0x20, 0x20);
        assert!(pic.has_interrupt());
        assert_eq!(pic.acknowledge(), Some(0x23));
    }

    #[test]
    fn nested_interrupts_eoi_order() {
        let mut pic = linux_init(0xffff);
        pulse(&mut pic, 3);
        assert_eq!(pic.acknowledge(), Some(0x23));
        // A higher priority request nests; a lower one waits.
        pulse(&mut pic, 5);
        assert!(!pic.has_interrupt());
        pulse(&mut pic, 1);
        assert!(pic.has_interrupt());
        assert_eq!(pic.acknowledge(), Some(0x21));
        assert_eq!(isr(&mut pic, 0x20), 0b1010);
        // Non-specific EOIs retire the highest priority first: 1, then 3.
        outb(&mut pic, 0x20, 0x20);
        assert_eq!(isr(&mut pic, 0x20), 0b1000);
        assert!(!pic.has_interrupt(), "IRQ 3 still holds off IRQ 5");
        outb(&mut pic, 0x20, 0x20);
        assert_eq!(isr(&mut pic, 0x20), 0);
        assert_eq!(pic.acknowledge(), Some(0x25));
    }

    #[test]
    fn specific_eoi() {
        let mut pic = linux_init(0xffff);
        pulse(&mut pic, 3);
        assert_eq!(pic.acknowledge(), Some(0x23));
        pulse(&mut pic, 1);
        assert_eq!(pic.acknowledge(), Some(0x21));
        // Specific EOI for level 3 leaves the higher-priority level 1.
        outb(&mut pic, 0x20, 0x63);
        assert_eq!(isr(&mut pic, 0x20), 0b0010);
        outb(&mut pic, 0x20, 0x61);
        assert_eq!(isr(&mut pic, 0x20), 0);
    }

    #[test]
    fn rotate_on_non_specific_eoi() {
        let mut pic = linux_init(0xffff);
        pulse(&mut pic, 1);
        assert_eq!(pic.acknowledge(), Some(0x21));
        outb(&mut pic, 0x20, 0xa0); // rotate on non-specific EOI: 1 becomes lowest
        assert_eq!(isr(&mut pic, 0x20), 0);
        // Priority is now 2 > 3 > ... > 7 > 0 > 1.
        pulse(&mut pic, 0);
        pulse(&mut pic, 3);
        pulse(&mut pic, 1);
        assert_eq!(pic.acknowledge(), Some(0x23));
        outb(&mut pic, 0x20, 0x20); // plain EOI, no rotation
        assert_eq!(pic.acknowledge(), Some(0x20));
        outb(&mut pic, 0x20, 0x20);
        assert_eq!(pic.acknowledge(), Some(0x21));
        outb(&mut pic, 0x20, 0x20);
        // Set priority (OCW2 110): level 5 lowest, so 6 is the highest.
        outb(&mut pic, 0x20, 0xc5);
        pulse(&mut pic, 5);
        pulse(&mut pic, 7);
        assert_eq!(pic.acknowledge(), Some(0x27));
        // Rotate on specific EOI (111) for level 7: 0 becomes the highest.
        outb(&mut pic, 0x20, 0xe7);
        pulse(&mut pic, 0);
        assert_eq!(pic.acknowledge(), Some(0x20));
    }

    #[test]
    fn poll_command() {
        let mut pic = linux_init(0xffff);
        outb(&mut pic, 0x20, 0x0c); // OCW3 poll
        assert_eq!(inb(&mut pic, 0x20), 0x00, "nothing requested");
        pulse(&mut pic, 4);
        pulse(&mut pic, 6);
        outb(&mut pic, 0x20, 0x0c);
        assert_eq!(inb(&mut pic, 0x20), 0x84);
        assert_eq!(isr(&mut pic, 0x20), 1 << 4, "a poll acknowledges");
        // The poll is one-shot: the next read is the selected register again.
        assert_eq!(inb(&mut pic, 0x20), 1 << 4);
        outb(&mut pic, 0x20, 0x20);
        // The data port answers a poll too.
        outb(&mut pic, 0x20, 0x0c);
        assert_eq!(inb(&mut pic, 0x21), 0x86);
    }

    #[test]
    fn read_irr_and_isr_via_ocw3() {
        let mut pic = linux_init(0xff06); // IMR 0xf9: IRQ 5 masked
        pulse(&mut pic, 1);
        pulse(&mut pic, 5); // masked: in IRR only
        outb(&mut pic, 0x20, 0x0a);
        assert_eq!(inb(&mut pic, 0x20), 0b0010_0010);
        // The selection sticks until the next OCW3 with RR set.
        assert_eq!(inb(&mut pic, 0x20), 0b0010_0010);
        outb(&mut pic, 0x20, 0x0b);
        assert_eq!(inb(&mut pic, 0x20), 0);
        pic.acknowledge();
        assert_eq!(inb(&mut pic, 0x20), 0b0000_0010);
        outb(&mut pic, 0x20, 0x09); // RR clear: no change of selection
        assert_eq!(inb(&mut pic, 0x20), 0b0000_0010);
        outb(&mut pic, 0x20, 0x0a);
        assert_eq!(inb(&mut pic, 0x20), 0b0010_0000);
        // The data port reads the IMR.
        assert_eq!(inb(&mut pic, 0x21), 0xf9);
    }

    #[test]
    fn spurious_irq7_on_master() {
        let mut pic = linux_init(0xffff);
        pulse(&mut pic, 3);
        assert!(pic.has_interrupt());
        // The request is masked before the INTA cycle.
        outb(&mut pic, 0x21, 0x08);
        assert!(!pic.has_interrupt());
        assert_eq!(pic.acknowledge(), Some(0x27));
        assert_eq!(isr(&mut pic, 0x20), 0, "a spurious IR7 sets no ISR bit");
        // IRQ 3 is still latched and comes through once unmasked.
        outb(&mut pic, 0x21, 0x00);
        assert_eq!(pic.acknowledge(), Some(0x23));
    }

    #[test]
    fn spurious_irq15_on_slave() {
        let mut pic = linux_init(0xffff);
        pulse(&mut pic, 10);
        assert!(pic.has_interrupt());
        // The slave's request vanishes after the master latched IR2.
        outb(&mut pic, 0xa1, 0x04);
        assert!(pic.has_interrupt(), "the master's IR2 is edge-latched");
        assert_eq!(pic.acknowledge(), Some(0x2f));
        assert_eq!(isr(&mut pic, 0xa0), 0, "nothing in service on the slave");
        assert_eq!(isr(&mut pic, 0x20), 1 << 2, "the master acknowledged IR2");
        outb(&mut pic, 0x20, 0x62);
        assert!(!pic.has_interrupt());
    }

    #[test]
    fn level_triggered_reassertion() {
        let mut pic = linux_init(0xffff);
        outb(&mut pic, 0x4d0, 0x20); // IRQ 5 level-triggered
        assert_eq!(pic.elcr(), 0x0020);
        pic.set_irq(5, true);
        assert_eq!(pic.acknowledge(), Some(0x25));
        assert_eq!(irr(&mut pic, 0x20), 1 << 5, "IRR follows the line");
        assert!(!pic.has_interrupt(), "in service");
        outb(&mut pic, 0x20, 0x20);
        assert!(pic.has_interrupt(), "line still high after the EOI");
        assert_eq!(pic.acknowledge(), Some(0x25));
        pic.set_irq(5, false);
        outb(&mut pic, 0x20, 0x20);
        assert!(!pic.has_interrupt());
        assert_eq!(irr(&mut pic, 0x20), 0);

        // The same with an edge-triggered line held high: one interrupt only.
        pic.set_irq(4, true);
        assert_eq!(pic.acknowledge(), Some(0x24));
        outb(&mut pic, 0x20, 0x20);
        assert!(!pic.has_interrupt());
    }

    #[test]
    fn level_mode_for_a_whole_chip_with_icw1_ltim() {
        let mut pic = PicPair::new();
        for (port, value) in [(0x20, 0x19), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01)] {
            outb(&mut pic, port, value);
        }
        pic.set_irq(1, true);
        assert_eq!(pic.acknowledge(), Some(0x21));
        outb(&mut pic, 0x20, 0x20);
        assert!(pic.has_interrupt());
        pic.set_irq(1, false);
        assert!(!pic.has_interrupt());
    }

    #[test]
    fn elcr_keeps_reserved_lines_edge() {
        let mut pic = PicPair::new();
        outb(&mut pic, 0x4d0, 0xff);
        outb(&mut pic, 0x4d1, 0xff);
        assert_eq!(inb(&mut pic, 0x4d0), 0xf8);
        assert_eq!(inb(&mut pic, 0x4d1), 0xde);
        // One 16-bit access covers both registers.
        pic.write(0x4b0, &[0x00, 0x0e]);
        assert_eq!(pic.elcr(), 0x0e00);
        pic.set_elcr(0xffff);
        assert_eq!(pic.elcr(), 0xdef8);
    }

    #[test]
    fn auto_eoi() {
        let mut pic = PicPair::new();
        for (port, value) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x03)] {
            outb(&mut pic, port, value);
        }
        pulse(&mut pic, 3);
        assert_eq!(pic.acknowledge(), Some(0x23));
        assert_eq!(isr(&mut pic, 0x20), 0, "no ISR bit in automatic EOI mode");
        // A lower priority request is not held off.
        pulse(&mut pic, 6);
        assert_eq!(pic.acknowledge(), Some(0x26));
        // Rotate in automatic EOI mode (set): the acknowledged level becomes lowest.
        outb(&mut pic, 0x20, 0x80);
        pulse(&mut pic, 1);
        assert_eq!(pic.acknowledge(), Some(0x21));
        pulse(&mut pic, 0);
        pulse(&mut pic, 3); // now above 0: the order is 2..7, 0, 1
        assert_eq!(pic.acknowledge(), Some(0x23));
        // Rotate in automatic EOI mode (clear): no more rotation.
        outb(&mut pic, 0x20, 0x00);
        assert_eq!(pic.acknowledge(), Some(0x20));
        pulse(&mut pic, 4);
        pulse(&mut pic, 5);
        assert_eq!(pic.acknowledge(), Some(0x24));
        assert_eq!(pic.acknowledge(), Some(0x25));
    }

    #[test]
    fn special_mask_mode() {
        let mut pic = linux_init(0xffff);
        pulse(&mut pic, 1);
        assert_eq!(pic.acknowledge(), Some(0x21));
        pulse(&mut pic, 4);
        assert!(!pic.has_interrupt(), "IRQ 1 in service holds off IRQ 4");
        // The handler masks its own level and enters special mask mode.
        outb(&mut pic, 0x21, 0x02);
        outb(&mut pic, 0x20, 0x68);
        assert!(pic.has_interrupt());
        assert_eq!(pic.acknowledge(), Some(0x24));
        // A non-specific EOI does not clear the masked level 1.
        outb(&mut pic, 0x20, 0x20);
        assert_eq!(isr(&mut pic, 0x20), 0b0000_0010);
        // Leave special mask mode; a specific EOI retires level 1.
        outb(&mut pic, 0x20, 0x48);
        outb(&mut pic, 0x20, 0x61);
        assert_eq!(isr(&mut pic, 0x20), 0);
    }

    #[test]
    fn special_fully_nested_mode() {
        for sfnm in [false, true] {
            let mut pic = PicPair::new();
            let icw4 = if sfnm { 0x11 } else { 0x01 };
            for (port, value) in [
                (0x20, 0x11),
                (0x21, 0x20),
                (0x21, 0x04),
                (0x21, icw4),
                (0xa0, 0x11),
                (0xa1, 0x28),
                (0xa1, 0x02),
                (0xa1, 0x01),
            ] {
                outb(&mut pic, port, value);
            }
            pulse(&mut pic, 12);
            assert_eq!(pic.acknowledge(), Some(0x2c));
            // A higher-priority slave request while the slave is in service.
            pulse(&mut pic, 9);
            assert_eq!(pic.has_interrupt(), sfnm, "sfnm = {sfnm}");
            if sfnm {
                assert_eq!(pic.acknowledge(), Some(0x29));
                assert_eq!(isr(&mut pic, 0xa0), 0b0001_0010);
            }
        }
    }

    #[test]
    fn single_mode_without_icw4() {
        let mut pic = PicPair::new();
        outb(&mut pic, 0x21, 0x55);
        outb(&mut pic, 0x20, 0x12); // single, no ICW4: ICW3 and ICW4 skipped
        assert_eq!(inb(&mut pic, 0x21), 0, "ICW1 clears the IMR");
        outb(&mut pic, 0x21, 0x40);
        // This write is already OCW1.
        outb(&mut pic, 0x21, 0x01);
        assert_eq!(inb(&mut pic, 0x21), 0x01);
        pulse(&mut pic, 3);
        assert_eq!(pic.acknowledge(), Some(0x43));
        assert_eq!(isr(&mut pic, 0x20), 1 << 3, "no AEOI without ICW4");
    }

    #[test]
    fn reinitialization_resets_state() {
        let mut pic = linux_init(0xffff);
        pulse(&mut pic, 3);
        pic.acknowledge();
        pic.set_irq(6, true); // edge line left high
        outb(&mut pic, 0x20, 0xc2); // priority rotated
        outb(&mut pic, 0x20, 0x11);
        assert!(pic.acknowledge().is_none(), "mid-sequence: not initialized");
        for v in [0x30, 0x04, 0x01] {
            outb(&mut pic, 0x21, v);
        }
        assert_eq!(isr(&mut pic, 0x20), 0);
        assert_eq!(irr(&mut pic, 0x20), 0, "the high edge line must toggle again");
        pulse(&mut pic, 0);
        pulse(&mut pic, 7);
        assert_eq!(pic.acknowledge(), Some(0x30), "IR0 highest again");
        pic.set_irq(6, false);
        pic.set_irq(6, true);
        assert!(irr(&mut pic, 0x20) & (1 << 6) != 0);
    }

    #[test]
    fn uninitialized_pic_raises_nothing() {
        let mut pic = PicPair::new();
        pulse(&mut pic, 0);
        assert!(!pic.has_interrupt());
        assert_eq!(pic.acknowledge(), None);
        pic.set_irq(2, true);
        pic.set_irq(200, true);
    }

    #[test]
    fn reset_keeps_line_levels() {
        let mut pic = linux_init(0xffff);
        pic.set_elcr(0x0800);
        pic.set_irq(11, true);
        pic.reset();
        assert_eq!(pic.elcr(), 0, "reset makes every line edge-triggered");
        assert!(!pic.has_interrupt());
        let mut pic = {
            let mut fresh = linux_init(0xffff);
            fresh.set_irq(11, true);
            fresh.reset();
            for (port, value) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01)] {
                outb(&mut fresh, port, value);
            }
            for (port, value) in [(0xa0, 0x11), (0xa1, 0x28), (0xa1, 0x02), (0xa1, 0x01)] {
                outb(&mut fresh, port, value);
            }
            fresh
        };
        // The line is still high; as an edge line it needs a new rising edge.
        assert_eq!(irr(&mut pic, 0xa0), 0);
        pulse(&mut pic, 11);
        pic.set_irq(11, true);
        assert_eq!(pic.acknowledge(), Some(0x2b));
    }

    #[test]
    fn guest_garbage_never_panics() {
        let mut pic = PicPair::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let offsets = [0u64, 1, 0x80, 0x81, 0x4b0, 0x4b1, 2, 0x7f, 0x4b2, u64::MAX];
        for _ in 0..20_000 {
            let r = next();
            let offset = offsets[(r % offsets.len() as u64) as usize];
            let len = [1usize, 2, 4, 8][((r >> 8) % 4) as usize];
            let bytes = (r >> 16).to_le_bytes();
            match (r >> 40) % 4 {
                0 => {
                    let mut buf = vec![0u8; len];
                    pic.read(offset, &mut buf);
                }
                1 => pic.write(offset, &bytes[..len]),
                2 => pic.set_irq((r >> 48) as u8 % 20, r & 1 == 1),
                _ => {
                    if pic.has_interrupt() {
                        pic.acknowledge();
                    }
                }
            }
        }
    }
}
