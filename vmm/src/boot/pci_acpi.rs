//! How the PCI segment is described to an ACPI guest: the MCFG table that
//! locates ECAM, and a PCI host bridge (PNP0A08) in the DSDT with its bus,
//! I/O and memory windows and the `_PRT` that maps each slot's INTA# to a GSI.

use super::acpi::{AcpiError, Sdt};
use super::aml::{
    AddressSpaceKind, AddressWidth, Aml, AmlError, AmlList, Device, EisaId, Method, Name, Package, Resource,
    ResourceTemplate, Return, Scope,
};

/// What the guest needs to know about the PCI segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDescription {
    /// Base of the ECAM window.
    pub ecam_base: u64,
    /// Buses it covers (from 0).
    pub ecam_buses: u16,
    /// `[start, end)` of the window memory BARs are placed in.
    pub mmio_window: (u64, u64),
    /// `(device slot, GSI)` of every function's INTA#.
    pub intx_routes: Vec<(u8, u32)>,
}

/// A virtio-mmio device as ACPI describes it to Linux (`LNRO0005`, the ID
/// drivers/virtio/virtio_mmio.c matches): its register window and interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceDescription {
    /// Base of the register window.
    pub base: u64,
    /// Its size.
    pub size: u64,
    /// Its interrupt (level-triggered, active-high).
    pub gsi: u32,
}

/// `Device (VRxx)` objects for virtio-mmio devices, to put in `\_SB`.
pub fn build_virtio_mmio_aml(devices: &[MmioDeviceDescription]) -> Result<AmlList, AcpiError> {
    let err = |e: AmlError| AcpiError::from(e);
    let mut list: AmlList = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let crs = ResourceTemplate::new(vec![
            Resource::memory32_fixed(d.base as u32, d.size as u32),
            Resource::Interrupt { edge: false, active_low: false, shared: false, gsi: d.gsi },
        ]);
        let name = format!("VR{i:02X}");
        let dev = Device::new(
            &name,
            vec![
                Box::new(Name::new("_HID", "LNRO0005").map_err(err)?),
                Box::new(Name::new("_UID", i as u32).map_err(err)?),
                Box::new(Name::new("_CCA", 1u8).map_err(err)?),
                Box::new(Name::new("_CRS", crs).map_err(err)?),
            ],
        )
        .map_err(err)?;
        list.push(Box::new(dev));
    }
    Ok(list)
}

/// The MCFG table (PCI Firmware Specification 3.0, 4.1.2): one allocation for segment 0.
pub fn build_mcfg(pci: &PciDescription) -> Sdt {
    let mut mcfg = Sdt::new(*b"MCFG", 1);
    mcfg.append(&[0u8; 8]); // reserved
    mcfg.append(&pci.ecam_base.to_le_bytes());
    mcfg.append(&0u16.to_le_bytes()); // PCI segment group
    mcfg.append(&[0, (pci.ecam_buses.max(1) - 1) as u8]); // start and end bus
    mcfg.append(&[0u8; 4]); // reserved
    mcfg
}

/// `Scope (\_SB) { Device (PCI0) { ... }, MRES, extra... }` as AML bytes.
pub fn build_pci_host_bridge_aml(pci: &PciDescription, extra: AmlList) -> Result<Vec<u8>, AcpiError> {
    let err = |e: AmlError| AcpiError::from(e);
    let memory = AddressSpaceKind::Memory { cacheable: false, read_write: true };
    let crs = ResourceTemplate::new(vec![
        Resource::AddressSpace {
            width: AddressWidth::Word,
            kind: AddressSpaceKind::BusNumber,
            min: 0,
            max: u64::from(pci.ecam_buses.max(1) - 1),
        },
        // The configuration ports themselves, then the I/O space devices may use.
        Resource::io(0xcf8, 1, 8),
        Resource::AddressSpace { width: AddressWidth::Word, kind: AddressSpaceKind::Io, min: 0x1000, max: 0xffff },
        Resource::AddressSpace {
            width: AddressWidth::DWord,
            kind: memory,
            min: pci.mmio_window.0,
            max: pci.mmio_window.1.saturating_sub(1),
        },
    ]);
    // _PRT entries: (address = slot << 16 | 0xFFFF, pin 0 = INTA, source 0 = GSI given directly, GSI).
    let prt: AmlList = pci
        .intx_routes
        .iter()
        .map(|&(slot, gsi)| {
            let entry: AmlList =
                vec![Box::new((u32::from(slot) << 16) | 0xffff), Box::new(0u8), Box::new(0u8), Box::new(gsi)];
            Box::new(Package::new(entry)) as Box<dyn Aml>
        })
        .collect();
    let pci0 = Device::new(
        "PCI0",
        vec![
            Box::new(Name::new("_HID", EisaId::new("PNP0A08").map_err(err)?).map_err(err)?),
            Box::new(Name::new("_CID", EisaId::new("PNP0A03").map_err(err)?).map_err(err)?),
            Box::new(Name::new("_SEG", 0u8).map_err(err)?),
            Box::new(Name::new("_BBN", 0u8).map_err(err)?),
            Box::new(Name::new("_UID", 0u8).map_err(err)?),
            Box::new(Name::new("_CRS", crs).map_err(err)?),
            Box::new(Name::new("_PRT", Package::new(prt)).map_err(err)?),
            Box::new(Method::new("_STA", 0, false, vec![Box::new(Return::new(0x0fu8))]).map_err(err)?),
        ],
    )
    .map_err(err)?;
    // The ECAM window is a motherboard resource (PNP0C02): Linux only trusts MCFG
    // when the region is reserved there or in e820.
    let ecam_len = u32::from(pci.ecam_buses.max(1)) << 20;
    let res = Device::new(
        "MRES",
        vec![
            Box::new(Name::new("_HID", EisaId::new("PNP0C02").map_err(err)?).map_err(err)?),
            Box::new(Name::new("_UID", 0u8).map_err(err)?),
            Box::new(
                Name::new(
                    "_CRS",
                    ResourceTemplate::new(vec![Resource::memory32_fixed(pci.ecam_base as u32, ecam_len)]),
                )
                .map_err(err)?,
            ),
        ],
    )
    .map_err(err)?;
    let mut children: AmlList = vec![Box::new(pci0), Box::new(res)];
    children.extend(extra);
    let scope = Scope::new("\\_SB", children).map_err(err)?;
    scope.to_aml_vec().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::acpi::{build_acpi_tables, AcpiConfig};

    fn description() -> PciDescription {
        PciDescription {
            ecam_base: 0xe000_0000,
            ecam_buses: 1,
            mmio_window: (0xc000_0000, 0xd000_0000),
            intx_routes: vec![(1, 5), (2, 6)],
        }
    }

    /// Finds a table by signature in the blob (tables are 8-byte aligned).
    fn table<'a>(blob: &'a [u8], sig: &[u8; 4]) -> &'a [u8] {
        let at = (0..blob.len() - 8).step_by(8).find(|&i| &blob[i..i + 4] == sig).unwrap();
        let len = u32::from_le_bytes(blob[at + 4..at + 8].try_into().unwrap()) as usize;
        &blob[at..at + len]
    }

    #[test]
    fn mcfg_layout() {
        let bytes = build_mcfg(&description()).to_bytes().unwrap();
        assert_eq!(&bytes[..4], b"MCFG");
        assert_eq!(bytes.len(), 36 + 8 + 16);
        assert_eq!(u64::from_le_bytes(bytes[44..52].try_into().unwrap()), 0xe000_0000);
        assert_eq!((bytes[54], bytes[55]), (0, 0));
        assert_eq!(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    }

    #[test]
    fn iasl_reads_the_host_bridge_and_mcfg() {
        if std::process::Command::new("iasl").arg("-v").output().is_err() {
            println!("SKIP: iasl not installed (apt-get install acpica-tools)");
            return;
        }
        let pci = description();
        let mut config = AcpiConfig::new(2, 0x3c0);
        config.extra_tables.push(build_mcfg(&pci));
        let mmio =
            build_virtio_mmio_aml(&[MmioDeviceDescription { base: 0xd000_0000, size: 0x1000, gsi: 17 }]).unwrap();
        config.extra_dsdt_aml = build_pci_host_bridge_aml(&pci, mmio).unwrap();
        let blob = build_acpi_tables(0xe0000, &config).unwrap().bytes;
        let dir = std::env::temp_dir().join(format!("rvmm-pci-acpi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = String::new();
        for sig in [b"DSDT", b"MCFG"] {
            let name = String::from_utf8_lossy(sig).to_lowercase();
            let path = dir.join(format!("{name}.dat"));
            std::fs::write(&path, table(&blob, sig)).unwrap();
            let out = std::process::Command::new("iasl").arg("-d").arg(&path).current_dir(&dir).output().unwrap();
            assert!(out.status.success(), "iasl -d {name}: {}", String::from_utf8_lossy(&out.stderr));
            text += &std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
        }
        let _ = std::fs::remove_dir_all(&dir);
        for needle in [
            "PNP0A08",
            "PNP0A03",
            "Name (_PRT, Package (0x02)",
            "0x0001FFFF",
            "0x0002FFFF",
            "PNP0C02",
            "0xE0000000",
            "Base Address : 00000000E0000000",
            "LNRO0005",
            "Memory32Fixed (ReadWrite,",
            "0xD0000000",
            "Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, )",
            "0x00000011,",
            "Incorrect checksum",
        ] {
            let want = needle != "Incorrect checksum";
            assert_eq!(text.contains(needle), want, "{needle} in:\n{text}");
        }
    }
}
