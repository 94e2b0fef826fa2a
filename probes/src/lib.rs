//! Probe guest images for rvmm's tests, built by `build.rs` from the C and assembly
//! in `guest/` (see the crate's README.md).
//!
//! Each probe boots, reports what it was handed (boot protocol, command line, memory
//! map, initrd, ACPI, MP table, CPUs, RTC, serial input) as `key: value` lines on COM1,
//! and exits through the debug exit port 0xf4 (status 0 when every self-check passed).
//! Command-line tokens make it also enumerate PCI bus 0 (`pci`) and drive virtio devices
//! over PCI or virtio-mmio (`mmio`, `msix`, `intx`): block (`blk`), network (`net`, with
//! ARP and ping), entropy (`rng`) and console (`console`): see the README.
//!
//! [`MBR_BIOS_SERVICES`] is not a probe but a boot sector for firmware tests: it calls
//! the BIOS's int 0x13 and int 0x15 services and reports on COM1.

/// Path of `probe-linux64.elf`: an ELF64 image whose `e_entry` follows the Linux
/// 64-bit boot protocol (RSI = `struct boot_params`), loaded at physical 1 MiB.
pub const LINUX64_ELF: &str = concat!(env!("OUT_DIR"), "/probe-linux64.elf");

/// Path of `probe-pvh.elf`: the same image plus a Xen `PHYS32_ENTRY` note, booted
/// through the PVH entry (32-bit protected mode, EBX = `struct hvm_start_info`).
pub const PVH_ELF: &str = concat!(env!("OUT_DIR"), "/probe-pvh.elf");

/// Path of `probe.bzImage`: a boot protocol 2.15 bzImage with a real-mode setup
/// (E820 via `int 0x15`), a 32-bit entry at offset 0 and a 64-bit entry at 0x200 of
/// the protected-mode payload.
pub const BZIMAGE: &str = concat!(env!("OUT_DIR"), "/probe.bzImage");

/// Path of `mbr-bios-services.bin`: a 512-byte boot sector (MBR, 0x55 0xAA at 510,
/// no partition table) from `guest/mbr.S` for firmware to load at 0000:7C00. In real
/// mode it waits for one timer tick (so that SeaBIOS's serial console has sent what it
/// buffered), calls the BIOS disk and memory services on drive 0x80 and reports on COM1
/// (polling the 16550 at 0x3f8), each line `\r\nrvmm-mbr: ...`:
///
/// - `edd=ok`: int 0x13 AH=0x41 (EDD present, BX = 0xAA55, CX bit 0);
/// - `sectors=0x<hex>`: int 0x13 AH=0x48, the total sector count (low 32 bits);
/// - `read=ok fnv=0x<8 hex digits>`: int 0x13 AH=0x42, LBA 1-16 to 0x1000:0000, and the
///   FNV-1a 32 of those 8192 bytes;
/// - `write=ok`: int 0x13 AH=0x43 (no verify), LBA 17 := `rvmm-mbr-wrote!!` 32 times;
/// - `e820=<decimal> ram_kib=0x<hex>`: int 0x15 EAX=0xE820, the number of entries and
///   the sum of the type-1 lengths (low 32 bits each) in KiB;
/// - `done`, and status 42 to the debug exit port 0xf4.
///
/// A failed step prints `fail=<edd|sectors|read|write|e820> ah=0x<AH>` instead and
/// writes its own status to 0xf4: 2, 3, 4, 5 or 6 in that order.
pub const MBR_BIOS_SERVICES: &str = concat!(env!("OUT_DIR"), "/mbr-bios-services.bin");

/// The bytes of the PVH probe ELF, for a VMM to embed as its default guest.
pub fn hello_pvh_elf() -> &'static [u8] {
    include_bytes!(concat!(env!("OUT_DIR"), "/probe-pvh.elf"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_exist() {
        for p in [LINUX64_ELF, PVH_ELF, BZIMAGE] {
            assert!(std::fs::metadata(p).unwrap().len() > 512, "{p}");
        }
        assert_eq!(&hello_pvh_elf()[..4], b"\x7fELF");
    }

    #[test]
    fn mbr_is_one_signed_sector() {
        let mbr = std::fs::read(MBR_BIOS_SERVICES).unwrap();
        assert_eq!(mbr.len(), 512);
        assert_eq!(&mbr[510..], &[0x55, 0xaa]);
        assert!(mbr.windows(10).any(|w| w == b"rvmm-mbr: "));
    }

    #[test]
    fn bzimage_header() {
        let bz = std::fs::read(BZIMAGE).unwrap();
        assert_eq!(&bz[0x202..0x206], b"HdrS");
        assert_eq!(u16::from_le_bytes([bz[0x206], bz[0x207]]), 0x020f);
        let setup_sects = bz[0x1f1] as usize;
        let syssize = u32::from_le_bytes(bz[0x1f4..0x1f8].try_into().unwrap()) as usize;
        let payload = bz.len() - (setup_sects + 1) * 512;
        assert_eq!(syssize, payload.div_ceil(16));
    }
}
