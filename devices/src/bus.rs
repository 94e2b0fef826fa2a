//! The small traits shared by every device and the VMM that hosts them.

use std::sync::Arc;

/// A device that occupies a range of port-I/O or MMIO addresses.
///
/// `offset` is relative to the start of the range the device was registered at;
/// `data.len()` is the access width (1, 2, 4 or 8 bytes). Guest-controlled offsets
/// and widths must be handled for every value: an access the device does not
/// implement reads as all ones and ignores writes.
pub trait BusDevice: Send {
    /// Handles a guest read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Performs a read on a byte-wide register file the way an 8-bit ISA device
/// sees it: an access of several bytes is that many byte reads at consecutive
/// offsets (as QEMU splits them too), e.g. `inw` on a UART's LSR gives LSR and
/// MSR.
pub fn read_bytewise(offset: u64, data: &mut [u8], mut read_byte: impl FnMut(u64) -> u8) {
    for (i, byte) in data.iter_mut().enumerate() {
        // An offset past u64::MAX is no register (never wraps round to 0).
        *byte = offset.checked_add(i as u64).map_or(0xff, &mut read_byte);
    }
}

/// The write counterpart of [`read_bytewise`]: e.g. `outw` to the RTC's port
/// 0x70 writes the index, then the data register.
pub fn write_bytewise(offset: u64, data: &[u8], mut write_byte: impl FnMut(u64, u8)) {
    for (i, &byte) in data.iter().enumerate() {
        if let Some(at) = offset.checked_add(i as u64) {
            write_byte(at, byte);
        }
    }
}

/// One interrupt request line (an ISA IRQ / GSI) as seen by a device.
///
/// The device reports the level of its output; whoever implements the line
/// (the in-kernel irqchip through KVM_IRQ_LINE, or a user-space PIC/IOAPIC)
/// decides how edges and levels become interrupts.
pub trait IrqLine: Send + Sync {
    /// Drives the line high (`true`) or low (`false`).
    fn set_level(&self, asserted: bool);
}

/// What a device may ask of the VMM as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEvent {
    /// The guest asked for a system reset (i8042 command 0xFE).
    Reset,
    /// The guest asked to power off.
    PowerOff,
    /// A test guest wrote a status byte to the debug exit port.
    DebugExit(u8),
}

/// Receives [`GuestEvent`]s; the VMM stops the VM when it gets one.
pub type GuestEventSink = Arc<dyn Fn(GuestEvent) + Send + Sync>;

/// An [`IrqLine`] that records its level, for tests and for unconnected devices.
#[derive(Debug, Default)]
pub struct RecordingIrqLine {
    level: std::sync::atomic::AtomicBool,
    rising_edges: std::sync::atomic::AtomicU64,
}

impl RecordingIrqLine {
    /// The current level of the line.
    pub fn level(&self) -> bool {
        self.level.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// How many low-to-high transitions the line has seen.
    pub fn rising_edges(&self) -> u64 {
        self.rising_edges.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl IrqLine for RecordingIrqLine {
    fn set_level(&self, asserted: bool) {
        use std::sync::atomic::Ordering;
        let was = self.level.swap(asserted, Ordering::SeqCst);
        if asserted && !was {
            self.rising_edges.fetch_add(1, Ordering::SeqCst);
        }
    }
}
