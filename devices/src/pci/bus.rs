//! PCI bus 0, its host bridge, and the two ways a guest reaches configuration
//! space (book chapter 4.2).
//!
//! References: PCI Local Bus Specification 3.0, section 3.2.2.3.2
//! (configuration mechanism #1: CONFIG_ADDRESS at 0xCF8, CONFIG_DATA at 0xCFC);
//! PCI Express Base Specification, section 7.2.2 (the enhanced configuration
//! access mechanism, ECAM: one 4 KiB window per function at
//! `bus << 20 | device << 15 | function << 12`); Intel chipset datasheets for the
//! reset control register at 0xCF9.
//!
//! [`PciRoot`] holds the functions of bus 0. It is shared (`Arc`) by the
//! [`PciConfigIo`] and [`PciConfigMmio`] bus devices; when a guest configuration
//! write moves or toggles a BAR, the root hands each change to the VMM's
//! [`BarRelocator`], which moves a [`PciBarRegion`] on its port-I/O or MMIO bus.
//!
//! ## The host bridge
//!
//! 00:00.0 is a host bridge (class 0x06, subclass 0x00, header type 0) with
//! Red Hat's ID 1b36:0008, allocated for QEMU's generic "PCIe host bridge"
//! (`gpex`) and listed in pci.ids as such, so `lspci` names it. It is chosen over
//! an Intel ID (such as 8086:0d57) because Linux and firmware key chipset quirks
//! on Intel host bridge IDs, and a bridge with no chipset registers behind it
//! must not match any of them. Linux's check that mechanism #1 works
//! (`pci_sanity_check`) looks for a function of class "host bridge" on bus 0,
//! which this one is.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use crate::bus::{BusDevice, GuestEvent, GuestEventSink};
use crate::ratelimit::LogLimiter;

use super::configuration::{config_access_ok, BarReprogram, PciConfiguration, PciIds, NUM_BARS};
use super::device::PciDevice;
use super::PciError;

/// A PCI device shared between the bus, its BAR regions and the VMM.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Vendor ID of the host bridge at 00:00.0 (Red Hat, Inc.).
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x1b36;
/// Device ID of the host bridge at 00:00.0 ("QEMU PCIe Host bridge").
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0008;

/// First I/O port of configuration mechanism #1 (CONFIG_ADDRESS).
pub const PCI_CONFIG_IO_PORT: u16 = 0xcf8;
/// Ports [`PciConfigIo`] decodes: 0xCF8-0xCFF.
pub const PCI_CONFIG_IO_PORT_COUNT: u64 = 8;
/// Size of the ECAM window of one bus (32 devices x 8 functions x 4 KiB).
pub const ECAM_BUS_SIZE: u64 = 1 << 20;

/// CONFIG_ADDRESS bit 31: the next CONFIG_DATA access is a configuration cycle.
const CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;
/// CONFIG_ADDRESS bits that hold state: enable, bus, device, function, register.
/// Bits 30:24 are reserved and bits 1:0 are always 0.
const CONFIG_ADDRESS_MASK: u32 = 0x80ff_fffc;

/// Reset control register (0xCF9) bit 1: the next reset is a hard reset.
const RCR_SYS_RST: u8 = 1 << 1;
/// Reset control register bit 2: writing 1 resets the machine.
const RCR_RST_CPU: u8 = 1 << 2;
/// Reset control register bit 3: the next hard reset is a full power cycle.
const RCR_FULL_RST: u8 = 1 << 3;

/// A PCI bus/device/function address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    bus: u8,
    device: u8,
    function: u8,
}

impl Bdf {
    /// The address `bus:device.function`; `device` must be 0-31 and `function` 0-7.
    pub fn new(bus: u8, device: u8, function: u8) -> Result<Self, PciError> {
        if device > 31 || function > 7 {
            return Err(PciError::BadAddress { device, function });
        }
        Ok(Bdf { bus, device, function })
    }

    /// The address on bus `bus` with device and function taken from the low
    /// eight bits of `devfn` (`device << 3 | function`).
    fn from_devfn(bus: u8, devfn: u8) -> Self {
        Bdf { bus, device: devfn >> 3, function: devfn & 7 }
    }

    /// The bus number.
    pub fn bus(&self) -> u8 {
        self.bus
    }

    /// The device (slot) number, 0-31.
    pub fn device(&self) -> u8 {
        self.device
    }

    /// The function number, 0-7.
    pub fn function(&self) -> u8 {
        self.function
    }

    /// `device << 3 | function`, the form used in routing tables.
    pub fn devfn(&self) -> u8 {
        (self.device << 3) | self.function
    }
}

impl fmt::Display for Bdf {
    /// Formats as `lspci` does: `00:1f.3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// The VMM's side of BAR moves.
///
/// [`PciRoot`] calls [`relocate`](Self::relocate) once per [`BarReprogram`],
/// after the device's lock is released and in the order the changes happened
/// (configuration writes are serialized across all config-access mechanisms
/// while the relocator runs). From inside `relocate` the relocator may lock
/// `device` and look devices up, but must not make configuration accesses
/// through, or add devices to, the same [`PciRoot`]: that would deadlock.
pub trait BarRelocator: Send + Sync {
    /// Moves BAR `change.index` of the function at `bdf`: removes the region at
    /// `change.old` (if any) from the port-I/O (`PciBarKind::Io`) or MMIO bus
    /// and inserts one at `change.new` (if any), typically a [`PciBarRegion`]
    /// for `device`.
    fn relocate(&self, bdf: Bdf, change: &BarReprogram, device: SharedPciDevice);
}

/// The host bridge at 00:00.0: only a configuration space (no BARs, no
/// capabilities), so that guests find a bus to enumerate. See the module docs
/// for the choice of ID.
#[derive(Debug)]
pub struct PciHostBridge {
    config: PciConfiguration,
}

impl PciHostBridge {
    /// A host bridge with ID 1b36:0008, class 0x06/0x00, subsystem 1af4:1100
    /// (the subsystem QEMU gives its devices).
    pub fn new() -> Self {
        PciHostBridge {
            config: PciConfiguration::new(&PciIds {
                vendor_id: HOST_BRIDGE_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                revision_id: 0,
                class_code: 0x06,
                subclass: 0x00,
                prog_if: 0x00,
                subsystem_vendor_id: 0x1af4,
                subsystem_id: 0x1100,
            }),
        }
    }
}

impl Default for PciHostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for PciHostBridge {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }
}

/// PCI bus 0: a host bridge at 00:00.0 and the devices the VMM adds.
///
/// All methods take `&self`, so one `Arc<PciRoot>` serves both
/// configuration mechanisms and the VMM.
pub struct PciRoot {
    /// Functions of bus 0 by devfn.
    functions: RwLock<BTreeMap<u8, SharedPciDevice>>,
    relocator: Arc<dyn BarRelocator>,
    /// Serializes configuration writes together with their relocations, so
    /// the relocator sees the changes of concurrent writers in order.
    write_lock: Mutex<()>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PciRoot {
    /// Bus 0 with only the host bridge; BAR moves go to `relocator`.
    pub fn new(relocator: Arc<dyn BarRelocator>) -> Self {
        Self::with_host_bridge(relocator, Arc::new(Mutex::new(PciHostBridge::new())))
    }

    /// Bus 0 with `host` as the host bridge at 00:00.0 (e.g. the chipset model a
    /// firmware expects) instead of [`PciHostBridge`].
    pub fn with_host_bridge(relocator: Arc<dyn BarRelocator>, host: SharedPciDevice) -> Self {
        let mut functions = BTreeMap::new();
        functions.insert(0, host);
        PciRoot { functions: RwLock::new(functions), relocator, write_lock: Mutex::new(()) }
    }

    /// Adds `device` as function 0 of the lowest free device number (1-31) on
    /// bus 0 and returns its address.
    ///
    /// BARs that already decode (the VMM assigned them and set the command
    /// register, as firmware would) are reported to the relocator as
    /// `old: None` changes before this returns.
    pub fn add_device(&self, device: SharedPciDevice) -> Result<Bdf, PciError> {
        let bdf = {
            let mut functions = self.functions.write().unwrap_or_else(|e| e.into_inner());
            let free = (1..32u8).find(|dev| functions.range(dev << 3..=(dev << 3) | 7).next().is_none());
            let bdf = Bdf::from_devfn(0, free.ok_or(PciError::NoFreeSlot)? << 3);
            Self::insert(&mut functions, bdf, &device)?;
            bdf
        };
        self.report_initial_mappings(bdf, &device);
        Ok(bdf)
    }

    /// Adds `device` at `bdf`, which must be on bus 0 and free. A function other
    /// than 0 needs function 0 of its slot present, whose header then gets the
    /// multi-function bit (guests only scan functions 1-7 when it is set).
    /// Already-decoding BARs are reported as in [`add_device`](Self::add_device).
    pub fn add_device_at(&self, bdf: Bdf, device: SharedPciDevice) -> Result<(), PciError> {
        {
            let mut functions = self.functions.write().unwrap_or_else(|e| e.into_inner());
            Self::insert(&mut functions, bdf, &device)?;
        }
        self.report_initial_mappings(bdf, &device);
        Ok(())
    }

    fn insert(
        functions: &mut BTreeMap<u8, SharedPciDevice>,
        bdf: Bdf,
        device: &SharedPciDevice,
    ) -> Result<(), PciError> {
        if bdf.bus != 0 {
            return Err(PciError::NoSuchBus(bdf.bus));
        }
        if functions.contains_key(&bdf.devfn()) {
            return Err(PciError::SlotInUse(bdf));
        }
        if bdf.function != 0 {
            let Some(function0) = functions.get(&(bdf.device << 3)) else {
                return Err(PciError::NoFunctionZero(bdf));
            };
            lock(function0).config_mut().set_multifunction(true);
        }
        functions.insert(bdf.devfn(), device.clone());
        Ok(())
    }

    /// Tells the relocator about BARs of a new device that already decode.
    fn report_initial_mappings(&self, bdf: Bdf, device: &SharedPciDevice) {
        let initial: Vec<BarReprogram> = {
            let dev = lock(device);
            let config = dev.config();
            (0..NUM_BARS)
                .filter_map(|index| {
                    let bar = config.bar(index)?;
                    let addr = config.bar_mapping(index)?;
                    Some(BarReprogram {
                        index: index as u8,
                        kind: bar.kind,
                        old: None,
                        new: Some(addr),
                        size: bar.size,
                    })
                })
                .collect()
        };
        let _serial = lock(&self.write_lock);
        for change in &initial {
            self.relocator.relocate(bdf, change, device.clone());
        }
    }

    /// The function at `bdf`, if any.
    pub fn device(&self, bdf: Bdf) -> Option<SharedPciDevice> {
        if bdf.bus != 0 {
            return None;
        }
        let functions = self.functions.read().unwrap_or_else(|e| e.into_inner());
        functions.get(&bdf.devfn()).cloned()
    }

    /// Every function on the bus, host bridge included, in address order.
    pub fn devices(&self) -> Vec<(Bdf, SharedPciDevice)> {
        let functions = self.functions.read().unwrap_or_else(|e| e.into_inner());
        functions.iter().map(|(&devfn, dev)| (Bdf::from_devfn(0, devfn), dev.clone())).collect()
    }

    /// A configuration read of `data.len()` bytes at `offset` of the function at
    /// `bdf`. Absent functions, and accesses that are not 1, 2 or 4 bytes within
    /// one dword below 0x1000, read as all ones (so an absent function's vendor
    /// ID reads 0xffff).
    pub fn read_config(&self, bdf: Bdf, offset: u16, data: &mut [u8]) {
        match self.device(bdf) {
            Some(dev) if config_access_ok(offset.into(), data.len()) => lock(&dev).read_config(offset, data),
            _ => data.fill(0xff),
        }
    }

    /// A configuration write of `data` at `offset` of the function at `bdf`;
    /// writes to absent functions and malformed accesses are dropped. BAR
    /// changes go to the relocator before this returns.
    pub fn write_config(&self, bdf: Bdf, offset: u16, data: &[u8]) {
        let Some(dev) = self.device(bdf) else {
            return;
        };
        if !config_access_ok(offset.into(), data.len()) {
            return;
        }
        let _serial = lock(&self.write_lock);
        let changes = lock(&dev).write_config(offset, data);
        for change in &changes {
            log::debug!(
                "pci {bdf}: BAR {} ({:?}, {:#x} bytes) {:x?} -> {:x?}",
                change.index,
                change.kind,
                change.size,
                change.old,
                change.new
            );
            self.relocator.relocate(bdf, change, dev.clone());
        }
    }
}

/// Configuration mechanism #1: I/O ports 0xCF8-0xCFF (register at
/// [`PCI_CONFIG_IO_PORT`], length [`PCI_CONFIG_IO_PORT_COUNT`]).
///
/// - **CONFIG_ADDRESS (0xCF8)** is a dword register: only 4-byte accesses at
///   0xCF8 read or write it. It keeps the enable bit (31), bus (23:16), device
///   (15:11), function (10:8) and register (7:2); reserved bits 30:24 and 1:0 read
///   as 0. As on Intel chipsets, byte and word accesses to 0xCF8-0xCFB are not
///   CONFIG_ADDRESS accesses: they read as all ones and writes are dropped. This
///   is what Linux's probe expects: its `outb(0x01, 0xCFB)` must not disturb the
///   register, and its mechanism #2 check (byte writes then reads of 0xCF8 and
///   0xCFA expecting 0) fails. QEMU also drops such writes (its sub-dword
///   reads return the register's low bytes instead, which no guest relies on).
/// - **0xCF9** is, on Intel chipsets, the reset control register, which Linux uses
///   for `reboot=pci`. With [`with_reset_control`](Self::with_reset_control), a
///   byte write with bit 2 set raises [`GuestEvent::Reset`]; otherwise the port
///   behaves as its neighbours.
/// - **CONFIG_DATA (0xCFC-0xCFF)** accesses the dword CONFIG_ADDRESS selects, at
///   widths 1, 2 and 4, at any offset that keeps the access inside 0xCFC-0xCFF
///   (e.g. a byte at 0xCFE is register byte 2). While the enable bit is clear,
///   reads return all ones and writes are dropped. Only the 256-byte legacy
///   space is reachable.
pub struct PciConfigIo {
    root: Arc<PciRoot>,
    config_address: u32,
    reset: Option<GuestEventSink>,
    reset_control: u8,
    bad_access: LogLimiter,
}

impl PciConfigIo {
    /// Mechanism #1 over `root`, without the reset control register.
    pub fn new(root: Arc<PciRoot>) -> Self {
        PciConfigIo { root, config_address: 0, reset: None, reset_control: 0, bad_access: LogLimiter::new() }
    }

    /// Mechanism #1 over `root` with the reset control register at 0xCF9:
    /// writing a byte with bit 2 (RST_CPU) set sends [`GuestEvent::Reset`] to
    /// `sink`; bits 1 and 3 read back as written.
    pub fn with_reset_control(root: Arc<PciRoot>, sink: GuestEventSink) -> Self {
        PciConfigIo { reset: Some(sink), ..Self::new(root) }
    }

    /// The current CONFIG_ADDRESS value.
    pub fn config_address(&self) -> u32 {
        self.config_address
    }

    /// The function and register CONFIG_DATA at `data_offset` (0-3) reaches, if
    /// the enable bit is set.
    fn target(&self, data_offset: u64) -> Option<(Bdf, u16)> {
        if self.config_address & CONFIG_ADDRESS_ENABLE == 0 {
            return None;
        }
        let bus = (self.config_address >> 16) as u8;
        let devfn = (self.config_address >> 8) as u8;
        let register = (self.config_address & 0xfc) as u16 + data_offset as u16;
        Some((Bdf::from_devfn(bus, devfn), register))
    }

    fn data_access_ok(offset: u64, len: usize) -> bool {
        (4..8).contains(&offset) && matches!(len, 1 | 2 | 4) && (offset - 4) as usize + len <= 4
    }

    fn log_bad_access(&mut self, what: &str, offset: u64, len: usize) {
        if let Some(n) = self.bad_access.tick() {
            log::debug!(
                "pci: ignoring {len}-byte {what} at port {:#x} (#{n})",
                u64::from(PCI_CONFIG_IO_PORT).wrapping_add(offset)
            );
        }
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.config_address.to_le_bytes());
        } else if offset == 1 && data.len() == 1 && self.reset.is_some() {
            data[0] = self.reset_control;
        } else if Self::data_access_ok(offset, data.len()) {
            match self.target(offset - 4) {
                Some((bdf, register)) => self.root.read_config(bdf, register, data),
                None => data.fill(0xff),
            }
        } else {
            if offset >= 4 {
                self.log_bad_access("read", offset, data.len());
            }
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.len() == 4 {
            let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.config_address = value & CONFIG_ADDRESS_MASK;
        } else if offset == 1 && data.len() == 1 && self.reset.is_some() {
            let value = data[0];
            self.reset_control = value & (RCR_SYS_RST | RCR_FULL_RST);
            if value & RCR_RST_CPU != 0 {
                if let Some(sink) = &self.reset {
                    log::info!("pci: reset requested through port 0xcf9 ({value:#04x})");
                    sink(GuestEvent::Reset);
                }
            }
        } else if Self::data_access_ok(offset, data.len()) {
            if let Some((bdf, register)) = self.target(offset - 4) {
                self.root.write_config(bdf, register, data);
            }
        } else if offset >= 4 {
            self.log_bad_access("write", offset, data.len());
        }
        // Sub-dword writes to 0xCF8-0xCFB are not configuration accesses: dropped.
    }
}

/// The PCI Express enhanced configuration access mechanism (ECAM, also called
/// MMCONFIG): function `b:d.f` register `r` is at
/// `b << 20 | d << 15 | f << 12 | r` from the window's base.
///
/// The window covers `bus_count` buses (1-256, [`size`](Self::size) bytes); the
/// VMM describes it to the guest (ACPI MCFG) with the same count. Accesses must
/// be 1, 2 or 4 bytes within one dword (the specification does not require
/// root complexes to support others, and no guest uses them); anything else,
/// and every bus other than 0, reads as all ones and drops writes.
pub struct PciConfigMmio {
    root: Arc<PciRoot>,
    bus_count: u16,
    bad_access: LogLimiter,
}

impl PciConfigMmio {
    /// An ECAM window over `root` covering `bus_count` buses (clamped to 1-256).
    pub fn new(root: Arc<PciRoot>, bus_count: u16) -> Self {
        PciConfigMmio { root, bus_count: bus_count.clamp(1, 256), bad_access: LogLimiter::new() }
    }

    /// Number of buses the window covers.
    pub fn bus_count(&self) -> u16 {
        self.bus_count
    }

    /// Size of the window in bytes: 1 MiB per bus.
    pub fn size(&self) -> u64 {
        u64::from(self.bus_count) * ECAM_BUS_SIZE
    }

    fn decode(&mut self, offset: u64, len: usize, what: &str) -> Option<(Bdf, u16)> {
        let register = offset & 0xfff;
        if offset >= self.size() || !config_access_ok(register, len) {
            if let Some(n) = self.bad_access.tick() {
                log::debug!("pci: ignoring {len}-byte ECAM {what} at offset {offset:#x} (#{n})");
            }
            return None;
        }
        let bus = (offset >> 20) as u8;
        let devfn = (offset >> 12) as u8;
        Some((Bdf::from_devfn(bus, devfn), register as u16))
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.decode(offset, data.len(), "read") {
            Some((bdf, register)) => self.root.read_config(bdf, register, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((bdf, register)) = self.decode(offset, data.len(), "write") {
            self.root.write_config(bdf, register, data);
        }
    }
}

/// One BAR of a device on the VMM's port-I/O or MMIO bus: forwards accesses to
/// [`PciDevice::read_bar`] and [`PciDevice::write_bar`] with offsets relative to
/// the BAR's start. The VMM inserts it at the BAR's address with the BAR's size
/// and moves it as its [`BarRelocator`] is told.
pub struct PciBarRegion {
    /// The device that owns the BAR.
    pub device: SharedPciDevice,
    /// The BAR index (the lower slot of a 64-bit BAR).
    pub bar: u8,
}

impl PciBarRegion {
    /// The region of BAR `bar` of `device`.
    pub fn new(device: SharedPciDevice, bar: u8) -> Self {
        PciBarRegion { device, bar }
    }
}

impl BusDevice for PciBarRegion {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.device).read_bar(self.bar, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.device).write_bar(self.bar, offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::configuration::{
        PciBar, PciBarKind, BAR0, COMMAND, COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE, HEADER_TYPE,
    };

    #[derive(Default)]
    struct Relocations(Mutex<Vec<(Bdf, BarReprogram)>>);

    impl Relocations {
        fn take(&self) -> Vec<(Bdf, BarReprogram)> {
            std::mem::take(&mut *lock(&self.0))
        }
    }

    impl BarRelocator for Relocations {
        fn relocate(&self, bdf: Bdf, change: &BarReprogram, device: SharedPciDevice) {
            // The device lock must not be held while relocating.
            assert!(device.try_lock().is_ok());
            lock(&self.0).push((bdf, *change));
        }
    }

    struct TestDev {
        config: PciConfiguration,
        bar_writes: Vec<(u8, u64, Vec<u8>)>,
    }

    impl TestDev {
        fn new(device_id: u16) -> Self {
            let mut config = PciConfiguration::new(&PciIds {
                vendor_id: 0x1af4,
                device_id,
                class_code: 0x01,
                subclass: 0x80,
                ..Default::default()
            });
            config
                .add_bar(0, PciBar { kind: PciBarKind::Mem32, size: 0x1000, prefetchable: false, addr: 0xe000_0000 })
                .unwrap();
            config.add_bar(1, PciBar { kind: PciBarKind::Io, size: 0x20, prefetchable: false, addr: 0xc000 }).unwrap();
            TestDev { config, bar_writes: Vec::new() }
        }
    }

    impl PciDevice for TestDev {
        fn config(&self) -> &PciConfiguration {
            &self.config
        }
        fn config_mut(&mut self) -> &mut PciConfiguration {
            &mut self.config
        }
        fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
            data.fill(bar.wrapping_mul(0x10).wrapping_add(offset as u8));
        }
        fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
            self.bar_writes.push((bar, offset, data.to_vec()));
        }
    }

    fn setup() -> (Arc<PciRoot>, Arc<Relocations>) {
        let rel = Arc::new(Relocations::default());
        let root = Arc::new(PciRoot::new(rel.clone()));
        (root, rel)
    }

    fn bdf(b: u8, d: u8, f: u8) -> Bdf {
        Bdf::new(b, d, f).unwrap()
    }

    fn cf8(bdf: Bdf, reg: u8) -> u32 {
        0x8000_0000
            | (u32::from(bdf.bus()) << 16)
            | (u32::from(bdf.device()) << 11)
            | (u32::from(bdf.function()) << 8)
            | u32::from(reg)
    }

    fn io_read(io: &mut PciConfigIo, port: u16, len: usize) -> u32 {
        let mut d = [0u8; 4];
        io.read(u64::from(port - 0xcf8), &mut d[..len]);
        u32::from_le_bytes(d)
    }

    fn io_write(io: &mut PciConfigIo, port: u16, len: usize, v: u32) {
        io.write(u64::from(port - 0xcf8), &v.to_le_bytes()[..len]);
    }

    #[test]
    fn bdf_validation_and_display() {
        assert!(Bdf::new(0, 32, 0).is_err());
        assert!(Bdf::new(0, 0, 8).is_err());
        let b = bdf(0x12, 0x1f, 7);
        assert_eq!(b.to_string(), "12:1f.7");
        assert_eq!(b.devfn(), 0xff);
    }

    #[test]
    fn host_bridge_identity() {
        let (root, _) = setup();
        let mut d = [0; 4];
        root.read_config(bdf(0, 0, 0), 0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0008_1b36);
        root.read_config(bdf(0, 0, 0), 8, &mut d);
        assert_eq!(u32::from_le_bytes(d) >> 8, 0x06_00_00);
        let mut h = [0; 1];
        root.read_config(bdf(0, 0, 0), HEADER_TYPE, &mut h);
        assert_eq!(h, [0]);
    }

    #[test]
    fn mechanism1_address_register() {
        let (root, _) = setup();
        let mut io = PciConfigIo::new(root);
        io_write(&mut io, 0xcf8, 4, 0x8000_0000);
        assert_eq!(io_read(&mut io, 0xcf8, 4), 0x8000_0000);
        // Reserved bits read as 0.
        io_write(&mut io, 0xcf8, 4, 0xffff_ffff);
        assert_eq!(io_read(&mut io, 0xcf8, 4), 0x80ff_fffc);
        assert_eq!(io.config_address(), 0x80ff_fffc);
        // Byte and word accesses are not CONFIG_ADDRESS accesses.
        for port in 0xcf8..0xcfc {
            assert_eq!(io_read(&mut io, port, 1), 0xff, "port {port:#x}");
        }
        assert_eq!(io_read(&mut io, 0xcf8, 2), 0xffff);
        assert_eq!(io_read(&mut io, 0xcfa, 2), 0xffff);
        io_write(&mut io, 0xcfb, 1, 0x01); // Linux's mechanism #1 probe
        io_write(&mut io, 0xcf8, 1, 0x00);
        io_write(&mut io, 0xcf8, 2, 0x00);
        assert_eq!(io_read(&mut io, 0xcf8, 4), 0x80ff_fffc);
        // Dword at an odd offset of the address port: not the register either.
        let mut d = [0; 4];
        io.read(1, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn mechanism1_data_port_all_widths_and_offsets() {
        let (root, _) = setup();
        let mut io = PciConfigIo::new(root);
        let host = bdf(0, 0, 0);
        io_write(&mut io, 0xcf8, 4, cf8(host, 0));
        assert_eq!(io_read(&mut io, 0xcfc, 4), 0x0008_1b36);
        assert_eq!(io_read(&mut io, 0xcfc, 2), 0x1b36);
        assert_eq!(io_read(&mut io, 0xcfe, 2), 0x0008);
        assert_eq!(io_read(&mut io, 0xcfd, 2), 0x081b);
        let bytes: Vec<u32> = (0xcfc..0xd00).map(|p| io_read(&mut io, p, 1)).collect();
        assert_eq!(bytes, vec![0x36, 0x1b, 0x08, 0x00]);
        // Class code bytes at 0xCFE/0xCFF with register 8.
        io_write(&mut io, 0xcf8, 4, cf8(host, 8));
        assert_eq!(io_read(&mut io, 0xcfe, 1), 0x00);
        assert_eq!(io_read(&mut io, 0xcff, 1), 0x06);
        // Accesses running past 0xCFF and odd widths read all ones.
        assert_eq!(io_read(&mut io, 0xcff, 2), 0xffff);
        assert_eq!(io_read(&mut io, 0xcfe, 4), 0xffff_ffff);
        let mut d = [0; 3];
        io.read(4, &mut d);
        assert_eq!(d, [0xff; 3]);
        let mut d = [0; 8];
        io.read(4, &mut d);
        assert_eq!(d, [0xff; 8]);
        io.read(100, &mut d[..1]);
        assert_eq!(d[0], 0xff);
        io.write(100, &[0]);
        io.write(4, &[]);
    }

    #[test]
    fn mechanism1_enable_bit_and_absent_devices() {
        let (root, _) = setup();
        let mut io = PciConfigIo::new(root.clone());
        // Enable bit clear: all ones, writes dropped.
        io_write(&mut io, 0xcf8, 4, cf8(bdf(0, 0, 0), 0x3c) & !0x8000_0000);
        assert_eq!(io_read(&mut io, 0xcfc, 4), 0xffff_ffff);
        assert_eq!(io_read(&mut io, 0xcfc, 1), 0xff);
        io_write(&mut io, 0xcfc, 1, 0x0b);
        let mut line = [0; 1];
        root.read_config(bdf(0, 0, 0), 0x3c, &mut line);
        assert_eq!(line, [0]);
        // With the enable bit the same write lands.
        io_write(&mut io, 0xcf8, 4, cf8(bdf(0, 0, 0), 0x3c));
        io_write(&mut io, 0xcfc, 1, 0x0b);
        assert_eq!(io_read(&mut io, 0xcfc, 1), 0x0b);
        // Absent device, absent function, other bus.
        for b in [bdf(0, 5, 0), bdf(0, 0, 3), bdf(1, 0, 0), bdf(0xff, 31, 7)] {
            io_write(&mut io, 0xcf8, 4, cf8(b, 0));
            assert_eq!(io_read(&mut io, 0xcfc, 2), 0xffff, "{b}");
            assert_eq!(io_read(&mut io, 0xcfc, 4), 0xffff_ffff, "{b}");
            io_write(&mut io, 0xcfc, 4, 0);
        }
    }

    #[test]
    fn mechanism1_reaches_devices_and_relocates() {
        let (root, rel) = setup();
        let dev = Arc::new(Mutex::new(TestDev::new(0x1001)));
        let b = root.add_device(dev.clone()).unwrap();
        assert_eq!(b, bdf(0, 1, 0));
        assert!(rel.take().is_empty(), "decode off: nothing mapped yet");
        let mut io = PciConfigIo::new(root.clone());
        io_write(&mut io, 0xcf8, 4, cf8(b, 0));
        assert_eq!(io_read(&mut io, 0xcfc, 4), 0x1001_1af4);
        // Size BAR0 through the ports.
        io_write(&mut io, 0xcf8, 4, cf8(b, 0x10));
        io_write(&mut io, 0xcfc, 4, 0xffff_ffff);
        assert_eq!(io_read(&mut io, 0xcfc, 4), 0xffff_f000);
        io_write(&mut io, 0xcfc, 4, 0xe000_0000);
        assert!(rel.take().is_empty());
        // Enable memory decoding with a word write at 0xCFC.
        io_write(&mut io, 0xcf8, 4, cf8(b, 0x04));
        io_write(&mut io, 0xcfc, 2, u32::from(COMMAND_MEMORY_SPACE));
        let got = rel.take();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, b);
        assert_eq!(got[0].1.new, Some(0xe000_0000));
        // Move BAR0 with the byte at 0xCFF.
        io_write(&mut io, 0xcf8, 4, cf8(b, 0x10));
        io_write(&mut io, 0xcff, 1, 0xd0);
        let got = rel.take();
        assert_eq!(
            got[0].1,
            BarReprogram {
                index: 0,
                kind: PciBarKind::Mem32,
                old: Some(0xe000_0000),
                new: Some(0xd000_0000),
                size: 0x1000
            }
        );
    }

    #[test]
    fn reset_control_register() {
        let (root, _) = setup();
        let events = Arc::new(Mutex::new(Vec::new()));
        let e = events.clone();
        let sink: GuestEventSink = Arc::new(move |ev| lock(&e).push(ev));
        let mut io = PciConfigIo::with_reset_control(root.clone(), sink);
        assert_eq!(io_read(&mut io, 0xcf9, 1), 0);
        io_write(&mut io, 0xcf9, 1, 0x02);
        assert_eq!(io_read(&mut io, 0xcf9, 1), 0x02);
        assert!(lock(&events).is_empty());
        io_write(&mut io, 0xcf9, 1, 0x06);
        assert_eq!(*lock(&events), vec![GuestEvent::Reset]);
        assert_eq!(io_read(&mut io, 0xcf9, 1), 0x02);
        // The address register is untouched by all this.
        assert_eq!(io.config_address(), 0);
        // Without the option, 0xCF9 is inert.
        let mut plain = PciConfigIo::new(root);
        io_write(&mut plain, 0xcf9, 1, 0x06);
        assert_eq!(io_read(&mut plain, 0xcf9, 1), 0xff);
    }

    #[test]
    fn ecam_offsets() {
        let (root, _) = setup();
        root.add_device_at(bdf(0, 3, 0), Arc::new(Mutex::new(TestDev::new(0x3000)))).unwrap();
        root.add_device_at(bdf(0, 3, 2), Arc::new(Mutex::new(TestDev::new(0x3002)))).unwrap();
        root.add_device_at(bdf(0, 31, 0), Arc::new(Mutex::new(TestDev::new(0x1f00)))).unwrap();
        let mut ecam = PciConfigMmio::new(root.clone(), 4);
        assert_eq!(ecam.size(), 4 << 20);
        let rd = |ecam: &mut PciConfigMmio, b: u64, d: u64, f: u64, r: u64, len: usize| {
            let mut data = [0u8; 4];
            ecam.read((b << 20) | (d << 15) | (f << 12) | r, &mut data[..len]);
            u32::from_le_bytes(data)
        };
        assert_eq!(rd(&mut ecam, 0, 0, 0, 0, 4), 0x0008_1b36);
        assert_eq!(rd(&mut ecam, 0, 3, 0, 0, 4), 0x3000_1af4);
        assert_eq!(rd(&mut ecam, 0, 3, 2, 2, 2), 0x3002);
        assert_eq!(rd(&mut ecam, 0, 31, 0, 3, 1), 0x1f);
        assert_eq!(rd(&mut ecam, 0, 3, 1, 0, 2), 0xffff);
        assert_eq!(rd(&mut ecam, 1, 3, 0, 0, 2), 0xffff);
        assert_eq!(rd(&mut ecam, 3, 31, 7, 0xffc, 4), 0xffff_ffff);
        // Function 0 became multi-function when 3.2 was added.
        assert_eq!(rd(&mut ecam, 0, 3, 0, 0x0e, 1), 0x80);
        assert_eq!(rd(&mut ecam, 0, 31, 0, 0x0e, 1), 0x00);
        // The extended space is reachable and reads as zero here.
        assert_eq!(rd(&mut ecam, 0, 3, 0, 0x100, 4), 0);
        assert_eq!(rd(&mut ecam, 0, 3, 0, 0xffc, 4), 0);
        // Class code through ECAM.
        assert_eq!(rd(&mut ecam, 0, 3, 2, 0x0a, 2), 0x0180);
        // Write through ECAM.
        ecam.write((3 << 15) | 0x3c, &[9]);
        assert_eq!(rd(&mut ecam, 0, 3, 0, 0x3c, 1), 9);
        // Malformed and out-of-window accesses.
        let mut d = [0u8; 8];
        ecam.read(0, &mut d);
        assert_eq!(d, [0xff; 8]);
        ecam.read(2, &mut d[..4]);
        assert_eq!(d[..4], [0xff; 4]);
        ecam.read(4 << 20, &mut d[..4]);
        assert_eq!(d[..4], [0xff; 4]);
        ecam.read(u64::MAX, &mut d[..1]);
        assert_eq!(d[0], 0xff);
        ecam.write(u64::MAX - 1, &[0, 0]);
        ecam.write((3 << 15) | 0x3e, &[1, 2, 3, 4]);
        assert_eq!(rd(&mut ecam, 0, 3, 0, 0x3c, 1), 9);
        // Bus count is clamped.
        assert_eq!(PciConfigMmio::new(root.clone(), 0).bus_count(), 1);
        assert_eq!(PciConfigMmio::new(root, 1000).size(), 256 << 20);
    }

    #[test]
    fn add_device_rules() {
        let (root, rel) = setup();
        let mk = || -> SharedPciDevice { Arc::new(Mutex::new(TestDev::new(1))) };
        assert_eq!(root.add_device_at(bdf(0, 0, 0), mk()), Err(PciError::SlotInUse(bdf(0, 0, 0))));
        assert_eq!(root.add_device_at(bdf(1, 2, 0), mk()), Err(PciError::NoSuchBus(1)));
        assert_eq!(root.add_device_at(bdf(0, 4, 1), mk()), Err(PciError::NoFunctionZero(bdf(0, 4, 1))));
        root.add_device_at(bdf(0, 1, 0), mk()).unwrap();
        root.add_device_at(bdf(0, 2, 0), mk()).unwrap();
        // Slot 3 has function 0 only through a multi-function add; still taken.
        root.add_device_at(bdf(0, 3, 0), mk()).unwrap();
        root.add_device_at(bdf(0, 3, 1), mk()).unwrap();
        assert_eq!(root.add_device(mk()), Ok(bdf(0, 4, 0)));
        for d in 5..32 {
            assert_eq!(root.add_device(mk()), Ok(bdf(0, d, 0)));
        }
        assert_eq!(root.add_device(mk()), Err(PciError::NoFreeSlot));
        assert_eq!(root.devices().len(), 1 + 32);
        assert!(root.device(bdf(0, 3, 1)).is_some());
        assert!(root.device(bdf(1, 3, 1)).is_none());
        assert!(rel.take().is_empty());
    }

    #[test]
    fn preassigned_bars_are_reported_on_add() {
        let (root, rel) = setup();
        let mut dev = TestDev::new(7);
        dev.config.set_command(COMMAND_IO_SPACE | COMMAND_MEMORY_SPACE);
        let b = root.add_device(Arc::new(Mutex::new(dev))).unwrap();
        let got = rel.take();
        let news: Vec<_> = got.iter().map(|(bb, c)| (*bb, c.index, c.old, c.new)).collect();
        assert_eq!(news, vec![(b, 0, None, Some(0xe000_0000)), (b, 1, None, Some(0xc000))]);
        // Turning decode off through the root unmaps both.
        root.write_config(b, COMMAND, &[0, 0]);
        let got = rel.take();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|(_, c)| c.new.is_none() && c.old.is_some()));
    }

    #[test]
    fn bar_region_forwards() {
        let dev = Arc::new(Mutex::new(TestDev::new(1)));
        let mut region = PciBarRegion::new(dev.clone(), 1);
        let mut d = [0; 2];
        region.read(3, &mut d);
        assert_eq!(d, [0x13, 0x13]);
        region.write(5, &[1, 2, 3, 4]);
        assert_eq!(lock(&dev).bar_writes, vec![(1, 5, vec![1, 2, 3, 4])]);
    }

    #[test]
    fn root_rejects_malformed_accesses_before_devices() {
        let (root, _) = setup();
        let mut d = [0u8; 4];
        root.read_config(bdf(0, 0, 0), 0x1000, &mut d);
        assert_eq!(d, [0xff; 4]);
        root.read_config(bdf(0, 0, 0), 0xfff, &mut d[..2]);
        assert_eq!(d[..2], [0xff; 2]);
        root.write_config(bdf(0, 0, 0), u16::MAX, &[0; 4]);
        root.write_config(bdf(0, 0, 0), 0, &[0; 3]);
    }

    #[test]
    fn bar0_sizing_through_root() {
        let (root, rel) = setup();
        let b = root.add_device(Arc::new(Mutex::new(TestDev::new(2)))).unwrap();
        root.write_config(b, BAR0 + 4, &[0xff; 4]);
        let mut d = [0; 4];
        root.read_config(b, BAR0 + 4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0000_ffe1);
        assert!(rel.take().is_empty());
    }
}
