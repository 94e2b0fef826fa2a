//! Intel MultiProcessor Specification 1.4 tables.
//!
//! A guest kernel that does not use ACPI (or is booted with `acpi=off`)
//! finds its CPUs, I/O APIC and ISA interrupt routing through the MP
//! table, so the VMM writes one into the BIOS area where the kernel
//! searches for it (MP spec §4: the floating pointer must lie in the first
//! KiB of the EBDA, the last KiB of base memory, or 0xF0000-0xFFFFF).
//!
//! Layout produced by [`build_mptable`], all little-endian:
//!
//! | offset | size | structure |
//! | --- | --- | --- |
//! | 0 | 16 | MP floating pointer structure (§4.1) |
//! | 16 | 44 | MP configuration table header (§4.2) |
//! | 60 | 20 × n | processor entries (§4.3.1) |
//! | .. | 8 or 16 | bus entries (§4.3.2): ISA (ID 0), and PCI (ID 1) if the VM has a PCI bus |
//! | .. | 8 | I/O APIC entry (§4.3.3) |
//! | .. | 8 × (i + p) | I/O interrupt assignment entries (§4.3.4): ISA IRQs (15 less those whose pin a PCI INTA# uses), then each PCI function's INTA# |
//! | .. | 8 × 2 | local interrupt assignment entries (§4.3.5) |
//!
//! The entries follow the order the spec requires (§4.3: entries sorted
//! by type, processors first), which Linux relies on only loosely but
//! other parsers rely on strictly.

use thiserror::Error;

/// Guest physical address where the VMM places the MP table: the start of
/// the BIOS ROM area 0xF0000-0xFFFFF that the MP spec (§4) says is searched.
pub const MPTABLE_START: u64 = 0xF0000;
/// Default physical address of every local APIC (Intel SDM vol. 3 §10.4.1).
pub const APIC_DEFAULT_PHYS_BASE: u32 = 0xFEE0_0000;
/// Default physical address of the first I/O APIC (PC platform convention,
/// also what KVM's in-kernel IOAPIC decodes).
pub const IO_APIC_DEFAULT_PHYS_BASE: u32 = 0xFEC0_0000;
/// Local APIC version reported for each CPU: 0x14 is an integrated xAPIC,
/// the value KVM's emulated local APIC reports in its version register.
pub const APIC_VERSION: u8 = 0x14;
/// I/O APIC version reported: 0x11 is what KVM's in-kernel IOAPIC reports.
pub const IO_APIC_VERSION: u8 = 0x11;
/// Largest CPU count rvmm describes: APIC ID 255 is the broadcast ID, and
/// CPU APIC IDs are 0..=253 (one spare, as QEMU keeps).
pub const MAX_CPUS: u8 = 254;

/// Signature of the floating pointer structure (MP spec §4.1).
const MPF_SIGNATURE: &[u8; 4] = b"_MP_";
/// Signature of the configuration table header (MP spec §4.2).
const MPC_SIGNATURE: &[u8; 4] = b"PCMP";
/// MP spec revision 1.4 is encoded as 4 (MP spec §4.1, §4.2).
const MP_SPEC_REV: u8 = 4;
/// OEM ID of the configuration table: 8 bytes, space padded (§4.2).
const MPC_OEM_ID: &[u8; 8] = b"RVMM    ";
/// Product ID of the configuration table: 12 bytes, space padded (§4.2).
const MPC_PRODUCT_ID: &[u8; 12] = b"RVMMVM      ";
/// Bus type string of an ISA bus: 6 bytes, space padded (§4.3.2, table 4-8).
const BUS_TYPE_ISA: &[u8; 6] = b"ISA   ";
/// Bus type string of a PCI bus (§4.3.2, table 4-8).
const BUS_TYPE_PCI: &[u8; 6] = b"PCI   ";
/// Bus IDs: ISA first, then PCI (an OS numbers PCI buses in the order of
/// their bus entries, so this one becomes PCI bus 0).
const ISA_BUS_ID: u8 = 0;
const PCI_BUS_ID: u8 = 1;

/// Size of the floating pointer structure: one 16-byte paragraph (§4.1).
const MPF_SIZE: usize = 16;
/// Size of the configuration table header (§4.2, table 4-2).
const MPC_HEADER_SIZE: usize = 44;
/// Size of a processor entry (§4.3.1, table 4-4).
const PROCESSOR_ENTRY_SIZE: usize = 20;
/// Size of every other base table entry: bus, I/O APIC, I/O interrupt and
/// local interrupt entries (§4.3.2-§4.3.5).
const ENTRY_SIZE: usize = 8;
/// ExtINT -> LINT0 and NMI -> LINT1.
const NUM_LOCAL_INT_ENTRIES: usize = 2;

/// Entry type codes (§4.3, table 4-3).
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

/// Interrupt type codes of interrupt assignment entries (§4.3.4, table 4-11).
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger both "conforms to the bus specification" (§4.3.4):
/// ISA interrupts are edge-triggered, active high.
const INT_FLAGS_CONFORMING: u16 = 0;

/// Processor entry CPU flags (§4.3.1): EN = usable, BP = bootstrap processor.
const CPU_FLAG_ENABLED: u8 = 1 << 0;
const CPU_FLAG_BSP: u8 = 1 << 1;
/// CPU signature as CPUID leaf 1 EAX encodes it (§4.3.1): family 6,
/// model 0, stepping 0, i.e. a P6-or-later CPU, which all modern x86 are.
const CPU_SIGNATURE: u32 = 6 << 8;
/// CPUID leaf 1 EDX feature flags (§4.3.1): FPU (bit 0) and on-chip APIC
/// (bit 9), the two Linux's MP parser looks at.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
/// I/O APIC entry flag EN: the I/O APIC is usable (§4.3.3).
const IOAPIC_FLAG_ENABLED: u8 = 1;
/// Destination "all local APICs" for local interrupt entries (§4.3.5).
const ALL_LOCAL_APICS: u8 = 0xFF;

/// Errors from building the MP table.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MpTableError {
    /// At least the bootstrap processor must be listed.
    #[error("MP table needs at least one CPU, got 0")]
    NoCpus,
    /// CPUs get APIC IDs 0..num_cpus and 255 is broadcast; rvmm keeps one
    /// spare as QEMU does, so at most 254 CPUs fit. (The I/O APIC's ID 0 is
    /// in its own name space on an xAPIC system and takes none of these.)
    #[error("MP table supports at most {max} CPUs, got {0}", max = MAX_CPUS)]
    TooManyCpus(u8),
    /// The floating pointer must start on a 16-byte paragraph (§4.1).
    #[error("MP table address {0:#x} is not 16-byte aligned")]
    MisalignedAddress(u64),
    /// The floating pointer holds a 32-bit physical pointer to the
    /// configuration table (§4.1), so the whole table must lie below 4 GiB.
    #[error("MP table at {0:#x} does not lie below 4 GiB")]
    AddressAbove4G(u64),
    /// A PCI INTx route names a slot past 31 or a GSI past the I/O APIC's pins.
    #[error("MP table: PCI slot {slot} cannot be routed to GSI {gsi}")]
    BadPciRoute {
        /// The device number.
        slot: u8,
        /// The GSI.
        gsi: u32,
    },
}

/// Pins of the single I/O APIC the table describes.
const IOAPIC_PINS: u32 = crate::interrupt::msi::IOAPIC_PINS;

/// Size in bytes of the MP table that [`build_mptable`] returns for
/// `num_cpus` CPUs (the caller checks that it fits the BIOS area).
pub fn mptable_size(num_cpus: u8, pci_intx: Option<&[(u8, u32)]>) -> usize {
    // Cannot overflow: num_cpus is a u8 and PCI has at most 32 slots, so the total stays below 7 KiB.
    MPF_SIZE + config_table_size(num_cpus, pci_intx)
}

/// Size of the configuration table (header plus base entries), the value of
/// its "base table length" field (§4.2).
fn config_table_size(num_cpus: u8, pci_intx: Option<&[(u8, u32)]>) -> usize {
    MPC_HEADER_SIZE + usize::from(num_cpus) * PROCESSOR_ENTRY_SIZE + entry_count(pci_intx) * ENTRY_SIZE
}

/// The 8-byte entries: buses, the I/O APIC, I/O and local interrupts.
fn entry_count(pci_intx: Option<&[(u8, u32)]>) -> usize {
    let (pci_bus, pci_entries) = pci_intx.map_or((0, 0), |r| (1, r.len()));
    1 + pci_bus + 1 + isa_routes(pci_intx).len() + pci_entries + NUM_LOCAL_INT_ENTRIES
}

/// The `(ISA IRQ, I/O APIC pin)` routes the table lists: IRQ n to pin n, except
/// IRQ 0 (the PIT), which goes to pin 2 because pin 0 carries the 8259's ExtINT
/// output on PC hardware, and IRQ 2, the 8259 cascade that nothing drives.
///
/// A pin that a PCI INTA# is routed to (GSIs 5, 6, 7, 10, 11, 14 and 15 are
/// handed to devices) is left out: its one interrupt source is the PCI function,
/// level-triggered and active low. An ISA entry for the same pin would say edge
/// and active high, and an OS that reads both would program the pin for
/// whichever entry it met last. SeaBIOS likewise lists no ISA entry for an IRQ
/// that a PCI device uses.
fn isa_routes(pci_intx: Option<&[(u8, u32)]>) -> Vec<(u8, u8)> {
    let pci_pins: Vec<u32> = pci_intx.unwrap_or_default().iter().map(|&(_, gsi)| gsi).collect();
    (0u8..16)
        .filter_map(|irq| match irq {
            0 => Some((0, 2)),
            2 => None,
            n => Some((n, n)),
        })
        .filter(|&(_, pin)| !pci_pins.contains(&u32::from(pin)))
        .collect()
}

/// Builds the MP floating pointer structure followed by the MP
/// configuration table for `num_cpus` CPUs, as bytes to copy to guest
/// physical `table_addr` (normally [`MPTABLE_START`]).
///
/// CPU `i` gets APIC ID `i` (CPU 0 is the bootstrap processor), the single
/// I/O APIC gets ID [`IOAPIC_ID`](super::acpi::IOAPIC_ID) (0) at
/// [`IO_APIC_DEFAULT_PHYS_BASE`], and ISA IRQ `n` is routed to I/O APIC pin
/// `n`, except IRQ 0 (the PIT) which goes to pin 2 as on PC firmware and QEMU.
/// With `pci_intx` (`(slot, GSI)` of the INTA# of each function on PCI bus 0),
/// a PCI bus is described too and each INTA# is routed to I/O APIC pin GSI,
/// level-triggered and active low as the PCI bus conforms to (the routes the
/// ACPI `_PRT` gives); the ISA entry for such a pin is left out (see [`isa_routes`]).
pub fn build_mptable(table_addr: u64, num_cpus: u8, pci_intx: Option<&[(u8, u32)]>) -> Result<Vec<u8>, MpTableError> {
    if num_cpus == 0 {
        return Err(MpTableError::NoCpus);
    }
    if num_cpus > MAX_CPUS {
        return Err(MpTableError::TooManyCpus(num_cpus));
    }
    if table_addr % 16 != 0 {
        return Err(MpTableError::MisalignedAddress(table_addr));
    }
    for &(slot, gsi) in pci_intx.unwrap_or_default() {
        if slot >= 32 || gsi >= IOAPIC_PINS {
            return Err(MpTableError::BadPciRoute { slot, gsi });
        }
    }
    let size = mptable_size(num_cpus, pci_intx);
    let end = u64::try_from(size)
        .ok()
        .and_then(|s| table_addr.checked_add(s))
        .ok_or(MpTableError::AddressAbove4G(table_addr))?;
    if end > 1 << 32 {
        return Err(MpTableError::AddressAbove4G(table_addr));
    }
    // The configuration table sits right after the floating pointer; this
    // cannot fail as `end` was checked to be <= 4 GiB.
    let config_addr = u32::try_from(table_addr)
        .ok()
        .and_then(|a| a.checked_add(MPF_SIZE as u32))
        .ok_or(MpTableError::AddressAbove4G(table_addr))?;

    let mut out = Vec::with_capacity(size);
    write_floating_pointer(&mut out, config_addr);
    write_config_table(&mut out, num_cpus, pci_intx);
    Ok(out)
}

/// Appends the 16-byte MP floating pointer structure (§4.1, table 4-1).
fn write_floating_pointer(out: &mut Vec<u8>, config_addr: u32) {
    let start = out.len();
    out.extend_from_slice(MPF_SIGNATURE);
    out.extend_from_slice(&config_addr.to_le_bytes()); // PHYSICAL ADDRESS POINTER
    out.push(1); // LENGTH in 16-byte paragraphs
    out.push(MP_SPEC_REV); // SPEC_REV
    let checksum_pos = out.len();
    out.push(0); // CHECKSUM, patched below
    out.push(0); // FEATURE 1: 0 = a configuration table is present
                 // FEATURE 2: IMCRP (bit 7) clear = virtual wire mode, no IMCR to
                 // program, which matches KVM's PIC/LAPIC wiring.
    out.push(0);
    out.extend_from_slice(&[0; 3]); // FEATURE 3-5: reserved
    set_checksum(out, start, checksum_pos);
}

/// Appends the configuration table header and its base entries (§4.2, §4.3).
fn write_config_table(out: &mut Vec<u8>, num_cpus: u8, pci_intx: Option<&[(u8, u32)]>) {
    let start = out.len();
    // I/O APIC ID 0, not one after the CPUs' APIC IDs: it is what the IOAPIC ID
    // register of KVM's in-kernel IOAPIC reads after reset (nothing programs
    // it), what the MADT says, and what QEMU with SeaBIOS reports. That CPU 0
    // has APIC ID 0 too is fine: with xAPICs (KVM's local APIC version is 0x14)
    // there is no serial APIC bus on which the two name spaces would meet, and
    // Linux leaves I/O APIC IDs alone on such systems.
    let ioapic_id = super::acpi::IOAPIC_ID;
    // Both fit in u16: at most 44 + 254*20 + 8*51 bytes and 254+51 entries.
    let base_len = config_table_size(num_cpus, pci_intx) as u16;
    let entry_count = u16::from(num_cpus) + entry_count(pci_intx) as u16;

    out.extend_from_slice(MPC_SIGNATURE);
    out.extend_from_slice(&base_len.to_le_bytes()); // BASE TABLE LENGTH
    out.push(MP_SPEC_REV); // SPEC_REV
    let checksum_pos = out.len();
    out.push(0); // CHECKSUM, patched below
    out.extend_from_slice(MPC_OEM_ID);
    out.extend_from_slice(MPC_PRODUCT_ID);
    out.extend_from_slice(&0u32.to_le_bytes()); // OEM TABLE POINTER: none
    out.extend_from_slice(&0u16.to_le_bytes()); // OEM TABLE SIZE
    out.extend_from_slice(&entry_count.to_le_bytes()); // ENTRY COUNT
    out.extend_from_slice(&APIC_DEFAULT_PHYS_BASE.to_le_bytes()); // ADDRESS OF LOCAL APIC
    out.extend_from_slice(&0u16.to_le_bytes()); // EXTENDED TABLE LENGTH: none
    out.push(0); // EXTENDED TABLE CHECKSUM
    out.push(0); // reserved

    // Processor entries (§4.3.1).
    for apic_id in 0..num_cpus {
        let mut flags = CPU_FLAG_ENABLED;
        if apic_id == 0 {
            flags |= CPU_FLAG_BSP;
        }
        out.push(ENTRY_PROCESSOR);
        out.push(apic_id); // LOCAL APIC ID
        out.push(APIC_VERSION); // LOCAL APIC VERSION #
        out.push(flags); // CPU FLAGS
        out.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        out.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        out.extend_from_slice(&[0; 8]); // reserved
    }

    // Bus entries (§4.3.2), in ascending ID order: the ISA bus the legacy
    // devices sit on, then PCI bus 0.
    out.push(ENTRY_BUS);
    out.push(ISA_BUS_ID); // BUS ID
    out.extend_from_slice(BUS_TYPE_ISA);
    if pci_intx.is_some() {
        out.push(ENTRY_BUS);
        out.push(PCI_BUS_ID);
        out.extend_from_slice(BUS_TYPE_PCI);
    }

    // I/O APIC entry (§4.3.3).
    out.push(ENTRY_IOAPIC);
    out.push(ioapic_id); // I/O APIC ID
    out.push(IO_APIC_VERSION); // I/O APIC VERSION #
    out.push(IOAPIC_FLAG_ENABLED); // I/O APIC FLAGS
    out.extend_from_slice(&IO_APIC_DEFAULT_PHYS_BASE.to_le_bytes());

    // I/O interrupt assignment entries (§4.3.4): ISA IRQ n -> pin n, but for
    // IRQ 0, IRQ 2 and the pins of PCI interrupts (see `isa_routes`).
    for (irq, pin) in isa_routes(pci_intx) {
        write_interrupt_entry(out, ENTRY_IO_INTERRUPT, INT_TYPE_INT, ISA_BUS_ID, irq, ioapic_id, pin);
    }
    // PCI (§D.3): the source IRQ is the device number in bits 6:2 and the
    // pin in bits 1:0 (0 = INTA#); flags "conforming" mean level, active low.
    for &(slot, gsi) in pci_intx.unwrap_or_default() {
        // Checked by build_mptable: slot < 32, gsi < 24.
        write_interrupt_entry(out, ENTRY_IO_INTERRUPT, INT_TYPE_INT, PCI_BUS_ID, slot << 2, ioapic_id, gsi as u8);
    }

    // Local interrupt assignment entries (§4.3.5, and the virtual wire
    // mode of §3.6.2.2): the 8259 drives LINT0 as ExtINT, NMI is LINT1.
    write_interrupt_entry(out, ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, ISA_BUS_ID, 0, ALL_LOCAL_APICS, 0);
    write_interrupt_entry(out, ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, ISA_BUS_ID, 0, ALL_LOCAL_APICS, 1);

    set_checksum(out, start, checksum_pos);
}

/// Appends an I/O or local interrupt assignment entry; both share one
/// 8-byte layout (§4.3.4 table 4-10, §4.3.5 table 4-12).
fn write_interrupt_entry(
    out: &mut Vec<u8>,
    entry_type: u8,
    int_type: u8,
    source_bus: u8,
    source_irq: u8,
    dest_id: u8,
    dest_pin: u8,
) {
    out.push(entry_type);
    out.push(int_type); // INTERRUPT TYPE
    out.extend_from_slice(&INT_FLAGS_CONFORMING.to_le_bytes()); // PO and EL
    out.push(source_bus); // SOURCE BUS ID
    out.push(source_irq); // SOURCE BUS IRQ
    out.push(dest_id); // DESTINATION I/O APIC ID or LOCAL APIC ID
    out.push(dest_pin); // DESTINATION INTIN# or LINTIN#
}

/// Stores at `checksum_pos` the byte that makes `out[start..]` sum to zero
/// modulo 256, as both MP structures require (§4.1, §4.2).
fn set_checksum(out: &mut [u8], start: usize, checksum_pos: usize) {
    let sum = out.get(start..).unwrap_or_default().iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    if let Some(byte) = out.get_mut(checksum_pos) {
        *byte = byte.wrapping_sub(sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    #[test]
    fn size_matches_formula() {
        for n in [1u8, 2, 4, 254] {
            let t = build_mptable(MPTABLE_START, n, None).unwrap();
            assert_eq!(t.len(), mptable_size(n, None));
            assert_eq!(t.len(), 16 + 44 + 20 * n as usize + 8 + 8 + 15 * 8 + 2 * 8);
        }
    }

    #[test]
    fn floating_pointer_layout_and_checksum() {
        let t = build_mptable(MPTABLE_START, 2, None).unwrap();
        let mpf = &t[..16];
        assert_eq!(&mpf[0..4], b"_MP_");
        assert_eq!(u32_at(mpf, 4), 0xF0010, "config table right after the pointer");
        assert_eq!(mpf[8], 1, "length in paragraphs");
        assert_eq!(mpf[9], 4, "spec rev 1.4");
        assert_eq!(&mpf[11..16], &[0; 5], "config table present, virtual wire");
        assert_eq!(sum(mpf), 0);
    }

    #[test]
    fn config_table_header_and_checksum() {
        for n in [1u8, 4, 254] {
            let t = build_mptable(MPTABLE_START, n, None).unwrap();
            let mpc = &t[16..];
            assert_eq!(&mpc[0..4], b"PCMP");
            assert_eq!(u16_at(mpc, 4) as usize, mpc.len(), "base table length");
            assert_eq!(mpc[6], 4);
            assert_eq!(&mpc[8..16], b"RVMM    ");
            assert_eq!(&mpc[16..28], b"RVMMVM      ");
            assert_eq!(u32_at(mpc, 28), 0, "no OEM table");
            assert_eq!(u16_at(mpc, 34), u16::from(n) + 19, "entry count");
            assert_eq!(u32_at(mpc, 36), 0xFEE0_0000);
            assert_eq!(u16_at(mpc, 40), 0, "no extended table");
            assert_eq!(sum(mpc), 0, "config table checksum for {n} CPUs");
        }
    }

    #[test]
    fn entries_in_spec_order() {
        let n = 4u8;
        let t = build_mptable(MPTABLE_START, n, None).unwrap();
        let mut off = 16 + 44;
        let mut types = Vec::new();
        while off < t.len() {
            let ty = t[off];
            types.push(ty);
            off += if ty == 0 { 20 } else { 8 };
        }
        assert_eq!(off, t.len());
        let mut want = vec![0u8; n as usize];
        want.extend([1, 2]);
        want.extend([3; 15]);
        want.extend([4; 2]);
        assert_eq!(types, want);
    }

    #[test]
    fn processor_entries() {
        let t = build_mptable(MPTABLE_START, 3, None).unwrap();
        for i in 0..3usize {
            let e = &t[60 + 20 * i..60 + 20 * (i + 1)];
            assert_eq!(e[0], 0);
            assert_eq!(e[1] as usize, i, "APIC ID = index");
            assert_eq!(e[2], 0x14);
            assert_eq!(e[3], if i == 0 { 3 } else { 1 }, "EN, BP only on CPU 0");
            assert_eq!((u32_at(e, 4) >> 8) & 0xF, 6, "family 6");
            assert_eq!(u32_at(e, 8) & 0x201, 0x201, "FPU | APIC");
        }
    }

    #[test]
    fn bus_ioapic_and_interrupt_entries() {
        let n = 2u8;
        let t = build_mptable(MPTABLE_START, n, None).unwrap();
        let base = 60 + 20 * n as usize;
        assert_eq!(&t[base..base + 8], &[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
        let io = &t[base + 8..base + 16];
        let id = crate::boot::acpi::IOAPIC_ID;
        assert_eq!(&io[..4], &[2, id, 0x11, 1]);
        assert_eq!(u32_at(io, 4), 0xFEC0_0000);
        let mut routes = Vec::new();
        for k in 0..15 {
            let e = &t[base + 16 + 8 * k..base + 24 + 8 * k];
            assert_eq!(&e[..6], &[3, 0, 0, 0, 0, e[5]][..], "INT, conforming, bus 0");
            assert_eq!(e[6], id, "destination is the I/O APIC");
            routes.push((e[5], e[7]));
        }
        let mut want = vec![(0u8, 2u8), (1, 1)];
        want.extend((3u8..16).map(|i| (i, i)));
        assert_eq!(routes, want);
        let l = base + 16 + 8 * 15;
        assert_eq!(&t[l..l + 8], &[4, 3, 0, 0, 0, 0, 0xFF, 0], "ExtINT -> LINT0");
        assert_eq!(&t[l + 8..l + 16], &[4, 1, 0, 0, 0, 0, 0xFF, 1], "NMI -> LINT1");
    }

    #[test]
    fn pci_bus_and_its_intx_routes() {
        let routes = [(1u8, 10u32), (2, 16)];
        let t = build_mptable(MPTABLE_START, 1, Some(&routes)).unwrap();
        assert_eq!(t.len(), mptable_size(1, Some(&routes)));
        assert_eq!(sum(&t[16..16 + usize::from(u16_at(&t, 16 + 4))]), 0, "config table checksum");
        // ISA IRQ 10's entry gives way to the PCI INTA# on pin 10.
        assert_eq!(u16_at(&t, 16 + 34), 1 + 2 + 1 + 14 + 2 + 2, "entry count");
        let base = 60 + 20;
        assert_eq!(&t[base..base + 8], b"\x01\x00ISA   ");
        assert_eq!(&t[base + 8..base + 16], b"\x01\x01PCI   ");
        let id = crate::boot::acpi::IOAPIC_ID;
        let pci = base + 24 + 8 * 14;
        // INT, conforming (PCI: level, active low), bus 1, device << 2 | INTA#, I/O APIC pin = GSI.
        assert_eq!(&t[pci..pci + 8], &[3, 0, 0, 0, 1, 1 << 2, id, 10]);
        assert_eq!(&t[pci + 8..pci + 16], &[3, 0, 0, 0, 1, 2 << 2, id, 16]);
        assert_eq!(t[pci + 16], 4, "local interrupt entries follow");
        assert_eq!(
            build_mptable(MPTABLE_START, 1, Some(&[(1, 24)])),
            Err(MpTableError::BadPciRoute { slot: 1, gsi: 24 })
        );
        assert_eq!(
            build_mptable(MPTABLE_START, 1, Some(&[(32, 5)])),
            Err(MpTableError::BadPciRoute { slot: 32, gsi: 5 })
        );
        // A PCI bus without devices still gets its bus entry.
        let empty = build_mptable(MPTABLE_START, 1, Some(&[])).unwrap();
        assert_eq!(&empty[base + 8..base + 16], b"\x01\x01PCI   ");
    }

    /// `(bus, source IRQ, pin)` of every I/O interrupt entry, and the I/O APIC ID of the I/O APIC entry.
    fn io_interrupts(t: &[u8]) -> (Vec<(u8, u8, u8)>, u8) {
        let (mut off, mut routes, mut ioapic_id) = (16 + 44, Vec::new(), None);
        while off < t.len() {
            match t[off] {
                0 => off += 20,
                ty => {
                    if ty == 2 {
                        ioapic_id = Some(t[off + 1]);
                    }
                    if ty == 3 {
                        assert_eq!(t[off + 6], ioapic_id.unwrap(), "destination is the I/O APIC entry's ID");
                        routes.push((t[off + 4], t[off + 5], t[off + 7]));
                    }
                    off += 8;
                }
            }
        }
        (routes, ioapic_id.unwrap())
    }

    #[test]
    fn ioapic_id_is_zero_for_any_cpu_count() {
        for n in [1u8, 2, 8, 254] {
            let (_, id) = io_interrupts(&build_mptable(MPTABLE_START, n, None).unwrap());
            assert_eq!(id, 0, "{n} CPUs");
            assert_eq!(id, crate::boot::acpi::IOAPIC_ID, "as the MADT says");
        }
    }

    #[test]
    fn pci_pins_get_no_isa_entry() {
        // The device GSIs rvmm hands out, first the ISA ones.
        let routes: Vec<(u8, u32)> =
            [5u32, 6, 7, 10, 11, 14, 15, 16, 17].iter().zip(1u8..).map(|(&g, s)| (s, g)).collect();
        let t = build_mptable(MPTABLE_START, 2, Some(&routes)).unwrap();
        assert_eq!(t.len(), mptable_size(2, Some(&routes)));
        assert_eq!(u16_at(&t, 16 + 4) as usize, t.len() - 16, "base table length");
        assert_eq!(sum(&t[16..]), 0);
        let (entries, _) = io_interrupts(&t);
        assert_eq!(u16_at(&t, 16 + 34) as usize, 2 + 2 + 1 + entries.len() + 2, "entry count");
        let isa: Vec<(u8, u8)> = entries.iter().filter(|e| e.0 == 0).map(|e| (e.1, e.2)).collect();
        assert_eq!(isa, [(0, 2), (1, 1), (3, 3), (4, 4), (8, 8), (9, 9), (12, 12), (13, 13)]);
        let pci: Vec<u8> = entries.iter().filter(|e| e.0 == 1).map(|e| e.2).collect();
        assert_eq!(pci, [5, 6, 7, 10, 11, 14, 15, 16, 17]);
        // Every pin has one source.
        let mut pins: Vec<u8> = entries.iter().map(|e| e.2).collect();
        pins.sort_unstable();
        pins.dedup();
        assert_eq!(pins.len(), entries.len());
        // Without PCI, all 15 ISA entries stay.
        let (entries, _) = io_interrupts(&build_mptable(MPTABLE_START, 1, None).unwrap());
        assert_eq!(entries.len(), 15);
        let (entries, _) = io_interrupts(&build_mptable(MPTABLE_START, 1, Some(&[])).unwrap());
        assert_eq!(entries.len(), 15);
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        assert_eq!(build_mptable(MPTABLE_START, 0, None), Err(MpTableError::NoCpus));
        assert_eq!(build_mptable(MPTABLE_START, 255, None), Err(MpTableError::TooManyCpus(255)));
        assert!(build_mptable(MPTABLE_START, 254, None).is_ok());
    }

    #[test]
    fn rejects_bad_addresses() {
        assert_eq!(build_mptable(0xF0008, 1, None), Err(MpTableError::MisalignedAddress(0xF0008)));
        assert_eq!(build_mptable(0xFFFF_FF80, 1, None), Err(MpTableError::AddressAbove4G(0xFFFF_FF80)));
        assert!(matches!(build_mptable(u64::MAX - 15, 1, None), Err(MpTableError::AddressAbove4G(_))));
    }

    /// Prints the table for checking by eye against the spec layout:
    /// `cargo test mptable::tests::hexdump -- --nocapture`.
    #[test]
    fn hexdump() {
        let t = build_mptable(MPTABLE_START, 2, None).unwrap();
        for (i, row) in t.chunks(16).enumerate() {
            let hex: Vec<String> = row.iter().map(|b| format!("{b:02x}")).collect();
            println!("{:05x}: {}", MPTABLE_START as usize + i * 16, hex.join(" "));
        }
    }
}
