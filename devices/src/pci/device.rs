//! The interface between a PCI device model and the PCI bus (book chapter 4.2).
//!
//! A device owns its [`PciConfiguration`]; the bus forwards configuration
//! accesses to it (PCI Local Bus Specification 3.0, chapter 6) and the VMM
//! forwards accesses to wherever the guest placed its BARs.

use super::configuration::{BarReprogram, PciConfiguration};

/// A PCI function: its configuration space plus the registers behind its BARs.
///
/// The defaults of [`read_config`](Self::read_config) and
/// [`write_config`](Self::write_config) serve plain configuration space. A device
/// with capabilities that have side effects overrides `write_config`, calls the
/// default logic on its configuration and then looks at what changed, e.g.
/// [`super::MsixConfig::config_written`] for the MSI-X enable and mask bits.
pub trait PciDevice: Send {
    /// The device's configuration space.
    fn config(&self) -> &PciConfiguration;

    /// The device's configuration space, mutably.
    fn config_mut(&mut self) -> &mut PciConfiguration;

    /// A guest configuration read of `data.len()` bytes at `offset`.
    ///
    /// [`super::PciRoot`] only passes accesses a configuration transaction can
    /// carry: 1, 2 or 4 bytes at an offset below 0x1000, within one dword.
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        self.config_mut().read_config(offset, data);
    }

    /// A guest configuration write of `data` at `offset` (same guarantees as for
    /// reads); returns the BAR mapping changes it caused.
    fn write_config(&mut self, offset: u16, data: &[u8]) -> Vec<BarReprogram> {
        self.config_mut().write_config(offset, data)
    }

    /// A guest read of `data.len()` bytes at `offset` inside BAR `bar` (for a
    /// 64-bit BAR, the index of its lower slot). The offset can be anything the
    /// bus lets through; unimplemented registers read as all ones, which is
    /// also the default for a function without BARs.
    fn read_bar(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    /// A guest write of `data` at `offset` inside BAR `bar` (ignored by
    /// default).
    fn write_bar(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
}
