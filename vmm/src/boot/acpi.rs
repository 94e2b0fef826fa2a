//! ACPI tables for x86 guests (ACPI 6.5 chapter 5).
//!
//! [`build_acpi_tables`] produces one blob that the VMM copies to guest
//! physical memory in the BIOS area (0xE0000), where a kernel booted
//! without UEFI searches for the RSDP (§5.2.5.1: 16-byte boundary in
//! 0xE0000-0xFFFFF). The blob holds, each table 8-byte aligned:
//!
//! | table | why |
//! | --- | --- |
//! | RSDP | root pointer, ACPI 2.0+ form with both checksums (§5.2.5.3) |
//! | DSDT | AML: `\_S5_` for power-off, COM1 and i8042 devices (§5.2.11.1) |
//! | FADT | hardware-reduced ACPI, sleep registers, DSDT pointer (§5.2.9) |
//! | MADT | local APICs, I/O APIC, ISA overrides, LINT1 NMI (§5.2.12) |
//! | extra tables | e.g. MCFG, from [`AcpiConfig::extra_tables`] |
//! | XSDT | 64-bit list of FADT, MADT and extras (§5.2.8) |
//! | RSDT | same list with 32-bit pointers, for ACPI 1.0 parsers (§5.2.7) |
//!
//! No FACS is built: with HW_REDUCED_ACPI set, FIRMWARE_CTRL and
//! X_FIRMWARE_CTRL may both be zero, meaning there is none (§5.2.10).
//!
//! To add a table, build it as an [`Sdt`] and push it on
//! [`AcpiConfig::extra_tables`] (or add a builder next to [`build_madt`]);
//! to add devices, append AML from [`super::aml`] to
//! [`AcpiConfig::extra_dsdt_aml`].

use super::aml::{Aml, AmlError, AmlList, Device, EisaId, Name, Package, Resource, ResourceTemplate, Scope};
use super::mptable::{APIC_DEFAULT_PHYS_BASE, IO_APIC_DEFAULT_PHYS_BASE, MAX_CPUS};
use thiserror::Error;

/// Guest physical address where the VMM places the ACPI blob: the start of
/// the BIOS area searched for the RSDP (§5.2.5.1), below the MP table.
pub const ACPI_TABLES_START: u64 = 0xE0000;
/// Largest blob [`build_acpi_tables`] returns: 0xE0000-0xEFFFF, the space
/// between [`ACPI_TABLES_START`] and the MP table at 0xF0000.
pub const ACPI_TABLES_MAX_SIZE: usize = 0x10000;
/// OEM ID in the RSDP and every table header (6 bytes, §5.2.6).
pub const OEM_ID: [u8; 6] = *b"RVMM  ";
/// OEM table ID in every table header (8 bytes, §5.2.6).
pub const OEM_TABLE_ID: [u8; 8] = *b"RVMMVM  ";
/// OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;
/// Creator ID: the tool that made the tables, here rvmm itself (§5.2.6).
pub const CREATOR_ID: [u8; 4] = *b"RVMM";
/// Creator revision.
pub const CREATOR_REVISION: u32 = 1;
/// Default SCI interrupt, ISA IRQ 9 as on PC chipsets (FADT SCI_INT).
pub const DEFAULT_SCI_IRQ: u8 = 9;

/// Size of a system description table header (§5.2.6, table 5.4).
const SDT_HEADER_SIZE: usize = 36;
/// Size of the ACPI 2.0+ RSDP (§5.2.5.3, table 5.3).
const RSDP_SIZE: usize = 36;
/// The ACPI 1.0 RSDP checksum covers only its first 20 bytes (§5.2.5.3).
const RSDP_V1_SIZE: usize = 20;
/// Alignment of every table within the blob: keeps the 64-bit fields of
/// the XSDT and FADT naturally aligned (§5.2.8 recommends it).
const TABLE_ALIGN: usize = 8;

/// FADT flag HW_REDUCED_ACPI, bit 20 (§5.2.9, table 5.10): no fixed
/// hardware (PM1 blocks, PM timer, GPEs, SMI_CMD); sleep goes through
/// SLEEP_CONTROL_REG instead.
const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;
/// The CMOS index of the RTC's century register (FADT CENTURY, §5.2.9).
const RTC_CENTURY_INDEX: u8 = 0x32;
/// IAPC_BOOT_ARCH LEGACY_DEVICES (bit 0) and 8042 (bit 1) (§5.2.9.3): the
/// platform has ISA devices (COM1, RTC) and a PS/2 controller.
const IAPC_BOOT_ARCH: u16 = (1 << 0) | (1 << 1);
/// FADT revision 6: the ACPI 6.x layout, 276 bytes (§5.2.9, table 5.9).
const FADT_REVISION: u8 = 6;
/// FADT minor version 5: the table follows ACPI 6.5.
const FADT_MINOR_REVISION: u8 = 5;
/// FADT hypervisor vendor identity (§5.2.9, ACPI 6.0+), 8 bytes.
const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"RVMM    ";
/// DSDT revision 2 or more makes AML integers 64 bits wide (§5.2.11.1).
const DSDT_REVISION: u8 = 2;
/// MADT revision 5 (the value of ACPI 6.3 and 6.4); the entry types used
/// here exist unchanged since ACPI 1.0, so any parser accepts them.
const MADT_REVISION: u8 = 5;
/// MADT flag PCAT_COMPAT (§5.2.12, table 5.20): a dual 8259 is present,
/// so the OS must mask it when it switches to APIC mode.
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT entry type Processor Local APIC (§5.2.12, table 5.21).
const MADT_LOCAL_APIC: u8 = 0;
/// The I/O APIC's ID: 0, what its ID register reads after reset.
pub const IOAPIC_ID: u8 = 0;
/// MADT entry type I/O APIC.
const MADT_IO_APIC: u8 = 1;
/// MADT entry type Interrupt Source Override.
const MADT_INTERRUPT_OVERRIDE: u8 = 2;
/// MADT entry type Local APIC NMI.
const MADT_LOCAL_APIC_NMI: u8 = 4;
/// Processor Local APIC flag Enabled (§5.2.12.2, table 5.23).
const LOCAL_APIC_ENABLED: u32 = 1;
/// MPS INTI flags 0: polarity and trigger mode conform to the bus
/// (§5.2.12.5, table 5.26), i.e. edge/active-high for ISA.
const MPS_INTI_CONFORMING: u16 = 0;
/// MPS INTI flags: active high (01) in bits 0-1, level-triggered (11) in
/// bits 2-3.
const MPS_INTI_ACTIVE_HIGH_LEVEL: u16 = 0b01 | (0b11 << 2);
/// ACPI processor UID meaning "all processors" in a Local APIC NMI entry
/// (§5.2.12.7).
const ALL_PROCESSORS: u8 = 0xFF;
/// Generic Address Structure address space ID for system I/O (§5.2.3.2).
const GAS_SYSTEM_IO: u8 = 1;
/// GAS access size "byte access" (§5.2.3.2, table 5.2).
const GAS_ACCESS_BYTE: u8 = 1;

/// Errors from building the ACPI tables.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AcpiError {
    /// The MADT must list at least the bootstrap processor.
    #[error("ACPI tables need at least one CPU, got 0")]
    NoCpus,
    /// CPU APIC IDs are 0..num_cpus in 8-bit xAPIC entries and 255 is
    /// broadcast, so at most 254 CPUs fit.
    #[error("ACPI tables support at most {max} CPUs, got {0}", max = MAX_CPUS)]
    TooManyCpus(u8),
    /// The SCI must be an ISA IRQ other than 0 (timer) and 2 (cascade) for
    /// the MADT interrupt source override to describe it.
    #[error("SCI IRQ {0} is not an ISA IRQ in 1-15 other than 2")]
    InvalidSciIrq(u8),
    /// SLEEP_STATUS_REG is at sleep_control_port + 1, which must exist.
    #[error("sleep control port {0:#x} leaves no room for the status port after it")]
    InvalidSleepPort(u16),
    /// The RSDP must start on a 16-byte boundary (§5.2.5.1).
    #[error("ACPI tables base address {0:#x} is not 16-byte aligned")]
    MisalignedBase(u64),
    /// RSDT and FADT hold 32-bit table pointers, so the blob must end
    /// below 4 GiB.
    #[error("ACPI tables at {0:#x} do not lie below 4 GiB")]
    AddressAbove4G(u64),
    /// The blob must fit the BIOS area reserved for it.
    #[error("ACPI tables take {size} bytes, more than the {max} bytes available")]
    TooLarge {
        /// Bytes needed up to the end of the first table that did not fit.
        size: usize,
        /// Space available.
        max: usize,
    },
    /// A table header stores its length in 32 bits (§5.2.6).
    #[error("ACPI table {signature} is {size} bytes, too large for its 32-bit length field")]
    TableTooLarge {
        /// Table signature.
        signature: String,
        /// Size the table would take.
        size: usize,
    },
    /// Encoding the DSDT's AML failed.
    #[error("building the DSDT failed: {0}")]
    Aml(#[from] AmlError),
}

/// What the ACPI tables describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of CPUs; CPU `i` has APIC ID and ACPI processor UID `i`.
    pub num_cpus: u8,
    /// Physical address of the I/O APIC (its ID is [`IOAPIC_ID`]).
    pub ioapic_addr: u32,
    /// Physical address of the local APICs.
    pub lapic_addr: u32,
    /// I/O port of SLEEP_CONTROL_REG; SLEEP_STATUS_REG is the next port.
    /// The guest powers off by writing SLP_TYP=5 << 2 | SLP_EN (bit 5),
    /// i.e. 0x34, to it (§4.8.3.7).
    pub sleep_control_port: u16,
    /// ISA IRQ of the SCI (FADT SCI_INT), level-triggered active-high.
    pub sci_irq: u8,
    /// Extra AML appended at the DSDT's root, e.g. a `Scope(\_SB)` with a
    /// PCI host bridge built with [`super::aml`].
    pub extra_dsdt_aml: Vec<u8>,
    /// Extra tables (e.g. MCFG) placed in the blob and listed in the XSDT
    /// and RSDT after the FADT and MADT.
    pub extra_tables: Vec<Sdt>,
}

impl AcpiConfig {
    /// A configuration with `num_cpus` CPUs, the default PC APIC addresses,
    /// SCI on IRQ 9, the sleep registers at `sleep_control_port`, and no
    /// extra tables or AML.
    pub fn new(num_cpus: u8, sleep_control_port: u16) -> Self {
        Self {
            num_cpus,
            ioapic_addr: IO_APIC_DEFAULT_PHYS_BASE,
            lapic_addr: APIC_DEFAULT_PHYS_BASE,
            sleep_control_port,
            sci_irq: DEFAULT_SCI_IRQ,
            extra_dsdt_aml: Vec::new(),
            extra_tables: Vec::new(),
        }
    }

    /// Checks the values the tables cannot represent.
    fn validate(&self) -> Result<(), AcpiError> {
        if self.num_cpus == 0 {
            return Err(AcpiError::NoCpus);
        }
        if self.num_cpus > MAX_CPUS {
            return Err(AcpiError::TooManyCpus(self.num_cpus));
        }
        if !(1..=15).contains(&self.sci_irq) || self.sci_irq == 2 {
            return Err(AcpiError::InvalidSciIrq(self.sci_irq));
        }
        if self.sleep_control_port == u16::MAX {
            return Err(AcpiError::InvalidSleepPort(self.sleep_control_port));
        }
        Ok(())
    }
}

/// The ACPI tables as one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// Bytes to copy to guest physical `base_addr`.
    pub bytes: Vec<u8>,
    /// Guest physical address of the RSDP (equal to `base_addr`), for
    /// boot_params.acpi_rsdp_addr or a UEFI-less kernel's search.
    pub rsdp_addr: u64,
}

/// A system description table: a standard header (§5.2.6) that
/// [`Sdt::to_bytes`] fills in, followed by a table-specific body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdt {
    signature: [u8; 4],
    revision: u8,
    body: Vec<u8>,
}

impl Sdt {
    /// An empty table with the given signature (e.g. `*b"MCFG"`) and
    /// revision; the OEM and creator fields are rvmm's.
    pub fn new(signature: [u8; 4], revision: u8) -> Self {
        Self { signature, revision, body: Vec::new() }
    }

    /// Appends raw bytes to the body (the part after the 36-byte header).
    pub fn append(&mut self, bytes: &[u8]) {
        self.body.extend_from_slice(bytes);
    }

    /// The table's signature.
    pub fn signature(&self) -> [u8; 4] {
        self.signature
    }

    /// Serialises header and body with the length and checksum set, so
    /// that all bytes of the table sum to zero (§5.2.6).
    pub fn to_bytes(&self) -> Result<Vec<u8>, AcpiError> {
        let too_large = || AcpiError::TableTooLarge {
            signature: String::from_utf8_lossy(&self.signature).into_owned(),
            size: self.body.len().saturating_add(SDT_HEADER_SIZE),
        };
        let size = self.body.len().checked_add(SDT_HEADER_SIZE).ok_or_else(too_large)?;
        let length = u32::try_from(size).map_err(|_| too_large())?;
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&length.to_le_bytes());
        out.push(self.revision);
        out.push(0); // checksum, set below
        out.extend_from_slice(&OEM_ID);
        out.extend_from_slice(&OEM_TABLE_ID);
        out.extend_from_slice(&OEM_REVISION.to_le_bytes());
        out.extend_from_slice(&CREATOR_ID);
        out.extend_from_slice(&CREATOR_REVISION.to_le_bytes());
        out.extend_from_slice(&self.body);
        let sum = checksum(&out);
        if let Some(byte) = out.get_mut(9) {
            *byte = sum;
        }
        Ok(out)
    }
}

/// The byte that makes `bytes` plus itself sum to zero modulo 256.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b)))
}

/// A Generic Address Structure (§5.2.3.2) for a byte-wide register in
/// system I/O space.
fn gas_io_byte(port: u16) -> [u8; 12] {
    let mut gas = [0u8; 12];
    let addr = u64::from(port).to_le_bytes();
    let head = [GAS_SYSTEM_IO, 8, 0, GAS_ACCESS_BYTE]; // space, bit width, bit offset, access size
    for (dst, src) in gas.iter_mut().zip(head.iter().chain(addr.iter())) {
        *dst = *src;
    }
    gas
}

/// The blob under construction: tracks where each table lands.
struct Blob {
    base: u64,
    bytes: Vec<u8>,
}

impl Blob {
    /// Appends `table` at the next 8-byte aligned offset and returns its
    /// guest physical address.
    fn place(&mut self, table: &[u8]) -> Result<u64, AcpiError> {
        let offset = self.bytes.len().next_multiple_of(TABLE_ALIGN);
        let end = offset.checked_add(table.len());
        match end {
            Some(end) if end <= ACPI_TABLES_MAX_SIZE => {}
            _ => return Err(AcpiError::TooLarge { size: end.unwrap_or(usize::MAX), max: ACPI_TABLES_MAX_SIZE }),
        }
        self.bytes.resize(offset, 0);
        self.bytes.extend_from_slice(table);
        // build_acpi_tables checked base + ACPI_TABLES_MAX_SIZE <= 4 GiB,
        // so this cannot fail; checked anyway rather than assumed.
        self.base.checked_add(offset as u64).ok_or(AcpiError::AddressAbove4G(self.base))
    }
}

/// Converts a table address to the 32-bit form of RSDT/FADT fields.
fn addr32(addr: u64) -> Result<u32, AcpiError> {
    u32::try_from(addr).map_err(|_| AcpiError::AddressAbove4G(addr))
}

/// Builds the RSDP, RSDT, XSDT, FADT, MADT and DSDT (plus any extra
/// tables) as one blob to copy to guest physical `base_addr`.
pub fn build_acpi_tables(base_addr: u64, config: &AcpiConfig) -> Result<AcpiTables, AcpiError> {
    config.validate()?;
    if base_addr % 16 != 0 {
        return Err(AcpiError::MisalignedBase(base_addr));
    }
    match base_addr.checked_add(ACPI_TABLES_MAX_SIZE as u64) {
        Some(end) if end <= 1 << 32 => {}
        _ => return Err(AcpiError::AddressAbove4G(base_addr)),
    }

    let mut blob = Blob { base: base_addr, bytes: Vec::new() };
    // The RSDP goes first, at base_addr, so it is on the 16-byte boundary
    // the BIOS-area search needs; it is filled in once the XSDT is placed.
    let rsdp_addr = blob.place(&[0; RSDP_SIZE])?;

    let dsdt_addr = blob.place(&build_dsdt(config)?.to_bytes()?)?;
    let mut listed =
        vec![blob.place(&build_fadt(config, dsdt_addr)?.to_bytes()?)?, blob.place(&build_madt(config).to_bytes()?)?];
    for table in &config.extra_tables {
        listed.push(blob.place(&table.to_bytes()?)?);
    }

    let mut xsdt = Sdt::new(*b"XSDT", 1);
    let mut rsdt = Sdt::new(*b"RSDT", 1);
    for &addr in &listed {
        xsdt.append(&addr.to_le_bytes());
        rsdt.append(&addr32(addr)?.to_le_bytes());
    }
    let xsdt_addr = blob.place(&xsdt.to_bytes()?)?;
    let rsdt_addr = blob.place(&rsdt.to_bytes()?)?;

    let rsdp = build_rsdp(addr32(rsdt_addr)?, xsdt_addr);
    for (dst, src) in blob.bytes.iter_mut().zip(rsdp) {
        *dst = src;
    }
    Ok(AcpiTables { bytes: blob.bytes, rsdp_addr })
}

/// The ACPI 2.0+ Root System Description Pointer (§5.2.5.3, table 5.3).
fn build_rsdp(rsdt_addr: u32, xsdt_addr: u64) -> [u8; RSDP_SIZE] {
    let mut v = Vec::with_capacity(RSDP_SIZE);
    v.extend_from_slice(b"RSD PTR ");
    v.push(0); // checksum of the first 20 bytes, set below
    v.extend_from_slice(&OEM_ID);
    v.push(2); // revision 2: ACPI 2.0+ form with XSDT
    v.extend_from_slice(&rsdt_addr.to_le_bytes());
    v.extend_from_slice(&(RSDP_SIZE as u32).to_le_bytes()); // length
    v.extend_from_slice(&xsdt_addr.to_le_bytes());
    v.push(0); // extended checksum of all 36 bytes, set below
    v.extend_from_slice(&[0; 3]); // reserved

    let mut rsdp = [0u8; RSDP_SIZE];
    for (dst, src) in rsdp.iter_mut().zip(v) {
        *dst = src;
    }
    rsdp[8] = checksum(rsdp.get(..RSDP_V1_SIZE).unwrap_or_default());
    rsdp[32] = checksum(&rsdp);
    rsdp
}

/// The Fixed ACPI Description Table, signature "FACP" (§5.2.9, table
/// 5.9), hardware-reduced: every fixed-hardware field is zero; only the
/// DSDT pointers (`dsdt_addr`), SCI, boot architecture flags and sleep
/// registers are set.
pub fn build_fadt(config: &AcpiConfig, dsdt_addr: u64) -> Result<Sdt, AcpiError> {
    let status_port =
        config.sleep_control_port.checked_add(1).ok_or(AcpiError::InvalidSleepPort(config.sleep_control_port))?;
    let mut t = Sdt::new(*b"FACP", FADT_REVISION);
    t.append(&0u32.to_le_bytes()); // 36 FIRMWARE_CTRL: no FACS (§5.2.10)
    t.append(&addr32(dsdt_addr)?.to_le_bytes()); // 40 DSDT
    t.append(&[0, 0]); // 44 reserved, 45 Preferred_PM_Profile: unspecified
    t.append(&u16::from(config.sci_irq).to_le_bytes()); // 46 SCI_INT

    // 48 SMI_CMD, 52-55 ACPI_ENABLE/DISABLE, S4BIOS_REQ, PSTATE_CNT,
    // 56-87 PM1a/b EVT, PM1a/b CNT, PM2 CNT, PM_TMR, GPE0/1 blocks,
    // 88-95 their lengths, GPE1_BASE, CST_CNT, 96-103 P_LVL2/3 latencies,
    // flush size/stride, 104-107 duty offset/width, RTC day/month alarm
    // indexes: all zero on hardware-reduced platforms.
    t.append(&[0; 108 - 48]);
    t.append(&[RTC_CENTURY_INDEX]); // 108 CENTURY: the RTC's CMOS century register

    t.append(&IAPC_BOOT_ARCH.to_le_bytes()); // 109 IAPC_BOOT_ARCH
    t.append(&[0]); // 111 reserved
    t.append(&FADT_HW_REDUCED_ACPI.to_le_bytes()); // 112 Flags
    t.append(&[0; 12]); // 116 RESET_REG: none
    t.append(&[0]); // 128 RESET_VALUE
    t.append(&0u16.to_le_bytes()); // 129 ARM_BOOT_ARCH
    t.append(&[FADT_MINOR_REVISION]); // 131 FADT Minor Version
    t.append(&0u64.to_le_bytes()); // 132 X_FIRMWARE_CTRL: no FACS
    t.append(&dsdt_addr.to_le_bytes()); // 140 X_DSDT
    t.append(&[0; 244 - 148]); // 148 X_PM1a_EVT_BLK .. X_GPE1_BLK: none
    t.append(&gas_io_byte(config.sleep_control_port)); // 244 SLEEP_CONTROL_REG
    t.append(&gas_io_byte(status_port)); // 256 SLEEP_STATUS_REG
    t.append(&HYPERVISOR_VENDOR_ID); // 268 Hypervisor Vendor Identity
    Ok(t)
}

/// The Multiple APIC Description Table, signature "APIC" (§5.2.12).
pub fn build_madt(config: &AcpiConfig) -> Sdt {
    let mut t = Sdt::new(*b"APIC", MADT_REVISION);
    t.append(&config.lapic_addr.to_le_bytes()); // Local Interrupt Controller Address
    t.append(&MADT_PCAT_COMPAT.to_le_bytes()); // Flags

    // Processor Local APIC (§5.2.12.2): UID = APIC ID = index, enabled.
    for id in 0..config.num_cpus {
        t.append(&[MADT_LOCAL_APIC, 8, id, id]);
        t.append(&LOCAL_APIC_ENABLED.to_le_bytes());
    }

    // I/O APIC (§5.2.12.3): ID 0, the reset value of its 4-bit ID register (which
    // could not hold num_cpus above 15); GSIs 0-23 start at 0. QEMU does the same.
    t.append(&[MADT_IO_APIC, 12, IOAPIC_ID, 0]);
    t.append(&config.ioapic_addr.to_le_bytes());
    t.append(&0u32.to_le_bytes()); // Global System Interrupt Base

    // Interrupt Source Overrides (§5.2.12.5): the PIT's IRQ 0 is wired to
    // GSI 2 (matching the MP table), and the SCI is level/active-high
    // (§5.2.9: SCI is "sharable, level, active low" unless overridden;
    // KVM's I/O APIC takes it active-high).
    let overrides =
        [(0u8, 2u32, MPS_INTI_CONFORMING), (config.sci_irq, u32::from(config.sci_irq), MPS_INTI_ACTIVE_HIGH_LEVEL)];
    for (irq, gsi, flags) in overrides {
        t.append(&[MADT_INTERRUPT_OVERRIDE, 10, 0, irq]); // bus 0 = ISA, source IRQ
        t.append(&gsi.to_le_bytes());
        t.append(&flags.to_le_bytes());
    }

    // Local APIC NMI (§5.2.12.7): NMI arrives on LINT1 of every processor.
    t.append(&[MADT_LOCAL_APIC_NMI, 6, ALL_PROCESSORS]);
    t.append(&MPS_INTI_CONFORMING.to_le_bytes());
    t.append(&[1]); // Local APIC LINT#
    t
}

/// The Differentiated System Description Table (§5.2.11.1): AML for the
/// S5 sleep state and the legacy ISA devices, plus `extra_dsdt_aml`.
pub fn build_dsdt(config: &AcpiConfig) -> Result<Sdt, AcpiError> {
    // \_S5_ {SLP_TYP, reserved} (§7.4.2): the guest writes SLP_TYP=5 to
    // SLEEP_CONTROL_REG to power off.
    let s5 = Name::new("\\_S5_", Package::new(vec![Box::new(5u8), Box::new(0u8)]))?;

    // COM1 (16550A UART, §6.1.5 _HID / PNP0501).
    let com1 = Device::new(
        "COM1",
        vec![
            Box::new(Name::new("_HID", EisaId::new("PNP0501")?)?),
            Box::new(Name::new("_UID", 1u8)?),
            Box::new(Name::new(
                "_CRS",
                ResourceTemplate::new(vec![Resource::io(0x3F8, 0, 8), Resource::irq_no_flags(4)?]),
            )?),
        ],
    )?;

    // i8042 keyboard controller (PNP0303): data port 0x60, command/status
    // port 0x64, keyboard IRQ 1.
    let kbd = Device::new(
        "KBD",
        vec![
            Box::new(Name::new("_HID", EisaId::new("PNP0303")?)?),
            Box::new(Name::new(
                "_CRS",
                ResourceTemplate::new(vec![
                    Resource::io(0x60, 1, 1),
                    Resource::io(0x64, 1, 1),
                    Resource::irq_no_flags(1)?,
                ]),
            )?),
        ],
    )?;

    // The CMOS RTC (PNP0B00): ports 0x70-0x71, IRQ 8. A hardware-reduced
    // platform has no implicit legacy RTC, so Linux binds rtc_cmos only to this.
    let rtc = Device::new(
        "RTC",
        vec![
            Box::new(Name::new("_HID", EisaId::new("PNP0B00")?)?),
            Box::new(Name::new(
                "_CRS",
                ResourceTemplate::new(vec![Resource::io(0x70, 1, 2), Resource::irq_no_flags(8)?]),
            )?),
        ],
    )?;

    let sb: AmlList = vec![Box::new(com1), Box::new(kbd), Box::new(rtc)];
    let items: AmlList = vec![Box::new(s5), Box::new(Scope::new("\\_SB", sb)?)];

    let mut t = Sdt::new(*b"DSDT", DSDT_REVISION);
    t.append(&items.as_slice().to_aml_vec()?);
    t.append(&config.extra_dsdt_aml);
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const BASE: u64 = ACPI_TABLES_START;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    /// The tables found by following the pointers from the RSDP, as a
    /// guest would: (signature, offset in blob, bytes).
    fn walk(t: &AcpiTables) -> Vec<(String, usize, Vec<u8>)> {
        let blob = &t.bytes;
        let table = |addr: u64| -> (String, usize, Vec<u8>) {
            let off = (addr - BASE) as usize;
            let len = u32_at(blob, off + 4) as usize;
            let sig = String::from_utf8(blob[off..off + 4].to_vec()).unwrap();
            (sig, off, blob[off..off + len].to_vec())
        };
        let rsdp_off = (t.rsdp_addr - BASE) as usize;
        let rsdp = &blob[rsdp_off..rsdp_off + 36];
        let mut out = vec![("RSDP".to_string(), rsdp_off, rsdp.to_vec())];
        let xsdt = table(u64_at(rsdp, 24));
        let rsdt = table(u64::from(u32_at(rsdp, 16)));
        let mut listed = Vec::new();
        for i in 0..(xsdt.2.len() - 36) / 8 {
            listed.push(table(u64_at(&xsdt.2, 36 + 8 * i)));
        }
        let rsdt_entries: Vec<u64> =
            (0..(rsdt.2.len() - 36) / 4).map(|i| u64::from(u32_at(&rsdt.2, 36 + 4 * i))).collect();
        let xsdt_entries: Vec<u64> = (0..(xsdt.2.len() - 36) / 8).map(|i| u64_at(&xsdt.2, 36 + 8 * i)).collect();
        assert_eq!(rsdt_entries, xsdt_entries, "RSDT and XSDT list the same tables");
        let fadt = listed.iter().find(|t| t.0 == "FACP").expect("FADT listed").2.clone();
        let dsdt = table(u64_at(&fadt, 140));
        assert_eq!(u64::from(u32_at(&fadt, 40)), u64_at(&fadt, 140), "DSDT == X_DSDT");
        out.push(xsdt);
        out.push(rsdt);
        out.extend(listed);
        out.push(dsdt);
        out
    }

    fn get<'a>(tables: &'a [(String, usize, Vec<u8>)], sig: &str) -> &'a [u8] {
        &tables.iter().find(|t| t.0 == sig).unwrap_or_else(|| panic!("{sig} missing")).2
    }

    #[test]
    fn rsdp_layout_and_checksums() {
        let t = build_acpi_tables(BASE, &AcpiConfig::new(2, 0x600)).unwrap();
        assert_eq!(t.rsdp_addr, BASE);
        let rsdp = &t.bytes[..36];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(&rsdp[9..15], b"RVMM  ");
        assert_eq!(rsdp[15], 2, "revision");
        assert_eq!(u32_at(rsdp, 20), 36, "length");
        assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(rsdp), 0, "extended checksum");
        assert_ne!(u32_at(rsdp, 16), 0, "RSDT provided");
        assert_ne!(u64_at(rsdp, 24), 0, "XSDT provided");
    }

    #[test]
    fn every_table_checksums_aligned_and_in_blob() {
        for n in [1u8, 4, 254] {
            let t = build_acpi_tables(BASE, &AcpiConfig::new(n, 0x600)).unwrap();
            assert!(t.bytes.len() <= ACPI_TABLES_MAX_SIZE);
            let tables = walk(&t);
            let sigs: Vec<&str> = tables.iter().map(|t| t.0.as_str()).collect();
            assert_eq!(sigs, ["RSDP", "XSDT", "RSDT", "FACP", "APIC", "DSDT"]);
            for (sig, off, bytes) in &tables {
                assert_eq!(off % 8, 0, "{sig} 8-byte aligned");
                assert_eq!(sum(bytes), 0, "{sig} checksum with {n} CPUs");
                if sig != "RSDP" {
                    assert_eq!(&bytes[10..16], b"RVMM  ", "{sig} OEM ID");
                    assert_eq!(&bytes[16..24], b"RVMMVM  ", "{sig} OEM table ID");
                    assert_eq!(&bytes[28..32], b"RVMM", "{sig} creator ID");
                }
            }
        }
    }

    #[test]
    fn fadt_fields() {
        let t = build_acpi_tables(BASE, &AcpiConfig::new(1, 0x600)).unwrap();
        let tables = walk(&t);
        let f = get(&tables, "FACP");
        assert_eq!(f.len(), 276, "ACPI 6.x FADT length");
        assert_eq!(f[8], 6, "revision");
        assert_eq!(f[131], 5, "minor revision");
        assert_eq!(u32_at(f, 36), 0, "no FACS");
        assert_eq!(u64_at(f, 132), 0, "no X_FACS");
        assert_eq!(u16::from_le_bytes([f[46], f[47]]), 9, "SCI_INT");
        assert_eq!(u16::from_le_bytes([f[109], f[110]]), 3, "IAPC_BOOT_ARCH");
        assert_eq!(u32_at(f, 112), 1 << 20, "HW_REDUCED_ACPI");
        assert_eq!(&f[244..256], &[1, 8, 0, 1, 0x00, 0x06, 0, 0, 0, 0, 0, 0], "SLEEP_CONTROL_REG");
        assert_eq!(&f[256..268], &[1, 8, 0, 1, 0x01, 0x06, 0, 0, 0, 0, 0, 0], "SLEEP_STATUS_REG");
        assert_eq!(&f[268..276], b"RVMM    ");
        // Everything between SCI_INT and CENTURY (fixed hardware) is zero.
        assert!(f[48..108].iter().all(|&b| b == 0));
        assert_eq!(f[108], 0x32, "CENTURY: the RTC's century register");
    }

    /// MADT entries as (type, bytes).
    fn madt_entries(m: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut off = 44;
        let mut out = Vec::new();
        while off < m.len() {
            let len = m[off + 1] as usize;
            out.push((m[off], m[off..off + len].to_vec()));
            off += len;
        }
        assert_eq!(off, m.len());
        out
    }

    #[test]
    fn madt_entry_counts() {
        for n in [1u8, 4, 254] {
            let t = build_acpi_tables(BASE, &AcpiConfig::new(n, 0x600)).unwrap();
            let tables = walk(&t);
            let m = get(&tables, "APIC");
            assert_eq!(u32_at(m, 36), 0xFEE0_0000);
            assert_eq!(u32_at(m, 40), 1, "PCAT_COMPAT");
            let e = madt_entries(m);
            assert_eq!(e.len(), n as usize + 4, "{n} CPUs");
            for (i, (ty, bytes)) in e.iter().take(n as usize).enumerate() {
                assert_eq!(*ty, 0);
                assert_eq!(bytes, &[0, 8, i as u8, i as u8, 1, 0, 0, 0]);
            }
            let rest: Vec<Vec<u8>> = e[n as usize..].iter().map(|x| x.1.clone()).collect();
            assert_eq!(rest[0], [1, 12, IOAPIC_ID, 0, 0x00, 0x00, 0xC0, 0xFE, 0, 0, 0, 0], "I/O APIC");
            assert_eq!(rest[1], [2, 10, 0, 0, 2, 0, 0, 0, 0, 0], "IRQ0 -> GSI2");
            assert_eq!(rest[2], [2, 10, 0, 9, 9, 0, 0, 0, 0x0D, 0], "SCI level/high");
            assert_eq!(rest[3], [4, 6, 0xFF, 0, 0, 1], "NMI on LINT1");
        }
    }

    #[test]
    fn dsdt_contents() {
        let t = build_acpi_tables(BASE, &AcpiConfig::new(1, 0x600)).unwrap();
        let tables = walk(&t);
        let d = get(&tables, "DSDT");
        assert_eq!(d[8], 2, "64-bit integers");
        let body = &d[36..];
        let s5 = [0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x05, 0x02, 0x0A, 0x05, 0x00];
        assert_eq!(&body[..s5.len()], &s5);
        let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        assert!(has(&[0x0C, 0x41, 0xD0, 0x05, 0x01]), "EISAID PNP0501");
        assert!(has(&[0x0C, 0x41, 0xD0, 0x03, 0x03]), "EISAID PNP0303");
        assert!(has(&[0x0C, 0x41, 0xD0, 0x0B, 0x00]), "EISAID PNP0B00");
        assert!(has(&[0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x00, 0x08]), "COM1 IO");
        assert!(has(&[0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02]), "RTC IO");
        assert!(has(&[0x22, 0x00, 0x01]), "IRQ 8");
        assert!(has(&[0x22, 0x10, 0x00]), "IRQ 4");
    }

    #[test]
    fn extra_tables_and_aml_are_included() {
        let mut cfg = AcpiConfig::new(2, 0x600);
        let mut mcfg = Sdt::new(*b"MCFG", 1);
        mcfg.append(&[0; 8]);
        mcfg.append(&0xB000_0000u64.to_le_bytes());
        mcfg.append(&[0, 0, 0, 0xFF, 0, 0, 0, 0]);
        cfg.extra_tables.push(mcfg);
        cfg.extra_dsdt_aml = vec![0x08, b'T', b'E', b'S', b'T', 0x0A, 0x2A]; // Name(TEST, 42)
        let t = build_acpi_tables(BASE, &cfg).unwrap();
        let tables = walk(&t);
        let m = get(&tables, "MCFG");
        assert_eq!(m.len(), 36 + 24);
        assert_eq!(sum(m), 0);
        assert!(get(&tables, "DSDT").ends_with(&[0x08, b'T', b'E', b'S', b'T', 0x0A, 0x2A]));
    }

    #[test]
    fn errors() {
        let build = |cfg: AcpiConfig| build_acpi_tables(BASE, &cfg);
        assert_eq!(build(AcpiConfig::new(0, 0x600)), Err(AcpiError::NoCpus));
        assert_eq!(build(AcpiConfig::new(255, 0x600)), Err(AcpiError::TooManyCpus(255)));
        assert_eq!(build(AcpiConfig::new(1, 0xFFFF)), Err(AcpiError::InvalidSleepPort(0xFFFF)));
        for irq in [0u8, 2, 16] {
            let cfg = AcpiConfig { sci_irq: irq, ..AcpiConfig::new(1, 0x600) };
            assert_eq!(build(cfg), Err(AcpiError::InvalidSciIrq(irq)));
        }
        let cfg = AcpiConfig::new(1, 0x600);
        assert_eq!(build_acpi_tables(BASE + 8, &cfg), Err(AcpiError::MisalignedBase(BASE + 8)));
        assert_eq!(build_acpi_tables(0xFFFF_0010, &cfg), Err(AcpiError::AddressAbove4G(0xFFFF_0010)));
        assert_eq!(build_acpi_tables(0xFFFF_0000, &cfg).map(|_| ()), Ok(()));
    }

    #[test]
    fn too_large() {
        let mut cfg = AcpiConfig::new(254, 0x600);
        let mut big = Sdt::new(*b"OEM1", 1);
        big.append(&vec![0; ACPI_TABLES_MAX_SIZE]);
        cfg.extra_tables.push(big);
        match build_acpi_tables(BASE, &cfg) {
            Err(AcpiError::TooLarge { size, max }) => {
                assert!(size > max);
                assert_eq!(max, 0x10000);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // Too much DSDT content is caught the same way.
        let mut cfg = AcpiConfig::new(1, 0x600);
        cfg.extra_dsdt_aml = vec![0xA3; ACPI_TABLES_MAX_SIZE]; // NoopOp
        assert!(matches!(build_acpi_tables(BASE, &cfg), Err(AcpiError::TooLarge { .. })));
    }

    fn iasl_available() -> bool {
        Command::new("iasl").arg("-v").output().map(|o| o.status.success()).unwrap_or(false)
    }

    /// A fresh scratch directory for one test's iasl files.
    fn scratch_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rvmm-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs iasl with `args` in `dir`; returns its combined output after
    /// checking it exited successfully.
    fn iasl(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("iasl").current_dir(dir).args(args).output().unwrap();
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        println!("--- iasl {}\n{}", args.join(" "), log.trim());
        assert!(out.status.success(), "iasl {args:?} failed:\n{log}");
        log
    }

    /// Disassembles `bytes` with `iasl -d` and returns the .dsl text,
    /// failing on any complaint (iasl reports bad checksums, lengths and
    /// AML as warnings or errors, and marks fields "Incorrect"/"Invalid").
    fn iasl_disassemble(dir: &Path, name: &str, bytes: &[u8]) -> String {
        std::fs::write(dir.join(format!("{name}.dat")), bytes).unwrap();
        let log = iasl(dir, &["-d", &format!("{name}.dat")]).to_lowercase();
        for bad in ["error", "warning", "invalid", "incorrect"] {
            assert!(!log.contains(bad), "iasl complained about {name} ({bad}):\n{log}");
        }
        let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
        let lower = dsl.to_lowercase();
        for bad in ["invalid", "incorrect", "unknown", "external ("] {
            assert!(!lower.contains(bad), "{name}.dsl flags a problem ({bad}):\n{dsl}");
        }
        dsl
    }

    /// Compiles `name.dsl` in `dir` back with optimisations off (so iasl
    /// keeps our encodings) and returns the binary; iasl must report no
    /// errors or warnings.
    fn iasl_compile(dir: &Path, name: &str) -> Vec<u8> {
        let log = iasl(dir, &["-oa", &format!("{name}.dsl")]);
        assert!(log.contains("0 Errors, 0 Warnings"), "iasl complained compiling {name}:\n{log}");
        std::fs::read(dir.join(format!("{name}.aml"))).unwrap()
    }

    /// Checks that disassembling then recompiling `bytes` gives the same
    /// table, save for the checksum and the compiler ID/revision that iasl
    /// writes as its own (bytes 9 and 28-35 of the header).
    fn assert_round_trips(dir: &Path, name: &str, bytes: &[u8]) {
        let compiled = iasl_compile(dir, name);
        assert_eq!(compiled.len(), bytes.len(), "{name} length after round trip");
        for (i, (a, b)) in compiled.iter().zip(bytes).enumerate() {
            if i != 9 && !(28..36).contains(&i) {
                assert_eq!(a, b, "{name} byte {i:#x} differs after iasl round trip");
            }
        }
    }

    #[test]
    fn iasl_disassembles_and_round_trips_every_table() {
        if !iasl_available() {
            println!(
                "SKIP iasl_disassembles_and_round_trips_every_table: iasl not installed (apt-get install acpica-tools)"
            );
            return;
        }
        let dir = scratch_dir("acpi-iasl");
        let n = 4u8;
        let t = build_acpi_tables(BASE, &AcpiConfig::new(n, 0x600)).unwrap();
        let mut dsl = std::collections::HashMap::new();
        // iasl 20200925 cannot read a bare RSDP (it has no SDT header); it
        // is checked by iasl_compiles_the_same_rsdp instead.
        for (sig, _, bytes) in walk(&t).iter().filter(|t| t.0 != "RSDP") {
            let name = sig.to_lowercase();
            dsl.insert(sig.clone(), iasl_disassemble(&dir, &name, bytes));
            assert_round_trips(&dir, &name, bytes);
        }
        let dsdt = &dsl["DSDT"];
        for want in [
            "Name (\\_S5, Package (0x02)",
            "Scope (\\_SB)",
            "Device (COM1)",
            "EisaId (\"PNP0501\")",
            "Name (_UID, One)",
            "0x03F8",
            "IRQNoFlags ()\n                    {4}",
            "Device (KBD)",
            "EisaId (\"PNP0303\")",
            "0x0064",
            "IRQNoFlags ()\n                    {1}",
            "Device (RTC)",
            "EisaId (\"PNP0B00\")",
            "0x0070",
            "IRQNoFlags ()\n                    {8}",
        ] {
            assert!(dsdt.contains(want), "DSDT lacks {want:?}:\n{dsdt}");
        }
        let madt = &dsl["APIC"];
        assert_eq!(madt.matches("[Processor Local APIC]").count(), n as usize, "{madt}");
        for want in [
            "[I/O APIC]",
            "Address : FEC00000",
            "[Interrupt Source Override]",
            "Source : 09",
            "[Local APIC NMI]",
            "Interrupt Input LINT : 01",
        ] {
            assert!(madt.contains(want), "MADT lacks {want:?}:\n{madt}");
        }
        let fadt = &dsl["FACP"];
        for want in [
            "Hardware Reduced (V5) : 1",
            "8042 Present on ports 60/64 (V2) : 1",
            "Legacy Devices Supported (V2) : 1",
            "Sleep Control Register : [Generic Address Structure]",
            "Address : 0000000000000600",
            "Address : 0000000000000601",
        ] {
            assert!(fadt.contains(want), "FADT lacks {want:?}:\n{fadt}");
        }
        assert_eq!(dsl["XSDT"].matches("ACPI Table Address").count(), 2);
        assert_eq!(dsl["RSDT"].matches("ACPI Table Address").count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// iasl's data table compiler builds an RSDP from our field values and
    /// computes both checksums itself; the result must equal ours.
    #[test]
    fn iasl_compiles_the_same_rsdp() {
        if !iasl_available() {
            println!("SKIP iasl_compiles_the_same_rsdp: iasl not installed (apt-get install acpica-tools)");
            return;
        }
        let dir = scratch_dir("acpi-rsdp");
        let t = build_acpi_tables(BASE, &AcpiConfig::new(1, 0x600)).unwrap();
        let rsdp = &t.bytes[..36];
        let src = format!(
            "[0008] Signature : \"RSD PTR \"\n\
             [0001] Checksum : 00\n\
             [0006] Oem ID : \"RVMM  \"\n\
             [0001] Revision : 02\n\
             [0004] RSDT Address : {:08X}\n\
             [0004] Length : 00000024\n\
             [0008] XSDT Address : {:016X}\n\
             [0001] Extended Checksum : 00\n\
             [0003] Reserved : 000000\n",
            u32_at(rsdp, 16),
            u64_at(rsdp, 24)
        );
        std::fs::write(dir.join("rsdp.dsl"), src).unwrap();
        assert_eq!(iasl_compile(&dir, "rsdp"), rsdp);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The AML builder's remaining pieces (address space descriptors,
    /// nested packages, methods, strings, Memory32Fixed) as a PCI host
    /// bridge would use them, checked by an iasl round trip.
    #[test]
    fn iasl_round_trips_pci_host_bridge_aml() {
        use super::super::aml::{AddressSpaceKind as K, AddressWidth as W, Buffer, Method, Return};
        if !iasl_available() {
            println!("SKIP iasl_round_trips_pci_host_bridge_aml: iasl not installed (apt-get install acpica-tools)");
            return;
        }
        let space = |width, kind, min, max| Resource::AddressSpace { width, kind, min, max };
        let mem = K::Memory { cacheable: false, read_write: true };
        let crs = ResourceTemplate::new(vec![
            space(W::Word, K::BusNumber, 0, 0xFF),
            Resource::io(0xCF8, 1, 8),
            space(W::Word, K::Io, 0, 0xCF7),
            space(W::Word, K::Io, 0xD00, 0xFFFF),
            space(W::DWord, mem, 0xC000_0000, 0xFEBF_FFFF),
            space(W::QWord, K::Memory { cacheable: true, read_write: true }, 1 << 36, (1 << 37) - 1),
            Resource::memory32_fixed(0xE000_0000, 0x1000_0000),
        ]);
        let prt: AmlList = (1u32..4)
            .map(|slot| {
                let entry: AmlList =
                    vec![Box::new((slot << 16) | 0xFFFF), Box::new(0u8), Box::new(0u8), Box::new(16 + slot)];
                Box::new(Package::new(entry)) as Box<dyn Aml>
            })
            .collect();
        let pci0 = Device::new(
            "PCI0",
            vec![
                Box::new(Name::new("_HID", EisaId::new("PNP0A08").unwrap()).unwrap()),
                Box::new(Name::new("_CID", EisaId::new("PNP0A03").unwrap()).unwrap()),
                Box::new(Name::new("_SEG", 0u8).unwrap()),
                Box::new(Name::new("_UID", 0u8).unwrap()),
                Box::new(Name::new("DESC", "rvmm PCI host bridge").unwrap()),
                Box::new(Name::new("_CRS", crs).unwrap()),
                Box::new(Name::new("_PRT", Package::new(prt)).unwrap()),
                Box::new(Method::new("_STA", 0, false, vec![Box::new(Return::new(0x0Fu8))]).unwrap()),
                Box::new(Name::new("BIG_", 0x1_2345_6789u64).unwrap()),
                Box::new(Name::new("BUF_", Buffer::new(vec![1, 2, 3])).unwrap()),
            ],
        )
        .unwrap();
        let scope = Scope::new("\\_SB", vec![Box::new(pci0)]).unwrap();
        let mut cfg = AcpiConfig::new(1, 0x600);
        cfg.extra_dsdt_aml = scope.to_aml_vec().unwrap();
        let t = build_acpi_tables(BASE, &cfg).unwrap();
        let tables = walk(&t);
        let dsdt = get(&tables, "DSDT");

        let dir = scratch_dir("acpi-pci");
        let dsl = iasl_disassemble(&dir, "dsdt", dsdt);
        println!("{dsl}");
        assert_round_trips(&dir, "dsdt", dsdt);
        for want in [
            "Device (PCI0)",
            "EisaId (\"PNP0A08\")",
            "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,",
            "WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,",
            "DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,",
            "QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Cacheable, ReadWrite,",
            "Memory32Fixed (ReadWrite,",
            "Name (_PRT, Package (0x03)",
            "0x0003FFFF",
            "Method (_STA, 0, NotSerialized)",
            "Return (0x0F)",
            "\"rvmm PCI host bridge\"",
            "0x0000000123456789",
        ] {
            assert!(dsl.contains(want), "DSDT lacks {want:?}:\n{dsl}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
