//! QEMU's firmware configuration device, `fw_cfg` (for booting SeaBIOS and other
//! QEMU-aware firmware).
//!
//! Firmware written for QEMU does not probe the machine for what the VMM already
//! knows: it asks. fw_cfg is the channel. It holds *items*, byte strings named by a
//! 16-bit key: a few fixed numeric keys (signature, RAM size, CPU count, ...) and
//! any number of *files*, named items listed in a directory. Reference: QEMU's
//! `docs/specs/fw_cfg.rst`; the firmware side is SeaBIOS's `src/fw/paravirt.c`
//! (`qemu_cfg_*`) and `src/fw/romfile_loader.c`.
//!
//! ## The x86 port-I/O interface
//!
//! Registered at port [`FW_CFG_IO_BASE`] (0x510) for [`FW_CFG_IO_SIZE`] ports;
//! offsets below are relative to it.
//!
//! | offset | access | register |
//! | --- | --- | --- |
//! | 0 | 16-bit write | selector: the key of the item to access (little-endian, as any port write); resets the data offset to 0 |
//! | 0 or 1 | 8-bit read | data: the next byte of the selected item (0 past its end or for a key that holds nothing) |
//! | 4 | 32-bit write | DMA address, high half, as a big-endian value |
//! | 8 | 32-bit write | DMA address, low half, big-endian; the write starts the transfer |
//! | 4 | 64-bit write | the whole DMA address, big-endian (MMIO buses only: ports carry at most 32 bits) |
//! | 4-11 | reads | the DMA signature "QEMU CFG", byte for byte |
//!
//! Bit 14 of the selector (the old "write channel") is ignored; bit 15 selects
//! the architecture-local keys (0x8000 and up). Byte writes to the data register
//! are ignored, as QEMU has done since 2.4. Every other access reads as all ones
//! and is otherwise ignored.
//!
//! ## The DMA interface
//!
//! The guest writes the guest-physical address of a 16-byte control structure,
//! all big-endian: `control: u32, length: u32, address: u64`. The device reads
//! it, optionally selects `control >> 16` (bit [`DMA_CTL_SELECT`]), then performs
//! one operation on `length` bytes from the current data offset:
//! [`DMA_CTL_READ`] copies item bytes to guest `address` (zeros past the item's
//! end), [`DMA_CTL_SKIP`] advances the offset, [`DMA_CTL_WRITE`] is refused (no
//! item here is writable). Finally it writes the control word back: 0 on success,
//! [`DMA_CTL_ERROR`] if any guest range was invalid or a write was attempted.
//! The transfer completes synchronously, within the guest's port write.
//! Every guest address and length is checked against guest memory before use;
//! nothing the guest writes can make the device panic.
//!
//! ## Items
//!
//! Fixed keys: [`FW_CFG_SIGNATURE`] ("QEMU"), [`FW_CFG_ID`] (feature bits:
//! traditional interface, plus DMA when the device has guest memory) and
//! [`FW_CFG_FILE_DIR`], which the device maintains. The VMM sets numeric items
//! such as [`FW_CFG_RAM_SIZE`] with [`FwCfg::set_item`] and friends, and files
//! with [`FwCfg::add_file`]. Files are numbered from [`FW_CFG_FILE_FIRST`] in
//! name order, as QEMU does for its current machine types, so adding a file can
//! renumber the ones after it: firmware always looks selectors up in the
//! directory (big-endian count, then per file: size BE32, select BE16,
//! reserved 16 bits, name in 56 NUL-padded bytes).
//!
//! ## Helpers for the files SeaBIOS reads
//!
//! - [`e820_file`]: `etc/e820`, entries `{u64 address, u64 length, u32 type}`,
//!   little-endian, packed (20 bytes each).
//! - [`bootorder_file`]: `bootorder`, OpenFirmware-style device paths, one per
//!   line.
//! - [`TableLoader`]: `etc/table-loader`, the BIOS linker/loader script
//!   (128-byte commands: ALLOCATE, ADD_POINTER, ADD_CHECKSUM) with which the
//!   firmware places ACPI tables and patches the pointers between them.
//! - [`FirmwareAcpi::from_blob`]: turns rvmm's ACPI blob (RSDP first, tables
//!   after it, absolute pointers) into `etc/acpi/rsdp`, `etc/acpi/tables` and the
//!   loader script that relocates them; [`apply_table_loader`] runs such a
//!   script the way SeaBIOS does, for tests.
//!
//! Not provided: writable items, the MMIO flavour of the interface (ARM `virt`),
//! the kernel/initrd/cmdline keys of QEMU's direct Linux boot, and SMBIOS
//! (`etc/smbios/*`): without it SeaBIOS builds minimal SMBIOS tables itself.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::bus::BusDevice;
use crate::ratelimit::LogLimiter;

/// First I/O port of the device: the selector register.
pub const FW_CFG_IO_BASE: u16 = 0x510;
/// Ports the device decodes from [`FW_CFG_IO_BASE`]: selector/data at 0x510-0x511,
/// DMA address at 0x514-0x51b.
pub const FW_CFG_IO_SIZE: u64 = 12;
/// The data register's port (an alias of the selector port for byte reads).
pub const FW_CFG_DATA_PORT: u16 = 0x511;
/// The DMA address register's first port (high half; the low half is at + 4).
pub const FW_CFG_DMA_PORT: u16 = 0x514;

/// Offset of the selector register.
const OFFSET_SELECTOR: u64 = 0;
/// Offset of the data register.
const OFFSET_DATA: u64 = 1;
/// Offset of the DMA address register (high 32 bits).
const OFFSET_DMA_HIGH: u64 = 4;
/// Offset of the low 32 bits of the DMA address register.
const OFFSET_DMA_LOW: u64 = 8;

/// Key of the signature item, "QEMU".
pub const FW_CFG_SIGNATURE: u16 = 0x00;
/// Key of the feature bitmap (u32, little-endian): [`FW_CFG_VERSION`] | [`FW_CFG_VERSION_DMA`].
pub const FW_CFG_ID: u16 = 0x01;
/// Key of the VM UUID (16 bytes); SeaBIOS puts it in SMBIOS type 1.
pub const FW_CFG_UUID: u16 = 0x02;
/// Key of the RAM size in bytes (u64, little-endian).
pub const FW_CFG_RAM_SIZE: u16 = 0x03;
/// Key of the "no graphics" flag (u16): SeaBIOS then redirects its screen to COM1.
pub const FW_CFG_NOGRAPHIC: u16 = 0x04;
/// Key of the number of CPUs present at boot (u16); SeaBIOS waits for that many.
pub const FW_CFG_NB_CPUS: u16 = 0x05;
/// Key of the NUMA description (SeaBIOS reads a u64 count; absent means none).
pub const FW_CFG_NUMA: u16 = 0x0d;
/// Key of the boot-menu flag (u16): nonzero shows "Press ESC for boot menu".
pub const FW_CFG_BOOT_MENU: u16 = 0x0e;
/// Key of the maximum number of CPUs (u16), `etc/max-cpus` to SeaBIOS.
pub const FW_CFG_MAX_CPUS: u16 = 0x0f;
/// Key of the file directory.
pub const FW_CFG_FILE_DIR: u16 = 0x19;
/// Key of the first file; files take consecutive keys in name order.
pub const FW_CFG_FILE_FIRST: u16 = 0x20;
/// Bit 15 of a key: architecture-local items.
pub const FW_CFG_ARCH_LOCAL: u16 = 0x8000;
/// Key of the x86 "IRQ 0 is routed to IOAPIC pin 2" flag (u8), `etc/irq0-override`.
pub const FW_CFG_IRQ0_OVERRIDE: u16 = FW_CFG_ARCH_LOCAL | 0x02;

/// Bit 14 of the selector: the obsolete write channel, ignored.
const SELECTOR_WRITE_CHANNEL: u16 = 0x4000;
/// Keys past this (without the arch bit) hold nothing.
const KEY_INDEX_LIMIT: u16 = 0x4000;

/// [`FW_CFG_ID`] bit 0: the traditional selector/data interface.
pub const FW_CFG_VERSION: u32 = 0x01;
/// [`FW_CFG_ID`] bit 1: the DMA interface.
pub const FW_CFG_VERSION_DMA: u32 = 0x02;

/// DMA control bit: the transfer failed (the only bit left set on completion).
pub const DMA_CTL_ERROR: u32 = 0x01;
/// DMA control bit: copy item bytes to guest memory.
pub const DMA_CTL_READ: u32 = 0x02;
/// DMA control bit: advance the data offset without copying.
pub const DMA_CTL_SKIP: u32 = 0x04;
/// DMA control bit: first select the key in bits 31-16.
pub const DMA_CTL_SELECT: u32 = 0x08;
/// DMA control bit: copy guest memory into the item (refused here).
pub const DMA_CTL_WRITE: u32 = 0x10;

/// The item at key [`FW_CFG_SIGNATURE`].
pub const FW_CFG_SIGNATURE_BYTES: [u8; 4] = *b"QEMU";
/// What the DMA register reads as, in address order.
pub const FW_CFG_DMA_SIGNATURE: [u8; 8] = *b"QEMU CFG";

/// Size of the name field of a directory entry and of loader commands,
/// including the terminating NUL.
pub const FW_CFG_MAX_FILE_PATH: usize = 56;
/// Size of one file directory entry.
pub const FW_CFG_DIR_ENTRY_SIZE: usize = 64;
/// Size of the guest's DMA control structure.
const DMA_ACCESS_SIZE: usize = 16;
/// Largest zero-fill written to guest memory in one piece.
const ZERO_CHUNK: usize = 4096;

/// fw_cfg file with the ACPI tables other than the RSDP.
pub const ACPI_TABLES_FILE: &str = "etc/acpi/tables";
/// fw_cfg file with the RSDP.
pub const ACPI_RSDP_FILE: &str = "etc/acpi/rsdp";
/// fw_cfg file with the linker/loader script.
pub const TABLE_LOADER_FILE: &str = "etc/table-loader";
/// fw_cfg file with the memory map.
pub const E820_FILE: &str = "etc/e820";
/// fw_cfg file with the boot order.
pub const BOOTORDER_FILE: &str = "bootorder";

/// Mistakes of the VMM when filling the device or building its files (never
/// caused by the guest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FwCfgError {
    /// A file name must be 1-55 bytes (56 with its NUL) without NUL bytes.
    BadFileName(String),
    /// Two files with the same name.
    DuplicateFile(String),
    /// The key is maintained by the device (signature, ID, directory, files),
    /// has the write-channel bit set, or lies past the key space.
    ReservedKey(u16),
    /// All file selectors are taken.
    TooManyFiles,
    /// Items are limited to `u32::MAX - 1` bytes (the directory's size field).
    ItemTooLarge(usize),
    /// A loader ALLOCATE alignment must be a power of two.
    BadAlignment(u32),
    /// A loader ADD_POINTER size must be 1, 2, 4 or 8 bytes.
    BadPointerSize(u8),
    /// The ACPI blob cannot be turned into loader files (see the message).
    BadAcpiBlob(String),
}

impl fmt::Display for FwCfgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadFileName(name) => {
                write!(f, "fw_cfg file name {name:?} must be 1-{} bytes without NUL", FW_CFG_MAX_FILE_PATH - 1)
            }
            Self::DuplicateFile(name) => write!(f, "fw_cfg file {name:?} added twice"),
            Self::ReservedKey(key) => write!(f, "fw_cfg key {key:#06x} cannot be set by the VMM"),
            Self::TooManyFiles => write!(f, "fw_cfg has no file selector left"),
            Self::ItemTooLarge(len) => write!(f, "fw_cfg item of {len} bytes is too large"),
            Self::BadAlignment(align) => write!(f, "table-loader alignment {align} is not a power of two"),
            Self::BadPointerSize(size) => write!(f, "table-loader pointer size {size} is not 1, 2, 4 or 8"),
            Self::BadAcpiBlob(why) => write!(f, "ACPI blob unusable for the table loader: {why}"),
        }
    }
}

impl std::error::Error for FwCfgError {}

/// Checks a file name for the directory and loader commands.
fn check_name(name: &str) -> Result<(), FwCfgError> {
    if name.is_empty() || name.len() >= FW_CFG_MAX_FILE_PATH || name.bytes().any(|b| b == 0) {
        return Err(FwCfgError::BadFileName(name.to_owned()));
    }
    Ok(())
}

/// `name` NUL-padded to [`FW_CFG_MAX_FILE_PATH`] bytes (checked by [`check_name`]).
fn name_field(name: &str) -> [u8; FW_CFG_MAX_FILE_PATH] {
    let mut field = [0u8; FW_CFG_MAX_FILE_PATH];
    for (dst, src) in field.iter_mut().zip(name.bytes().take(FW_CFG_MAX_FILE_PATH - 1)) {
        *dst = src;
    }
    field
}

/// The fw_cfg device: items, the selector/data registers and the DMA engine.
pub struct FwCfg {
    /// Guest memory for DMA; `None` disables the DMA interface.
    memory: Option<GuestMemoryMmap>,
    /// [`FW_CFG_ID`]'s bytes.
    id: [u8; 4],
    /// Numeric items set by the VMM, by key (arch bit included).
    items: BTreeMap<u16, Vec<u8>>,
    /// Files sorted by name; file `i` has key `FW_CFG_FILE_FIRST + i`.
    files: Vec<(String, Vec<u8>)>,
    /// The directory, rebuilt whenever a file is added.
    dir: Vec<u8>,
    /// The selected key (write-channel bit cleared).
    selected: u16,
    /// Offset of the next byte of the selected item.
    offset: u32,
    /// High half of the DMA address, until the low half is written.
    dma_high: u32,
    bad_access: LogLimiter,
}

impl FwCfg {
    /// A device with the DMA interface, which reads and writes `memory`.
    pub fn new(memory: GuestMemoryMmap) -> Self {
        Self::build(Some(memory))
    }

    /// A device with only the selector/data registers; [`FW_CFG_ID`] then does
    /// not advertise DMA and the DMA registers read as all ones.
    pub fn without_dma() -> Self {
        Self::build(None)
    }

    fn build(memory: Option<GuestMemoryMmap>) -> Self {
        let features = FW_CFG_VERSION | if memory.is_some() { FW_CFG_VERSION_DMA } else { 0 };
        let mut dev = FwCfg {
            memory,
            id: features.to_le_bytes(),
            items: BTreeMap::new(),
            files: Vec::new(),
            dir: Vec::new(),
            selected: FW_CFG_SIGNATURE,
            offset: 0,
            dma_high: 0,
            bad_access: LogLimiter::new(),
        };
        dev.rebuild_dir();
        dev
    }

    /// Whether the DMA interface is present.
    pub fn has_dma(&self) -> bool {
        self.memory.is_some()
    }

    /// Sets the numeric item `key` (e.g. [`FW_CFG_RAM_SIZE`], or an
    /// architecture-local key such as [`FW_CFG_IRQ0_OVERRIDE`]), replacing any
    /// earlier value. The signature, ID, directory and file keys are refused.
    pub fn set_item(&mut self, key: u16, data: Vec<u8>) -> Result<(), FwCfgError> {
        let index = key & !FW_CFG_ARCH_LOCAL;
        let reserved = key & SELECTOR_WRITE_CHANNEL != 0
            || index >= KEY_INDEX_LIMIT
            || (key & FW_CFG_ARCH_LOCAL == 0
                && (matches!(key, FW_CFG_SIGNATURE | FW_CFG_ID | FW_CFG_FILE_DIR) || key >= FW_CFG_FILE_FIRST));
        if reserved {
            return Err(FwCfgError::ReservedKey(key));
        }
        check_item_len(data.len())?;
        self.items.insert(key, data);
        Ok(())
    }

    /// Sets `key` to a little-endian u16.
    pub fn set_u16(&mut self, key: u16, value: u16) -> Result<(), FwCfgError> {
        self.set_item(key, value.to_le_bytes().to_vec())
    }

    /// Sets `key` to a little-endian u32.
    pub fn set_u32(&mut self, key: u16, value: u32) -> Result<(), FwCfgError> {
        self.set_item(key, value.to_le_bytes().to_vec())
    }

    /// Sets `key` to a little-endian u64.
    pub fn set_u64(&mut self, key: u16, value: u64) -> Result<(), FwCfgError> {
        self.set_item(key, value.to_le_bytes().to_vec())
    }

    /// [`FW_CFG_RAM_SIZE`]: the guest's RAM in bytes.
    pub fn set_ram_size(&mut self, bytes: u64) -> Result<(), FwCfgError> {
        self.set_u64(FW_CFG_RAM_SIZE, bytes)
    }

    /// [`FW_CFG_NB_CPUS`] and [`FW_CFG_MAX_CPUS`]. SeaBIOS sends one INIT-SIPI to
    /// all APs and then waits until `boot` CPUs have checked in, forever if fewer
    /// exist: `boot` must be exactly the number of vCPUs created.
    pub fn set_cpus(&mut self, boot: u16, max: u16) -> Result<(), FwCfgError> {
        self.set_u16(FW_CFG_NB_CPUS, boot)?;
        self.set_u16(FW_CFG_MAX_CPUS, max.max(boot))
    }

    /// [`FW_CFG_NOGRAPHIC`]: with `true`, SeaBIOS sends its screen output to
    /// COM1 (its "sercon") when the machine has no VGA.
    pub fn set_nographic(&mut self, on: bool) -> Result<(), FwCfgError> {
        self.set_u16(FW_CFG_NOGRAPHIC, u16::from(on))
    }

    /// [`FW_CFG_BOOT_MENU`]: with `true`, SeaBIOS offers its boot menu (and waits
    /// for the ESC key for a while before booting).
    pub fn set_boot_menu(&mut self, on: bool) -> Result<(), FwCfgError> {
        self.set_u16(FW_CFG_BOOT_MENU, u16::from(on))
    }

    /// Adds the file `name`; files are renumbered so that their keys follow name
    /// order. Returns the key `name` has after this call.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        check_name(name)?;
        check_item_len(data.len())?;
        let pos = match self.files.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(_) => return Err(FwCfgError::DuplicateFile(name.to_owned())),
            Err(pos) => pos,
        };
        if self.files.len() >= usize::from(KEY_INDEX_LIMIT - FW_CFG_FILE_FIRST) {
            return Err(FwCfgError::TooManyFiles);
        }
        self.files.insert(pos, (name.to_owned(), data));
        self.rebuild_dir();
        Ok(file_key(pos))
    }

    /// The key file `name` has now.
    pub fn file_key(&self, name: &str) -> Option<u16> {
        self.files.binary_search_by(|(n, _)| n.as_str().cmp(name)).ok().map(file_key)
    }

    /// Adds `etc/acpi/tables`, `etc/acpi/rsdp` and `etc/table-loader`.
    pub fn add_acpi(&mut self, acpi: FirmwareAcpi) -> Result<(), FwCfgError> {
        self.add_file(ACPI_TABLES_FILE, acpi.tables)?;
        self.add_file(ACPI_RSDP_FILE, acpi.rsdp)?;
        self.add_file(TABLE_LOADER_FILE, acpi.loader)?;
        Ok(())
    }

    fn rebuild_dir(&mut self) {
        let mut dir = Vec::with_capacity(4 + self.files.len() * FW_CFG_DIR_ENTRY_SIZE);
        // Both fit: add_file limits the count to the key space and the sizes to u32.
        dir.extend_from_slice(&(self.files.len() as u32).to_be_bytes());
        for (i, (name, data)) in self.files.iter().enumerate() {
            dir.extend_from_slice(&(data.len() as u32).to_be_bytes());
            dir.extend_from_slice(&file_key(i).to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            dir.extend_from_slice(&name_field(name));
        }
        self.dir = dir;
    }

    /// The item stored at `key` (write-channel bit already cleared).
    fn item(&self, key: u16) -> Option<&[u8]> {
        match key {
            FW_CFG_SIGNATURE => Some(&FW_CFG_SIGNATURE_BYTES),
            FW_CFG_ID => Some(&self.id),
            FW_CFG_FILE_DIR => Some(&self.dir),
            k if (FW_CFG_FILE_FIRST..KEY_INDEX_LIMIT).contains(&k) => {
                self.files.get(usize::from(k - FW_CFG_FILE_FIRST)).map(|(_, d)| d.as_slice())
            }
            k => self.items.get(&k).map(Vec::as_slice),
        }
    }

    fn select(&mut self, selector: u16) {
        self.selected = selector & !SELECTOR_WRITE_CHANNEL;
        self.offset = 0;
    }

    /// The next data byte, or 0 past the end of the item.
    fn read_data_byte(&mut self) -> u8 {
        let offset = self.offset;
        let byte = self.item(self.selected).and_then(|d| d.get(offset as usize).copied());
        match byte {
            Some(b) => {
                self.offset = offset.saturating_add(1);
                b
            }
            None => 0,
        }
    }

    /// Runs the DMA transfer whose control structure is at guest `access`.
    fn dma_transfer(&mut self, access: u64) {
        // Taken out and put back so the transfer can borrow items and memory apart.
        let Some(memory) = self.memory.take() else { return };
        let status = self.dma_run(&memory, access);
        if let Some(status) = status {
            // Best effort: if the structure itself is not in guest memory, there
            // is nowhere to report the error.
            let _ = memory.write_slice(&status.to_be_bytes(), GuestAddress(access));
        }
        self.memory = Some(memory);
    }

    /// The transfer itself; returns the control word to write back.
    fn dma_run(&mut self, memory: &GuestMemoryMmap, access: u64) -> Option<u32> {
        let mut raw = [0u8; DMA_ACCESS_SIZE];
        if access.checked_add(DMA_ACCESS_SIZE as u64).is_none()
            || memory.read_slice(&mut raw, GuestAddress(access)).is_err()
        {
            self.log_bad("DMA control structure outside guest memory", access, DMA_ACCESS_SIZE);
            return Some(DMA_CTL_ERROR);
        }
        let [c0, c1, c2, c3, l0, l1, l2, l3, a0, a1, a2, a3, a4, a5, a6, a7] = raw;
        let control = u32::from_be_bytes([c0, c1, c2, c3]);
        let length = u32::from_be_bytes([l0, l1, l2, l3]);
        let address = u64::from_be_bytes([a0, a1, a2, a3, a4, a5, a6, a7]);

        if control & DMA_CTL_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        #[derive(PartialEq)]
        enum Op {
            Read,
            Write,
            Skip,
        }
        let op = if control & DMA_CTL_READ != 0 {
            Op::Read
        } else if control & DMA_CTL_WRITE != 0 {
            Op::Write
        } else if control & DMA_CTL_SKIP != 0 {
            Op::Skip
        } else {
            return Some(0);
        };

        let mut offset = self.offset;
        let mut remaining = u64::from(length);
        let mut addr = address;
        let mut status = 0;
        {
            let data = self.item(self.selected).unwrap_or(&[]);
            while remaining > 0 && status == 0 {
                let tail = data.get(offset as usize..).unwrap_or(&[]);
                let len = if tail.is_empty() { remaining } else { remaining.min(tail.len() as u64) };
                let in_range = addr.checked_add(len).is_some() && memory.check_range(GuestAddress(addr), len as usize);
                match op {
                    Op::Read if !in_range => status = DMA_CTL_ERROR,
                    Op::Read if tail.is_empty() => {
                        if !write_zeros(memory, addr, len) {
                            status = DMA_CTL_ERROR;
                        }
                    }
                    Op::Read => {
                        let chunk = tail.get(..len as usize).unwrap_or(tail);
                        if memory.write_slice(chunk, GuestAddress(addr)).is_err() {
                            status = DMA_CTL_ERROR;
                        }
                    }
                    // No item is writable: a firmware that wants to write gets
                    // the error bit, as from QEMU for a read-only file.
                    Op::Write => status = DMA_CTL_ERROR,
                    Op::Skip => {}
                }
                if !tail.is_empty() {
                    offset = offset.saturating_add(len as u32);
                }
                addr = addr.wrapping_add(len);
                remaining -= len;
            }
        }
        self.offset = offset;
        if status != 0 && op != Op::Write {
            self.log_bad("DMA data range outside guest memory", address, length as usize);
        }
        Some(status)
    }

    fn log_bad(&mut self, what: &str, offset: u64, len: usize) {
        if let Some(n) = self.bad_access.tick() {
            log::warn!("fw_cfg: {what}: offset/address {offset:#x}, {len} bytes (occurrence {n})");
        }
    }
}

/// The key of file number `index` (bounded by the key space in `add_file`).
fn file_key(index: usize) -> u16 {
    FW_CFG_FILE_FIRST.saturating_add(u16::try_from(index).unwrap_or(u16::MAX))
}

fn check_item_len(len: usize) -> Result<(), FwCfgError> {
    if len >= u32::MAX as usize {
        return Err(FwCfgError::ItemTooLarge(len));
    }
    Ok(())
}

/// Writes `len` zero bytes at guest `addr` in bounded pieces; false on failure.
fn write_zeros(memory: &GuestMemoryMmap, addr: u64, len: u64) -> bool {
    let zeros = [0u8; ZERO_CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(ZERO_CHUNK as u64);
        let Some(piece) = zeros.get(..n as usize) else { return false };
        if memory.write_slice(piece, GuestAddress(addr.wrapping_add(done))).is_err() {
            return false;
        }
        done += n;
    }
    true
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            // QEMU's combined port decodes byte reads at either port as data.
            (OFFSET_SELECTOR | OFFSET_DATA, 1) => {
                let b = self.read_data_byte();
                data.fill(b);
            }
            (o, len) if self.has_dma() && o >= OFFSET_DMA_HIGH => {
                let start = (o - OFFSET_DMA_HIGH) as usize;
                match start.checked_add(len).and_then(|end| FW_CFG_DMA_SIGNATURE.get(start..end)) {
                    Some(sig) => data.copy_from_slice(sig),
                    None => {
                        data.fill(0xff);
                        self.log_bad("bad read", offset, len);
                    }
                }
            }
            (_, len) => {
                data.fill(0xff);
                self.log_bad("bad read", offset, len);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (OFFSET_SELECTOR, &[lo, hi]) => self.select(u16::from_le_bytes([lo, hi])),
            // Data-register writes: ignored, as by QEMU since 2.4.
            (OFFSET_SELECTOR | OFFSET_DATA, &[_]) => {}
            (OFFSET_DMA_HIGH, &[a, b, c, d]) if self.has_dma() => self.dma_high = u32::from_be_bytes([a, b, c, d]),
            (OFFSET_DMA_LOW, &[a, b, c, d]) if self.has_dma() => {
                let addr = (u64::from(self.dma_high) << 32) | u64::from(u32::from_be_bytes([a, b, c, d]));
                // The high half applies to one transfer only (SeaBIOS writes
                // just the low half).
                self.dma_high = 0;
                self.dma_transfer(addr);
            }
            (OFFSET_DMA_HIGH, &[a, b, c, d, e, f, g, h]) if self.has_dma() => {
                self.dma_high = 0;
                self.dma_transfer(u64::from_be_bytes([a, b, c, d, e, f, g, h]));
            }
            _ => self.log_bad("bad write", offset, data.len()),
        }
    }
}

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;
/// Size of one `etc/e820` entry.
pub const E820_ENTRY_SIZE: usize = 20;

/// One `etc/e820` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`]; SeaBIOS ignores other types here.
    pub kind: u32,
}

/// The contents of `etc/e820`: packed little-endian `{u64 address, u64 length,
/// u32 type}` entries.
///
/// SeaBIOS takes RAM below 4 GiB from it (the highest end of a RAM entry below
/// 4 GiB becomes its `RamSize`) and adds its own holes and reservations on top
/// (0xA0000-0x100000, the EBDA, its own tables), so the file should describe the
/// machine as QEMU does: RAM from 0 to the end of low RAM, RAM above 4 GiB, and
/// reserved ranges the OS must not use.
pub fn e820_file(entries: &[E820Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * E820_ENTRY_SIZE);
    for e in entries {
        out.extend_from_slice(&e.addr.to_le_bytes());
        out.extend_from_slice(&e.size.to_le_bytes());
        out.extend_from_slice(&e.kind.to_le_bytes());
    }
    out
}

/// The contents of `bootorder`: OpenFirmware device paths separated by newlines,
/// NUL-terminated as QEMU writes it.
///
/// SeaBIOS matches each boot device against the lines in order, as a prefix that
/// ends at a `/`: a PCI function at bus 0, slot S, function F is
/// `/pci@i0cf8/*@S` (`S,F` when F is not 0; hex), with `*` matching any device
/// name, so `/pci@i0cf8/scsi@2/disk@0,0` (QEMU's name for a virtio-blk in slot
/// 2) and `/pci@i0cf8/*@2` both select it. A line `HALT` makes the order strict:
/// unlisted devices are then neither initialized nor booted.
pub fn bootorder_file(paths: &[&str]) -> Vec<u8> {
    let mut out = paths.join("\n").into_bytes();
    out.push(0);
    out
}

/// Size of one linker/loader command.
pub const LOADER_COMMAND_SIZE: usize = 128;
/// Loader command: allocate memory for a file and copy it there.
pub const LOADER_ALLOCATE: u32 = 1;
/// Loader command: add a file's address to a pointer field in another file.
pub const LOADER_ADD_POINTER: u32 = 2;
/// Loader command: fix up a checksum byte over a range of a file.
pub const LOADER_ADD_CHECKSUM: u32 = 3;

/// Where the firmware allocates a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocZone {
    /// High memory: the top of RAM below 4 GiB (reserved in the e820 map).
    High = 1,
    /// The F segment, 0xF0000-0xFFFFF (where the RSDP must be found).
    FSeg = 2,
}

/// Builder of `etc/table-loader`, the BIOS linker/loader script.
///
/// Each command is 128 bytes, little-endian: `u32 command`, then
/// - ALLOCATE: `file[56]`, `u32 align`, `u8 zone` — allocate the file's size with
///   the alignment in the zone and copy the file there (once per file, before any
///   command naming it);
/// - ADD_POINTER: `dest_file[56]`, `src_file[56]`, `u32 offset`, `u8 size` —
///   add the address where `src_file` was placed to the `size`-byte
///   little-endian value at `offset` in `dest_file` (so that value must be an
///   offset within `src_file`);
/// - ADD_CHECKSUM: `file[56]`, `u32 result_offset`, `u32 start`, `u32 length` —
///   subtract the byte sum of `[start, start + length)` from the byte at
///   `result_offset`, making the range sum to zero.
///
/// The rest of each command is zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableLoader {
    bytes: Vec<u8>,
}

impl TableLoader {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends ALLOCATE.
    pub fn allocate(&mut self, file: &str, align: u32, zone: AllocZone) -> Result<(), FwCfgError> {
        check_name(file)?;
        if !align.is_power_of_two() {
            return Err(FwCfgError::BadAlignment(align));
        }
        let mut cmd = Command::new(LOADER_ALLOCATE);
        cmd.put(4, &name_field(file));
        cmd.put(60, &align.to_le_bytes());
        cmd.put(64, &[zone as u8]);
        self.push(cmd);
        Ok(())
    }

    /// Appends ADD_POINTER: `dest` at `offset` (`size` bytes) += address of `src`.
    pub fn add_pointer(&mut self, dest: &str, src: &str, offset: u32, size: u8) -> Result<(), FwCfgError> {
        check_name(dest)?;
        check_name(src)?;
        if !matches!(size, 1 | 2 | 4 | 8) {
            return Err(FwCfgError::BadPointerSize(size));
        }
        let mut cmd = Command::new(LOADER_ADD_POINTER);
        cmd.put(4, &name_field(dest));
        cmd.put(60, &name_field(src));
        cmd.put(116, &offset.to_le_bytes());
        cmd.put(120, &[size]);
        self.push(cmd);
        Ok(())
    }

    /// Appends ADD_CHECKSUM: the byte at `result_offset` of `file` is adjusted so
    /// that `[start, start + length)` sums to zero.
    pub fn add_checksum(&mut self, file: &str, result_offset: u32, start: u32, length: u32) -> Result<(), FwCfgError> {
        check_name(file)?;
        let mut cmd = Command::new(LOADER_ADD_CHECKSUM);
        cmd.put(4, &name_field(file));
        cmd.put(60, &result_offset.to_le_bytes());
        cmd.put(64, &start.to_le_bytes());
        cmd.put(68, &length.to_le_bytes());
        self.push(cmd);
        Ok(())
    }

    /// Number of commands.
    pub fn len(&self) -> usize {
        self.bytes.len() / LOADER_COMMAND_SIZE
    }

    /// Whether the script has no command.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The script as it goes into `etc/table-loader`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The script, consumed.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    fn push(&mut self, cmd: Command) {
        self.bytes.extend_from_slice(&cmd.0);
    }
}

/// One 128-byte loader command under construction.
struct Command([u8; LOADER_COMMAND_SIZE]);

impl Command {
    fn new(command: u32) -> Self {
        let mut c = Command([0; LOADER_COMMAND_SIZE]);
        c.put(0, &command.to_le_bytes());
        c
    }

    fn put(&mut self, at: usize, bytes: &[u8]) {
        if let Some(dst) = self.0.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }
}

/// Runs a loader script as SeaBIOS's `romfile_loader_execute` does, for tests:
/// `place(name, size, align, zone)` chooses the guest address of each allocated
/// file. Returns each allocated file's address and patched contents. Unlike
/// SeaBIOS, which skips a bad command with a warning, this fails on the first
/// one, naming it.
pub fn apply_table_loader(
    script: &[u8],
    files: &BTreeMap<String, Vec<u8>>,
    mut place: impl FnMut(&str, usize, u32, u8) -> u64,
) -> Result<BTreeMap<String, (u64, Vec<u8>)>, String> {
    if script.len() % LOADER_COMMAND_SIZE != 0 {
        return Err(format!("script length {} is not a multiple of {LOADER_COMMAND_SIZE}", script.len()));
    }
    let mut placed: BTreeMap<String, (u64, Vec<u8>)> = BTreeMap::new();
    for (i, cmd) in script.chunks_exact(LOADER_COMMAND_SIZE).enumerate() {
        let u32_at = |at: usize| cmd.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
        let name_at = |at: usize| -> Result<String, String> {
            let field = cmd.get(at..at + FW_CFG_MAX_FILE_PATH).ok_or("short command")?;
            if field.last() != Some(&0) {
                return Err(format!("command {i}: name not NUL-terminated"));
            }
            let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
            Ok(String::from_utf8_lossy(field.get(..end).unwrap_or(&[])).into_owned())
        };
        let byte_at = |at: usize| cmd.get(at).copied().unwrap_or(0);
        match u32_at(0).unwrap_or(0) {
            LOADER_ALLOCATE => {
                let name = name_at(4)?;
                let align = u32_at(60).unwrap_or(0);
                let zone = byte_at(64);
                if !align.is_power_of_two() || !matches!(zone, 1 | 2) {
                    return Err(format!("command {i}: bad ALLOCATE of {name}"));
                }
                let data = files.get(&name).ok_or_else(|| format!("command {i}: no file {name}"))?;
                if placed.contains_key(&name) {
                    return Err(format!("command {i}: {name} allocated twice"));
                }
                let addr = place(&name, data.len(), align, zone);
                if addr % u64::from(align) != 0 {
                    return Err(format!("command {i}: {name} placed misaligned"));
                }
                placed.insert(name, (addr, data.clone()));
            }
            LOADER_ADD_POINTER => {
                let (dest, src) = (name_at(4)?, name_at(60)?);
                let offset = u32_at(116).unwrap_or(0) as usize;
                let size = usize::from(byte_at(120));
                let src_addr =
                    placed.get(&src).map(|p| p.0).ok_or_else(|| format!("command {i}: {src} not allocated"))?;
                let (_, data) = placed.get_mut(&dest).ok_or_else(|| format!("command {i}: {dest} not allocated"))?;
                if !matches!(size, 1 | 2 | 4 | 8) {
                    return Err(format!("command {i}: pointer size {size}"));
                }
                let field = offset
                    .checked_add(size)
                    .and_then(|end| data.get_mut(offset..end))
                    .ok_or_else(|| format!("command {i}: pointer at {offset} outside {dest}"))?;
                let mut value = [0u8; 8];
                value.get_mut(..size).unwrap_or(&mut []).copy_from_slice(field);
                let patched = u64::from_le_bytes(value).wrapping_add(src_addr).to_le_bytes();
                field.copy_from_slice(patched.get(..size).unwrap_or(&[]));
            }
            LOADER_ADD_CHECKSUM => {
                let name = name_at(4)?;
                let (result, start, len) = (
                    u32_at(60).unwrap_or(0) as usize,
                    u32_at(64).unwrap_or(0) as usize,
                    u32_at(68).unwrap_or(0) as usize,
                );
                let (_, data) = placed.get_mut(&name).ok_or_else(|| format!("command {i}: {name} not allocated"))?;
                let sum = start
                    .checked_add(len)
                    .and_then(|end| data.get(start..end))
                    .ok_or_else(|| format!("command {i}: checksum range outside {name}"))?
                    .iter()
                    .fold(0u8, |a, b| a.wrapping_add(*b));
                let byte = data.get_mut(result).ok_or_else(|| format!("command {i}: checksum byte outside {name}"))?;
                *byte = byte.wrapping_sub(sum);
            }
            // SeaBIOS skips commands it does not know.
            _ => {}
        }
    }
    Ok(placed)
}

/// Size of the ACPI 2.0+ RSDP.
const RSDP_SIZE: usize = 36;
/// Size of the ACPI 1.0 RSDP (and of the range its first checksum covers).
const RSDP_V1_SIZE: usize = 20;
/// Size of a system description table header.
const SDT_HEADER_SIZE: usize = 36;
/// FADT fields that point at other tables: (offset, size): FIRMWARE_CTRL,
/// DSDT, X_FIRMWARE_CTRL, X_DSDT (ACPI 6.5 table 5.9).
const FADT_POINTERS: [(usize, usize); 4] = [(36, 4), (40, 4), (132, 8), (140, 8)];
/// Alignment of `etc/acpi/tables` (a FACS, if any, needs 64).
const TABLES_ALIGN: u32 = 64;
/// Alignment of `etc/acpi/rsdp` (the RSDP search steps by 16).
const RSDP_ALIGN: u32 = 16;

/// The three files through which firmware receives rvmm's ACPI tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareAcpi {
    /// `etc/acpi/tables`: every table but the RSDP, pointers as offsets in this file.
    pub tables: Vec<u8>,
    /// `etc/acpi/rsdp`: the RSDP, its RSDT/XSDT pointers as offsets in `tables`.
    pub rsdp: Vec<u8>,
    /// `etc/table-loader`: allocates both files, adds their addresses to the
    /// pointers and fixes the checksums.
    pub loader: Vec<u8>,
}

impl FirmwareAcpi {
    /// Splits rvmm's ACPI blob, built for guest address `base`, into the loader's
    /// files.
    ///
    /// The blob must start with the RSDP (as `vmm::boot::acpi::build_acpi_tables`
    /// lays it out: the RSDP at offset 0, each table 8-byte aligned after it, every
    /// pointer an absolute address `base + offset`). The tables file is the blob
    /// from the first 8-byte boundary after the RSDP; the tables are found by
    /// following the pointers, as an OS would: RSDT and XSDT from the RSDP, the
    /// tables they list, and the FADT's DSDT and FACS. Each pointer field becomes
    /// the table's offset in the tables file, with an ADD_POINTER to relocate it
    /// and an ADD_CHECKSUM for every table that holds one. Tables without
    /// pointers (DSDT, MADT, MCFG, ...) are copied unchanged.
    pub fn from_blob(blob: &[u8], base: u64) -> Result<Self, FwCfgError> {
        let bad = |why: String| FwCfgError::BadAcpiBlob(why);
        if blob.get(..8) != Some(b"RSD PTR ".as_slice()) {
            return Err(bad("no RSDP signature at offset 0".into()));
        }
        let revision = *blob.get(15).ok_or_else(|| bad("truncated RSDP".into()))?;
        let rsdp_len = if revision >= 2 {
            le_u32(blob, RSDP_V1_SIZE).map(|l| l as usize).ok_or_else(|| bad("truncated RSDP".into()))?
        } else {
            RSDP_V1_SIZE
        };
        if rsdp_len < if revision >= 2 { RSDP_SIZE } else { RSDP_V1_SIZE } {
            return Err(bad(format!("RSDP length {rsdp_len}")));
        }
        let mut rsdp = blob.get(..rsdp_len).ok_or_else(|| bad("truncated RSDP".into()))?.to_vec();
        let tables_start = rsdp_len.next_multiple_of(8);
        let mut tables = blob.get(tables_start..).ok_or_else(|| bad("no tables after the RSDP".into()))?.to_vec();

        // Converts an absolute table address to its offset in `tables` and checks
        // that a table of at least `min_len` bytes (per its length field) is there.
        let locate = |tables: &[u8], addr: u64, min_len: usize| -> Result<usize, FwCfgError> {
            let rel = addr
                .checked_sub(base)
                .and_then(|o| o.checked_sub(tables_start as u64))
                .and_then(|o| usize::try_from(o).ok())
                .ok_or_else(|| bad(format!("pointer {addr:#x} is not inside the tables")))?;
            let len = rel.checked_add(4).and_then(|at| le_u32(tables, at)).map_or(0, |l| l as usize);
            if len < min_len || rel.checked_add(len).map_or(true, |end| end > tables.len()) {
                return Err(bad(format!("no valid table at {addr:#x}")));
            }
            Ok(rel)
        };

        let mut loader = TableLoader::new();
        loader.allocate(ACPI_TABLES_FILE, TABLES_ALIGN, AllocZone::High)?;
        loader.allocate(ACPI_RSDP_FILE, RSDP_ALIGN, AllocZone::FSeg)?;

        // The RSDP's RSDT (offset 16, 4 bytes) and XSDT (offset 24, 8 bytes).
        let mut roots = Vec::new();
        let rsdp_fields: &[(usize, usize, usize)] =
            if revision >= 2 { &[(16, 4, 4), (24, 8, 8)] } else { &[(16, 4, 4)] };
        for &(field, size, entry_size) in rsdp_fields {
            let addr = le_uint(&rsdp, field, size).ok_or_else(|| bad("truncated RSDP".into()))?;
            if addr == 0 {
                continue;
            }
            let rel = locate(&tables, addr, SDT_HEADER_SIZE)?;
            put_le(&mut rsdp, field, size, rel as u64);
            loader.add_pointer(ACPI_RSDP_FILE, ACPI_TABLES_FILE, field as u32, size as u8)?;
            roots.push((rel, entry_size));
        }
        if roots.is_empty() {
            return Err(bad("the RSDP points at neither an RSDT nor an XSDT".into()));
        }
        loader.add_checksum(ACPI_RSDP_FILE, 8, 0, RSDP_V1_SIZE as u32)?;
        if revision >= 2 {
            loader.add_checksum(ACPI_RSDP_FILE, 32, 0, rsdp_len as u32)?;
        }

        // RSDT/XSDT entries.
        let mut listed = BTreeSet::new();
        for (root, entry_size) in roots {
            let len = le_u32(&tables, root + 4).map(|l| l as usize).unwrap_or(0);
            let count = (len - SDT_HEADER_SIZE) / entry_size;
            for i in 0..count {
                let field = root + SDT_HEADER_SIZE + i * entry_size;
                let addr = le_uint(&tables, field, entry_size).ok_or_else(|| bad("truncated RSDT/XSDT".into()))?;
                let rel = locate(&tables, addr, SDT_HEADER_SIZE)?;
                put_le(&mut tables, field, entry_size, rel as u64);
                loader.add_pointer(ACPI_TABLES_FILE, ACPI_TABLES_FILE, field as u32, entry_size as u8)?;
                listed.insert(rel);
            }
            loader.add_checksum(ACPI_TABLES_FILE, (root + 9) as u32, root as u32, len as u32)?;
        }

        // The FADT's DSDT and FACS pointers.
        for table in listed {
            if tables.get(table..table + 4) != Some(b"FACP".as_slice()) {
                continue;
            }
            let len = le_u32(&tables, table + 4).map(|l| l as usize).unwrap_or(0);
            for (field, size) in FADT_POINTERS {
                if field + size > len {
                    continue;
                }
                let at = table + field;
                let addr = le_uint(&tables, at, size).ok_or_else(|| bad("truncated FADT".into()))?;
                if addr == 0 {
                    continue;
                }
                // A FACS has no SDT header, but its length is at the same offset.
                let rel = locate(&tables, addr, SDT_HEADER_SIZE)?;
                put_le(&mut tables, at, size, rel as u64);
                loader.add_pointer(ACPI_TABLES_FILE, ACPI_TABLES_FILE, at as u32, size as u8)?;
            }
            loader.add_checksum(ACPI_TABLES_FILE, (table + 9) as u32, table as u32, len as u32)?;
        }

        Ok(FirmwareAcpi { tables, rsdp, loader: loader.into_bytes() })
    }
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    le_uint(bytes, at, 4).map(|v| v as u32)
}

/// The `size`-byte (at most 8) little-endian value at `at`.
fn le_uint(bytes: &[u8], at: usize, size: usize) -> Option<u64> {
    let field = bytes.get(at..at.checked_add(size)?)?;
    let mut value = [0u8; 8];
    value.get_mut(..size)?.copy_from_slice(field);
    Some(u64::from_le_bytes(value))
}

/// Stores the low `size` bytes of `value` little-endian at `at` (if in range).
fn put_le(bytes: &mut [u8], at: usize, size: usize, value: u64) {
    if let (Some(dst), Some(src)) = (bytes.get_mut(at..at + size), value.to_le_bytes().get(..size)) {
        dst.copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEM_BASE: u64 = 0;
    const MEM_SIZE: usize = 0x10_0000;
    /// Where tests put the DMA control structure.
    const ACCESS: u64 = 0x1000;
    /// Where tests DMA data to.
    const BUF: u64 = 0x2000;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(MEM_BASE), MEM_SIZE)]).unwrap()
    }

    fn dev() -> (FwCfg, GuestMemoryMmap) {
        let mem = memory();
        (FwCfg::new(mem.clone()), mem)
    }

    fn select(d: &mut FwCfg, key: u16) {
        d.write(0, &key.to_le_bytes());
    }

    fn read_bytes(d: &mut FwCfg, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let mut b = [0xaa];
                d.read(1, &mut b);
                b[0]
            })
            .collect()
    }

    fn read_item(d: &mut FwCfg, key: u16, n: usize) -> Vec<u8> {
        select(d, key);
        read_bytes(d, n)
    }

    /// Writes a DMA control structure at ACCESS and kicks the device the way
    /// SeaBIOS does (low half only).
    fn dma(d: &mut FwCfg, mem: &GuestMemoryMmap, control: u32, length: u32, address: u64) -> u32 {
        dma_at(d, mem, ACCESS, control, length, address)
    }

    fn dma_at(d: &mut FwCfg, mem: &GuestMemoryMmap, at: u64, control: u32, length: u32, address: u64) -> u32 {
        let mut s = Vec::new();
        s.extend_from_slice(&control.to_be_bytes());
        s.extend_from_slice(&length.to_be_bytes());
        s.extend_from_slice(&address.to_be_bytes());
        mem.write_slice(&s, GuestAddress(at)).unwrap();
        d.write(8, &(at as u32).to_be_bytes());
        let mut c = [0u8; 4];
        mem.read_slice(&mut c, GuestAddress(at)).unwrap();
        u32::from_be_bytes(c)
    }

    fn guest(mem: &GuestMemoryMmap, addr: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    #[test]
    fn signature_and_id_via_io_ports() {
        let (mut d, _) = dev();
        assert_eq!(read_item(&mut d, FW_CFG_SIGNATURE, 4), b"QEMU");
        // Past the end: zeros.
        assert_eq!(read_bytes(&mut d, 2), [0, 0]);
        let id = read_item(&mut d, FW_CFG_ID, 4);
        assert_eq!(u32::from_le_bytes(id.try_into().unwrap()), FW_CFG_VERSION | FW_CFG_VERSION_DMA);
        // A byte read at the selector port reads data too (QEMU's combined port).
        select(&mut d, FW_CFG_SIGNATURE);
        let mut b = [0u8];
        d.read(0, &mut b);
        assert_eq!(b, *b"Q");

        let mut plain = FwCfg::without_dma();
        let id = read_item(&mut plain, FW_CFG_ID, 4);
        assert_eq!(u32::from_le_bytes(id.try_into().unwrap()), FW_CFG_VERSION);
        let mut sig = [0u8; 4];
        plain.read(4, &mut sig);
        assert_eq!(sig, [0xff; 4], "no DMA registers without memory");
    }

    #[test]
    fn dma_signature_reads() {
        let (mut d, _) = dev();
        let mut hi = [0u8; 4];
        let mut lo = [0u8; 4];
        d.read(4, &mut hi);
        d.read(8, &mut lo);
        assert_eq!([hi, lo].concat(), b"QEMU CFG");
        let mut all = [0u8; 8];
        d.read(4, &mut all);
        assert_eq!(&all, b"QEMU CFG");
        let mut one = [0u8; 1];
        d.read(11, &mut one);
        assert_eq!(one, *b"G");
        let mut past = [0u8; 4];
        d.read(10, &mut past);
        assert_eq!(past, [0xff; 4]);
    }

    #[test]
    fn numeric_items_and_selector_bits() {
        let (mut d, _) = dev();
        d.set_ram_size(0x1_2345_6000).unwrap();
        d.set_cpus(4, 8).unwrap();
        d.set_nographic(true).unwrap();
        d.set_boot_menu(false).unwrap();
        d.set_item(FW_CFG_IRQ0_OVERRIDE, vec![1]).unwrap();
        assert_eq!(read_item(&mut d, FW_CFG_RAM_SIZE, 8), 0x1_2345_6000u64.to_le_bytes());
        assert_eq!(read_item(&mut d, FW_CFG_NB_CPUS, 2), 4u16.to_le_bytes());
        assert_eq!(read_item(&mut d, FW_CFG_MAX_CPUS, 2), 8u16.to_le_bytes());
        assert_eq!(read_item(&mut d, FW_CFG_NOGRAPHIC, 2), [1, 0]);
        assert_eq!(read_item(&mut d, FW_CFG_BOOT_MENU, 2), [0, 0]);
        assert_eq!(read_item(&mut d, FW_CFG_IRQ0_OVERRIDE, 2), [1, 0]);
        // The write-channel bit is ignored; unknown keys read as zeros.
        assert_eq!(read_item(&mut d, FW_CFG_NB_CPUS | 0x4000, 2), 4u16.to_le_bytes());
        assert_eq!(read_item(&mut d, FW_CFG_NUMA, 8), [0; 8]);
        assert_eq!(read_item(&mut d, 0x7fff, 2), [0, 0]);
        assert_eq!(read_item(&mut d, 0xffff, 2), [0, 0]);
        // Keys the device owns.
        for key in [FW_CFG_SIGNATURE, FW_CFG_ID, FW_CFG_FILE_DIR, FW_CFG_FILE_FIRST, 0x3fff, 0x4003, 0xc000] {
            assert_eq!(d.set_u16(key, 1), Err(FwCfgError::ReservedKey(key)), "{key:#x}");
        }
    }

    #[test]
    fn file_directory_layout() {
        let (mut d, _) = dev();
        assert_eq!(read_item(&mut d, FW_CFG_FILE_DIR, 4), [0, 0, 0, 0]);
        d.add_file("etc/e820", vec![1; 40]).unwrap();
        d.add_file("bootorder", b"x\0".to_vec()).unwrap();
        let last = d.add_file("etc/table-loader", vec![2; 256]).unwrap();
        assert_eq!(last, 0x22);
        let dir = read_item(&mut d, FW_CFG_FILE_DIR, 4 + 3 * 64);
        assert_eq!(dir[..4], 3u32.to_be_bytes());
        let expect = [("bootorder", 2u32, 0x20u16), ("etc/e820", 40, 0x21), ("etc/table-loader", 256, 0x22)];
        for (i, (name, size, key)) in expect.iter().enumerate() {
            let e = &dir[4 + i * 64..4 + (i + 1) * 64];
            assert_eq!(e[0..4], size.to_be_bytes(), "{name}");
            assert_eq!(e[4..6], key.to_be_bytes(), "{name}");
            assert_eq!(e[6..8], [0, 0]);
            assert_eq!(&e[8..8 + name.len()], name.as_bytes());
            assert!(e[8 + name.len()..].iter().all(|&b| b == 0));
            assert_eq!(d.file_key(name), Some(*key));
        }
        assert_eq!(d.file_key("etc/nothing"), None);
    }

    #[test]
    fn files_are_numbered_in_name_order() {
        let (mut d, _) = dev();
        assert_eq!(d.add_file("zzz", vec![3]).unwrap(), 0x20);
        assert_eq!(d.add_file("aaa", vec![1]).unwrap(), 0x20);
        assert_eq!(d.add_file("mmm", vec![2]).unwrap(), 0x21);
        assert_eq!(d.file_key("zzz"), Some(0x22));
        assert_eq!(read_item(&mut d, 0x20, 1), [1]);
        assert_eq!(read_item(&mut d, 0x21, 1), [2]);
        assert_eq!(read_item(&mut d, 0x22, 1), [3]);
        assert_eq!(read_item(&mut d, 0x23, 1), [0]);
    }

    #[test]
    fn file_name_and_size_checks() {
        let (mut d, _) = dev();
        let long = "x".repeat(56);
        assert_eq!(d.add_file(&long, vec![]), Err(FwCfgError::BadFileName(long.clone())));
        assert!(d.add_file(&long[..55], vec![]).is_ok());
        assert!(matches!(d.add_file("", vec![]), Err(FwCfgError::BadFileName(_))));
        assert!(matches!(d.add_file("a\0b", vec![]), Err(FwCfgError::BadFileName(_))));
        d.add_file("bootorder", vec![]).unwrap();
        assert_eq!(d.add_file("bootorder", vec![1]), Err(FwCfgError::DuplicateFile("bootorder".into())));
        // The long name is stored with its NUL in the directory entry.
        let dir = read_item(&mut d, FW_CFG_FILE_DIR, 4 + 2 * 64);
        let e = &dir[4 + 64..];
        assert_eq!(&e[8..63], long[..55].as_bytes());
        assert_eq!(e[63], 0);
    }

    #[test]
    fn read_file_byte_by_byte() {
        let (mut d, _) = dev();
        let content: Vec<u8> = (0..=255u8).chain(0..=10).collect();
        let key = d.add_file("etc/blob", content.clone()).unwrap();
        select(&mut d, key);
        assert_eq!(read_bytes(&mut d, content.len()), content);
        assert_eq!(read_bytes(&mut d, 3), [0, 0, 0]);
        // Selecting again restarts at offset 0.
        select(&mut d, key);
        assert_eq!(read_bytes(&mut d, 2), [0, 1]);
    }

    #[test]
    fn bad_port_accesses() {
        let (mut d, _) = dev();
        let mut w = [0u8; 2];
        d.read(0, &mut w);
        assert_eq!(w, [0xff, 0xff], "16-bit reads are not data reads");
        let mut b = [0u8; 1];
        d.read(2, &mut b);
        assert_eq!(b, [0xff]);
        // Ignored: a data write, a 32-bit selector write, an 8-bit DMA write.
        select(&mut d, FW_CFG_SIGNATURE);
        d.write(1, &[0x55]);
        d.write(0, &[1, 0, 0, 0]);
        d.write(8, &[0]);
        d.write(12, &[0; 4]);
        assert_eq!(read_bytes(&mut d, 1), *b"Q");
    }

    #[test]
    fn dma_read_into_guest_memory() {
        let (mut d, mem) = dev();
        let key = d.add_file("etc/data", (1..=100).collect()).unwrap();
        select(&mut d, key);
        assert_eq!(dma(&mut d, &mem, DMA_CTL_READ, 60, BUF), 0);
        assert_eq!(guest(&mem, BUF, 60), (1..=60).collect::<Vec<u8>>());
        // The data offset is shared with the port interface.
        assert_eq!(read_bytes(&mut d, 1), [61]);
        // A read past the end fills zeros.
        mem.write_slice(&[0xee; 64], GuestAddress(BUF)).unwrap();
        assert_eq!(dma(&mut d, &mem, DMA_CTL_READ, 64, BUF), 0);
        let got = guest(&mem, BUF, 64);
        assert_eq!(got[..39], (62..=100).collect::<Vec<u8>>()[..]);
        assert!(got[39..].iter().all(|&b| b == 0));
    }

    #[test]
    fn dma_select_and_read() {
        let (mut d, mem) = dev();
        d.set_ram_size(256 << 20).unwrap();
        let control = (u32::from(FW_CFG_RAM_SIZE) << 16) | DMA_CTL_SELECT | DMA_CTL_READ;
        assert_eq!(dma(&mut d, &mem, control, 8, BUF), 0);
        assert_eq!(guest(&mem, BUF, 8), (256u64 << 20).to_le_bytes());
        // Select alone: no transfer, offset reset.
        let control = (u32::from(FW_CFG_SIGNATURE) << 16) | DMA_CTL_SELECT;
        mem.write_slice(&[0x77; 4], GuestAddress(BUF)).unwrap();
        assert_eq!(dma(&mut d, &mem, control, 4, BUF), 0);
        assert_eq!(guest(&mem, BUF, 4), [0x77; 4]);
        assert_eq!(read_bytes(&mut d, 4), b"QEMU");
        // SeaBIOS reads the directory count, then entries, through DMA.
        d.add_file("etc/e820", vec![0; 20]).unwrap();
        let control = (u32::from(FW_CFG_FILE_DIR) << 16) | DMA_CTL_SELECT | DMA_CTL_READ;
        assert_eq!(dma(&mut d, &mem, control, 4, BUF), 0);
        assert_eq!(guest(&mem, BUF, 4), 1u32.to_be_bytes());
        assert_eq!(dma(&mut d, &mem, DMA_CTL_READ, 64, BUF), 0);
        assert_eq!(&guest(&mem, BUF + 8, 8), b"etc/e820");
    }

    #[test]
    fn dma_skip() {
        let (mut d, mem) = dev();
        let key = d.add_file("etc/data", (0..50).collect()).unwrap();
        select(&mut d, key);
        // SeaBIOS skips with address 0; nothing is written anywhere.
        mem.write_slice(&[0x99; 16], GuestAddress(0)).unwrap();
        assert_eq!(dma(&mut d, &mem, DMA_CTL_SKIP, 10, 0), 0);
        assert_eq!(guest(&mem, 0, 16), [0x99; 16]);
        assert_eq!(dma(&mut d, &mem, DMA_CTL_READ, 5, BUF), 0);
        assert_eq!(guest(&mem, BUF, 5), [10, 11, 12, 13, 14]);
        // Skipping past the end is fine; later reads are zeros.
        assert_eq!(dma(&mut d, &mem, DMA_CTL_SKIP, 1000, 0), 0);
        assert_eq!(read_bytes(&mut d, 1), [0]);
    }

    #[test]
    fn dma_bad_address_sets_error() {
        let (mut d, mem) = dev();
        let key = d.add_file("etc/data", vec![5; 32]).unwrap();
        select(&mut d, key);
        let end = MEM_BASE + MEM_SIZE as u64;
        // Destination entirely outside, straddling the end, wrapping around.
        assert_eq!(dma(&mut d, &mem, DMA_CTL_READ, 16, end + 0x1000), DMA_CTL_ERROR);
        assert_eq!(dma(&mut d, &mem, DMA_CTL_READ, 16, end - 8), DMA_CTL_ERROR);
        assert_eq!(guest(&mem, end - 8, 8), [0; 8], "nothing written on a bad range");
        assert_eq!(dma(&mut d, &mem, DMA_CTL_READ, 16, u64::MAX - 4), DMA_CTL_ERROR);
        // Zero-fill past the item's end into a bad range, and a huge length.
        select(&mut d, key);
        assert_eq!(dma(&mut d, &mem, DMA_CTL_READ, u32::MAX, BUF), DMA_CTL_ERROR);
        assert_eq!(dma(&mut d, &mem, DMA_CTL_READ, 64, end - 16), DMA_CTL_ERROR);
        // A write is refused.
        select(&mut d, key);
        assert_eq!(dma(&mut d, &mem, DMA_CTL_WRITE, 4, BUF), DMA_CTL_ERROR);
        // Control structure outside memory or at its very end: no panic, no write.
        d.write(8, &((end + 0x100) as u32).to_be_bytes());
        d.write(4, &1u32.to_be_bytes());
        d.write(8, &0u32.to_be_bytes());
        d.write(4, &u64::MAX.to_be_bytes());
        mem.write_slice(&DMA_CTL_READ.to_be_bytes(), GuestAddress(end - 8)).unwrap();
        d.write(8, &((end - 8) as u32).to_be_bytes());
        assert_eq!(guest(&mem, end - 8, 4), DMA_CTL_ERROR.to_be_bytes());
        // The device still works.
        assert_eq!(dma(&mut d, &mem, (u32::from(key) << 16) | DMA_CTL_SELECT | DMA_CTL_READ, 4, BUF), 0);
        assert_eq!(guest(&mem, BUF, 4), [5; 4]);
    }

    #[test]
    fn dma_address_halves() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(1 << 32), 0x1000)]).unwrap();
        let mut d = FwCfg::new(mem.clone());
        let high: u64 = (1 << 32) + 0x100;
        let mut s = Vec::new();
        s.extend_from_slice(&((u32::from(FW_CFG_SIGNATURE) << 16) | DMA_CTL_SELECT | DMA_CTL_READ).to_be_bytes());
        s.extend_from_slice(&4u32.to_be_bytes());
        s.extend_from_slice(&((1u64 << 32) + 0x800).to_be_bytes());
        mem.write_slice(&s, GuestAddress(high)).unwrap();
        d.write(4, &1u32.to_be_bytes());
        d.write(8, &0x100u32.to_be_bytes());
        assert_eq!(guest(&mem, high, 4), [0; 4]);
        assert_eq!(&guest(&mem, (1 << 32) + 0x800, 4), b"QEMU");
        // The high half was consumed: the same low half now means address 0x100.
        mem.write_slice(&s, GuestAddress(0x100)).unwrap();
        d.write(8, &0x100u32.to_be_bytes());
        assert_eq!(guest(&mem, 0x100, 4), [0; 4]);
        // A 64-bit write carries the whole address.
        mem.write_slice(&s, GuestAddress(high)).unwrap();
        d.write(4, &high.to_be_bytes());
        assert_eq!(guest(&mem, high, 4), [0; 4]);
    }

    /// Guest memory of the random test: two regions with a hole between.
    const FUZZ_R0: (u64, usize) = (0, 0x4000);
    const FUZZ_R1: (u64, usize) = (0x8000, 0x2000);

    fn fuzz_snapshot(mem: &GuestMemoryMmap) -> Vec<u8> {
        let mut v = guest(mem, FUZZ_R0.0, FUZZ_R0.1);
        v.extend(guest(mem, FUZZ_R1.0, FUZZ_R1.1));
        v
    }

    /// The DMA transfer a kick at `access` asks for, as guest memory holds it:
    /// the ranges it may write (its status word, its data range for a read).
    fn fuzz_allowed(mem: &GuestMemoryMmap, access: u64) -> Vec<(u64, u64)> {
        let mut allowed = vec![(access, access.saturating_add(4))];
        let mut raw = [0u8; 16];
        if mem.read_slice(&mut raw, GuestAddress(access)).is_ok() {
            let length = u32::from_be_bytes(raw[4..8].try_into().unwrap());
            let address = u64::from_be_bytes(raw[8..16].try_into().unwrap());
            allowed.push((address, address.saturating_add(u64::from(length))));
        }
        allowed
    }

    #[test]
    fn random_port_and_dma_traffic_never_panics_nor_writes_outside_the_transfer() {
        // Random port accesses of every width at every offset, selector
        // writes, and DMA transfers whose control structures and data ranges
        // lie in RAM, straddle the end of a region, sit in the hole or near
        // 2^64, with every combination of control bits and lengths up to
        // 4 GiB. No panic; guest memory changes only in the status word of a
        // kicked transfer and the data range it names; a completed transfer
        // reports 0 or the error bit; the device still answers afterwards.
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(FUZZ_R0.0), FUZZ_R0.1), (GuestAddress(FUZZ_R1.0), FUZZ_R1.1)])
                .unwrap();
        let mut d = FwCfg::new(mem.clone());
        d.set_ram_size(256 << 20).unwrap();
        let small = d.add_file("etc/small", (0..100).collect()).unwrap();
        let big = d.add_file("etc/big", (0..5000u32).map(|i| i as u8).collect()).unwrap();
        let empty = d.add_file("etc/empty", Vec::new()).unwrap();
        let mut x: u64 = 0xf3c9_0000_0000_0001;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let ends = [FUZZ_R0.1 as u64, FUZZ_R1.0 + FUZZ_R1.1 as u64];
        let (mut transfers, mut errors) = (0u32, 0u32);
        let mut before = fuzz_snapshot(&mem);
        for _ in 0..4000 {
            let r = next();
            let key = [FW_CFG_SIGNATURE, FW_CFG_ID, FW_CFG_FILE_DIR, FW_CFG_RAM_SIZE, small, big, empty, r as u16]
                [(r >> 16) as usize % 8];
            let width = [0usize, 1, 2, 3, 4, 4, 8, 8, 9][(r >> 24) as usize % 9];
            let offset = [0u64, 1, 2, 3, 4, 8, 9, 11, 12, 16, u64::MAX][(r >> 32) as usize % 11];
            let mut allowed = Vec::new();
            let mut kicked = None;
            match r % 8 {
                0 | 1 => {
                    let mut buf = vec![0u8; width];
                    d.read(offset, &mut buf);
                }
                2 => select(&mut d, key),
                3 => {
                    // Any write, including ones that start a transfer from
                    // whatever memory holds at the address they name.
                    let v = next().to_be_bytes();
                    let data = &v[..width.min(8)];
                    let access = match (offset, data.len()) {
                        (OFFSET_DMA_LOW, 4) => Some(
                            (u64::from(d.dma_high) << 32) | u64::from(u32::from_be_bytes(data.try_into().unwrap())),
                        ),
                        (OFFSET_DMA_HIGH, 8) => Some(u64::from_be_bytes(v)),
                        _ => None,
                    };
                    if let Some(a) = access {
                        allowed = fuzz_allowed(&mem, a);
                    }
                    d.write(offset, data);
                }
                _ => {
                    // A structured transfer.
                    let q = next();
                    let control = match q % 6 {
                        0 => q as u32,
                        1 => (u32::from(key) << 16) | DMA_CTL_SELECT | DMA_CTL_READ,
                        2 => DMA_CTL_READ,
                        3 => DMA_CTL_SKIP,
                        4 => DMA_CTL_WRITE | DMA_CTL_ERROR,
                        _ => (u32::from(key) << 16) | DMA_CTL_SELECT,
                    };
                    let length = [0u32, 1, 4, 100, 5000, 0x1_0000, u32::MAX, (q >> 8) as u32][(q >> 16) as usize % 8];
                    let end = ends[(q >> 20) as usize % 2];
                    let address = match (q >> 24) % 6 {
                        0 => q >> 40 & 0x3fff,
                        1 => FUZZ_R1.0 + (q >> 40 & 0x1fff),
                        2 => end - (q >> 40 & 0xff),
                        3 => 0x4000 + (q >> 40 & 0x3fff),
                        4 => u64::MAX - (q >> 40 & 0xff),
                        _ => 0,
                    };
                    let access = match (q >> 30) % 5 {
                        0 | 1 => (q >> 44) & 0x3ff0,
                        2 => end - 8,
                        3 => end + 0x100,
                        _ => q >> 4,
                    };
                    let mut s = control.to_be_bytes().to_vec();
                    s.extend_from_slice(&length.to_be_bytes());
                    s.extend_from_slice(&address.to_be_bytes());
                    // Only the part in RAM is written, as a guest could.
                    for (i, b) in s.iter().enumerate() {
                        let _ = mem.write_slice(&[*b], GuestAddress(access.wrapping_add(i as u64)));
                    }
                    before = fuzz_snapshot(&mem);
                    allowed = fuzz_allowed(&mem, access);
                    match (q >> 34) % 3 {
                        // The low half alone (as SeaBIOS does) only when no
                        // high half is left over from a random write.
                        0 if access >> 32 == 0 && d.dma_high == 0 => {
                            d.write(OFFSET_DMA_LOW, &(access as u32).to_be_bytes())
                        }
                        1 => {
                            d.write(OFFSET_DMA_HIGH, &((access >> 32) as u32).to_be_bytes());
                            d.write(OFFSET_DMA_LOW, &(access as u32).to_be_bytes());
                        }
                        _ => d.write(OFFSET_DMA_HIGH, &access.to_be_bytes()),
                    }
                    kicked = Some(access);
                }
            }
            let after = fuzz_snapshot(&mem);
            if after != before {
                // Byte by byte only inside the 64-byte chunks that changed.
                let changed = before.chunks(64).zip(after.chunks(64)).enumerate().filter(|(_, (a, b))| a != b);
                let bytes = changed.flat_map(|(c, (a, b))| (0..a.len()).map(move |j| (c * 64 + j, a[j], b[j])));
                for (i, a, b) in bytes {
                    if a != b {
                        let addr =
                            if i < FUZZ_R0.1 { FUZZ_R0.0 + i as u64 } else { FUZZ_R1.0 + (i - FUZZ_R0.1) as u64 };
                        assert!(
                            allowed.iter().any(|&(s, e)| (s..e).contains(&addr)),
                            "byte at {addr:#x} written outside {allowed:x?}"
                        );
                    }
                }
            }
            before = after;
            if let Some(access) = kicked {
                let mut c = [0u8; 4];
                if mem.read_slice(&mut c, GuestAddress(access)).is_ok() {
                    let status = u32::from_be_bytes(c);
                    assert!(status == 0 || status == DMA_CTL_ERROR, "status {status:#x} at {access:#x}");
                    transfers += 1;
                    errors += status;
                }
            }
        }
        assert!(transfers > 500 && errors > 100 && transfers - errors > 100, "{transfers} {errors}");
        // Still serving.
        assert_eq!(read_item(&mut d, FW_CFG_SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&mut d, small, 3), [0, 1, 2]);
    }

    #[test]
    fn dma_without_operation_completes() {
        let (mut d, mem) = dev();
        assert_eq!(dma(&mut d, &mem, 0, 100, BUF), 0);
        // The error bit set by the guest is cleared on completion.
        assert_eq!(dma(&mut d, &mem, DMA_CTL_ERROR | DMA_CTL_SKIP, 1, 0), 0);
    }

    #[test]
    fn table_loader_command_encoding() {
        let mut l = TableLoader::new();
        assert!(l.is_empty());
        l.allocate("etc/acpi/tables", 64, AllocZone::High).unwrap();
        l.add_pointer("etc/acpi/rsdp", "etc/acpi/tables", 16, 4).unwrap();
        l.add_checksum("etc/acpi/rsdp", 8, 0, 20).unwrap();
        l.allocate("etc/acpi/rsdp", 16, AllocZone::FSeg).unwrap();
        assert_eq!(l.len(), 4);
        let b = l.as_bytes();
        assert_eq!(b.len(), 4 * 128);
        let c = |i: usize| &b[i * 128..(i + 1) * 128];
        let u32_at = |s: &[u8], o: usize| u32::from_le_bytes(s[o..o + 4].try_into().unwrap());

        let a = c(0);
        assert_eq!(u32_at(a, 0), LOADER_ALLOCATE);
        assert_eq!(&a[4..19], b"etc/acpi/tables");
        assert!(a[19..60].iter().all(|&x| x == 0));
        assert_eq!(u32_at(a, 60), 64);
        assert_eq!(a[64], 1);
        assert!(a[65..].iter().all(|&x| x == 0));

        let p = c(1);
        assert_eq!(u32_at(p, 0), LOADER_ADD_POINTER);
        assert_eq!(&p[4..17], b"etc/acpi/rsdp");
        assert_eq!(&p[60..75], b"etc/acpi/tables");
        assert_eq!(u32_at(p, 116), 16);
        assert_eq!(p[120], 4);
        assert!(p[121..].iter().all(|&x| x == 0));

        let k = c(2);
        assert_eq!(u32_at(k, 0), LOADER_ADD_CHECKSUM);
        assert_eq!(&k[4..17], b"etc/acpi/rsdp");
        assert_eq!((u32_at(k, 60), u32_at(k, 64), u32_at(k, 68)), (8, 0, 20));
        assert!(k[72..].iter().all(|&x| x == 0));

        assert_eq!(c(3)[64], 2, "FSEG zone");

        assert_eq!(l.allocate("x", 3, AllocZone::High), Err(FwCfgError::BadAlignment(3)));
        assert_eq!(l.allocate("x", 0, AllocZone::High), Err(FwCfgError::BadAlignment(0)));
        assert_eq!(l.add_pointer("x", "y", 0, 3), Err(FwCfgError::BadPointerSize(3)));
        assert!(matches!(l.add_checksum(&"n".repeat(56), 0, 0, 1), Err(FwCfgError::BadFileName(_))));
        assert_eq!(l.len(), 4, "rejected commands are not added");
    }

    #[test]
    fn e820_file_layout() {
        let f = e820_file(&[
            E820Entry { addr: 0, size: 0x9_fc00, kind: E820_RAM },
            E820Entry { addr: 0xfffb_c000, size: 0x4000, kind: E820_RESERVED },
            E820Entry { addr: 1 << 32, size: 1 << 30, kind: E820_RAM },
        ]);
        assert_eq!(f.len(), 3 * E820_ENTRY_SIZE);
        assert_eq!(f[0..8], 0u64.to_le_bytes());
        assert_eq!(f[8..16], 0x9_fc00u64.to_le_bytes());
        assert_eq!(f[16..20], 1u32.to_le_bytes());
        assert_eq!(f[20..28], 0xfffb_c000u64.to_le_bytes());
        assert_eq!(f[36..40], 2u32.to_le_bytes());
        assert_eq!(f[40..48], (1u64 << 32).to_le_bytes());
        assert_eq!(f[48..56], (1u64 << 30).to_le_bytes());
        assert_eq!(f[56..60], 1u32.to_le_bytes());
    }

    #[test]
    fn bootorder_file_format() {
        assert_eq!(bootorder_file(&["/pci@i0cf8/scsi@2/disk@0,0", "HALT"]), b"/pci@i0cf8/scsi@2/disk@0,0\nHALT\0");
        assert_eq!(bootorder_file(&[]), b"\0");
    }

    /// A blob laid out as rvmm's `build_acpi_tables` does, at `base`:
    /// RSDP, DSDT, FADT, MADT, XSDT, RSDT, each 8-byte aligned.
    fn rvmm_like_blob(base: u64) -> Vec<u8> {
        fn sdt(sig: &[u8; 4], rev: u8, body: &[u8]) -> Vec<u8> {
            let mut t = Vec::new();
            t.extend_from_slice(sig);
            t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
            t.push(rev);
            t.push(0);
            t.extend_from_slice(b"RVMM  RVMMVM  ");
            t.extend_from_slice(&1u32.to_le_bytes());
            t.extend_from_slice(b"RVMM");
            t.extend_from_slice(&1u32.to_le_bytes());
            t.extend_from_slice(body);
            t[9] = 0u8.wrapping_sub(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)));
            t
        }
        fn place(blob: &mut Vec<u8>, t: &[u8]) -> usize {
            let off = blob.len().next_multiple_of(8);
            blob.resize(off, 0);
            blob.extend_from_slice(t);
            off
        }
        let mut blob = vec![0u8; 36];
        let dsdt =
            place(&mut blob, &sdt(b"DSDT", 2, &[0x08, b'_', b'S', b'5', b'_', 0x12, 0x04, 0x02, 0x0a, 0x05, 0x00]));
        let dsdt_addr = base + dsdt as u64;
        let mut fadt = vec![0u8; 276 - 36];
        fadt[40 - 36..44 - 36].copy_from_slice(&(dsdt_addr as u32).to_le_bytes());
        fadt[140 - 36..148 - 36].copy_from_slice(&dsdt_addr.to_le_bytes());
        fadt[112 - 36..116 - 36].copy_from_slice(&(1u32 << 20).to_le_bytes());
        let fadt = place(&mut blob, &sdt(b"FACP", 6, &fadt));
        let madt = place(&mut blob, &sdt(b"APIC", 5, &[0u8; 20]));
        let listed = [base + fadt as u64, base + madt as u64];
        let xsdt_body: Vec<u8> = listed.iter().flat_map(|a| a.to_le_bytes()).collect();
        let rsdt_body: Vec<u8> = listed.iter().flat_map(|a| (*a as u32).to_le_bytes()).collect();
        let xsdt = place(&mut blob, &sdt(b"XSDT", 1, &xsdt_body));
        let rsdt = place(&mut blob, &sdt(b"RSDT", 1, &rsdt_body));
        let mut rsdp = Vec::new();
        rsdp.extend_from_slice(b"RSD PTR ");
        rsdp.push(0);
        rsdp.extend_from_slice(b"RVMM  ");
        rsdp.push(2);
        rsdp.extend_from_slice(&((base + rsdt as u64) as u32).to_le_bytes());
        rsdp.extend_from_slice(&36u32.to_le_bytes());
        rsdp.extend_from_slice(&(base + xsdt as u64).to_le_bytes());
        rsdp.extend_from_slice(&[0; 4]);
        rsdp[8] = 0u8.wrapping_sub(rsdp[..20].iter().fold(0u8, |a, b| a.wrapping_add(*b)));
        rsdp[32] = 0u8.wrapping_sub(rsdp.iter().fold(0u8, |a, b| a.wrapping_add(*b)));
        blob[..36].copy_from_slice(&rsdp);
        blob
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn acpi_blob_through_the_loader() {
        let base = 0xe_0000;
        let blob = rvmm_like_blob(base);
        let acpi = FirmwareAcpi::from_blob(&blob, base).unwrap();
        assert_eq!(acpi.rsdp.len(), 36);
        assert_eq!(acpi.tables.len(), blob.len() - 40);
        assert_eq!(&acpi.tables[..4], b"DSDT");
        // Pointers are offsets in the tables file.
        let rsdt_rel = u32_at(&acpi.rsdp, 16) as usize;
        assert_eq!(&acpi.tables[rsdt_rel..rsdt_rel + 4], b"RSDT");
        let xsdt_rel = u64_at(&acpi.rsdp, 24) as usize;
        assert_eq!(&acpi.tables[xsdt_rel..xsdt_rel + 4], b"XSDT");

        // Run the script as SeaBIOS would, at addresses unlike the blob's.
        let files: BTreeMap<String, Vec<u8>> =
            [(ACPI_TABLES_FILE.to_string(), acpi.tables.clone()), (ACPI_RSDP_FILE.to_string(), acpi.rsdp.clone())]
                .into();
        let placed = apply_table_loader(&acpi.loader, &files, |name, _, align, zone| match name {
            ACPI_TABLES_FILE => {
                assert_eq!((align, zone), (64, 1));
                0x0ffd_0000
            }
            _ => {
                assert_eq!((align, zone), (16, 2));
                0xf_5a10
            }
        })
        .unwrap();
        let (tables_addr, tables) = &placed[ACPI_TABLES_FILE];
        let (_, rsdp) = &placed[ACPI_RSDP_FILE];
        let at = |addr: u64| (addr - tables_addr) as usize;

        // The RSDP: both checksums, both roots.
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        let rsdt = at(u64::from(u32_at(rsdp, 16)));
        let xsdt = at(u64_at(rsdp, 24));
        assert_eq!(&tables[rsdt..rsdt + 4], b"RSDT");
        assert_eq!(&tables[xsdt..xsdt + 4], b"XSDT");
        // Every table reachable from the roots is where its pointer says, with a
        // valid checksum, and the blob's tables come out byte for byte apart from
        // the pointers.
        let mut sigs = Vec::new();
        for (root, width) in [(rsdt, 4), (xsdt, 8)] {
            let len = u32_at(tables, root + 4) as usize;
            assert_eq!(sum(&tables[root..root + len]), 0);
            for i in 0..(len - 36) / width {
                let p = root + 36 + i * width;
                let addr = if width == 4 { u64::from(u32_at(tables, p)) } else { u64_at(tables, p) };
                let t = at(addr);
                let tlen = u32_at(tables, t + 4) as usize;
                assert_eq!(sum(&tables[t..t + tlen]), 0);
                sigs.push(String::from_utf8_lossy(&tables[t..t + 4]).into_owned());
                if &tables[t..t + 4] == b"FACP" {
                    let dsdt = at(u64::from(u32_at(tables, t + 40)));
                    assert_eq!(at(u64_at(tables, t + 140)), dsdt);
                    assert_eq!(&tables[dsdt..dsdt + 4], b"DSDT");
                    assert_eq!(sum(&tables[dsdt..dsdt + u32_at(tables, dsdt + 4) as usize]), 0);
                    assert_eq!(u32_at(tables, t + 36), 0, "no FACS stays no FACS");
                    assert_eq!(u64_at(tables, t + 132), 0);
                }
            }
        }
        assert_eq!(sigs, ["FACP", "APIC", "FACP", "APIC"]);
        let madt_in_blob = blob.windows(4).position(|w| w == b"APIC").unwrap();
        let madt = at(u64::from(u32_at(tables, rsdt + 40)));
        assert_eq!(tables[madt..madt + 56], blob[madt_in_blob..madt_in_blob + 56]);

        // And the whole thing through the device's directory.
        let (mut d, _) = dev();
        d.add_acpi(acpi).unwrap();
        assert_eq!(d.file_key(ACPI_RSDP_FILE), Some(0x20));
        assert_eq!(d.file_key(ACPI_TABLES_FILE), Some(0x21));
        assert_eq!(d.file_key(TABLE_LOADER_FILE), Some(0x22));
    }

    #[test]
    fn acpi_blob_errors() {
        let base = 0xe_0000;
        let blob = rvmm_like_blob(base);
        assert!(FirmwareAcpi::from_blob(&blob, base).is_ok());
        // Wrong base: every pointer lands outside.
        assert!(matches!(FirmwareAcpi::from_blob(&blob, base + 0x1000), Err(FwCfgError::BadAcpiBlob(_))));
        assert!(matches!(FirmwareAcpi::from_blob(&blob, 0), Err(FwCfgError::BadAcpiBlob(_))));
        // No RSDP, truncated blobs.
        assert!(FirmwareAcpi::from_blob(&blob[8..], base).is_err());
        for n in [0, 10, 20, 36, 60, 200] {
            assert!(FirmwareAcpi::from_blob(&blob[..n], base).is_err(), "truncated at {n}");
        }
        // A table whose length runs past the end.
        let mut broken = blob.clone();
        let rsdt = u32_at(&blob, 16) as usize - base as usize;
        broken[rsdt + 4..rsdt + 8].copy_from_slice(&0xffffu32.to_le_bytes());
        assert!(FirmwareAcpi::from_blob(&broken, base).is_err());
        // An RSDT entry pointing nowhere.
        let mut broken = blob.clone();
        broken[rsdt + 36..rsdt + 40].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        assert!(FirmwareAcpi::from_blob(&broken, base).is_err());
    }

    #[test]
    fn loader_simulation_rejects_bad_scripts() {
        let files: BTreeMap<String, Vec<u8>> = [("a".to_string(), vec![0u8; 8])].into();
        let mut l = TableLoader::new();
        l.add_pointer("a", "a", 0, 4).unwrap();
        assert!(apply_table_loader(l.as_bytes(), &files, |_, _, _, _| 0).is_err(), "pointer before ALLOCATE");
        let mut l = TableLoader::new();
        l.allocate("a", 8, AllocZone::High).unwrap();
        l.add_pointer("a", "a", 6, 4).unwrap();
        assert!(apply_table_loader(l.as_bytes(), &files, |_, _, _, _| 0x1000).is_err(), "pointer past the end");
        assert!(apply_table_loader(&[0; 100], &files, |_, _, _, _| 0).is_err());
        let mut l = TableLoader::new();
        l.allocate("a", 8, AllocZone::High).unwrap();
        l.add_pointer("a", "a", 4, 4).unwrap();
        l.add_checksum("a", 0, 0, 8).unwrap();
        let placed = apply_table_loader(l.as_bytes(), &files, |_, _, _, _| 0x1234_5000).unwrap();
        let data = &placed["a"].1;
        assert_eq!(u32_at(data, 4), 0x1234_5000);
        assert_eq!(sum(data), 0);
    }
}
