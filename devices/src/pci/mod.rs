//! PCI: configuration space, the root bus and its config-access mechanisms, MSI-X
//! (book chapters 4.2, "PCI configuration space and its emulation", and 3.4, "MSI-X").
//!
//! A PCI function is seen by software through its *configuration space*: 256 bytes
//! (4 KiB on PCI Express) of registers that identify it, enable its address
//! decoders and bus mastering, place its BARs (base address registers) in the
//! guest's memory or I/O address space and chain its capabilities.
//!
//! - [`configuration`]: one function's configuration space, with per-byte
//!   write and write-1-to-clear masks, BARs and the capability list
//!   (PCI Local Bus Specification 3.0, chapter 6).
//! - [`device`]: the [`PciDevice`] trait every PCI device model implements.
//! - [`bus`]: [`PciRoot`], the devices of bus 0 behind a host bridge, and the two
//!   ways the guest reaches their configuration spaces: configuration mechanism
//!   \#1 at I/O ports 0xCF8-0xCFF ([`PciConfigIo`]) and PCI Express ECAM
//!   ([`PciConfigMmio`]); plus [`PciBarRegion`], which the VMM puts on its buses
//!   wherever the guest placed a BAR.
//! - [`i440fx`]: the 440FX host bridge QEMU's `pc` machine has, for firmware that
//!   expects it (SeaBIOS); direct kernel boots get [`PciHostBridge`] instead.
//! - [`msix`]: the MSI-X capability, vector table and pending bit array
//!   ([`MsixConfig`]), delivering through an [`MsiInterrupt`].
//!
//! As everywhere in this crate, nothing here sees KVM: BAR moves are reported to
//! a [`BarRelocator`] and MSI-X messages to an [`MsiInterrupt`], both implemented
//! by the VMM.

pub mod bus;
pub mod configuration;
pub mod device;
pub mod i440fx;
pub mod msix;

use std::fmt;

pub use bus::{BarRelocator, Bdf, PciBarRegion, PciConfigIo, PciConfigMmio, PciHostBridge, PciRoot, SharedPciDevice};
pub use configuration::{BarReprogram, PciBar, PciBarKind, PciConfiguration, PciIds};
pub use device::PciDevice;
pub use i440fx::I440fxHostBridge;
pub use msix::{MsiInterrupt, MsiMessage, MsixConfig, MsixNotify};

/// Errors from building PCI devices and attaching them to the bus.
///
/// These are configuration mistakes of the VMM, never caused by the guest: guest
/// accesses that make no sense are ignored (writes) or read as all ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PciError {
    /// A BAR index outside 0-5, or 5 for a 64-bit BAR (which needs two slots).
    BarIndex(usize),
    /// The BAR slot (or, for a 64-bit BAR, the slot above it) is already taken.
    BarInUse(usize),
    /// The BAR size is not a power of two or is outside what its kind allows
    /// (I/O: 4-256 bytes; 32-bit memory: 16 bytes-2 GiB; 64-bit memory: 16 bytes-2^63).
    BarSize {
        /// Index of the rejected BAR.
        index: usize,
        /// The rejected size.
        size: u64,
    },
    /// The BAR address is not aligned to the BAR size or the BAR does not fit
    /// its address space (64 KiB of ports, 4 GiB for a 32-bit BAR).
    BarAddress {
        /// Index of the rejected BAR.
        index: usize,
        /// The rejected address.
        addr: u64,
    },
    /// An I/O BAR cannot be prefetchable.
    BarPrefetchableIo(usize),
    /// The capability does not fit in the rest of the 256-byte legacy space.
    CapabilitySpaceFull {
        /// Bytes the capability needs, header included.
        needed: usize,
    },
    /// The capability's write mask is not as long as its body.
    CapabilityMaskLength {
        /// Length of the body.
        body: usize,
        /// Length of the mask.
        mask: usize,
    },
    /// A host-side write touched bytes it may not change (BARs, command register)
    /// or lay outside the configuration space.
    RawWriteRejected {
        /// Offset of the rejected write.
        offset: u16,
        /// Its length.
        len: usize,
    },
    /// The interrupt pin must be 0 (none) or 1-4 (INTA#-INTD#).
    InterruptPin(u8),
    /// Every device number 1-31 on bus 0 is taken.
    NoFreeSlot,
    /// Only bus 0 exists.
    NoSuchBus(u8),
    /// A device number above 31 or a function number above 7.
    BadAddress {
        /// The rejected device number.
        device: u8,
        /// The rejected function number.
        function: u8,
    },
    /// That bus/device/function already holds a device.
    SlotInUse(Bdf),
    /// Functions 1-7 of a slot are only scanned by guests when function 0 exists.
    NoFunctionZero(Bdf),
    /// MSI-X: the vector count must be 1-2048.
    MsixVectorCount(u16),
    /// MSI-X: a BAR indicator above 5, or an offset not 8-byte aligned.
    MsixLocation {
        /// The BAR indicator.
        bir: u8,
        /// The offset within the BAR.
        offset: u32,
    },
    /// MSI-X: the table and the PBA overlap.
    MsixOverlap,
    /// MSI-X: the table or PBA is not inside a memory BAR of the configuration space.
    MsixBar {
        /// The BAR indicator that does not fit.
        bir: u8,
    },
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PciError::BarIndex(i) => write!(f, "BAR index {i} is out of range"),
            PciError::BarInUse(i) => write!(f, "BAR {i} is already in use"),
            PciError::BarSize { index, size } => {
                write!(f, "BAR {index}: size {size:#x} is invalid for its kind")
            }
            PciError::BarAddress { index, addr } => {
                write!(f, "BAR {index}: address {addr:#x} is misaligned or out of range")
            }
            PciError::BarPrefetchableIo(i) => {
                write!(f, "BAR {i}: an I/O BAR cannot be prefetchable")
            }
            PciError::CapabilitySpaceFull { needed } => {
                write!(f, "no room for a {needed}-byte capability in the legacy config space")
            }
            PciError::CapabilityMaskLength { body, mask } => {
                write!(f, "capability write mask has {mask} bytes for a {body}-byte body")
            }
            PciError::RawWriteRejected { offset, len } => {
                write!(f, "host write of {len} bytes at config offset {offset:#x} is not allowed")
            }
            PciError::InterruptPin(p) => write!(f, "interrupt pin {p} is not 0-4"),
            PciError::NoFreeSlot => write!(f, "no free device slot on PCI bus 0"),
            PciError::NoSuchBus(b) => write!(f, "PCI bus {b} does not exist (only bus 0 does)"),
            PciError::BadAddress { device, function } => {
                write!(f, "PCI device {device} function {function} is out of range")
            }
            PciError::SlotInUse(bdf) => write!(f, "PCI address {bdf} is already in use"),
            PciError::NoFunctionZero(bdf) => {
                write!(f, "cannot add {bdf}: function 0 of that slot is absent")
            }
            PciError::MsixVectorCount(n) => write!(f, "MSI-X vector count {n} is not 1-2048"),
            PciError::MsixLocation { bir, offset } => {
                write!(f, "MSI-X structure at BAR {bir} offset {offset:#x} is invalid")
            }
            PciError::MsixOverlap => write!(f, "MSI-X table and PBA overlap"),
            PciError::MsixBar { bir } => {
                write!(f, "MSI-X structure does not fit in memory BAR {bir}")
            }
        }
    }
}

impl std::error::Error for PciError {}
