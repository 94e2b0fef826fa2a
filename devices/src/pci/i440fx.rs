//! The Intel 440FX host bridge (82441FX PMC) as QEMU's `pc` machine presents it,
//! for firmware written for that machine (SeaBIOS).
//!
//! rvmm's own host bridge ([`super::PciHostBridge`], 1b36:0008) has no chipset
//! registers and is what directly booted kernels see. Firmware is different: SeaBIOS
//! identifies the platform by the host bridge at 00:00.0 (`qemu_detect`: subsystem
//! 1af4:1100 means "QEMU", device 1237 means "i440fx") and then drives the chipset
//! registers it knows. This model answers those probes:
//!
//! | register | offset | reset | what SeaBIOS does with it |
//! | --- | --- | --- | --- |
//! | vendor/device | 0x00 | 8086:1237, rev 02 | `qemu_detect` prints "Running on QEMU (i440fx)"; `pci_bios_init_platform` picks the i440FX memory window and PIIX INTx swizzle |
//! | subsystem | 0x2C | 1af4:1100 | without it SeaBIOS does not believe it runs on QEMU and ignores fw_cfg |
//! | PAM0-PAM6 | 0x59-0x5F | 0 | `make_bios_writable` sets 0x30/0x33 (shadow RAM read/write), `make_bios_readonly` 0x10/0x11 |
//! | SMRAM | 0x72 | 0x02 | read by SMM set-up code; bits 3-6 writable, C_BASE_SEG fixed at 010b |
//!
//! The PAM registers are stored and read back but do not switch anything: rvmm
//! maps 0xC0000-0xFFFFF as plain RAM holding a copy of the firmware's top 128 KiB
//! from the start (KVM memory slots cannot express "reads from ROM, writes to
//! RAM", and SeaBIOS copies itself into shadow RAM anyway), so every PAM setting
//! SeaBIOS makes finds the memory already as it wants it. There is no SMRAM:
//! the machine offers no SMM (no PIIX4 power-management function), so SeaBIOS
//! never opens it.

use super::configuration::{PciConfiguration, PciIds};
use super::device::PciDevice;

/// Intel's PCI vendor ID.
pub const INTEL_VENDOR_ID: u16 = 0x8086;
/// The 82441FX PMC (440FX host bridge) device ID.
pub const I440FX_DEVICE_ID: u16 = 0x1237;
/// The revision QEMU reports.
pub const I440FX_REVISION: u8 = 0x02;
/// First Programmable Attribute Map register (PAM0: 0xF0000-0xFFFFF).
pub const I440FX_PAM0: u16 = 0x59;
/// Number of PAM registers (PAM0-PAM6).
pub const I440FX_PAM_COUNT: u16 = 7;
/// The SMRAM control register.
pub const I440FX_SMRAM: u16 = 0x72;
/// SMRAM's reset value: C_BASE_SEG = 010b (SMRAM at 0xA0000), everything closed.
pub const I440FX_SMRAM_RESET: u8 = 0x02;
/// SMRAM bits software may write: G_SMRAME, D_LCK, D_CLS, D_OPEN.
const SMRAM_WRITABLE: u8 = 0x78;
/// PAM0 covers one segment (0xF0000-0xFFFFF) in its high nibble; bits 0-3 are reserved.
const PAM0_WRITABLE: u8 = 0x30;
/// PAM1-6 cover two 16 KiB segments each: read enable and write enable per nibble.
const PAM_WRITABLE: u8 = 0x33;

/// The 440FX host bridge at 00:00.0 of a firmware-booted machine.
#[derive(Debug)]
pub struct I440fxHostBridge {
    config: PciConfiguration,
}

impl I440fxHostBridge {
    /// The bridge in its reset state: PAMs 0 (shadow RAM off), SMRAM 0x02.
    pub fn new() -> Self {
        let mut config = PciConfiguration::new(&PciIds {
            vendor_id: INTEL_VENDOR_ID,
            device_id: I440FX_DEVICE_ID,
            revision_id: I440FX_REVISION,
            class_code: 0x06,
            subclass: 0x00,
            prog_if: 0x00,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
        });
        let mut pam_mask = [PAM_WRITABLE; I440FX_PAM_COUNT as usize];
        pam_mask[0] = PAM0_WRITABLE;
        // Offsets are constants above the standard header and no capability
        // is added, so neither call can be refused.
        config.set_write_mask(I440FX_PAM0, &pam_mask).expect("PAM registers are device-specific");
        config.set_write_mask(I440FX_SMRAM, &[SMRAM_WRITABLE]).expect("SMRAM is device-specific");
        config.write_raw(I440FX_SMRAM, &[I440FX_SMRAM_RESET]).expect("SMRAM is device-specific");
        I440fxHostBridge { config }
    }

    /// PAM register `index` (0-6) as the guest last wrote it.
    pub fn pam(&self, index: u16) -> Option<u8> {
        (index < I440FX_PAM_COUNT).then(|| self.config.read_u8(I440FX_PAM0 + index))
    }
}

impl Default for I440fxHostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for I440fxHostBridge {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(dev: &mut I440fxHostBridge, offset: u16) -> u32 {
        let mut b = [0u8; 4];
        dev.read_config(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identity_is_what_seabios_looks_for() {
        let mut dev = I440fxHostBridge::new();
        assert_eq!(read32(&mut dev, 0x00), 0x1237_8086);
        assert_eq!(read32(&mut dev, 0x08), 0x0600_0002, "class 06/00/00, revision 2");
        assert_eq!(read32(&mut dev, 0x2c), 0x1100_1af4, "QEMU's subsystem");
        assert_eq!(dev.config().read_u8(0x0e), 0, "type 0 header, single function");
    }

    #[test]
    fn pam_registers_take_seabios_dword_writes() {
        let mut dev = I440fxHostBridge::new();
        assert_eq!(read32(&mut dev, 0x58), 0);
        assert_eq!(read32(&mut dev, 0x5c), 0);
        // make_bios_writable: PAM0 = 0x30, PAM1-6 = 0x33, written as two dwords
        // at 0x58 and 0x5c (byte 0x58 is DRAMT, which stays read-only here).
        dev.write_config(0x58, &0x3333_30ffu32.to_le_bytes());
        dev.write_config(0x5c, &0x3333_3333u32.to_le_bytes());
        assert_eq!(read32(&mut dev, 0x58), 0x3333_3000);
        assert_eq!(read32(&mut dev, 0x5c), 0x3333_3333);
        // Reserved PAM bits stay zero.
        dev.write_config(I440FX_PAM0, &[0xff]);
        dev.write_config(I440FX_PAM0 + 1, &[0xff]);
        assert_eq!(dev.pam(0), Some(0x30));
        assert_eq!(dev.pam(1), Some(0x33));
        // make_bios_readonly.
        dev.write_config(0x5a, &0x1111u16.to_le_bytes());
        assert_eq!(dev.pam(1), Some(0x11));
        assert_eq!(dev.pam(2), Some(0x11));
        assert_eq!(dev.pam(7), None);
    }

    #[test]
    fn smram_resets_to_0x02_and_keeps_its_base_segment() {
        let mut dev = I440fxHostBridge::new();
        assert_eq!(dev.config().read_u8(I440FX_SMRAM), 0x02);
        dev.write_config(I440FX_SMRAM, &[0xff]);
        assert_eq!(dev.config().read_u8(I440FX_SMRAM), 0x7a);
        dev.write_config(I440FX_SMRAM, &[0x00]);
        assert_eq!(dev.config().read_u8(I440FX_SMRAM), 0x02);
    }

    #[test]
    fn the_rest_of_the_device_space_is_read_only() {
        let mut dev = I440fxHostBridge::new();
        for offset in [0x40u16, 0x50, 0x57, 0x60, 0x73, 0xfc] {
            dev.write_config(offset, &[0xa5]);
            assert_eq!(dev.config().read_u8(offset), 0, "offset {offset:#x}");
        }
    }
}
