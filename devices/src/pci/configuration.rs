//! The configuration space of one PCI function (book chapter 4.2).
//!
//! References: PCI Local Bus Specification 3.0, section 6.1 (the predefined
//! type 0 header), 6.2.2 (command), 6.2.3 (status), 6.2.4 (interrupt line/pin),
//! 6.2.5.1 (base address registers and how software sizes them) and 6.7 (the
//! capabilities list); PCI Express Base Specification, section 7.2.2 (the 4 KiB
//! extended configuration space reached through ECAM).
//!
//! The space is kept as bytes, the way a guest sees it, with two masks beside it:
//! `wmask` says which bits a guest write may change and `w1cmask` which bits a
//! guest clears by writing 1 (the error bits of the status register). Read-only
//! fields (IDs, class code, header type, the capability list itself) therefore
//! cannot be changed by a guest no matter the width or offset of its writes.
//!
//! BARs need no special write path: a BAR register's write mask covers exactly its
//! address bits above the BAR size, and its type bits are read-only. Writing all
//! ones therefore leaves `!(size - 1)` plus the type bits in the register, which
//! is the size mask the sizing protocol expects to read back, and the two halves
//! of a 64-bit BAR are independent registers that can be written in any order.
//! After every guest write touching a BAR or the command register, the decoded
//! mapping of every BAR is compared with the one before and each change is
//! returned as a [`BarReprogram`] for the VMM to move its bus mappings.
//!
//! Only header type 0 (an endpoint, which includes the host bridge, class
//! 0x06/0x00) is implemented; PCI-to-PCI bridges (header type 1) are not needed
//! by a single-bus machine.

use crate::ratelimit::LogLimiter;

use super::PciError;

/// Size of a PCI Express configuration space (the ECAM window of one function).
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Size of the conventional PCI configuration space (all that 0xCF8/0xCFC reaches).
pub const LEGACY_CONFIG_SPACE_SIZE: usize = 256;
/// Number of BAR slots in a type 0 header.
pub const NUM_BARS: usize = 6;

/// Offset of the vendor ID (16 bits, read-only).
pub const VENDOR_ID: u16 = 0x00;
/// Offset of the device ID (16 bits, read-only).
pub const DEVICE_ID: u16 = 0x02;
/// Offset of the command register (16 bits).
pub const COMMAND: u16 = 0x04;
/// Offset of the status register (16 bits).
pub const STATUS: u16 = 0x06;
/// Offset of the revision ID (8 bits, read-only).
pub const REVISION_ID: u16 = 0x08;
/// Offset of the programming interface byte of the class code (read-only).
pub const PROG_IF: u16 = 0x09;
/// Offset of the subclass byte of the class code (read-only).
pub const SUBCLASS: u16 = 0x0a;
/// Offset of the base class byte of the class code (read-only).
pub const CLASS_CODE: u16 = 0x0b;
/// Offset of the cache line size register (8 bits, read/write scratch).
pub const CACHE_LINE_SIZE: u16 = 0x0c;
/// Offset of the header type register (bit 7: multi-function).
pub const HEADER_TYPE: u16 = 0x0e;
/// Offset of BAR 0; BAR n is at `BAR0 + 4 * n`.
pub const BAR0: u16 = 0x10;
/// Offset of the subsystem vendor ID (16 bits, read-only).
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
/// Offset of the subsystem ID (16 bits, read-only).
pub const SUBSYSTEM_ID: u16 = 0x2e;
/// Offset of the expansion ROM BAR (not implemented: reads as 0, so no ROM).
pub const ROM_ADDRESS: u16 = 0x30;
/// Offset of the capabilities pointer (8 bits, read-only).
pub const CAPABILITIES_POINTER: u16 = 0x34;
/// Offset of the interrupt line register (8 bits, read/write scratch for software).
pub const INTERRUPT_LINE: u16 = 0x3c;
/// Offset of the interrupt pin register (8 bits, read-only: 0 none, 1-4 INTA#-INTD#).
pub const INTERRUPT_PIN: u16 = 0x3d;
/// First byte after the type 0 header, where capabilities start.
pub const CAPABILITIES_START: u16 = 0x40;

/// Command register bit 0: respond to I/O space accesses (I/O BARs decode).
pub const COMMAND_IO_SPACE: u16 = 1 << 0;
/// Command register bit 1: respond to memory space accesses (memory BARs decode).
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
/// Command register bit 2: the function may master the bus (DMA, MSI/MSI-X).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register bit 8: SERR# enable.
pub const COMMAND_SERR: u16 = 1 << 8;
/// Command register bit 10: the function must not assert INTx#.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// The command bits a guest can change.
const COMMAND_WRITABLE: u16 =
    COMMAND_IO_SPACE | COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER | COMMAND_SERR | COMMAND_INTX_DISABLE;

/// Status register bit 3: the function's INTx# is asserted (read-only).
pub const STATUS_INTERRUPT: u16 = 1 << 3;
/// Status register bit 4: the capabilities pointer at 0x34 is valid (read-only).
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;
/// Status error bits 8 and 11-15, cleared by writing 1. The model never sets
/// them, but a guest clearing them must see them behave as specified.
const STATUS_W1C: u16 = 0xf900;

/// Header type bit 7: the device implements functions other than 0.
const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;

// Low bits of a BAR register (PCI 3.0 section 6.2.5.1).
const BAR_IO_SPACE: u32 = 0x1;
const BAR_MEM_TYPE_64: u32 = 0x4;
const BAR_MEM_PREFETCHABLE: u32 = 0x8;
const BAR_IO_ADDR_MASK: u32 = !0x3;
const BAR_MEM_ADDR_MASK: u32 = !0xf;
/// I/O BARs hardwire their upper 16 bits to 0, as the specification allows for
/// PC-compatible systems whose port space is 64 KiB.
const BAR_IO_DECODE_MASK: u32 = 0xffff;

/// What a BAR maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciBarKind {
    /// Port I/O space (BAR bit 0 set); at most 256 bytes, below 64 KiB.
    Io,
    /// Memory space below 4 GiB, one BAR slot.
    Mem32,
    /// Memory space anywhere in 64 bits; takes this slot and the next.
    Mem64,
}

/// A base address register as the VMM declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciBar {
    /// Address space and width.
    pub kind: PciBarKind,
    /// Size in bytes: a power of two.
    pub size: u64,
    /// Memory BARs only: reads have no side effects (BAR bit 3).
    pub prefetchable: bool,
    /// Initial address, aligned to `size`; 0 leaves the BAR unassigned for the
    /// guest to place. [`PciConfiguration::bar`] reports the current address here.
    pub addr: u64,
}

/// A change of where a BAR decodes, caused by a guest configuration write.
///
/// `old` and `new` are `None` when the BAR is not mapped: its decode bit in the
/// command register is clear, its address is 0, or it holds the all-ones value
/// of the sizing protocol. The VMM removes the region at `old` and inserts one
/// at `new` (for example a [`super::PciBarRegion`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarReprogram {
    /// BAR index (the lower slot of a 64-bit BAR).
    pub index: u8,
    /// Its kind, which tells the port-I/O bus from the MMIO bus.
    pub kind: PciBarKind,
    /// Where it decoded before the write.
    pub old: Option<u64>,
    /// Where it decodes now.
    pub new: Option<u64>,
    /// Its size in bytes.
    pub size: u64,
}

/// The read-only identity of a function, placed in its header by
/// [`PciConfiguration::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PciIds {
    /// Vendor ID (0xffff is reserved: it is what an absent function reads).
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision_id: u8,
    /// Base class (e.g. 0x06 bridge, 0x01 mass storage, 0x02 network).
    pub class_code: u8,
    /// Subclass within the base class (e.g. 0x00 host bridge under 0x06).
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
}

/// State of one BAR slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BarSlot {
    Empty,
    /// A BAR starting in this slot (the address lives in the registers).
    Bar(PciBarKind, u64),
    /// The upper half of the 64-bit BAR in the slot below.
    Upper,
}

/// The configuration space of one PCI function, header type 0.
///
/// Guest accesses go through [`read_config`](Self::read_config) and
/// [`write_config`](Self::write_config); the VMM and the device model set it up
/// with the other methods before the guest runs.
#[derive(Debug)]
pub struct PciConfiguration {
    regs: Box<[u8; CONFIG_SPACE_SIZE]>,
    wmask: Box<[u8; CONFIG_SPACE_SIZE]>,
    w1cmask: Box<[u8; CONFIG_SPACE_SIZE]>,
    bars: [BarSlot; NUM_BARS],
    /// Offset of the last capability in the list, whose `next` byte links a new one.
    last_capability: Option<u16>,
    /// Where the next capability may start (before 4-byte alignment).
    next_capability: u16,
    bad_access: LogLimiter,
}

/// Whether an access of `len` bytes at `offset` is one a configuration
/// transaction can carry: 1, 2 or 4 bytes inside one dword of the 4 KiB space.
pub(crate) fn config_access_ok(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && offset < CONFIG_SPACE_SIZE as u64 && (offset % 4) as usize + len <= 4
}

impl PciConfiguration {
    /// A type 0 header with the given identity, everything else zero: no BARs,
    /// no capabilities, decoding and bus mastering off, no interrupt pin.
    pub fn new(ids: &PciIds) -> Self {
        let mut cfg = PciConfiguration {
            regs: Box::new([0; CONFIG_SPACE_SIZE]),
            wmask: Box::new([0; CONFIG_SPACE_SIZE]),
            w1cmask: Box::new([0; CONFIG_SPACE_SIZE]),
            bars: [BarSlot::Empty; NUM_BARS],
            last_capability: None,
            next_capability: CAPABILITIES_START,
            bad_access: LogLimiter::new(),
        };
        cfg.set_u16(VENDOR_ID, ids.vendor_id);
        cfg.set_u16(DEVICE_ID, ids.device_id);
        cfg.regs[REVISION_ID as usize] = ids.revision_id;
        cfg.regs[PROG_IF as usize] = ids.prog_if;
        cfg.regs[SUBCLASS as usize] = ids.subclass;
        cfg.regs[CLASS_CODE as usize] = ids.class_code;
        cfg.set_u16(SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor_id);
        cfg.set_u16(SUBSYSTEM_ID, ids.subsystem_id);
        cfg.set_wmask_u16(COMMAND, COMMAND_WRITABLE);
        cfg.w1cmask[STATUS as usize..STATUS as usize + 2].copy_from_slice(&STATUS_W1C.to_le_bytes());
        cfg.wmask[CACHE_LINE_SIZE as usize] = 0xff;
        cfg.wmask[INTERRUPT_LINE as usize] = 0xff;
        cfg
    }

    fn set_u16(&mut self, offset: u16, value: u16) {
        let o = offset as usize;
        self.regs[o..o + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn set_u32(&mut self, offset: u16, value: u32) {
        let o = offset as usize;
        self.regs[o..o + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn set_wmask_u16(&mut self, offset: u16, value: u16) {
        let o = offset as usize;
        self.wmask[o..o + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn set_wmask_u32(&mut self, offset: u16, value: u32) {
        let o = offset as usize;
        self.wmask[o..o + 4].copy_from_slice(&value.to_le_bytes());
    }

    fn get_u16(&self, offset: u16) -> u16 {
        let o = offset as usize;
        u16::from_le_bytes([self.regs[o], self.regs[o + 1]])
    }

    fn get_u32(&self, offset: u16) -> u32 {
        let o = offset as usize;
        u32::from_le_bytes([self.regs[o], self.regs[o + 1], self.regs[o + 2], self.regs[o + 3]])
    }

    fn get_wmask_u32(&self, offset: u16) -> u32 {
        let o = offset as usize;
        u32::from_le_bytes([self.wmask[o], self.wmask[o + 1], self.wmask[o + 2], self.wmask[o + 3]])
    }

    /// Handles a guest read of `data.len()` bytes at `offset`.
    ///
    /// Accesses of 1, 2 or 4 bytes within one dword of the 4 KiB space are
    /// answered from the registers; anything else reads as all ones.
    pub fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        if !config_access_ok(offset.into(), data.len()) {
            self.log_bad_access("read", offset, data.len());
            data.fill(0xff);
            return;
        }
        let o = offset as usize;
        data.copy_from_slice(&self.regs[o..o + data.len()]);
    }

    /// Handles a guest write of `data` at `offset` and returns how the BAR
    /// mappings changed (empty for most writes).
    ///
    /// Only bits in the write mask change; bits in the write-1-to-clear mask are
    /// cleared where `data` has ones. Accesses that are not 1, 2 or 4 bytes within
    /// one dword of the 4 KiB space are ignored.
    ///
    /// One write can change several BARs (setting the memory decode bit maps every
    /// memory BAR at once), hence a list rather than one change.
    pub fn write_config(&mut self, offset: u16, data: &[u8]) -> Vec<BarReprogram> {
        if !config_access_ok(offset.into(), data.len()) {
            self.log_bad_access("write", offset, data.len());
            return Vec::new();
        }
        let start = offset as usize;
        let end = start + data.len();
        let touches_decoding = ranges_overlap(start, end, COMMAND as usize, COMMAND as usize + 2)
            || ranges_overlap(start, end, BAR0 as usize, BAR0 as usize + 4 * NUM_BARS);
        let before = touches_decoding.then(|| self.bar_mappings());
        for (i, &byte) in data.iter().enumerate() {
            let o = start + i;
            let wm = self.wmask[o];
            let w1c = self.w1cmask[o];
            self.regs[o] = ((self.regs[o] & !wm) | (byte & wm)) & !(byte & w1c);
        }
        let Some(before) = before else {
            return Vec::new();
        };
        let after = self.bar_mappings();
        let mut changes = Vec::new();
        for index in 0..NUM_BARS {
            if let BarSlot::Bar(kind, size) = self.bars[index] {
                if before[index] != after[index] {
                    changes.push(BarReprogram {
                        index: index as u8,
                        kind,
                        old: before[index],
                        new: after[index],
                        size,
                    });
                }
            }
        }
        changes
    }

    fn log_bad_access(&mut self, what: &str, offset: u16, len: usize) {
        if let Some(n) = self.bad_access.tick() {
            log::warn!(
                "pci: ignoring {len}-byte config {what} at offset {offset:#x} \
                 (not 1/2/4 bytes within one dword) (#{n})"
            );
        }
    }

    /// Reads `N` bytes at `offset` for the VMM or the device model (no side
    /// effects); out-of-range bytes read as 0xff.
    fn read_bytes<const N: usize>(&self, offset: u16) -> [u8; N] {
        let mut out = [0xff; N];
        for (i, b) in out.iter_mut().enumerate() {
            if let Some(v) = self.regs.get(offset as usize + i) {
                *b = *v;
            }
        }
        out
    }

    /// The byte at `offset` (0xff past the end).
    pub fn read_u8(&self, offset: u16) -> u8 {
        self.read_bytes::<1>(offset)[0]
    }

    /// The little-endian 16-bit value at `offset` (0xff bytes past the end).
    pub fn read_u16(&self, offset: u16) -> u16 {
        u16::from_le_bytes(self.read_bytes(offset))
    }

    /// The little-endian 32-bit value at `offset` (0xff bytes past the end).
    pub fn read_u32(&self, offset: u16) -> u32 {
        u32::from_le_bytes(self.read_bytes(offset))
    }

    /// Writes `data` at `offset` on behalf of the device model, ignoring the
    /// write masks, e.g. to update a read-only status field inside one of its
    /// capabilities. BAR registers and the command register are refused, since a
    /// change there must go through [`write_config`](Self::write_config) to be
    /// reported.
    pub fn write_raw(&mut self, offset: u16, data: &[u8]) -> Result<(), PciError> {
        let start = offset as usize;
        let end = start.saturating_add(data.len());
        let reject = end > CONFIG_SPACE_SIZE
            || ranges_overlap(start, end, COMMAND as usize, COMMAND as usize + 2)
            || ranges_overlap(start, end, BAR0 as usize, BAR0 as usize + 4 * NUM_BARS);
        if reject {
            return Err(PciError::RawWriteRejected { offset, len: data.len() });
        }
        self.regs[start..end].copy_from_slice(data);
        Ok(())
    }

    /// Makes the bits set in `mask` guest-writable at `offset` (one byte of
    /// mask per register byte), for device-specific registers above the
    /// standard header such as a chipset's PAM registers. The standard header
    /// (below 0x40) and BAR, command and capability registers are refused: their
    /// masks are the configuration space's own business.
    pub fn set_write_mask(&mut self, offset: u16, mask: &[u8]) -> Result<(), PciError> {
        let start = offset as usize;
        let end = start.saturating_add(mask.len());
        let in_capabilities = self.last_capability.is_some() && start < self.next_capability as usize;
        if start < CAPABILITIES_START as usize || end > CONFIG_SPACE_SIZE || in_capabilities {
            return Err(PciError::RawWriteRejected { offset, len: mask.len() });
        }
        self.wmask[start..end].copy_from_slice(mask);
        Ok(())
    }

    /// The vendor ID.
    pub fn vendor_id(&self) -> u16 {
        self.get_u16(VENDOR_ID)
    }

    /// The device ID.
    pub fn device_id(&self) -> u16 {
        self.get_u16(DEVICE_ID)
    }

    /// Sets or clears the multi-function bit of the header type register.
    /// [`super::PciRoot`] sets it on function 0 when it adds another function.
    pub fn set_multifunction(&mut self, multifunction: bool) {
        let ht = &mut self.regs[HEADER_TYPE as usize];
        if multifunction {
            *ht |= HEADER_TYPE_MULTIFUNCTION;
        } else {
            *ht &= !HEADER_TYPE_MULTIFUNCTION;
        }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.get_u16(COMMAND)
    }

    /// Sets the command register as firmware would before the guest runs, e.g.
    /// to enable decoding of BARs the VMM assigned. Only the bits a guest could
    /// write are taken. Call it before handing the device to
    /// [`super::PciRoot::add_device`], which reports the resulting mappings.
    pub fn set_command(&mut self, value: u16) {
        let cmd = (self.command() & !COMMAND_WRITABLE) | (value & COMMAND_WRITABLE);
        self.set_u16(COMMAND, cmd);
    }

    /// The status register.
    pub fn status(&self) -> u16 {
        self.get_u16(STATUS)
    }

    /// Whether the guest enabled I/O space decoding.
    pub fn io_space_enabled(&self) -> bool {
        self.command() & COMMAND_IO_SPACE != 0
    }

    /// Whether the guest enabled memory space decoding.
    pub fn memory_space_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY_SPACE != 0
    }

    /// Whether the guest allows the function to master the bus. A device must
    /// not DMA, nor send MSI/MSI-X messages, while this is clear.
    pub fn bus_master_enabled(&self) -> bool {
        self.command() & COMMAND_BUS_MASTER != 0
    }

    /// Whether the guest disabled the function's INTx# output (command bit 10).
    pub fn intx_disabled(&self) -> bool {
        self.command() & COMMAND_INTX_DISABLE != 0
    }

    /// Reflects the function's INTx# state in status bit 3. The device model
    /// calls this whenever its interrupt condition changes, whether or not INTx#
    /// is disabled (the bit shows the condition, the command bit gates the pin).
    pub fn set_interrupt_status(&mut self, pending: bool) {
        let status = self.status();
        let status = if pending { status | STATUS_INTERRUPT } else { status & !STATUS_INTERRUPT };
        self.set_u16(STATUS, status);
    }

    /// Sets the interrupt pin: 0 none, 1-4 INTA#-INTD#.
    pub fn set_interrupt_pin(&mut self, pin: u8) -> Result<(), PciError> {
        if pin > 4 {
            return Err(PciError::InterruptPin(pin));
        }
        self.regs[INTERRUPT_PIN as usize] = pin;
        Ok(())
    }

    /// The interrupt line register: software's note of the IRQ the pin is routed to.
    pub fn interrupt_line(&self) -> u8 {
        self.regs[INTERRUPT_LINE as usize]
    }

    /// Sets the interrupt line register, as firmware would after routing the pin.
    pub fn set_interrupt_line(&mut self, line: u8) {
        self.regs[INTERRUPT_LINE as usize] = line;
    }

    /// Declares a BAR in slot `index` (0-5; a 64-bit BAR also takes `index + 1`).
    ///
    /// The size must be a power of two: 4-256 bytes for I/O, at least 16 bytes
    /// for memory (at most 2 GiB for a 32-bit BAR). `addr` must be aligned to
    /// the size and fit the BAR's address space; 0 leaves the BAR unassigned.
    pub fn add_bar(&mut self, index: usize, bar: PciBar) -> Result<(), PciError> {
        let slots = if bar.kind == PciBarKind::Mem64 { 2 } else { 1 };
        if index + slots > NUM_BARS {
            return Err(PciError::BarIndex(index));
        }
        if self.bars[index..index + slots].iter().any(|s| *s != BarSlot::Empty) {
            return Err(PciError::BarInUse(index));
        }
        let (min, max, limit) = match bar.kind {
            PciBarKind::Io => (4, 256, 1 << 16),
            PciBarKind::Mem32 => (16, 1 << 31, 1 << 32),
            PciBarKind::Mem64 => (16, 1 << 63, u64::MAX),
        };
        if !bar.size.is_power_of_two() || bar.size < min || bar.size > max {
            return Err(PciError::BarSize { index, size: bar.size });
        }
        let fits = bar.addr.is_multiple_of(bar.size) && bar.addr.checked_add(bar.size).is_some_and(|end| end <= limit);
        if !fits {
            return Err(PciError::BarAddress { index, addr: bar.addr });
        }
        if bar.kind == PciBarKind::Io && bar.prefetchable {
            return Err(PciError::BarPrefetchableIo(index));
        }

        let reg = bar_register(index);
        let size_mask = !(bar.size - 1);
        match bar.kind {
            PciBarKind::Io => {
                self.set_u32(reg, bar.addr as u32 | BAR_IO_SPACE);
                let wm = size_mask as u32 & BAR_IO_ADDR_MASK & BAR_IO_DECODE_MASK;
                self.set_wmask_u32(reg, wm);
            }
            PciBarKind::Mem32 | PciBarKind::Mem64 => {
                let mut flags = 0;
                if bar.kind == PciBarKind::Mem64 {
                    flags |= BAR_MEM_TYPE_64;
                }
                if bar.prefetchable {
                    flags |= BAR_MEM_PREFETCHABLE;
                }
                self.set_u32(reg, bar.addr as u32 | flags);
                self.set_wmask_u32(reg, size_mask as u32 & BAR_MEM_ADDR_MASK);
                if bar.kind == PciBarKind::Mem64 {
                    self.set_u32(reg + 4, (bar.addr >> 32) as u32);
                    self.set_wmask_u32(reg + 4, (size_mask >> 32) as u32);
                    self.bars[index + 1] = BarSlot::Upper;
                }
            }
        }
        self.bars[index] = BarSlot::Bar(bar.kind, bar.size);
        Ok(())
    }

    /// The BAR starting in slot `index`, with its current address; `None` for an
    /// empty slot or the upper half of a 64-bit BAR.
    pub fn bar(&self, index: usize) -> Option<PciBar> {
        let BarSlot::Bar(kind, size) = *self.bars.get(index)? else {
            return None;
        };
        let reg = bar_register(index);
        let low = self.get_u32(reg);
        Some(PciBar {
            kind,
            size,
            prefetchable: kind != PciBarKind::Io && low & BAR_MEM_PREFETCHABLE != 0,
            addr: self.raw_bar_address(index, kind),
        })
    }

    /// The address programmed in the BAR starting in slot `index`, whether or not
    /// it currently decodes (see [`bar_mapping`](Self::bar_mapping)); `None` if
    /// there is no such BAR.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        self.bar(index).map(|b| b.addr)
    }

    /// Where the BAR starting in slot `index` currently decodes: `None` if there is
    /// no such BAR, its decode bit is clear, its address is 0 or it holds the
    /// all-ones sizing pattern.
    pub fn bar_mapping(&self, index: usize) -> Option<u64> {
        let BarSlot::Bar(kind, size) = *self.bars.get(index)? else {
            return None;
        };
        let decode = match kind {
            PciBarKind::Io => COMMAND_IO_SPACE,
            PciBarKind::Mem32 | PciBarKind::Mem64 => COMMAND_MEMORY_SPACE,
        };
        if self.command() & decode == 0 || self.bar_sizing(index, kind) {
            return None;
        }
        let addr = self.raw_bar_address(index, kind);
        // An address of 0 means "unassigned"; the register layout keeps the BAR
        // inside its address space otherwise, but check the end anyway.
        (addr != 0 && addr.checked_add(size).is_some()).then_some(addr)
    }

    fn raw_bar_address(&self, index: usize, kind: PciBarKind) -> u64 {
        let reg = bar_register(index);
        let low = self.get_u32(reg);
        match kind {
            PciBarKind::Io => u64::from(low & BAR_IO_ADDR_MASK),
            PciBarKind::Mem32 => u64::from(low & BAR_MEM_ADDR_MASK),
            PciBarKind::Mem64 => u64::from(low & BAR_MEM_ADDR_MASK) | (u64::from(self.get_u32(reg + 4)) << 32),
        }
    }

    /// Whether the BAR holds the sizing pattern: some dword has all its writable
    /// address bits set. Such an address is never a real assignment: it would put
    /// the BAR at the very top of the 64 KiB port space, of the 4 GiB space (over
    /// the firmware and the LAPIC/IOAPIC), or of the 64-bit space. The exception
    /// is the low dword of a 64-bit BAR whose high dword is non-zero: that is a
    /// legitimate address just below a 4 GiB boundary above 4 GiB.
    fn bar_sizing(&self, index: usize, kind: PciBarKind) -> bool {
        let reg = bar_register(index);
        let all_set = |off: u16| {
            let wm = self.get_wmask_u32(off);
            wm != 0 && self.get_u32(off) & wm == wm
        };
        match kind {
            PciBarKind::Io | PciBarKind::Mem32 => all_set(reg),
            PciBarKind::Mem64 => all_set(reg + 4) || (self.get_u32(reg + 4) == 0 && all_set(reg)),
        }
    }

    fn bar_mappings(&self) -> [Option<u64>; NUM_BARS] {
        std::array::from_fn(|i| self.bar_mapping(i))
    }

    /// Appends a read-only capability to the list that starts at the capabilities
    /// pointer (0x34) and returns its offset.
    ///
    /// `body` is the capability after its two header bytes (ID and next pointer),
    /// which this fills in. Capabilities are 4-byte aligned in 0x40-0xff; the
    /// first one sets status bit 4.
    pub fn add_capability(&mut self, body: &[u8], cap_id: u8) -> Result<u16, PciError> {
        self.add_capability_with_mask(body, &vec![0; body.len()], cap_id)
    }

    /// Like [`add_capability`](Self::add_capability), with `writable[i]` the bits
    /// of `body[i]` a guest may change (e.g. MSI-X enable and function mask).
    pub fn add_capability_with_mask(&mut self, body: &[u8], writable: &[u8], cap_id: u8) -> Result<u16, PciError> {
        if writable.len() != body.len() {
            return Err(PciError::CapabilityMaskLength { body: body.len(), mask: writable.len() });
        }
        let needed = body.len() + 2;
        let start = (self.next_capability as usize + 3) & !3;
        let end = start + needed;
        if end > LEGACY_CONFIG_SPACE_SIZE {
            return Err(PciError::CapabilitySpaceFull { needed });
        }
        self.regs[start] = cap_id;
        self.regs[start + 1] = 0;
        self.regs[start + 2..end].copy_from_slice(body);
        self.wmask[start + 2..end].copy_from_slice(writable);
        match self.last_capability {
            None => {
                self.regs[CAPABILITIES_POINTER as usize] = start as u8;
                let status = self.status() | STATUS_CAPABILITIES_LIST;
                self.set_u16(STATUS, status);
            }
            Some(last) => self.regs[last as usize + 1] = start as u8,
        }
        self.last_capability = Some(start as u16);
        self.next_capability = end as u16;
        Ok(start as u16)
    }
}

fn bar_register(index: usize) -> u16 {
    BAR0 + 4 * index as u16
}

fn ranges_overlap(a_start: usize, a_end: usize, b_start: usize, b_end: usize) -> bool {
    a_start < b_end && b_start < a_end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PciConfiguration {
        PciConfiguration::new(&PciIds {
            vendor_id: 0x1af4,
            device_id: 0x1041,
            revision_id: 1,
            class_code: 0x02,
            subclass: 0x00,
            prog_if: 0x00,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x0001,
        })
    }

    fn rd32(c: &mut PciConfiguration, off: u16) -> u32 {
        let mut d = [0; 4];
        c.read_config(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn wr32(c: &mut PciConfiguration, off: u16, v: u32) -> Vec<BarReprogram> {
        c.write_config(off, &v.to_le_bytes())
    }

    fn wr16(c: &mut PciConfiguration, off: u16, v: u16) -> Vec<BarReprogram> {
        c.write_config(off, &v.to_le_bytes())
    }

    #[test]
    fn header_fields() {
        let mut c = cfg();
        assert_eq!(rd32(&mut c, 0), 0x1041_1af4);
        assert_eq!(rd32(&mut c, 8), 0x0200_0001);
        assert_eq!(rd32(&mut c, 0x2c), 0x0001_1af4);
        assert_eq!(c.read_u8(HEADER_TYPE), 0);
        c.set_multifunction(true);
        assert_eq!(c.read_u8(HEADER_TYPE), 0x80);
        let mut b = [0; 1];
        c.read_config(0x0a, &mut b);
        assert_eq!(b, [0x00]);
        c.read_config(0x0b, &mut b);
        assert_eq!(b, [0x02]);
    }

    #[test]
    fn read_only_fields_are_not_writable() {
        let mut c = cfg();
        let snapshot: Vec<u8> = (0..0x40).map(|o| c.read_u8(o)).collect();
        // Hammer every offset of the header with every width.
        for off in 0..0x40u16 {
            for len in [1usize, 2, 4] {
                c.write_config(off, &vec![0xa5; len]);
            }
        }
        for off in 0..0x40u16 {
            let before = snapshot[off as usize];
            let after = c.read_u8(off);
            match off {
                // Command: writable bits only.
                0x04 => assert_eq!(after, 0xa5 & 0x07),
                0x05 => assert_eq!(after, 0xa5 & 0x05),
                // Status: W1C bits were 0 and stay 0.
                0x06 | 0x07 => assert_eq!(after, before),
                0x0c | 0x3c => assert_eq!(after, 0xa5, "scratch register {off:#x}"),
                _ => assert_eq!(after, before, "offset {off:#x} changed"),
            }
        }
        assert_eq!(c.vendor_id(), 0x1af4);
        assert_eq!(c.device_id(), 0x1041);
    }

    #[test]
    fn command_bits_and_status_w1c() {
        let mut c = cfg();
        wr16(&mut c, COMMAND, 0xffff);
        assert_eq!(c.command(), COMMAND_WRITABLE);
        assert!(c.io_space_enabled() && c.memory_space_enabled());
        assert!(c.bus_master_enabled() && c.intx_disabled());
        wr16(&mut c, COMMAND, 0);
        assert_eq!(c.command(), 0);

        c.set_interrupt_status(true);
        assert_eq!(c.status() & STATUS_INTERRUPT, STATUS_INTERRUPT);
        // Writing ones to the status register does not clear the read-only bit 3.
        wr16(&mut c, STATUS, 0xffff);
        assert_eq!(c.status(), STATUS_INTERRUPT);
        // W1C: an error bit set by the model is cleared by writing 1, kept by 0.
        c.regs[STATUS as usize + 1] |= 0x20; // received master abort
        wr16(&mut c, STATUS, 0);
        assert_eq!(c.status() & 0x2000, 0x2000);
        c.write_config(STATUS + 1, &[0x20]);
        assert_eq!(c.status() & 0x2000, 0);
        assert_eq!(c.status(), STATUS_INTERRUPT);
    }

    #[test]
    fn interrupt_pin_and_line() {
        let mut c = cfg();
        c.set_interrupt_pin(1).unwrap();
        assert!(c.set_interrupt_pin(5).is_err());
        c.write_config(INTERRUPT_LINE, &[11]);
        c.write_config(INTERRUPT_PIN, &[3]);
        assert_eq!(c.read_u16(INTERRUPT_LINE), 0x010b);
        assert_eq!(c.interrupt_line(), 11);
    }

    #[test]
    fn odd_accesses_are_safe() {
        let mut c = cfg();
        for off in (0..=u16::MAX).step_by(97).chain([0xffd, 0xffe, 0xfff, 0x1000, 0xffff]) {
            for len in 0..=9usize {
                let mut d = vec![0u8; len];
                c.read_config(off, &mut d);
                c.write_config(off, &vec![0xff; len]);
            }
        }
        // Crossing a dword reads all ones and writes nothing.
        let mut d = [0; 4];
        c.read_config(2, &mut d);
        assert_eq!(d, [0xff; 4]);
        let mut d = [0; 2];
        c.read_config(3, &mut d);
        assert_eq!(d, [0xff; 2]);
        // Unaligned but within a dword is fine.
        c.read_config(1, &mut d);
        assert_eq!(d, [0x1a, 0x41]);
        // The extended space exists and reads as zero.
        let mut d = [0xaa; 4];
        c.read_config(0xffc, &mut d);
        assert_eq!(d, [0; 4]);
        assert_eq!(c.read_u32(0xffe), 0xffff_0000);
    }

    #[test]
    fn bar_validation() {
        let mut c = cfg();
        let io = |size, addr| PciBar { kind: PciBarKind::Io, size, prefetchable: false, addr };
        let mem = |kind, size, addr| PciBar { kind, size, prefetchable: false, addr };
        assert!(matches!(c.add_bar(6, io(16, 0)), Err(PciError::BarIndex(6))));
        assert!(matches!(c.add_bar(5, mem(PciBarKind::Mem64, 4096, 0)), Err(PciError::BarIndex(5))));
        assert!(matches!(c.add_bar(0, io(512, 0)), Err(PciError::BarSize { .. })));
        assert!(matches!(c.add_bar(0, io(24, 0)), Err(PciError::BarSize { .. })));
        assert!(matches!(c.add_bar(0, io(16, 8)), Err(PciError::BarAddress { .. })));
        assert!(matches!(c.add_bar(0, io(16, 0x10000)), Err(PciError::BarAddress { .. })));
        assert!(matches!(c.add_bar(0, mem(PciBarKind::Mem32, 4096, 0x1_0000_0000)), Err(PciError::BarAddress { .. })));
        assert!(matches!(
            c.add_bar(0, PciBar { prefetchable: true, ..io(16, 0) }),
            Err(PciError::BarPrefetchableIo(0))
        ));
        c.add_bar(1, mem(PciBarKind::Mem64, 4096, 0)).unwrap();
        assert!(matches!(c.add_bar(2, io(16, 0)), Err(PciError::BarInUse(2))));
        assert!(matches!(c.add_bar(0, mem(PciBarKind::Mem64, 4096, 0)), Err(PciError::BarInUse(0))));
        assert!(c.bar(2).is_none());
        assert!(c.bar(1).is_some());
        assert_eq!(c.bar_address(9), None);
    }

    #[test]
    fn io_bar_sizing() {
        let mut c = cfg();
        c.add_bar(0, PciBar { kind: PciBarKind::Io, size: 32, prefetchable: false, addr: 0xc000 }).unwrap();
        assert_eq!(rd32(&mut c, BAR0), 0xc001);
        assert!(wr32(&mut c, BAR0, 0xffff_ffff).is_empty());
        // Upper 16 bits hardwired to 0, size mask, I/O bit preserved.
        assert_eq!(rd32(&mut c, BAR0), 0x0000_ffe1);
        wr32(&mut c, BAR0, 0xd000);
        assert_eq!(rd32(&mut c, BAR0), 0xd001);
        assert_eq!(c.bar_address(0), Some(0xd000));
        // Low bits of the address cannot be set.
        wr32(&mut c, BAR0, 0xd01f);
        assert_eq!(c.bar_address(0), Some(0xd000));
    }

    #[test]
    fn mem32_bar_sizing() {
        let mut c = cfg();
        c.add_bar(2, PciBar { kind: PciBarKind::Mem32, size: 0x4000, prefetchable: true, addr: 0 }).unwrap();
        let reg = BAR0 + 8;
        assert_eq!(rd32(&mut c, reg), 0x8);
        wr32(&mut c, reg, 0xffff_ffff);
        assert_eq!(rd32(&mut c, reg), 0xffff_c008);
        wr32(&mut c, reg, 0xe000_0000);
        assert_eq!(rd32(&mut c, reg), 0xe000_0008);
        assert_eq!(c.bar_address(2), Some(0xe000_0000));
        assert!(c.bar(2).unwrap().prefetchable);
        // Byte-wide writes work too.
        c.write_config(reg + 3, &[0xd0]);
        assert_eq!(c.bar_address(2), Some(0xd000_0000));
    }

    #[test]
    fn mem64_bar_sizing_in_either_order() {
        for low_first in [true, false] {
            let mut c = cfg();
            c.add_bar(0, PciBar { kind: PciBarKind::Mem64, size: 0x10_0000, prefetchable: false, addr: 0x8_0000_0000 })
                .unwrap();
            assert_eq!(rd32(&mut c, BAR0), 0x4);
            assert_eq!(rd32(&mut c, BAR0 + 4), 0x8);
            let halves = if low_first { [BAR0, BAR0 + 4] } else { [BAR0 + 4, BAR0] };
            for reg in halves {
                wr32(&mut c, reg, 0xffff_ffff);
            }
            assert_eq!(rd32(&mut c, BAR0), 0xfff0_0004);
            assert_eq!(rd32(&mut c, BAR0 + 4), 0xffff_ffff);
            for (reg, v) in halves.into_iter().zip(if low_first { [0xc000_0000, 0x1] } else { [0x1, 0xc000_0000] }) {
                wr32(&mut c, reg, v);
            }
            assert_eq!(c.bar_address(0), Some(0x1_c000_0000));
        }
    }

    #[test]
    fn mem64_bar_larger_than_4g() {
        let mut c = cfg();
        c.add_bar(0, PciBar { kind: PciBarKind::Mem64, size: 1 << 34, prefetchable: true, addr: 0 }).unwrap();
        wr32(&mut c, BAR0, 0xffff_ffff);
        wr32(&mut c, BAR0 + 4, 0xffff_ffff);
        assert_eq!(rd32(&mut c, BAR0), 0x0000_000c);
        assert_eq!(rd32(&mut c, BAR0 + 4), 0xffff_fffc);
    }

    fn mem_dev() -> PciConfiguration {
        let mut c = cfg();
        c.add_bar(0, PciBar { kind: PciBarKind::Mem32, size: 0x1000, prefetchable: false, addr: 0xe000_0000 }).unwrap();
        c.add_bar(1, PciBar { kind: PciBarKind::Io, size: 0x20, prefetchable: false, addr: 0xc000 }).unwrap();
        c.add_bar(2, PciBar { kind: PciBarKind::Mem64, size: 0x4000, prefetchable: false, addr: 0x1_0000_0000 })
            .unwrap();
        c
    }

    #[test]
    fn reprogram_on_decode_toggle() {
        let mut c = mem_dev();
        assert_eq!(c.bar_mapping(0), None);
        let changes = wr16(&mut c, COMMAND, COMMAND_MEMORY_SPACE | COMMAND_IO_SPACE);
        assert_eq!(
            changes,
            vec![
                BarReprogram { index: 0, kind: PciBarKind::Mem32, old: None, new: Some(0xe000_0000), size: 0x1000 },
                BarReprogram { index: 1, kind: PciBarKind::Io, old: None, new: Some(0xc000), size: 0x20 },
                BarReprogram { index: 2, kind: PciBarKind::Mem64, old: None, new: Some(0x1_0000_0000), size: 0x4000 },
            ]
        );
        // Same value again: nothing changes.
        assert!(wr16(&mut c, COMMAND, COMMAND_MEMORY_SPACE | COMMAND_IO_SPACE).is_empty());
        // Turning off I/O only unmaps the I/O BAR; a byte write to COMMAND counts.
        let changes = c.write_config(COMMAND, &[COMMAND_MEMORY_SPACE as u8]);
        assert_eq!(
            changes,
            vec![BarReprogram { index: 1, kind: PciBarKind::Io, old: Some(0xc000), new: None, size: 0x20 }]
        );
        // Bus master is not a decode bit.
        assert!(wr16(&mut c, COMMAND, COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER).is_empty());
    }

    #[test]
    fn reprogram_on_address_change_with_decode_on() {
        let mut c = mem_dev();
        wr16(&mut c, COMMAND, COMMAND_MEMORY_SPACE);
        let changes = wr32(&mut c, BAR0, 0xe010_0000);
        assert_eq!(
            changes,
            vec![BarReprogram {
                index: 0,
                kind: PciBarKind::Mem32,
                old: Some(0xe000_0000),
                new: Some(0xe010_0000),
                size: 0x1000
            }]
        );
        // Writing the same address again reports nothing.
        assert!(wr32(&mut c, BAR0, 0xe010_0000).is_empty());
        // Moving the 64-bit BAR's high half.
        let changes = wr32(&mut c, BAR0 + 12, 0x2);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].index, 2);
        assert_eq!(changes[0].old, Some(0x1_0000_0000));
        assert_eq!(changes[0].new, Some(0x2_0000_0000));
        // I/O BAR moves while I/O decode is off: nothing to report.
        assert!(wr32(&mut c, BAR0 + 4, 0xd000).is_empty());
        // Setting the address to 0 unmaps.
        let changes = wr32(&mut c, BAR0, 0);
        assert_eq!(changes[0].new, None);
    }

    #[test]
    fn no_reprogram_while_sizing_with_decode_off() {
        let mut c = mem_dev();
        for reg in [BAR0, BAR0 + 4, BAR0 + 8, BAR0 + 12] {
            let orig = rd32(&mut c, reg);
            assert!(wr32(&mut c, reg, 0xffff_ffff).is_empty());
            rd32(&mut c, reg);
            assert!(wr32(&mut c, reg, orig).is_empty());
        }
        // Enabling decode while a BAR still holds the sizing pattern does not map it.
        wr32(&mut c, BAR0, 0xffff_ffff);
        let changes = wr16(&mut c, COMMAND, COMMAND_MEMORY_SPACE);
        assert!(changes.iter().all(|ch| ch.index != 0));
        assert_eq!(c.bar_mapping(0), None);
    }

    #[test]
    fn sizing_with_decode_on_unmaps_then_remaps() {
        let mut c = mem_dev();
        wr16(&mut c, COMMAND, COMMAND_MEMORY_SPACE | COMMAND_IO_SPACE);
        let ch = wr32(&mut c, BAR0, 0xffff_ffff);
        assert_eq!((ch[0].old, ch[0].new), (Some(0xe000_0000), None));
        let ch = wr32(&mut c, BAR0, 0xe000_0000);
        assert_eq!((ch[0].old, ch[0].new), (None, Some(0xe000_0000)));
        let ch = wr32(&mut c, BAR0 + 4, 0xffff_ffff);
        assert_eq!((ch[0].old, ch[0].new), (Some(0xc000), None));
        // 64-bit BAR: the all-ones high half is the sizing pattern.
        let ch = wr32(&mut c, BAR0 + 12, 0xffff_ffff);
        assert_eq!((ch[0].old, ch[0].new), (Some(0x1_0000_0000), None));
    }

    #[test]
    fn mem64_below_4g_low_all_ones_is_sizing() {
        let mut c = cfg();
        c.add_bar(0, PciBar { kind: PciBarKind::Mem64, size: 0x1000, prefetchable: false, addr: 0xe000_0000 }).unwrap();
        wr16(&mut c, COMMAND, COMMAND_MEMORY_SPACE);
        let ch = wr32(&mut c, BAR0, 0xffff_ffff);
        assert_eq!((ch[0].old, ch[0].new), (Some(0xe000_0000), None));
        // Above 4 GiB the same low half is a real address.
        wr32(&mut c, BAR0 + 4, 1);
        assert_eq!(c.bar_mapping(0), Some(0x1_ffff_f000));
    }

    #[test]
    fn capability_chain() {
        let mut c = cfg();
        assert_eq!(c.status() & STATUS_CAPABILITIES_LIST, 0);
        assert_eq!(c.read_u8(CAPABILITIES_POINTER), 0);
        let a = c.add_capability(&[1, 2, 3], 0x09).unwrap();
        let b = c.add_capability_with_mask(&[0, 0, 0, 0, 0, 0], &[0, 0xff, 0, 0, 0, 0], 0x11).unwrap();
        let d = c.add_capability(&[], 0x05).unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x48); // 0x40 + 5 = 0x45, aligned up
        assert_eq!(d, 0x50);
        assert_ne!(c.status() & STATUS_CAPABILITIES_LIST, 0);

        // Walk the list the way a guest does.
        let mut found = Vec::new();
        let mut b1 = [0u8; 1];
        c.read_config(CAPABILITIES_POINTER, &mut b1);
        let mut ptr = b1[0] as u16;
        while ptr != 0 {
            let mut hdr = [0u8; 2];
            c.read_config(ptr, &mut hdr);
            found.push((ptr, hdr[0]));
            ptr = hdr[1] as u16;
        }
        assert_eq!(found, vec![(0x40, 0x09), (0x48, 0x11), (0x50, 0x05)]);
        assert_eq!(c.read_u8(0x42), 1);
        assert_eq!(c.read_u8(0x44), 3);

        // Header bytes and read-only body bytes ignore writes; the masked byte takes them.
        c.write_config(0x48, &[0xff, 0xff, 0xff, 0xff]);
        c.write_config(0x40, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(c.read_u32(0x48), 0xff00_5011);
        assert_eq!(c.read_u32(0x40), 0x0201_4809);

        // The space fills up.
        assert!(matches!(c.add_capability(&[0; 200], 0x09), Err(PciError::CapabilitySpaceFull { .. })));
        assert!(matches!(c.add_capability_with_mask(&[0; 2], &[0], 0x09), Err(PciError::CapabilityMaskLength { .. })));
        // Exactly filling 0xff is allowed.
        let last = c.add_capability(&[0; 0xfe - 0x54], 0x09).unwrap();
        assert_eq!(last, 0x54);
        assert!(c.add_capability(&[], 0x09).is_err());
    }

    #[test]
    fn raw_writes() {
        let mut c = cfg();
        let cap = c.add_capability(&[0, 0], 0x09).unwrap();
        c.write_raw(cap + 2, &[0x12, 0x34]).unwrap();
        assert_eq!(c.read_u16(cap + 2), 0x3412);
        assert!(c.write_raw(BAR0 + 2, &[0; 4]).is_err());
        assert!(c.write_raw(COMMAND, &[0xff]).is_err());
        assert!(c.write_raw(0xfff, &[0; 2]).is_err());
        assert!(c.write_raw(u16::MAX, &[0; 2]).is_err());
    }

    #[test]
    fn set_command_before_use() {
        let mut c = mem_dev();
        c.set_command(0xffff);
        assert_eq!(c.command(), COMMAND_WRITABLE);
        assert_eq!(c.bar_mapping(0), Some(0xe000_0000));
        assert_eq!(c.bar_mapping(1), Some(0xc000));
        assert_eq!(c.bar_mapping(3), None);
    }
    #[test]
    fn random_config_writes_keep_the_header_sane() {
        // Random reads and writes of every width at the command and status
        // registers, the BARs (sizing patterns included), the capabilities and
        // anywhere else: no panic; identity, header type and the capability
        // list never change; every BAR that moves is reported with its old and
        // new place and nothing else is; a mapped BAR is aligned to its size.
        let mut c = mem_dev();
        c.add_bar(4, PciBar { kind: PciBarKind::Mem32, size: 0x10_0000, prefetchable: true, addr: 0 }).unwrap();
        c.add_capability(&[1, 2, 3], 0x09).unwrap();
        c.add_capability_with_mask(&[0; 6], &[0, 0xff, 0xff, 0, 0, 0], 0x11).unwrap();
        let identity = |c: &PciConfiguration| -> Vec<u8> {
            let mut v: Vec<u8> =
                (0..4).chain(8..0x10).chain(0x2c..0x30).chain([0x34, 0x3d]).map(|o| c.read_u8(o)).collect();
            // The capability list: (position, ID) pairs.
            let mut ptr = c.read_u8(CAPABILITIES_POINTER);
            while ptr != 0 {
                v.extend([ptr, c.read_u8(ptr.into())]);
                ptr = c.read_u8(u16::from(ptr) + 1);
            }
            v
        };
        let id = identity(&c);
        let mut x: u64 = 0xc0f1_0000_0000_0001;
        let mut moves = 0u32;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let offset = match x % 8 {
                0 | 1 => COMMAND + (x >> 8) as u16 % 4,
                2..=4 => BAR0 + (x >> 8) as u16 % 24,
                5 => 0x3c + (x >> 8) as u16 % 0x20,
                6 => (x >> 8) as u16 % 0x1000,
                _ => (x >> 8) as u16,
            };
            let width = [1usize, 2, 4, 4, 4, 0, 3, 8][(x >> 24) as usize % 8];
            let value = match (x >> 32) % 4 {
                0 => u64::MAX,
                1 => 0,
                _ => x.rotate_left(17),
            };
            if x & (1 << 60) != 0 {
                c.read_config(offset, &mut vec![0u8; width]);
                continue;
            }
            let before: Vec<Option<u64>> = (0..6).map(|i| c.bar_mapping(i)).collect();
            let changes = c.write_config(offset, &value.to_le_bytes()[..width.min(8)]);
            let after: Vec<Option<u64>> = (0..6).map(|i| c.bar_mapping(i)).collect();
            for i in 0..6 {
                let reported: Vec<_> = changes.iter().filter(|r| usize::from(r.index) == i).collect();
                if before[i] == after[i] {
                    assert!(reported.is_empty(), "BAR {i} reported but did not move: {changes:?}");
                } else {
                    assert_eq!(reported.len(), 1, "BAR {i} moved {:?} -> {:?} unreported", before[i], after[i]);
                    assert_eq!((reported[0].old, reported[0].new), (before[i], after[i]));
                    moves += 1;
                }
                if let Some(a) = after[i] {
                    let size = c.bar(i).unwrap().size;
                    assert_eq!(a % size, 0, "BAR {i} at {a:#x} not aligned to {size:#x}");
                    assert!(a.checked_add(size).is_some());
                }
            }
            assert_eq!(identity(&c), id, "identity or capability list changed");
        }
        assert!(moves > 100, "{moves} BAR moves");
    }
}
