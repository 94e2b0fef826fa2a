//! The I/O APIC (book chapter 3.2), for KVM's split-irqchip mode: the local
//! APICs stay in the kernel, the IOAPIC is emulated here and turns pin
//! activity into MSI messages the VMM sends with KVM_SIGNAL_MSI (or mirrors
//! into KVM_IRQ_ROUTING_MSI routes).
//!
//! The model follows the *Intel 82093AA I/O Advanced Programmable Interrupt
//! Controller* datasheet (order number 290566), with the version-0x20
//! additions of the ICH I/O APIC (the EOI register):
//!
//! - 3.1.1 IOREGSEL (MMIO offset 0x00): selects the register, bits 7:0.
//! - 3.1.2 IOWIN (offset 0x10): 32-bit window on the selected register.
//! - ICH "EOI register" (offset 0x40, version 0x20): writing a vector clears
//!   the Remote IRR of every level-triggered entry with that vector, the
//!   directed EOI a local APIC with EOI-broadcast suppression relies on.
//! - 3.2.1 IOAPICID (register 0x00): the 4-bit ID in bits 27:24.
//! - 3.2.2 IOAPICVER (0x01): version in bits 7:0 ([`IOAPIC_VERSION`]),
//!   maximum redirection entry (23) in bits 23:16.
//! - 3.2.3 IOAPICARB (0x02): read-only; loaded with the ID when the ID is
//!   written, so it reads as the ID.
//! - 3.2.4 IOREDTBL\[23:0\] (0x10-0x3F): one 64-bit entry per pin, the low
//!   half at the even register, the high half at the odd one; see
//!   [`RedirectionEntry`] for the fields. Reset value: masked.
//!
//! Pin semantics (3.2.4): a masked pin ignores edges and level changes
//! entirely ("not delivered or held pending"). An unmasked edge-triggered pin
//! delivers on every transition of its line to asserted.
//!
//! Lines are logical, as in KVM's and QEMU's IOAPICs: a device asserts its
//! line, whatever the wire's electrical polarity on a real board. The
//! firmware tables tell the guest that polarity (ISA lines active high, PCI
//! INTx active low, which ACPI `_PRT` entries imply) and the guest programs
//! bit 13 to match; the model stores and reads back that bit but does not
//! invert by it, since it receives assertions, not voltages. (Inverting would
//! turn every PCI INTx that Linux programs active low into one that fires while
//! the device is idle.) A level-triggered pin delivers while active if Remote IRR is
//! clear and then sets Remote IRR; the local APIC's EOI for the vector
//! ([`IoApic::end_of_interrupt`], from KVM_EXIT_IOAPIC_EOI, or the EOI
//! register) clears it and the pin delivers again if still active. As in KVM
//! and QEMU, unmasking an active level pin delivers, and switching an entry to
//! edge clears its Remote IRR.
//!
//! Delivery is immediate, so Delivery Status always reads 0 (idle).
//!
//! # Messages
//!
//! An entry becomes an MSI message in the Intel SDM vol. 3 §11.11 format
//! (10.11 in older editions): address `0xFEE0_0000 | destination << 12 |
//! destination_mode << 2`, data `vector | delivery_mode << 8 | trigger << 15`.
//! The redirection hint and the level-assert bit are left 0, as QEMU does; KVM
//! ignores the latter and treats every MSI as an assert.
//!
//! # Delivery to the VMM
//!
//! The [`IoApic`] is built with an [`IoApicDelivery`]: every interrupt, from
//! [`IoApic::set_irq`], an EOI, or a guest MMIO write that unmasks an active
//! level pin, goes through [`IoApicDelivery::deliver`], and every guest change
//! of a redirection entry through [`IoApicDelivery::entry_changed`] (to update
//! a per-pin KVM_IRQ_ROUTING_MSI route so the kernel exits with
//! KVM_EXIT_IOAPIC_EOI for level vectors). Both are called with the IoApic
//! borrowed mutably (usually under its mutex): they must not call back into
//! it. ExtINT entries are delivered like any other; a VMM that wires the PIC
//! through the IOAPIC may prefer to treat them itself.
//!
//! # Registration
//!
//! Register at [`IOAPIC_MMIO_BASE`] for [`IOAPIC_MMIO_SIZE`] bytes. IOREGSEL
//! takes any access width (the low byte counts); IOWIN must be written with
//! 32-bit accesses (narrower writes are ignored) and may be read in part.
//! Anything else reads as all ones and is ignored.

use devices::BusDevice;

use super::msi::MsiMessage;
use super::pic::LogLimiter;

/// Guest-physical address of the IOAPIC's registers.
pub const IOAPIC_MMIO_BASE: u64 = 0xfec0_0000;
/// Size of the MMIO window to register.
pub const IOAPIC_MMIO_SIZE: u64 = 0x1000;
/// Interrupt input pins (redirection table entries).
pub const IOAPIC_NUM_PINS: usize = 24;
/// The version the IOAPICVER register reports: 0x20, an 82093AA-compatible
/// I/O APIC with the EOI register (0x11 would be the 82093AA itself).
pub const IOAPIC_VERSION: u8 = 0x20;

/// MMIO offsets.
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const IOEOI: u64 = 0x40;

/// Indirect register indexes.
const REG_ID: u8 = 0x00;
const REG_VERSION: u8 = 0x01;
const REG_ARB: u8 = 0x02;
const REG_REDTBL: u8 = 0x10;

/// Redirection entry bits.
const RTE_DELIVERY_STATUS: u64 = 1 << 12;
const RTE_POLARITY_LOW: u64 = 1 << 13;
const RTE_REMOTE_IRR: u64 = 1 << 14;
const RTE_LEVEL: u64 = 1 << 15;
const RTE_MASKED: u64 = 1 << 16;
/// Bits the guest cannot write.
const RTE_READ_ONLY: u64 = RTE_DELIVERY_STATUS | RTE_REMOTE_IRR;

/// Where the IOAPIC's interrupts go. See the module docs for when it is called.
pub trait IoApicDelivery: Send {
    /// Sends one interrupt message (e.g. with KVM_SIGNAL_MSI).
    fn deliver(&self, msg: MsiMessage);

    /// The guest changed the redirection entry of `pin`. The default ignores it.
    fn entry_changed(&self, _pin: u8, _entry: RedirectionEntry) {}
}

impl<F: Fn(MsiMessage) + Send> IoApicDelivery for F {
    fn deliver(&self, msg: MsiMessage) {
        self(msg)
    }
}

/// The delivery mode field (bits 10:8) of a redirection entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// 000: to every destination processor.
    Fixed,
    /// 001: to the lowest-priority processor among the destinations.
    LowestPriority,
    /// 010: system management interrupt (edge only, vector ignored).
    Smi,
    /// 100: NMI (edge only, vector ignored).
    Nmi,
    /// 101: INIT (edge only).
    Init,
    /// 111: external interrupt: the CPU fetches the vector from an 8259A.
    ExtInt,
    /// 011 and 110 are reserved; the raw value.
    Reserved(u8),
}

impl DeliveryMode {
    /// The 3-bit field value.
    pub fn bits(self) -> u8 {
        match self {
            DeliveryMode::Fixed => 0,
            DeliveryMode::LowestPriority => 1,
            DeliveryMode::Smi => 2,
            DeliveryMode::Nmi => 4,
            DeliveryMode::Init => 5,
            DeliveryMode::ExtInt => 7,
            DeliveryMode::Reserved(b) => b & 7,
        }
    }
}

/// One 64-bit redirection table entry (82093AA 3.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedirectionEntry(u64);

impl Default for RedirectionEntry {
    /// The reset value: masked, everything else 0.
    fn default() -> Self {
        RedirectionEntry(RTE_MASKED)
    }
}

impl RedirectionEntry {
    /// An entry from its raw 64-bit value.
    pub fn from_raw(raw: u64) -> Self {
        RedirectionEntry(raw)
    }

    /// The raw 64-bit value.
    pub fn raw(self) -> u64 {
        self.0
    }

    /// Bits 7:0, the interrupt vector.
    pub fn vector(self) -> u8 {
        self.0 as u8
    }

    /// Bits 10:8.
    pub fn delivery_mode(self) -> DeliveryMode {
        match (self.0 >> 8) & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            7 => DeliveryMode::ExtInt,
            b => DeliveryMode::Reserved(b as u8),
        }
    }

    /// Bit 11: the destination is a logical APIC ID set (else a physical ID).
    pub fn logical_destination(self) -> bool {
        self.0 & (1 << 11) != 0
    }

    /// Bit 12, Delivery Status: a delivery is pending (always false here).
    pub fn delivery_pending(self) -> bool {
        self.0 & RTE_DELIVERY_STATUS != 0
    }

    /// Bit 13, Interrupt Input Pin Polarity: the pin is active low.
    pub fn active_low(self) -> bool {
        self.0 & RTE_POLARITY_LOW != 0
    }

    /// Bit 14, Remote IRR: a level interrupt was accepted and awaits its EOI.
    pub fn remote_irr(self) -> bool {
        self.0 & RTE_REMOTE_IRR != 0
    }

    /// Bit 15, Trigger Mode: level-sensitive (else edge).
    pub fn level_triggered(self) -> bool {
        self.0 & RTE_LEVEL != 0
    }

    /// Bit 16, Interrupt Mask.
    pub fn masked(self) -> bool {
        self.0 & RTE_MASKED != 0
    }

    /// Bits 63:56, the destination APIC ID or logical set.
    pub fn destination(self) -> u8 {
        (self.0 >> 56) as u8
    }

    /// The MSI message this entry sends (SDM §11.11 format, see module docs),
    /// regardless of the mask.
    pub fn msi_message(self) -> MsiMessage {
        let address = 0xfee0_0000 | u64::from(self.destination()) << 12 | u64::from(self.logical_destination()) << 2;
        let data = u32::from(self.vector())
            | u32::from(self.delivery_mode().bits()) << 8
            | u32::from(self.level_triggered()) << 15;
        MsiMessage { address, data }
    }

    /// The message for a KVM MSI route: `None` while masked.
    pub fn route(self) -> Option<MsiMessage> {
        (!self.masked()).then(|| self.msi_message())
    }

    fn set(&mut self, bit: u64, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }
}

/// The I/O APIC; see the module docs.
pub struct IoApic {
    id: u8,
    regsel: u8,
    entries: [RedirectionEntry; IOAPIC_NUM_PINS],
    /// Raw level of each input line (before polarity).
    lines: u32,
    delivery: Box<dyn IoApicDelivery>,
    bad_access: LogLimiter,
    bad_pin: LogLimiter,
}

impl std::fmt::Debug for IoApic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoApic")
            .field("id", &self.id)
            .field("regsel", &self.regsel)
            .field("lines", &format_args!("{:#08x}", self.lines))
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

impl IoApic {
    /// An IOAPIC with ID 0 in its reset state (every pin masked), delivering
    /// through `delivery`.
    pub fn new(delivery: Box<dyn IoApicDelivery>) -> Self {
        IoApic {
            id: 0,
            regsel: 0,
            entries: [RedirectionEntry::default(); IOAPIC_NUM_PINS],
            lines: 0,
            delivery,
            bad_access: LogLimiter::default(),
            bad_pin: LogLimiter::default(),
        }
    }

    /// Returns to the reset state; the line levels are kept.
    pub fn reset(&mut self) {
        self.id = 0;
        self.regsel = 0;
        self.entries = [RedirectionEntry::default(); IOAPIC_NUM_PINS];
    }

    /// The IOAPIC ID (bits 27:24 of register 0); the MP/ACPI tables must agree.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Sets the IOAPIC ID (4 bits), as firmware would.
    pub fn set_id(&mut self, id: u8) {
        self.id = id & 0xf;
    }

    /// The redirection entry of `pin`, or `None` past the last pin.
    pub fn entry(&self, pin: u8) -> Option<RedirectionEntry> {
        self.entries.get(usize::from(pin)).copied()
    }

    /// The KVM MSI route of every pin (`None` = masked), indexed by pin.
    pub fn routes(&self) -> [Option<MsiMessage>; IOAPIC_NUM_PINS] {
        self.entries.map(RedirectionEntry::route)
    }

    /// Whether the line of `pin` is asserted (see "Lines are logical" above).
    fn active(&self, pin: usize) -> bool {
        self.lines & (1 << pin) != 0
    }

    /// Delivers a level-triggered pin if it is active, unmasked and not
    /// waiting for an EOI.
    fn service_level(&mut self, pin: usize) {
        let entry = self.entries[pin];
        if entry.level_triggered() && !entry.masked() && !entry.remote_irr() && self.active(pin) {
            self.entries[pin].set(RTE_REMOTE_IRR, true);
            self.delivery.deliver(entry.msi_message());
        }
    }

    /// Asserts (`level` true) or deasserts input `pin` (0-23); the entry's
    /// polarity bit does not invert it (see the module docs). Pins past 23 are
    /// ignored.
    pub fn set_irq(&mut self, pin: u8, level: bool) {
        let p = usize::from(pin);
        if p >= IOAPIC_NUM_PINS {
            if let Some(n) = self.bad_pin.tick() {
                log::warn!("ioapic: ignoring pin {pin}, there are {IOAPIC_NUM_PINS} (#{n})");
            }
            return;
        }
        let was_active = self.active(p);
        if level {
            self.lines |= 1 << p;
        } else {
            self.lines &= !(1 << p);
        }
        let entry = self.entries[p];
        if entry.masked() {
            return;
        }
        if entry.level_triggered() {
            self.service_level(p);
        } else if self.active(p) && !was_active {
            self.delivery.deliver(entry.msi_message());
        }
    }

    /// A local APIC signalled EOI for `vector` (KVM_EXIT_IOAPIC_EOI or the EOI
    /// register): clears Remote IRR of the level-triggered entries with that
    /// vector and delivers those whose line is still active again.
    pub fn end_of_interrupt(&mut self, vector: u8) {
        for pin in 0..IOAPIC_NUM_PINS {
            let entry = self.entries[pin];
            if entry.vector() == vector && entry.level_triggered() && entry.remote_irr() {
                self.entries[pin].set(RTE_REMOTE_IRR, false);
                self.service_level(pin);
            }
        }
    }

    /// Reads indirect register `index`, as IOWIN does after IOREGSEL = index.
    pub fn read_register(&mut self, index: u8) -> u32 {
        match index {
            REG_ID | REG_ARB => u32::from(self.id) << 24,
            REG_VERSION => ((IOAPIC_NUM_PINS as u32 - 1) << 16) | u32::from(IOAPIC_VERSION),
            _ => match Self::table_slot(index) {
                Some((pin, high)) => {
                    let raw = self.entries[pin].raw();
                    if high {
                        (raw >> 32) as u32
                    } else {
                        raw as u32
                    }
                }
                None => {
                    if let Some(n) = self.bad_access.tick() {
                        log::warn!("ioapic: read of unknown register {index:#x} (#{n})");
                    }
                    u32::MAX
                }
            },
        }
    }

    /// Writes indirect register `index`, as IOWIN does after IOREGSEL = index.
    pub fn write_register(&mut self, index: u8, value: u32) {
        match index {
            REG_ID => self.id = ((value >> 24) & 0xf) as u8,
            REG_VERSION | REG_ARB => {
                if let Some(n) = self.bad_access.tick() {
                    log::debug!("ioapic: ignoring write to read-only register {index:#x} (#{n})");
                }
            }
            _ => match Self::table_slot(index) {
                Some((pin, high)) => self.write_entry_half(pin, high, value),
                None => {
                    if let Some(n) = self.bad_access.tick() {
                        log::warn!("ioapic: write {value:#x} to unknown register {index:#x} (#{n})");
                    }
                }
            },
        }
    }

    /// The (pin, high half) a redirection-table register index selects.
    fn table_slot(index: u8) -> Option<(usize, bool)> {
        let slot = usize::from(index.checked_sub(REG_REDTBL)?);
        let pin = slot / 2;
        (pin < IOAPIC_NUM_PINS).then_some((pin, slot % 2 == 1))
    }

    fn write_entry_half(&mut self, pin: usize, high: bool, value: u32) {
        let old = self.entries[pin].raw();
        let new =
            if high { (old & 0xffff_ffff) | u64::from(value) << 32 } else { (old & !0xffff_ffff) | u64::from(value) };
        let mut entry = RedirectionEntry((new & !RTE_READ_ONLY) | (old & RTE_READ_ONLY));
        if !entry.level_triggered() {
            entry.set(RTE_REMOTE_IRR, false);
        }
        self.entries[pin] = entry;
        self.delivery.entry_changed(pin as u8, entry);
        // An active level pin that became deliverable (e.g. unmasked) fires.
        self.service_level(pin);
    }

    fn complain(&mut self, what: &str, offset: u64, len: usize) {
        if let Some(n) = self.bad_access.tick() {
            log::warn!("ioapic: ignoring {len}-byte {what} at offset {offset:#x} (#{n})");
        }
    }
}

impl BusDevice for IoApic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let len = data.len();
        // The 32-bit register containing the access, and the access's place in it.
        let reg = offset & !3;
        let shift = offset & 3;
        if len == 0 || len > 4 || shift + len as u64 > 4 {
            self.complain("read", offset, len);
            data.fill(0xff);
            return;
        }
        let value = match reg {
            IOREGSEL => u32::from(self.regsel),
            IOWIN => self.read_register(self.regsel),
            _ => {
                self.complain("read", offset, len);
                data.fill(0xff);
                return;
            }
        };
        let bytes = value.to_le_bytes();
        let start = shift as usize;
        data.copy_from_slice(&bytes[start..start + len]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let len = data.len();
        match (offset, data) {
            (IOREGSEL, [sel, ..]) if len <= 4 => self.regsel = *sel,
            (IOWIN, [a, b, c, d]) => {
                let value = u32::from_le_bytes([*a, *b, *c, *d]);
                self.write_register(self.regsel, value);
            }
            (IOEOI, [vector, ..]) if len <= 4 => self.end_of_interrupt(*vector),
            _ => self.complain("write", offset, len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Log = Arc<Mutex<Vec<MsiMessage>>>;

    fn ioapic() -> (IoApic, Log) {
        let log: Log = Arc::default();
        let sink = log.clone();
        let apic = IoApic::new(Box::new(move |m| sink.lock().unwrap().push(m)));
        (apic, log)
    }

    fn taken(log: &Log) -> Vec<MsiMessage> {
        std::mem::take(&mut *log.lock().unwrap())
    }

    /// Guest-style indirect access through IOREGSEL/IOWIN.
    fn write_reg(apic: &mut IoApic, index: u8, value: u32) {
        apic.write(IOREGSEL, &[index, 0, 0, 0]);
        apic.write(IOWIN, &value.to_le_bytes());
    }

    fn read_reg(apic: &mut IoApic, index: u8) -> u32 {
        apic.write(IOREGSEL, &[index, 0, 0, 0]);
        let mut b = [0u8; 4];
        apic.read(IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    /// Programs `pin` as Linux would: high half, then low half.
    fn program(apic: &mut IoApic, pin: u8, low: u32, dest: u8) {
        write_reg(apic, 0x11 + 2 * pin, u32::from(dest) << 24);
        write_reg(apic, 0x10 + 2 * pin, low);
    }

    const LEVEL: u32 = 1 << 15;
    const MASK: u32 = 1 << 16;
    const ACTIVE_LOW: u32 = 1 << 13;

    #[test]
    fn id_version_and_arbitration_registers() {
        let (mut apic, _) = ioapic();
        assert_eq!(read_reg(&mut apic, 0x01), 0x0017_0020);
        assert_eq!(read_reg(&mut apic, 0x00), 0);
        write_reg(&mut apic, 0x00, 0x0f00_0000 | 0xf0ff_ffff);
        assert_eq!(read_reg(&mut apic, 0x00), 0x0f00_0000, "a 4-bit ID in 27:24");
        assert_eq!(apic.id(), 0xf);
        assert_eq!(read_reg(&mut apic, 0x02), 0x0f00_0000, "arbitration ID follows the ID");
        write_reg(&mut apic, 0x01, 0);
        write_reg(&mut apic, 0x02, 0);
        assert_eq!(read_reg(&mut apic, 0x01), 0x0017_0020, "read-only");
        // IOREGSEL reads back.
        let mut b = [0u8];
        apic.read(IOREGSEL, &mut b);
        assert_eq!(b[0], 0x01, "the last register selected");
    }

    #[test]
    fn redirection_entry_halves_read_write() {
        let (mut apic, _) = ioapic();
        for pin in 0..24u8 {
            assert_eq!(read_reg(&mut apic, 0x10 + 2 * pin), MASK, "reset: masked");
            assert_eq!(read_reg(&mut apic, 0x11 + 2 * pin), 0);
        }
        // Delivery status and remote IRR are read-only.
        write_reg(&mut apic, 0x10 + 2 * 23, 0x0001_ffff);
        write_reg(&mut apic, 0x11 + 2 * 23, 0xab00_0000);
        assert_eq!(read_reg(&mut apic, 0x10 + 2 * 23), 0x0001_afff);
        assert_eq!(read_reg(&mut apic, 0x11 + 2 * 23), 0xab00_0000);
        let e = apic.entry(23).unwrap();
        assert_eq!(e.vector(), 0xff);
        assert_eq!(e.delivery_mode(), DeliveryMode::ExtInt);
        assert!(e.logical_destination());
        assert!(!e.delivery_pending());
        assert!(e.active_low());
        assert!(!e.remote_irr());
        assert!(e.level_triggered());
        assert!(e.masked());
        assert_eq!(e.destination(), 0xab);
        assert_eq!(apic.entry(24), None);
        // Register 0x40 and above are not the table.
        assert_eq!(read_reg(&mut apic, 0x40), u32::MAX);
        assert_eq!(read_reg(&mut apic, 0x03), u32::MAX);
    }

    #[test]
    fn masked_edge_pin_not_delivered() {
        let (mut apic, log) = ioapic();
        program(&mut apic, 4, 0x34 | MASK, 0);
        apic.set_irq(4, true);
        apic.set_irq(4, false);
        assert!(taken(&log).is_empty());
        // Not held pending either: unmasking delivers nothing.
        program(&mut apic, 4, 0x34, 0);
        assert!(taken(&log).is_empty());
        apic.set_irq(4, true);
        assert_eq!(taken(&log).len(), 1);
    }

    #[test]
    fn edge_pin_delivers_on_rising_edges_only() {
        let (mut apic, log) = ioapic();
        program(&mut apic, 1, 0x31, 0);
        apic.set_irq(1, true);
        apic.set_irq(1, true);
        assert_eq!(taken(&log).len(), 1, "a held line is one edge");
        apic.set_irq(1, false);
        assert!(taken(&log).is_empty());
        apic.set_irq(1, true);
        let msgs = taken(&log);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].data, 0x31);
        assert!(!apic.entry(1).unwrap().remote_irr());
    }

    #[test]
    fn level_pin_sets_remote_irr() {
        let (mut apic, log) = ioapic();
        program(&mut apic, 10, 0x41 | LEVEL, 1);
        apic.set_irq(10, true);
        assert_eq!(taken(&log).len(), 1);
        assert!(apic.entry(10).unwrap().remote_irr());
        assert_eq!(read_reg(&mut apic, 0x10 + 20) & (1 << 14), 1 << 14);
        // No second delivery while Remote IRR is set.
        apic.set_irq(10, false);
        apic.set_irq(10, true);
        assert!(taken(&log).is_empty());
        // Remote IRR cannot be cleared by a write of the low half.
        write_reg(&mut apic, 0x10 + 20, 0x41 | LEVEL);
        assert!(apic.entry(10).unwrap().remote_irr());
    }

    #[test]
    fn eoi_clears_remote_irr_and_redelivers_while_asserted() {
        let (mut apic, log) = ioapic();
        program(&mut apic, 11, 0x42 | LEVEL, 0);
        apic.set_irq(11, true);
        assert_eq!(taken(&log).len(), 1);
        apic.end_of_interrupt(0x99);
        assert!(apic.entry(11).unwrap().remote_irr(), "another vector's EOI");
        apic.end_of_interrupt(0x42);
        assert_eq!(taken(&log).len(), 1, "still asserted: delivered again");
        assert!(apic.entry(11).unwrap().remote_irr());
        apic.set_irq(11, false);
        apic.end_of_interrupt(0x42);
        assert!(taken(&log).is_empty());
        assert!(!apic.entry(11).unwrap().remote_irr());
        // The EOI register (version 0x20) does the same.
        apic.set_irq(11, true);
        assert_eq!(taken(&log).len(), 1);
        apic.write(IOEOI, &0x42u32.to_le_bytes());
        assert_eq!(taken(&log).len(), 1);
    }

    #[test]
    fn active_low_entries_still_deliver_asserted_lines() {
        let (mut apic, log) = ioapic();
        // Level, active low: a PCI INTx line as ACPI's _PRT makes Linux program it.
        program(&mut apic, 16, 0x50 | LEVEL | ACTIVE_LOW | MASK, 0);
        assert!(apic.entry(16).unwrap().active_low(), "the bit reads back");
        program(&mut apic, 16, 0x50 | LEVEL | ACTIVE_LOW, 0);
        assert!(taken(&log).is_empty(), "an idle line does not fire");
        apic.set_irq(16, true); // the device asserts its INTx
        assert_eq!(taken(&log).len(), 1);
        apic.set_irq(16, false);
        apic.end_of_interrupt(0x50);
        assert!(taken(&log).is_empty(), "deasserted before the EOI: done");
        // Edge, active low: the assertion is the edge that counts.
        program(&mut apic, 17, 0x51 | ACTIVE_LOW, 0);
        apic.set_irq(17, true);
        assert_eq!(taken(&log).len(), 1);
        apic.set_irq(17, false);
        assert!(taken(&log).is_empty());
    }

    #[test]
    fn unmasking_an_asserted_level_pin_delivers() {
        let (mut apic, log) = ioapic();
        program(&mut apic, 9, 0x61 | LEVEL | MASK, 0);
        apic.set_irq(9, true);
        assert!(taken(&log).is_empty());
        program(&mut apic, 9, 0x61 | LEVEL, 0);
        assert_eq!(taken(&log).len(), 1);
        assert!(apic.entry(9).unwrap().remote_irr());
        // Switching the entry to edge clears Remote IRR.
        write_reg(&mut apic, 0x10 + 18, 0x61);
        assert!(!apic.entry(9).unwrap().remote_irr());
    }

    #[test]
    fn msi_message_destination_and_format() {
        let (mut apic, log) = ioapic();
        // Fixed, physical, edge, vector 0x30 to APIC 3.
        program(&mut apic, 2, 0x30, 3);
        apic.set_irq(2, true);
        assert_eq!(taken(&log), vec![MsiMessage { address: 0xfee0_3000, data: 0x30 }]);
        // Lowest priority, logical, level, vector 0x41 to logical set 0x0f.
        program(&mut apic, 5, 0x41 | 1 << 8 | 1 << 11 | LEVEL, 0x0f);
        apic.set_irq(5, true);
        assert_eq!(taken(&log), vec![MsiMessage { address: 0xfee0_f004, data: 0x8141 }]);
        // NMI and ExtINT keep their delivery mode in the data.
        let nmi = RedirectionEntry::from_raw(4 << 8 | 0xffu64 << 56);
        assert_eq!(nmi.msi_message(), MsiMessage { address: 0xfeef_f000, data: 0x400 });
        assert_eq!(RedirectionEntry::from_raw(7 << 8).msi_message().data, 0x700);
        // Routes for KVM: masked pins have none.
        let routes = apic.routes();
        assert_eq!(routes[2], Some(MsiMessage { address: 0xfee0_3000, data: 0x30 }));
        assert_eq!(routes[0], None);
    }

    #[test]
    fn entry_changes_are_reported() {
        struct Recorder(Arc<Mutex<Vec<(u8, u64)>>>);
        impl IoApicDelivery for Recorder {
            fn deliver(&self, _msg: MsiMessage) {}
            fn entry_changed(&self, pin: u8, entry: RedirectionEntry) {
                self.0.lock().unwrap().push((pin, entry.raw()));
            }
        }
        let changes = Arc::new(Mutex::new(Vec::new()));
        let mut apic = IoApic::new(Box::new(Recorder(changes.clone())));
        program(&mut apic, 7, 0x37, 2);
        assert_eq!(*changes.lock().unwrap(), vec![(7, 0x0200_0000_0001_0000), (7, 0x0200_0000_0000_0037)]);
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let (mut apic, log) = ioapic();
        program(&mut apic, 0, 0x20, 0);
        // A byte read of IOWIN returns that byte of the register.
        apic.write(IOREGSEL, &[0x01]);
        let mut b = [0u8; 1];
        apic.read(IOWIN + 2, &mut b);
        assert_eq!(b[0], 0x17);
        // A narrow write to IOWIN is ignored.
        apic.write(IOREGSEL, &[0x10]);
        apic.write(IOWIN, &[0x55]);
        assert_eq!(read_reg(&mut apic, 0x10), 0x20);
        let mut q = [0u8; 8];
        apic.read(IOWIN, &mut q);
        assert_eq!(q, [0xff; 8]);
        apic.read(0x20, &mut b);
        assert_eq!(b[0], 0xff);
        apic.set_irq(24, true);
        apic.set_irq(255, true);
        assert!(taken(&log).is_empty());

        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let offset = [0u64, 1, 3, 0x10, 0x12, 0x13, 0x40, 0x44, 0xfff, u64::MAX][(x % 10) as usize];
            let len = [0usize, 1, 2, 4, 8][((x >> 8) % 5) as usize];
            let bytes = (x >> 3).to_le_bytes();
            match (x >> 32) % 3 {
                0 => apic.write(offset, &bytes[..len]),
                1 => {
                    let mut buf = vec![0u8; len];
                    apic.read(offset, &mut buf);
                }
                _ => apic.set_irq((x >> 40) as u8 % 30, x & 1 == 1),
            }
            if x.is_multiple_of(7) {
                apic.end_of_interrupt((x >> 50) as u8);
            }
        }
    }
}
