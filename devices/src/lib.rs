//! Emulated platform devices (book chapter 4.4, "full virtualization").
//!
//! Every device here is a plain state machine behind the [`BusDevice`] trait: the
//! VMM's port-I/O or MMIO bus hands it the offset and bytes of one guest access and
//! the device answers. Devices never see KVM: they raise interrupts through an
//! [`IrqLine`] and ask the VMM to stop through a [`GuestEventSink`], so the same
//! model serves any irqchip mode and is unit-testable without `/dev/kvm`.

pub mod acpi_pm;
pub mod bus;
pub mod debug_exit;
pub mod debugcon;
pub mod fw_cfg;
pub mod i8042;
pub mod pci;
pub mod ratelimit;
pub mod rtc;
pub mod serial;

pub use bus::{BusDevice, GuestEvent, GuestEventSink, IrqLine, RecordingIrqLine};
