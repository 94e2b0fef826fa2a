//! Booting PC firmware instead of a kernel (`rvmm run --firmware`): the machine
//! as QEMU-aware firmware such as SeaBIOS expects to find it.
//!
//! This is book chapter 2.2 seen from the firmware's side: instead of rvmm
//! writing e820, ACPI and boot_params and jumping into a kernel, the vCPU
//! starts at the reset vector of a real BIOS, which builds those structures
//! itself from what it asks the VMM through fw_cfg, enumerates PCI, drives
//! virtio-blk with its own driver and loads the boot sector.
//!
//! ## What this module sets up, and which firmware probe each piece answers
//!
//! | piece | where | SeaBIOS code that needs it |
//! | --- | --- | --- |
//! | the image, read-only, ending at 4 GiB | [`FirmwareImage::base`] | the reset vector 0xFFFFFFF0 and the 32-bit code it jumps to |
//! | its top 128 KiB copied to 0xE0000-0xFFFFF, all of 0xC0000-0xFFFFF RAM | [`copy_low_alias`], `MemoryLayout::for_firmware` | the far jump to F000:E05B; `make_bios_writable` (shadow RAM), the low heap, option ROM space, the F-segment tables |
//! | vCPU 0 at KVM's reset state, APs waiting for INIT/SIPI | `EntryPoint::ResetVector` | `handle_post`; `smp_scan` starts the APs itself |
//! | i440FX host bridge 8086:1237, subsystem 1af4:1100, PAM/SMRAM | `devices::pci::i440fx` | `qemu_detect` ("Running on QEMU (i440fx)"), `make_bios_writable` |
//! | fw_cfg at 0x510 with DMA | [`build_fw_cfg`] | `qemu_cfg_detect` ("Found QEMU fw_cfg"), `qemu_early_e820`, `qemu_cfg_init`, `smp_scan`, `acpi_setup` |
//! | CMOS 0x5F, 0x3D/0x38, 0x10, 0x34/0x35, 0x5B-0x5D | [`set_firmware_cmos`], the VMM's memory-size bytes | `qemu_get_present_cpus_count`, `boot_init`'s default boot order, floppy set-up, the RAM size fallback |
//! | debug console at 0x402 reading 0xE9 | `devices::debugcon` | `qemu_debug_preinit`: SeaBIOS's log |
//! | COM1 | the VMM's 16550A | `sercon` (NOGRAPHIC): the banner and boot messages |
//! | reset at 0xCF9 and through the i8042 | `PciConfigIo::with_reset_control`, the i8042 | `reset()` after "No bootable device" |
//!
//! ## The fw_cfg items
//!
//! | key or file | value |
//! | --- | --- |
//! | signature, ID | "QEMU", traditional interface + DMA |
//! | `FW_CFG_RAM_SIZE` | the guest's RAM in bytes |
//! | `FW_CFG_NB_CPUS`, `FW_CFG_MAX_CPUS` | the number of vCPUs (SeaBIOS waits for exactly that many to check in) |
//! | `FW_CFG_NOGRAPHIC` | 1: SeaBIOS adds `etc/sercon-port` = 0x3F8 itself |
//! | `FW_CFG_BOOT_MENU` | 0 |
//! | `FW_CFG_IRQ0_OVERRIDE` | 1 (the PIT's IRQ 0 arrives on IOAPIC pin 2, as the MADT says) |
//! | `etc/e820` | RAM from 0 to the hole, RAM above 4 GiB, KVM's private pages reserved |
//! | `bootorder` | the virtio-blk disks in the order given, as `/pci@i0cf8/scsi@S/disk@0,0` or `/virtio-mmio@BASE/disk@0,0` |
//! | `etc/boot-fail-wait` | [`BOOT_FAIL_WAIT_MS`]: how long SeaBIOS waits before resetting when nothing boots |
//! | `etc/acpi/tables`, `etc/acpi/rsdp`, `etc/table-loader` | rvmm's own ACPI tables, relocated by the firmware |
//!
//! Not provided: SMBIOS (SeaBIOS builds a minimal one), a VGA ROM (output goes
//! to the serial port), the PIIX3 ISA bridge and PIIX4 power-management
//! functions (SeaBIOS then sets up neither PCI IRQ routing registers nor SMM,
//! and uses kvmclock or the TSC as its clock), and the kernel/initrd keys of
//! QEMU's `-kernel` option ROM.

use std::path::{Path, PathBuf};

use devices::fw_cfg::{self, E820Entry, FirmwareAcpi, FwCfg, FwCfgError};
use vm_memory::GuestMemoryMmap;

use super::{write_guest, BootError};
use crate::interrupt::{KVM_IDENTITY_MAP_ADDR, KVM_PRIVATE_PAGES_SIZE};
use crate::memory::{MemoryLayout, RegionKind, GIB, HIGH_RAM_START, KIB, MIB};

/// Firmware images are mapped so that they end at 4 GiB, where the reset vector is.
pub const FIRMWARE_END: u64 = 4 * GIB;
/// The largest image: the 16 MiB below 4 GiB (a PC's flash window), above
/// KVM's private pages and every MMIO device.
pub const FIRMWARE_MAX_SIZE: u64 = 16 * MIB;
/// Image sizes must be a multiple of this, as flash and ROM images are.
pub const FIRMWARE_SIZE_ALIGN: u64 = 64 * KIB;
/// How much of the image's top also appears below 1 MiB (0xE0000-0xFFFFF), as
/// the ISA BIOS alias of a PC chipset.
pub const LOW_ALIAS_SIZE: u64 = 128 * KIB;
/// How long SeaBIOS waits after "No bootable device" before it resets the
/// machine, which ends the VM (QEMU's default is 60 s).
pub const BOOT_FAIL_WAIT_MS: u32 = 5000;

/// Errors about the firmware image and its configuration.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// The image could not be read.
    #[error("cannot read firmware {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The image's size is zero or not a multiple of 64 KiB.
    #[error("firmware {path} is {size} bytes; a firmware image is a non-empty multiple of 64 KiB (e.g. SeaBIOS's bios-256k.bin)")]
    Size {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The image is larger than the window below 4 GiB.
    #[error("firmware {path} is {size} bytes; at most {} MiB fit below 4 GiB", FIRMWARE_MAX_SIZE / MIB)]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// fw_cfg refused an item (a bug in rvmm, not the user's input).
    #[error("fw_cfg: {0}")]
    FwCfg(#[from] FwCfgError),
}

/// A firmware image checked to fit the flash window below 4 GiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareImage {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl FirmwareImage {
    /// Reads and checks the image at `path`.
    pub fn load(path: &Path) -> Result<Self, FirmwareError> {
        let read_err = |source| FirmwareError::Read { path: path.to_owned(), source };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if meta.is_dir() {
            return Err(read_err(std::io::Error::from(std::io::ErrorKind::IsADirectory)));
        }
        // Check the size before reading, so that a huge file is refused cheaply.
        if meta.is_file() && meta.len() > FIRMWARE_MAX_SIZE {
            return Err(FirmwareError::TooLarge { path: path.to_owned(), size: meta.len() });
        }
        // Read at most one byte more than fits, so that a device or FIFO that never
        // ends (`/dev/zero`) is refused as too large instead of filling memory.
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::fs::File::open(path).map_err(read_err)?, FIRMWARE_MAX_SIZE + 1),
            &mut bytes,
        )
        .map_err(read_err)?;
        Self::from_bytes(path.to_owned(), bytes)
    }

    /// Checks `bytes` (named `path` in messages) as an image.
    pub fn from_bytes(path: PathBuf, bytes: Vec<u8>) -> Result<Self, FirmwareError> {
        let size = bytes.len() as u64;
        if size > FIRMWARE_MAX_SIZE {
            return Err(FirmwareError::TooLarge { path, size });
        }
        if size == 0 || size % FIRMWARE_SIZE_ALIGN != 0 {
            return Err(FirmwareError::Size { path, size });
        }
        Ok(FirmwareImage { path, bytes })
    }

    /// Where the image starts in guest physical memory (it ends at 4 GiB).
    pub fn base(&self) -> u64 {
        FIRMWARE_END - self.bytes.len() as u64
    }

    /// The image's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The file it came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The low alias: the image's top [`LOW_ALIAS_SIZE`] bytes (or the whole of a
    /// smaller image) and where they go, ending at 1 MiB.
    pub fn low_alias(&self) -> (u64, &[u8]) {
        let len = self.bytes.len().min(LOW_ALIAS_SIZE as usize);
        (HIGH_RAM_START - len as u64, &self.bytes[self.bytes.len() - len..])
    }
}

/// Copies the image's top into shadow RAM below 1 MiB, where the reset code's
/// first far jump (to F000:E05B) lands.
pub fn copy_low_alias(memory: &GuestMemoryMmap, image: &FirmwareImage) -> Result<(), BootError> {
    let (addr, bytes) = image.low_alias();
    write_guest(memory, addr, bytes, "firmware low alias")
}

/// `etc/e820` for `layout`, as QEMU writes it: RAM from 0 to the end of low
/// memory in one piece (the firmware carves out the VGA window and its own
/// areas), RAM above 4 GiB, and KVM's identity map and TSS pages reserved.
pub fn firmware_e820(layout: &MemoryLayout) -> Vec<E820Entry> {
    let mut entries = vec![E820Entry { addr: 0, size: layout.low_ram_end(), kind: fw_cfg::E820_RAM }];
    for region in layout.regions() {
        if region.kind == RegionKind::Ram && region.start >= FIRMWARE_END {
            entries.push(E820Entry { addr: region.start, size: region.size, kind: fw_cfg::E820_RAM });
        }
    }
    entries.push(E820Entry { addr: KVM_IDENTITY_MAP_ADDR, size: KVM_PRIVATE_PAGES_SIZE, kind: fw_cfg::E820_RESERVED });
    entries.sort_by_key(|e| e.addr);
    entries
}

/// The OpenFirmware device path QEMU gives a virtio-blk disk in PCI slot
/// `slot` of the i440FX root bus, which SeaBIOS matches in `bootorder`
/// (as `/pci@i0cf8/*@S`).
pub fn virtio_blk_pci_boot_path(slot: u8) -> String {
    format!("/pci@i0cf8/scsi@{slot:x}/disk@0,0")
}

/// The device path of a virtio-blk disk behind the virtio-mmio window at
/// `base`, which SeaBIOS matches as `/virtio-mmio@<base, 16 hex digits>/*`.
pub fn virtio_blk_mmio_boot_path(base: u64) -> String {
    format!("/virtio-mmio@{base:016x}/disk@0,0")
}

/// What the firmware is told about the machine.
#[derive(Debug, Clone)]
pub struct FirmwareMachine<'a> {
    /// The guest's memory map.
    pub layout: &'a MemoryLayout,
    /// Number of vCPUs.
    pub cpus: u8,
    /// rvmm's ACPI tables for the firmware to install.
    pub acpi: FirmwareAcpi,
    /// Device paths of the bootable disks, in boot order (`bootorder`).
    pub boot_paths: Vec<String>,
}

/// Builds the fw_cfg device (with DMA into `memory`) holding everything the
/// module documentation lists.
pub fn build_fw_cfg(memory: &GuestMemoryMmap, machine: FirmwareMachine<'_>) -> Result<FwCfg, FirmwareError> {
    let mut fw = FwCfg::new(memory.clone());
    fw.set_ram_size(machine.layout.ram_bytes())?;
    fw.set_cpus(u16::from(machine.cpus), u16::from(machine.cpus))?;
    fw.set_nographic(true)?;
    fw.set_boot_menu(false)?;
    fw.set_u32(fw_cfg::FW_CFG_IRQ0_OVERRIDE, 1)?;
    fw.add_file(fw_cfg::E820_FILE, fw_cfg::e820_file(&firmware_e820(machine.layout)))?;
    if !machine.boot_paths.is_empty() {
        let refs: Vec<&str> = machine.boot_paths.iter().map(String::as_str).collect();
        fw.add_file(fw_cfg::BOOTORDER_FILE, fw_cfg::bootorder_file(&refs))?;
    }
    fw.add_file("etc/boot-fail-wait", BOOT_FAIL_WAIT_MS.to_le_bytes().to_vec())?;
    fw.add_acpi(machine.acpi)?;
    Ok(fw)
}

/// The CMOS bytes QEMU's `pc` machine sets for its BIOS (besides the memory
/// sizes, which every machine gets): the CPU count less one at 0x5F (SeaBIOS
/// waits for the larger of this and fw_cfg's count), the boot order "hard disk
/// only" at 0x3D/0x38 (nibbles: 2 = hard disk, 0 = none; 0x38 bit 0 clear: check
/// the boot signature), and no floppy drives at 0x10.
pub fn set_firmware_cmos(rtc: &mut devices::rtc::Rtc, cpus: u8) {
    rtc.set_cmos_byte(0x5f, cpus.saturating_sub(1));
    rtc.set_cmos_byte(0x3d, 0x02);
    rtc.set_cmos_byte(0x38, 0x00);
    rtc.set_cmos_byte(0x10, 0x00);
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn image_sizes_are_checked() {
        let p = PathBuf::from("fw.bin");
        assert!(matches!(FirmwareImage::from_bytes(p.clone(), vec![]), Err(FirmwareError::Size { size: 0, .. })));
        assert!(matches!(
            FirmwareImage::from_bytes(p.clone(), vec![0; 65536 + 512]),
            Err(FirmwareError::Size { size: 66048, .. })
        ));
        assert!(matches!(
            FirmwareImage::from_bytes(p.clone(), vec![0; (FIRMWARE_MAX_SIZE + FIRMWARE_SIZE_ALIGN) as usize]),
            Err(FirmwareError::TooLarge { .. })
        ));
        let image = FirmwareImage::from_bytes(p.clone(), vec![0; 256 * 1024]).unwrap();
        assert_eq!(image.base(), 0xfffc_0000);
        let max = FirmwareImage::from_bytes(p, vec![0; FIRMWARE_MAX_SIZE as usize]).unwrap();
        assert_eq!(max.base(), 0xff00_0000);
        assert!(max.base() >= KVM_IDENTITY_MAP_ADDR + KVM_PRIVATE_PAGES_SIZE, "KVM's pages stay below the image");
    }

    #[test]
    fn missing_and_directory_images_are_read_errors() {
        assert!(matches!(FirmwareImage::load(Path::new("/nonexistent/bios.bin")), Err(FirmwareError::Read { .. })));
        assert!(matches!(FirmwareImage::load(Path::new("/")), Err(FirmwareError::Read { .. })));
    }

    #[test]
    fn an_endless_device_is_too_large_not_read_forever() {
        let size = FIRMWARE_MAX_SIZE + 1;
        assert!(
            matches!(FirmwareImage::load(Path::new("/dev/zero")), Err(FirmwareError::TooLarge { size: s, .. }) if s == size)
        );
    }

    #[test]
    fn low_alias_is_the_top_of_the_image_ending_at_1m() {
        let mut bytes = vec![0u8; 256 * 1024];
        bytes[128 * 1024] = 0xaa; // first byte of the top 128 KiB
        *bytes.last_mut().unwrap() = 0xbb;
        let image = FirmwareImage::from_bytes("fw".into(), bytes).unwrap();
        let (addr, alias) = image.low_alias();
        assert_eq!(addr, 0xe0000);
        assert_eq!(alias.len(), 128 * 1024);
        let small = FirmwareImage::from_bytes("fw".into(), vec![1; 64 * 1024]).unwrap();
        assert_eq!(small.low_alias().0, 0xf0000);

        let layout = MemoryLayout::for_firmware(16 * MIB).unwrap();
        let memory = layout.allocate().unwrap();
        copy_low_alias(&memory, &image).unwrap();
        assert_eq!(memory.read_obj::<u8>(GuestAddress(0xe0000)).unwrap(), 0xaa);
        assert_eq!(memory.read_obj::<u8>(GuestAddress(0xfffff)).unwrap(), 0xbb);
    }

    #[test]
    fn e820_lists_ram_from_zero_and_above_4g() {
        let small = firmware_e820(&MemoryLayout::for_firmware(256 * MIB).unwrap());
        assert_eq!(small.len(), 2);
        assert_eq!((small[0].addr, small[0].size, small[0].kind), (0, 256 * MIB, fw_cfg::E820_RAM));
        assert_eq!((small[1].addr, small[1].kind), (KVM_IDENTITY_MAP_ADDR, fw_cfg::E820_RESERVED));
        let big = firmware_e820(&MemoryLayout::for_firmware(5 * GIB).unwrap());
        assert_eq!(big.len(), 3);
        assert_eq!((big[0].addr, big[0].size), (0, 3 * GIB));
        assert_eq!((big[2].addr, big[2].size), (4 * GIB, 2 * GIB));
    }

    #[test]
    fn fw_cfg_holds_the_items_seabios_reads() {
        let layout = MemoryLayout::for_firmware(64 * MIB).unwrap();
        let memory = layout.allocate().unwrap();
        let tables = super::super::build_acpi(2, None, &[]).unwrap();
        let acpi = FirmwareAcpi::from_blob(&tables.bytes, super::super::ACPI_ADDR).unwrap();
        let boot_paths = vec![virtio_blk_pci_boot_path(1), virtio_blk_mmio_boot_path(0xd000_0000)];
        let machine = FirmwareMachine { layout: &layout, cpus: 2, acpi, boot_paths };
        let mut fw = build_fw_cfg(&memory, machine).unwrap();
        use devices::BusDevice;
        let mut read_item = |key: u16, len: usize| {
            fw.write(0, &key.to_le_bytes());
            (0..len)
                .map(|_| {
                    let mut b = [0u8];
                    fw.read(1, &mut b);
                    b[0]
                })
                .collect::<Vec<u8>>()
        };
        assert_eq!(read_item(fw_cfg::FW_CFG_SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(fw_cfg::FW_CFG_NB_CPUS, 2), [2, 0]);
        assert_eq!(read_item(fw_cfg::FW_CFG_RAM_SIZE, 8), (64 * MIB).to_le_bytes());
        assert_eq!(read_item(fw_cfg::FW_CFG_NOGRAPHIC, 2), [1, 0]);
        for name in ["bootorder", "etc/e820", "etc/boot-fail-wait", "etc/acpi/tables", "etc/table-loader"] {
            assert!(fw.file_key(name).is_some(), "{name}");
        }
        let key = fw.file_key("bootorder").unwrap();
        let order = read_item_text(&mut fw, key);
        assert_eq!(order, "/pci@i0cf8/scsi@1/disk@0,0\n/virtio-mmio@00000000d0000000/disk@0,0");
    }

    fn read_item_text(fw: &mut FwCfg, key: u16) -> String {
        use devices::BusDevice;
        fw.write(0, &key.to_le_bytes());
        let mut out = Vec::new();
        loop {
            let mut b = [0u8];
            fw.read(1, &mut b);
            if b[0] == 0 {
                break;
            }
            out.push(b[0]);
        }
        String::from_utf8(out).unwrap()
    }
}
